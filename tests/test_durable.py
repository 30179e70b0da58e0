"""The durability wait (gateway/ingest/durable.py, FastRedis.evalsha_then_wait) against real valkey
servers started and stopped by PID: with an append-only file fsync'd on every write, without one,
and a replica. No mocks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis import Redis

from gateway.embedded import EmbeddedRedis
from gateway.exceptions import ConfigError, NotDurable
from gateway.fastredis import ConnectionLost, FastRedis, Script, ScriptsViaRedisPy
from gateway.ingest.durable import DurabilityState, DurableScripts, check_server, confirmed, wait_command
from gateway.metrics import render
from gateway.settings import Durability, Settings

INCR = Script("return redis.call('INCR', KEYS[1])")
WAITAOF = ("WAITAOF", 1, 0, 2000)
# Keeps the server's one thread busy for ARGV[1] turns (another connection waits meanwhile).
BUSY = "local n = 0 for i = 1, tonumber(ARGV[1]) do n = n + i end return 0"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def aof_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A server whose append-only file is fsync'd before any write of a turn is answered."""
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("aof"), appendfsync="always").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_server() -> Iterator[EmbeddedRedis]:
    """No persistence at all (appendonly no): WAITAOF 1 is refused."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


def calls(url: str, command: str) -> int:
    stats = Redis.from_url(url).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def loaded(url: str) -> str:
    """`url`, with INCR loaded (a NOSCRIPT would send the script, and a wait, twice)."""
    Redis.from_url(url).script_load(INCR.text)
    return url


def test_a_lone_call_has_its_wait_right_behind_it(aof_server: EmbeddedRedis) -> None:
    async def go() -> tuple[Any, Any]:
        client = FastRedis(loaded(aof_server.url))
        try:
            return await client.evalsha_then_wait(INCR, ["lone"], [], WAITAOF)
        finally:
            await client.aclose()

    before = calls(aof_server.url, "waitaof")
    reply, answer = run(go())
    assert reply == 1
    assert answer == [1, 0]  # fsync'd here, on no replica
    assert calls(aof_server.url, "waitaof") == before + 1


def test_calls_of_the_same_moment_share_the_next_wait(aof_server: EmbeddedRedis) -> None:
    """Redis holds back a connection's later commands while a wait blocks, so a wait per call would
    cost an fsync each: the first call's wait goes right behind it, and the four sent meanwhile
    share one more, sent when the first returns. Every call is confirmed."""

    async def go() -> list[tuple[Any, Any]]:
        client = FastRedis(loaded(aof_server.url))
        try:
            await client.ping()  # connected: the five go out in the same turn of the loop
            return await asyncio.gather(
                *(client.evalsha_then_wait(INCR, ["shared"], [], WAITAOF) for _ in range(5))
            )
        finally:
            await client.aclose()

    before = calls(aof_server.url, "waitaof"), calls(aof_server.url, "evalsha")
    results = run(go())
    assert [reply for reply, _ in results] == [1, 2, 3, 4, 5]
    assert all(answer == [1, 0] for _, answer in results)
    after = calls(aof_server.url, "waitaof"), calls(aof_server.url, "evalsha")
    assert (after[0] - before[0], after[1] - before[1]) == (2, 5)


def test_the_script_is_loaded_again_and_still_waited_for(aof_server: EmbeddedRedis) -> None:
    async def go() -> tuple[Any, Any]:
        client = FastRedis(aof_server.url)
        try:
            Redis.from_url(aof_server.url).script_flush()
            return await client.evalsha_then_wait(INCR, ["noscript"], [], WAITAOF)
        finally:
            await client.aclose()

    assert run(go()) == (1, [1, 0])


def test_one_call_timing_out_fails_the_others_on_the_connection_without_cancelling_them(
    aof_server: EmbeddedRedis,
) -> None:
    """A call timed out closes the connection (its reply may still come): the calls sharing it,
    and the wait, get ConnectionLost, never a CancelledError that is not theirs."""
    hog = Redis.from_url(aof_server.url)
    t0 = time.perf_counter()
    hog.eval(BUSY, 0, 1_000_000)
    turns = int(1_000_000 * 1.5 / max(time.perf_counter() - t0, 1e-3))  # ~1.5 s of the server

    async def go() -> list[BaseException | tuple[Any, Any]]:
        client = FastRedis(aof_server.url)
        try:
            await client.ping()
            busy = threading.Thread(target=hog.eval, args=(BUSY, 0, turns), daemon=True)
            busy.start()
            await asyncio.sleep(0.3)  # the server is in the script now

            async def short() -> tuple[Any, Any]:
                async with asyncio.timeout(0.05):
                    return await client.evalsha_then_wait(INCR, ["t"], [], WAITAOF)

            async def patient() -> tuple[Any, Any]:
                async with asyncio.timeout(10):
                    return await client.evalsha_then_wait(INCR, ["t"], [], WAITAOF)

            results = await asyncio.gather(short(), patient(), patient(), return_exceptions=True)
            await asyncio.to_thread(busy.join)
            # The next call opens a new connection and is confirmed.
            results.append(await client.evalsha_then_wait(INCR, ["t2"], [], WAITAOF))
            return results
        finally:
            await client.aclose()

    first, second, third, after = run(go())
    assert isinstance(first, TimeoutError)
    assert isinstance(second, ConnectionLost) and isinstance(third, ConnectionLost)
    assert after == (1, [1, 0])
    hog.close()


def test_durable_scripts_confirm_or_raise_not_durable(
    aof_server: EmbeddedRedis, plain_server: EmbeddedRedis
) -> None:
    async def go(url: str) -> tuple[Any, DurabilityState]:
        state = DurabilityState(Durability.DISK)
        client = DurableScripts(FastRedis(url), state, bound=1.0)
        try:
            try:
                return await client.evalsha(INCR, ["d"], []), state
            except NotDurable as exc:
                return exc, state
        finally:
            await client.aclose()

    reply, state = run(go(aof_server.url))
    assert reply == 1 and state.ok
    refused, state = run(go(plain_server.url))
    assert isinstance(refused, NotDurable)
    assert "GATEWAY_DURABILITY=disk" in str(refused) and "appendonly is disabled" in str(refused)
    assert not state.ok and state.wait_problem is not None
    # The script itself ran: what Redis holds is there, only not confirmed (a drain finds it).
    assert Redis.from_url(plain_server.url).get("d") == b"1"


def test_the_wait_through_redis_py_for_sentinel_urls(aof_server: EmbeddedRedis) -> None:
    async def go() -> tuple[Any, Any]:
        aio = aioredis.Redis.from_url(aof_server.url)
        try:
            Redis.from_url(aof_server.url).script_flush()
            client = ScriptsViaRedisPy(aio)
            first = await client.evalsha_then_wait(INCR, ["py"], [], WAITAOF)  # NOSCRIPT, then EVAL
            return first, await client.evalsha_then_wait(INCR, ["py"], [], WAITAOF)
        finally:
            await aio.aclose()

    assert run(go()) == ((1, [1, 0]), (2, [1, 0]))


def test_check_server_names_what_the_server_lacks(
    aof_server: EmbeddedRedis, plain_server: EmbeddedRedis, tmp_path: Path
) -> None:
    async def check(url: str, level: Durability, replicas: int = 1) -> str | None:
        aio = aioredis.Redis.from_url(url)
        try:
            return await check_server(aio, level, replicas)
        finally:
            await aio.aclose()

    assert run(check(aof_server.url, Durability.DISK)) is None
    everysec = EmbeddedRedis(data_dir=tmp_path / "everysec", appendfsync="everysec").start()
    try:
        slow = run(check(everysec.url, Durability.DISK)) or ""
        assert slow.startswith("its appendfsync is everysec, not always: "), slow
    finally:
        everysec.stop()
    assert run(check(plain_server.url, Durability.DISK)) == "its append-only file is off (appendonly no)"
    assert run(check(plain_server.url, Durability.MEMORY)) is None
    lacking = run(check(plain_server.url, Durability.REPLICA, 2))
    assert lacking == "0 replica(s) connected and online, 2 asked (INFO replication)"
    replica = EmbeddedRedis().start()
    try:
        # (Loaded from the socket: a replica would otherwise keep a snapshot in the working folder.)
        Redis.from_url(replica.url).config_set("repl-diskless-load", "swapdb")
        Redis.from_url(replica.url).replicaof("127.0.0.1", str(plain_server.port))
        assert "not a primary" in (run(check(replica.url, Durability.REPLICA)) or "")
        assert run(check(replica.url, Durability.DISK)) == "the server is a replica, not a primary"
        # Once its link is up, the primary has one replica online.
        deadline = time.monotonic() + 20
        while run(check(plain_server.url, Durability.REPLICA)) is not None:
            assert time.monotonic() < deadline, "the replica's link did not come up"
            time.sleep(0.1)
    finally:
        replica.stop()


def test_wait_commands_and_their_replies() -> None:
    assert wait_command(Durability.MEMORY, 1, 750) is None
    assert wait_command(Durability.DISK, 1, 750) == ("WAITAOF", 1, 0, 750)
    assert wait_command(Durability.REPLICA, 2, 750) == ("WAIT", 2, 750)
    assert confirmed(Durability.DISK, 1, [1, 0]) is None
    assert confirmed(Durability.DISK, 1, [0, 0]) == "the append-only file was not fsync'd in time (WAITAOF)"
    assert confirmed(Durability.REPLICA, 2, 2) is None
    assert confirmed(Durability.REPLICA, 2, 1) == "1 of 2 replica(s) acknowledged in time (WAIT)"


def test_settings_read_the_level_and_refuse_an_unknown_one() -> None:
    assert Settings.from_env({}).durability is None
    assert Settings.from_env({}).durability_level is Durability.MEMORY
    chosen = Settings.from_env({"GATEWAY_DURABILITY": "Replica", "GATEWAY_DURABILITY_REPLICAS": "2"})
    assert (chosen.durability, chosen.durability_replicas) == (Durability.REPLICA, 2)
    with pytest.raises(
        ConfigError, match="'GATEWAY_DURABILITY': must be one of memory, disk, replica, got 'fsync'"
    ):
        Settings.from_env({"GATEWAY_DURABILITY": "fsync"})
    with pytest.raises(ConfigError, match="'GATEWAY_DURABILITY_REPLICAS': must be at least 1"):
        Settings.from_env({"GATEWAY_DURABILITY_REPLICAS": "0"})
    assert Settings.from_env({"GATEWAY_EMBEDDED_APPENDFSYNC": "always"}).embedded_appendfsync == "always"
    with pytest.raises(ConfigError, match="'GATEWAY_EMBEDDED_APPENDFSYNC': must be always or everysec"):
        Settings.from_env({"GATEWAY_EMBEDDED_APPENDFSYNC": "no"})


def test_the_metrics_gauge_names_the_level() -> None:
    text = render(None, {}, {}, ("disk", False)).decode()
    assert 'gateway_durability_ok{level="disk"} 0.0' in text
    assert 'gateway_durability_ok{level="memory"} 1.0' in render(None, {}, {}, ("memory", True)).decode()

"""gateway.fastredis against real valkey servers: the session's, and private ones started and
stopped by PID (restart, password, unix socket). No mocks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.embedded import EmbeddedRedis, find_server_binary, free_port
from gateway.events import InvitationEvent, make_event
from gateway.fastredis import ConnectionLost, Endpoint, FastRedis, ReplyError, Script
from gateway.ingest.accept import IN_FLIGHT, MAX_BATCH, Accepter
from gateway.ingest.spool import Spool
from gateway.store.ingest import ACCEPTED, EXISTS, SPOOLED, AcceptResult, AcceptStatus

ECHO = Script("return {ARGV[1], #KEYS, redis.call('INCR', KEYS[1])}")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_commands_pipelined_replies_in_order(redis_url: str, redis: Redis) -> None:
    async def go() -> list[object]:
        client = FastRedis(redis_url)
        try:
            assert await client.ping()
            assert await client.execute("SET", "k", "v") == b"OK"
            replies = await asyncio.gather(*(client.execute("INCR", "n") for _ in range(200)))
            got = await client.execute("GET", "k")
            return [replies, got]
        finally:
            await client.aclose()

    replies, got = run(go())
    assert replies == list(range(1, 201))  # one connection, answered in the order sent
    assert got == b"v"
    assert redis.get("n") == b"200"  # the URL's database, not 0


def test_decode_gives_text_in_nested_replies_and_keeps_errors(redis_url: str) -> None:
    async def go() -> list[object]:
        client = FastRedis(redis_url, decode=True)
        try:
            await client.execute("SET", "k", "é ✓")
            got = [await client.execute("GET", "k"), await client.evalsha(ECHO, ["n"], ["x"])]
            with pytest.raises(ReplyError, match="WRONGTYPE"):
                await client.execute("LPUSH", "k", "v")
            assert await client.ping()
            return got
        finally:
            await client.aclose()

    # Bulk strings (nested ones too) as str; integers as ints; an error still an error.
    assert run(go()) == ["é ✓", ["x", 1, 1]]


def test_error_reply_is_raised_and_the_connection_stays_usable(redis_url: str) -> None:
    async def go() -> object:
        client = FastRedis(redis_url)
        try:
            await client.execute("SET", "s", "text")
            with pytest.raises(ReplyError, match="not an integer"):
                await client.execute("INCR", "s")
            return await client.execute("GET", "s")
        finally:
            await client.aclose()

    assert run(go()) == b"text"


def test_evalsha_loads_the_script_again_after_script_flush(redis_url: str, redis: Redis) -> None:
    async def go() -> list[object]:
        client = FastRedis(redis_url)
        try:
            redis.script_flush()
            first = await client.evalsha(ECHO, ["c"], ["a"])  # NOSCRIPT: sent in full by EVAL
            second = await client.evalsha(ECHO, ["c"], ["b"])  # cached now
            redis.script_flush()
            third = await client.evalsha(ECHO, ["c"], ["d"])  # NOSCRIPT again
            return [first, second, third]
        finally:
            await client.aclose()

    assert run(go()) == [[b"a", 1, 1], [b"b", 1, 2], [b"d", 1, 3]]
    assert redis.script_exists(ECHO.sha) == [True]


def test_a_lua_error_is_a_reply_error(redis_url: str) -> None:
    async def go() -> None:
        client = FastRedis(redis_url)
        try:
            with pytest.raises(ReplyError):
                await client.evalsha(Script("return redis.call('NOSUCHCOMMAND')"), [], [])
        finally:
            await client.aclose()

    run(go())


def test_reconnects_after_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedRedis(port=port).start()

    async def go() -> None:
        nonlocal server
        client = FastRedis(f"redis://127.0.0.1:{port}/3")
        try:
            assert await client.execute("SET", "before", "1") == b"OK"
            server.stop()
            with pytest.raises(ConnectionLost):
                await client.execute("GET", "before")
            with pytest.raises(ConnectionLost):  # nothing listens: refused, not hung
                await client.execute("GET", "before")
            server = EmbeddedRedis(port=port).start()
            # A new connection, and the URL's database selected on it again.
            assert await client.execute("SET", "after", "2") == b"OK"
            assert await client.evalsha(ECHO, ["c"], ["x"]) == [b"x", 1, 1]  # a new server: NOSCRIPT
        finally:
            await client.aclose()

    try:
        run(go())
        assert Redis(port=port, db=3).get("after") == b"2"
    finally:
        server.stop()


def test_a_timeout_closes_the_connection_and_the_next_call_reconnects(redis_url: str, redis: Redis) -> None:
    async def go() -> object:
        client = FastRedis(redis_url)
        try:
            await client.execute("SET", "k", "1")
            redis.execute_command("CLIENT", "PAUSE", "600", "ALL")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await client.execute("INCR", "k")
            await asyncio.sleep(0.6)  # the pause ends
            return await client.execute("GET", "k")  # on a new connection
        finally:
            await client.aclose()

    # The INCR was sent before the timeout: whether Redis ran it on the closed connection is its
    # business (the ingest's event ids make either case safe).
    assert run(go()) in (b"1", b"2")


def test_password_username_and_database_from_the_url(tmp_path: Path) -> None:
    server = EmbeddedRedis().start()
    try:
        admin = Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "&*", "+@all")
        admin.config_set("requirepass", "s3cret")
        admin.close()

        async def go() -> None:
            by_password = FastRedis(f"redis://:s3cret@127.0.0.1:{server.port}/7")
            by_user = FastRedis(f"redis://alice:alice-pw@127.0.0.1:{server.port}/8")
            wrong = FastRedis(f"redis://:nope@127.0.0.1:{server.port}/0")
            none = FastRedis(f"redis://127.0.0.1:{server.port}/0")
            try:
                assert await by_password.execute("SET", "who", "default") == b"OK"
                assert await by_user.execute("SET", "who", "alice") == b"OK"
                with pytest.raises(ReplyError, match="AUTH"):
                    await wrong.execute("PING")
                with pytest.raises(ReplyError, match="NOAUTH"):
                    await none.execute("PING")
            finally:
                for c in (by_password, by_user, wrong, none):
                    await c.aclose()

        run(go())
        check = Redis(port=server.port, password="s3cret", db=7)
        assert check.get("who") == b"default"
        assert Redis(port=server.port, password="s3cret", db=8).get("who") == b"alice"
    finally:
        server.stop()


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [find_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(sock):  # the file appears at bind(), before listen(): ask, not look
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "no answer on the unix socket within 10 s"
            time.sleep(0.02)
        yield sock
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(sock: Path) -> bool:
    try:
        return bool(Redis(unix_socket_path=str(sock), socket_connect_timeout=1).ping())
    except (RedisConnectionError, OSError):
        return False


def test_unix_socket_url(unix_server: Path) -> None:
    async def go() -> object:
        client = FastRedis(f"unix://{unix_server}?db=2")
        try:
            await client.execute("SET", "k", "u")
            return await client.evalsha(ECHO, ["c"], ["y"])
        finally:
            await client.aclose()

    assert run(go()) == [b"y", 1, 1]
    assert Redis(unix_socket_path=str(unix_server), db=2).get("k") == b"u"


def test_endpoint_reads_the_url_as_redis_py_does() -> None:
    ep = Endpoint.from_url("redis://u:p%40ss@example.test:6380/4?socket_connect_timeout=0.5&client_name=gw")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password) == ("example.test", 6380, 4, "u", "p@ss")
    assert (ep.connect_timeout, ep.client_name, ep.ssl, ep.path) == (0.5, "gw", None, None)
    assert ep.handshake() == [("AUTH", "u", "p@ss"), ("SELECT", 4), ("CLIENT", "SETNAME", "gw")]
    assert Endpoint.from_url("redis://localhost").handshake() == []
    import ssl

    tls = Endpoint.from_url("rediss://:pw@example.test:6380/0")
    assert tls.ssl is not None and tls.ssl.verify_mode == ssl.CERT_REQUIRED and tls.ssl.check_hostname
    lax = Endpoint.from_url("rediss://example.test?ssl_cert_reqs=none")
    assert lax.ssl is not None and lax.ssl.verify_mode == ssl.CERT_NONE
    assert Endpoint.from_url("unix:///run/redis.sock?db=1").path == "/run/redis.sock"


def _accepter(url: str, spool: Spool, bound: float) -> tuple[FastRedis, Accepter]:
    client = FastRedis(url)

    async def on_version(version: int) -> bool:
        return False

    async def wake() -> None:
        return None

    accepter = Accepter(
        client,
        "gw",
        86400,
        spool,
        routes=lambda ev: ["t"],
        limits=lambda ev, now: {},
        on_version=on_version,
        wake=wake,
        bound=bound,
    )
    return client, accepter


def test_accept_spools_when_redis_is_slower_than_the_bound_then_drains(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool", name="test")

    async def go() -> tuple[AcceptResult, AcceptResult, int, tuple[int, int]]:
        client, accepter = _accepter(redis_url, spool, bound=0.2)
        try:
            first = make_event(
                {"invitee": "+15550000001", "invitor": "a", "network_id": "n"}, "invitation_created", "query"
            )
            stored = await accepter.accept(first, ["t"])
            redis.execute_command("CLIENT", "PAUSE", "700", "ALL")
            second = make_event(
                {"invitee": "+15550000002", "invitor": "a", "network_id": "n"}, "invitation_created", "query"
            )
            spooled = await accepter.accept(second, ["t"])  # the bound passes: fsync'd in the spool
            lines = len(spool.path.read_bytes().splitlines())
            await asyncio.sleep(0.8)
            drained = await accepter.drain()
            return stored, spooled, lines, drained
        finally:
            await client.aclose()
            spool.close()

    stored, spooled, lines, drained = run(go())
    assert (stored, spooled, lines) == (ACCEPTED, SPOOLED, 1)
    # Stored by the drain, or found there already if Redis ran the timed-out EVALSHA: once.
    assert sum(drained) == 1
    assert redis.zcard("gw:events") == 2 and redis.zcard("gw:due") == 2
    assert not spool.path.exists()


def test_accept_answers_every_burst_with_batches_in_flight(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    # Bursts of callbacks at every phase of the flushes (two in flight at once): each one answered.
    spool = Spool(tmp_path / "spool", name="burst")

    async def go() -> list[AcceptResult]:
        client, accepter = _accepter(redis_url, spool, bound=5.0)
        statuses: list[AcceptResult] = []
        try:
            n = 0
            for burst in range(300):
                events = []
                for _ in range(1 + burst % 4):
                    n += 1
                    events.append(
                        make_event(
                            {"invitee": f"+1555{n:07d}", "invitor": "a", "network_id": "n"},
                            "invitation_created",
                            "query",
                        )
                    )
                async with asyncio.timeout(10):  # a callback left without a flush would hang here
                    statuses += await asyncio.gather(*(accepter.accept(ev, ["t"]) for ev in events))
                for _ in range(burst % 3):
                    await asyncio.sleep(0)
            return statuses
        finally:
            await client.aclose()
            spool.close()

    statuses = run(go())
    assert statuses == [ACCEPTED] * len(statuses)
    assert redis.zcard("gw:events") == len(statuses)


def _events(n: int, start: int = 0) -> list[InvitationEvent]:
    return [
        make_event(
            {"invitee": f"+1555{i:07d}", "invitor": "a", "network_id": "n"}, "invitation_created", "query"
        )
        for i in range(start, start + n)
    ]


def _count_commits(accepter: Accepter) -> list[int]:
    """The size of each batch the accepter commits (its own method, wrapped: Redis stays real)."""
    sizes: list[int] = []
    commit = accepter.commit

    async def counted(
        items: Sequence[tuple[InvitationEvent, Sequence[str]]], *more: Any
    ) -> list[AcceptResult]:
        sizes.append(len(items))
        return await commit(items, *more)

    accepter.commit = counted  # type: ignore[method-assign]
    return sizes


def test_a_burst_is_split_into_capped_batches_all_in_flight_and_each_callback_stored_once(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """Ten batches' worth at once: no batch over MAX_BATCH, no more than IN_FLIGHT on their way at
    once, every callback answered, stored once; repeats in later batches are still duplicates."""
    spool = Spool(tmp_path / "spool", name="split")
    n = MAX_BATCH * 10 + 3

    async def go() -> tuple[list[AcceptResult], list[AcceptResult], list[int], int]:
        client, accepter = _accepter(redis_url, spool, bound=5.0)
        sizes = _count_commits(accepter)
        most = 0
        commit = accepter.commit

        async def watched(
            items: Sequence[tuple[InvitationEvent, Sequence[str]]], *more: Any
        ) -> list[AcceptResult]:
            nonlocal most
            most = max(most, accepter._running)
            return await commit(items, *more)

        accepter.commit = watched  # type: ignore[method-assign]
        try:
            events = _events(n)
            async with asyncio.timeout(10):
                first = await asyncio.gather(*(accepter.accept(ev, ["t"]) for ev in events))
                # The same invitations again (new ids), all at once: each a duplicate.
                again = await asyncio.gather(*(accepter.accept(ev, ["t"]) for ev in _events(n)))
            return first, again, sizes, most
        finally:
            await client.aclose()
            spool.close()

    first, again, sizes, most = run(go())
    assert first == [ACCEPTED] * n
    assert all(r.status is AcceptStatus.DUPLICATE for r in again), set(again)
    assert max(sizes) == MAX_BATCH and sum(sizes) == 2 * n
    assert 2 <= most <= IN_FLIGHT
    assert redis.zcard("gw:events") == n and redis.zcard("gw:due") == n


def test_while_redis_hangs_one_batch_takes_every_waiting_callback_to_the_spool(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """Capped batches that each wait out the bound would spool only IN_FLIGHT x MAX_BATCH
    callbacks per bound: once Redis is known away, the next batch takes all that wait."""
    spool = Spool(tmp_path / "spool", name="hang")
    n = MAX_BATCH * IN_FLIGHT * 4

    async def go() -> tuple[list[AcceptResult], list[int], int]:
        client, accepter = _accepter(redis_url, spool, bound=0.3)
        sizes = _count_commits(accepter)
        try:
            await accepter.accept(_events(1, start=n)[0], ["t"])  # connected, the script loaded
            redis.execute_command("CLIENT", "PAUSE", "5000", "ALL")
            async with asyncio.timeout(20):
                statuses = await asyncio.gather(*(accepter.accept(ev, ["t"]) for ev in _events(n)))
            lines = len(spool.path.read_bytes().splitlines())
            return statuses, sizes[1:], lines
        finally:
            redis.execute_command("CLIENT", "UNPAUSE")
            await client.aclose()
            spool.close()

    statuses, sizes, lines = run(go())
    assert statuses == [SPOOLED] * n and lines == n
    # The first IN_FLIGHT capped batches time out together; after them, one or two take the rest.
    assert len(sizes) <= IN_FLIGHT + 2, sizes


def test_one_commit_larger_than_a_lua_unpack_stores_every_event_and_delivery_once(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """The ingest Lua writes index entries a command per key and batch, in chunks (Lua's unpack
    takes at most 8,000 values): a drain batch of 600 events x 3 targets crosses several chunks."""
    spool = Spool(tmp_path / "spool", name="big")
    targets = ["t1", "t2", "t3"]

    async def go() -> tuple[list[AcceptResult], list[AcceptResult], list[str]]:
        client, accepter = _accepter(redis_url, spool, bound=5.0)
        try:
            events = [
                make_event(
                    {"invitee": f"+1555{i:07d}", "invitor": "a", "network_id": f"n{i % 2}"},
                    "invitation_created",
                    "query",
                )
                for i in range(600)
            ]
            # The last one repeats the first invitation (another id): a duplicate inside the batch.
            again = make_event(
                {"invitee": "+15550000000", "invitor": "a", "network_id": "n0"}, "invitation_created", "query"
            )
            first = await accepter.commit([(ev, targets) for ev in [*events, again]])
            # A drain repeating the same events stores nothing twice.
            second = await accepter.commit([(ev, targets) for ev in events[:5]])
            return first, second, [ev.id for ev in [*events, again]]
        finally:
            await client.aclose()
            spool.close()

    first, second, ids = run(go())
    assert first[:600] == [ACCEPTED] * 600
    assert first[600] == AcceptResult(AcceptStatus.DUPLICATE, duplicate_of=ids[0])
    assert second == [EXISTS] * 5
    assert redis.zcard("gw:events") == 600
    assert redis.zcard("gw:events:net:n0") == 300 and redis.zcard("gw:events:net:n1") == 300
    assert redis.zcard("gw:due") == 1800
    assert redis.hlen(f"gw:event:{ids[599]}:deliveries") == 3
    assert redis.ttl(f"gw:event:{ids[599]}:deliveries") > 0
    # The duplicate left nothing behind: no event, no deliveries, no index entry.
    assert not redis.exists(f"gw:event:{ids[600]}", f"gw:event:{ids[600]}:deliveries")
    assert redis.zscore("gw:events", ids[600]) is None
    assert redis.hget("gw:counters", "duplicates") == b"1"
    # Per event: the event, its deliveries, its dedupe key; then 3 indexes, due, wake, counters,
    # and the 10-second mark of the last index trim.
    assert redis.dbsize() == 600 * 3 + 3 + 4


def test_a_stored_event_sent_again_gets_what_a_broken_run_left_out_and_nothing_twice(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """A Lua script stopped by an error keeps the writes it made. An event whose key was stored
    but not its deliveries or index entries must still be delivered when its batch comes again
    (a spool drain); a delivery already done or suppressed must not be queued again."""
    spool = Spool(tmp_path / "spool", name="again")
    events = [
        make_event(
            {"invitee": f"+1555000100{i}", "invitor": "a", "network_id": "n"}, "invitation_created", "query"
        )
        for i in range(3)
    ]
    broken, done, whole = events
    # As a run cut short after the event's SET NX: the event only.
    redis.set(f"gw:event:{broken.id}", broken.to_json(), ex=86400)

    async def go() -> tuple[list[AcceptResult], list[AcceptResult]]:
        client, accepter = _accepter(redis_url, spool, bound=5.0)
        try:
            first = await accepter.commit([(done, ["t"]), (whole, ["t"])])
            # `done` was delivered meanwhile (its state changed, its due entry gone).
            redis.hset(f"gw:event:{done.id}:deliveries", "t", '{"status":"delivered"}')
            redis.zrem("gw:due", f"{done.id}-t")
            # (`done` comes back with a second target: an event that has deliveries gets no new
            # ones this way, so a suppressed one cannot slip out through a drain.)
            again = await accepter.commit([(broken, ["t"]), (done, ["t", "t2"]), (whole, ["t"])])
            return first, again
        finally:
            await client.aclose()
            spool.close()

    first, again = run(go())
    assert first == [ACCEPTED, ACCEPTED]
    assert again == [EXISTS, EXISTS, EXISTS]
    due = {m.decode() for m in redis.zrange("gw:due", 0, -1)}
    assert due == {f"{broken.id}-t", f"{whole.id}-t"}  # the broken one completed; done not again
    assert redis.hget(f"gw:event:{broken.id}:deliveries", "t") is not None
    assert redis.ttl(f"gw:event:{broken.id}:deliveries") > 0
    assert redis.zscore("gw:events", broken.id) == broken.received_at_ms
    assert redis.zscore("gw:events:net:n", broken.id) == broken.received_at_ms
    assert redis.hgetall(f"gw:event:{done.id}:deliveries") == {b"t": b'{"status":"delivered"}'}


# Holds the server for ARGV[1] loop turns (TIME is frozen inside a script): another client's slow
# script (a drain's chunk, a worker's claim over many deliveries, a loaded Redis). Every command
# waits behind it, well within the ingest's bound, and none fails.
_BUSY = """
local x = 0
for i = 1, tonumber(ARGV[1]) do x = x + i end
return 1
"""


def test_a_burst_is_answered_within_the_bound_while_redis_is_slow_but_answering(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """Redis answers each call in ~0.1 s (the bound is 1 s): no batch times out, so nothing is
    spooled and `redis_down_since` stays unset. A callback must still be answered (stored or
    spooled) within about the bound, as when one batch took all that waited: capped at
    IN_FLIGHT x MAX_BATCH per round trip, the last of a burst waits ~n/96 round trips instead."""
    spool = Spool(tmp_path / "spool", name="slow")
    bound = 1.0
    n = MAX_BATCH * IN_FLIGHT * 40
    stop = threading.Event()

    t0 = time.perf_counter()
    redis.eval(_BUSY, 0, 2_000_000)
    turns = int(2_000_000 * 0.1 / (time.perf_counter() - t0))  # ~0.1 s of the server's time

    def hog() -> None:
        other = Redis.from_url(redis_url)
        try:
            while not stop.is_set():
                other.eval(_BUSY, 0, turns)
        finally:
            other.close()

    async def go() -> tuple[list[AcceptResult], list[int]]:
        client, accepter = _accepter(redis_url, spool, bound=bound)
        try:
            await accepter.accept(_events(1, start=n)[0], ["t"])  # connected, the script loaded
            batches: list[int] = []  # callbacks per commit, in order
            commit = accepter.commit

            async def counted(items: Any, *rest: Any) -> Any:
                batches.append(len(items))
                return await commit(items, *rest)

            accepter.commit = counted  # type: ignore[method-assign]
            thread = threading.Thread(target=hog, daemon=True)
            thread.start()
            try:
                await asyncio.sleep(0.05)
                async with asyncio.timeout(120):
                    results = await asyncio.gather(*(accepter.accept(ev, ["t"]) for ev in _events(n)))
            finally:
                stop.set()
                await asyncio.to_thread(thread.join)
            return list(results), batches
        finally:
            await client.aclose()
            spool.close()

    statuses, batches = run(go())
    assert set(statuses) <= {ACCEPTED, SPOOLED}
    # Counted in round trips, not seconds (a loaded machine stretches every one of them): capped
    # at MAX_BATCH, the burst takes n / MAX_BATCH = 240 commits; once the oldest callback has
    # waited a quarter of the bound, one batch takes all that waits: a few rounds of IN_FLIGHT.
    assert len(batches) <= 8 * IN_FLIGHT, (len(batches), batches[:20])
    assert sum(batches) == n


def test_targets_chosen_by_an_older_configuration_get_the_new_ones_even_if_another_batch_loaded_it(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """With several batches in flight, the first reply to carry a new configuration version
    installs it; the others see nothing new to install. A callback whose targets were chosen by
    the older configuration must still get the deliveries the new one calls for."""
    spool = Spool(tmp_path / "spool", name="version")
    redis.set("gw:config:version", 7)

    async def go() -> tuple[str, str, AcceptResult, AcceptResult]:
        client, accepter = _accepter(redis_url, spool, bound=5.0)
        accepter.routes = lambda ev: ["t", "u"]  # the configuration of version 7
        try:
            # on_version (from _accepter) says "nothing new": another batch installed 7 already.
            old, new = _events(2)
            chosen_by_6 = await accepter.accept(old, ["t"], 6)
            chosen_by_7 = await accepter.accept(new, ["t"], 7)
            return old.id, new.id, chosen_by_6, chosen_by_7
        finally:
            await client.aclose()
            spool.close()

    old_id, new_id, *statuses = run(go())
    assert statuses == [ACCEPTED, ACCEPTED]
    assert sorted(redis.hkeys(f"gw:event:{old_id}:deliveries")) == [b"t", b"u"]
    assert sorted(redis.hkeys(f"gw:event:{new_id}:deliveries")) == [b"t"]  # chosen by 7: as it is

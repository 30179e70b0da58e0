"""What a 204 promises (GATEWAY_DURABILITY): the wait after each batch, and what the server can give.

* memory: the batch's script call is all (no wait is sent): the invitation is in Redis' memory,
  and in its append-only file as far as Redis' own `appendfsync` gets it to disk.
* disk: `WAITAOF 1 0 T` right behind the script call (Redis 7.2+, Valkey): Redis answers once
  its append-only file is fsync'd past the batch's writes.
* replica: `WAIT N T` right behind it: Redis answers once N replicas acknowledged them.

`DurableScripts` wraps the accept step's script client (FastRedis, or redis-py for Sentinel): each
`evalsha` sends its wait on the same connection, pipelined (gateway/fastredis.py shares one wait
between the batches of the same moment), and raises `NotDurable` unless the wait confirms the
level. The accept step then spools the batch (fsync'd) instead of answering from an unconfirmed
write; its events may then be in Redis as well, and the spool's drain finds them there
(`exists`) and stores nothing twice. Drains go through the same wrapper, so a drain batch is
confirmed too, or the spool file stays.

`check_server` tells whether the server can give the level at all (append-only file on and
fsync'd on every write, WAITAOF known, enough replicas connected): at startup (one ERROR line
naming the setting), in /readyz and in /metrics (`DurabilityState`). A server that cannot never
gets a silent downgrade: every batch's wait fails, so every callback is spooled (fsync'd,
answered 204) until it can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from gateway.exceptions import NotDurable
from gateway.fastredis import FastRedis, Script, ScriptsViaRedisPy
from gateway.settings import Durability

# The wait's own timeout, as a share of GATEWAY_SPOOL_AFTER_MS: Redis answers "not confirmed"
# before the accept step's bound cuts the connection (which would spool every batch on it).
WAIT_SHARE = 0.75


def wait_command(level: Durability, replicas: int, timeout_ms: int) -> tuple[Any, ...] | None:
    """The command sent behind each batch's script call; None for memory (nothing is sent)."""
    if level is Durability.DISK:
        return ("WAITAOF", 1, 0, timeout_ms)
    if level is Durability.REPLICA:
        return ("WAIT", replicas, timeout_ms)
    return None


def confirmed(level: Durability, replicas: int, reply: Any) -> str | None:
    """None when the wait's reply confirms the level, else what it confirmed."""
    if isinstance(reply, Exception):
        # Refused: the append-only file is off, the command unknown (Redis < 7.2), an ACL.
        return f"the wait was refused: {reply}"
    if level is Durability.DISK:
        local = int(reply[0]) if isinstance(reply, list | tuple) and reply else 0
        return None if local >= 1 else "the append-only file was not fsync'd in time (WAITAOF)"
    if level is Durability.REPLICA:
        got = int(reply)
        if got >= replicas:
            return None
        return f"{got} of {replicas} replica(s) acknowledged in time (WAIT)"
    return None


@dataclass(slots=True)
class DurabilityState:
    """The level asked for, and why it is not being given now (None: it is)."""

    level: Durability
    replicas: int = 1
    server_problem: str | None = None  # check_server's answer, from startup on
    wait_problem: str | None = None  # the last wait's, cleared by one that confirms

    @property
    def problem(self) -> str | None:
        return self.server_problem or self.wait_problem

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def shown(self) -> str:
        """The setting as an operator writes it, for logs and /readyz."""
        if self.level is Durability.REPLICA:
            return f"GATEWAY_DURABILITY=replica (GATEWAY_DURABILITY_REPLICAS={self.replicas})"
        return f"GATEWAY_DURABILITY={self.level.value}"

    def waited(self, problem: str | None) -> None:
        self.wait_problem = problem


class DurableScripts:
    """The accept step's script client, with the level's wait behind every script call."""

    def __init__(self, client: FastRedis | ScriptsViaRedisPy, state: DurabilityState, bound: float) -> None:
        self.client = client
        self.state = state
        self.bound = bound
        timeout_ms = max(1, int(bound * 1000 * WAIT_SHARE))
        wait = wait_command(state.level, state.replicas, timeout_ms)
        if wait is None:
            raise ValueError("memory durability sends no wait: use the client itself")
        self.wait = wait

    async def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply once the wait confirms it; NotDurable (the batch is spooled) if not."""
        reply, answer = await self.client.evalsha_then_wait(script, keys, args, self.wait)
        self._judge(answer)
        return reply

    async def ping(self) -> bool:
        """Redis answers and confirms what it holds at the level (the spool's drain asks first)."""
        await self.client.ping()
        try:
            answer = await self.client.execute(*self.wait)
        except ResponseError as exc:
            answer = exc
        self._judge(answer)
        return True

    def _judge(self, answer: Any) -> None:
        """Record what the wait confirmed; NotDurable unless it is the level."""
        problem = confirmed(self.state.level, self.state.replicas, answer)
        self.state.waited(problem)
        if problem is not None:
            raise NotDurable(f"{self.state.shown}: {problem}")

    async def aclose(self) -> None:
        await self.client.aclose()


async def check_server(aio: Any, level: Durability, replicas: int) -> str | None:
    """What the server lacks to give `level` (None: nothing), asked without changing anything.

    disk: `WAITAOF 1 0 1` itself: Redis before 7.2 does not know it, and it is refused when the
    append-only file is off or the server is a replica; then `CONFIG GET appendfsync` where the
    ACL allows it (only `always` makes the waits both quick and sound). replica: INFO
    replication's role and its replicas whose link is online. Redis unreachable: raises (the
    caller keeps its last answer).
    """
    if level is Durability.DISK:
        try:
            await aio.execute_command("WAITAOF", 1, 0, 1)
        except ResponseError as exc:
            return _waitaof_refused(str(exc))
        try:
            policy = (await aio.config_get("appendfsync")).get("appendfsync")
        except ResponseError:
            return None  # CONFIG not allowed (a hosted Redis): the waits will tell
        if policy is not None and str(policy) != "always":
            return EVERYSEC_PROBLEM.format(policy=policy)
        return None
    if level is Durability.REPLICA:
        info = await aio.info("replication")
        role = str(info.get("role", ""))
        if role != "master":
            return f"the server is a {role or 'replica'}, not a primary (INFO replication)"
        online = sum(
            1
            for key, value in info.items()
            if str(key).startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )
        if online < replicas:
            return f"{online} replica(s) connected and online, {replicas} asked (INFO replication)"
        return None
    return None


# With `everysec`, each WAITAOF waits for the next once-a-second fsync; and Redis 7.4 (before the
# fix of redis/redis#13793) and Valkey 8 (8.1.8 at least: found with tests/e2e/test_durability.py's
# held fsync) can even confirm one before the fsync, when the file has unsynced writes less than a
# second old.
EVERYSEC_PROBLEM = (
    "its appendfsync is {policy}, not always: each wait lasts until the next once-a-second fsync, "
    "and some Redis and Valkey versions confirm it before that fsync (redis/redis#13793)"
)


def _waitaof_refused(text: str) -> str:
    lowered = text.lower()
    if "unknown command" in lowered:
        return "the server does not know WAITAOF (Redis 7.2 or newer, or Valkey, has it)"
    if "appendonly" in lowered or "numlocal" in lowered:
        return "its append-only file is off (appendonly no)"
    if "replica" in lowered:
        return "the server is a replica, not a primary"
    if "noperm" in lowered:
        return f"the ACL user may not run WAITAOF ({text})"
    return f"WAITAOF was refused: {text}"

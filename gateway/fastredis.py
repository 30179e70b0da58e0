"""A lean asyncio Redis client for hot scripts: one connection, RESP by hiredis, nothing else.

redis.asyncio runs its connection pool, retry, timeout and observability layers on every
command: about 170 µs of CPU per exchange on the ingest's machine, against about 45 µs for the
bare exchange. The ingest sends one EVALSHA per batch of callbacks, so below saturation (small
batches) that difference is most of its CPU per callback; the delivery worker's claims,
completions and hand-backs (one each per group of deliveries) use it too. This client keeps
only the exchange:

* one connection (asyncio Protocol), opened on first use and again after any error: requests
  are pipelined on it and answered in order;
* commands packed by `hiredis.pack_command`, replies parsed by `hiredis.Reader`;
* `evalsha` loads the script by EVAL when Redis answers NOSCRIPT (a restart, SCRIPT FLUSH);
* no timeout of its own: callers bound each call with `asyncio.timeout()`. A call cancelled
  while it waits for its reply closes the connection (its reply may still come, and Redis is
  slow or gone), so the next call starts on a new one;
* the URL is read by redis-py's own `parse_url`: host, port, db, username and password, unix
  sockets (`unix://`), TLS (`rediss://`, with the SSL context redis-py would build from the same
  `ssl_*` query parameters), `socket_connect_timeout` and `client_name`.

It knows no key names: the callers' scripts do (gateway/store/).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

_INCOMPLETE = object()  # hiredis' answer when the buffer holds no whole reply yet


class FastRedisError(RedisError):
    """Redis answered an error, or the connection failed (redis-py's classes, for the callers)."""


class ReplyError(FastRedisError, ResponseError):
    """An error reply (`-ERR ...`, `-NOSCRIPT ...`, a Lua error)."""


class ConnectionLost(FastRedisError, RedisConnectionError):
    """The connection closed, or could not be opened, before the reply came."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, from a redis://, rediss:// or unix:// URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    ssl: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    client_name: str | None = None
    connect_timeout: float = 2.0

    @classmethod
    def from_url(cls, url: str, connect_timeout: float = 2.0) -> Endpoint:
        kwargs: dict[str, Any] = dict(parse_url(url))
        connection_class = kwargs.pop("connection_class", None)
        context = None
        if connection_class is SSLConnection:
            # The context redis-py would use for this URL (ssl_cert_reqs, ssl_ca_certs, ...).
            options = {k: v for k, v in kwargs.items() if k.startswith("ssl_")}
            context = SSLConnection(**options).ssl_context.get()
        return cls(
            host=str(kwargs.get("host", "localhost")),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path") if connection_class is UnixDomainSocketConnection else None,
            ssl=context,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            db=int(kwargs.get("db", 0) or 0),
            client_name=kwargs.get("client_name"),
            connect_timeout=float(kwargs.get("socket_connect_timeout", connect_timeout)),
        )

    def handshake(self) -> list[tuple[Any, ...]]:
        """The commands a new connection sends first, as redis-py does (AUTH, SELECT, SETNAME)."""
        commands: list[tuple[Any, ...]] = []
        if self.password is not None:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        if self.client_name:
            commands.append(("CLIENT", "SETNAME", self.client_name))
        return commands


class Script:
    """A Lua script and its SHA1, as EVALSHA names it."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class _Connection(asyncio.Protocol):
    """One Redis connection: requests written in order, replies matched to them in order."""

    def __init__(self, decode: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        if decode:
            self.reader = hiredis.Reader(notEnoughData=_INCOMPLETE, encoding="utf-8")
        else:
            self.reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.lost = False
        # The durability waits (send_then_wait): the one on its way, and those who need the next.
        self.wait_sent: asyncio.Future[Any] | None = None
        self.next_wait: list[asyncio.Future[Any]] = []
        self.next_wait_command = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A peer gone without a word (a dropped NAT entry) is noticed eventually.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        try:
            while True:
                reply = reader.gets()
                if reply is _INCOMPLETE:
                    return
                future = waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (IndexError, hiredis.ProtocolError) as exc:
            # A reply nobody asked for, or bytes that are not RESP: nothing can be trusted.
            self.close(ConnectionLost(f"bad reply stream from Redis ({type(exc).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def _fail(self, error: Exception) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self, error: Exception | None = None) -> None:
        self._fail(error or ConnectionLost("connection to Redis closed"))
        if self.transport is not None:
            self.transport.abort()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one command; the future of its reply."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectionLost("connection to Redis lost")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(packed)
        return future

    async def request(self, packed: bytes) -> Any:
        future = self.send(packed)
        try:
            return await future
        except asyncio.CancelledError:
            # Timed out (or shut down) mid-exchange: Redis is slow or gone; start afresh next time.
            self.close()
            raise

    async def request_then_wait(self, packed: bytes, wait: bytes) -> tuple[Any, Any]:
        """Send a write, then a WAIT or WAITAOF covering it; both replies.

        Redis serves a client's commands in order and holds back everything after a WAIT until
        it returns, so a wait behind every write of a pipelined connection would cost a fsync
        (or a replica round trip) per write. Instead one wait is on its way at a time: a write
        sent while one is pending waits for the next, sent as soon as the pending one returns,
        which covers every write sent meanwhile (WAIT and WAITAOF cover all of a connection's
        earlier writes). A lone write has its wait right behind it: one round trip.
        """
        reply = self.send(packed)
        if self.wait_sent is None:
            confirmed = self._send_wait(wait)
        else:
            confirmed = asyncio.get_running_loop().create_future()
            self.next_wait.append(confirmed)
            self.next_wait_command = wait
        try:
            answer = await reply
        except BaseException:
            # The connection is gone, or this call timed out (then it goes, as in `request`):
            # the wait has nothing left to confirm, and nobody is to be told its outcome.
            confirmed.cancel()
            self.close()
            raise
        try:
            return answer, await confirmed
        except asyncio.CancelledError:
            self.close()
            raise

    def _send_wait(self, wait: bytes) -> asyncio.Future[Any]:
        sent = self.send(wait)
        self.wait_sent = sent
        sent.add_done_callback(self._wait_returned)
        return sent

    def _wait_returned(self, sent: asyncio.Future[Any]) -> None:
        self.wait_sent = None
        waiters, self.next_wait = self.next_wait, []
        failure: BaseException | None = None
        if sent.cancelled() or self.lost:
            failure = ConnectionLost("connection to Redis lost")
        else:
            failure = sent.exception()  # (also marks it retrieved when its caller is gone)
        if not waiters:
            return
        if failure is None:
            try:
                following = self._send_wait(self.next_wait_command)
            except ConnectionLost as exc:
                failure = exc
            else:
                following.add_done_callback(lambda done: _pass_on(done, waiters))
                return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(failure)


def _pass_on(done: asyncio.Future[Any], waiters: list[asyncio.Future[Any]]) -> None:
    """The outcome of one wait to every caller it covers."""
    for waiter in waiters:
        if waiter.done():
            continue
        if done.cancelled():
            waiter.set_exception(ConnectionLost("connection to Redis lost"))
        elif (exc := done.exception()) is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())


class FastRedis:
    """A single-connection client for a few hot commands (see the module's docstring)."""

    def __init__(self, url: str, connect_timeout: float = 2.0, decode: bool = False) -> None:
        self.endpoint = Endpoint.from_url(url, connect_timeout)
        # Bulk strings as str, decoded (UTF-8) by hiredis in C: the delivery engine's claims carry
        # four strings per delivery, cheaper decoded there than one by one in Python.
        self.decode = decode
        self._conn: _Connection | None = None
        self._lock: asyncio.Lock | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one connect at a time; those waiting use its connection
            conn = self._conn
            if conn is None or conn.lost:
                conn = self._conn = await self._connect()
        return conn

    async def _connect(self) -> _Connection:
        ep = self.endpoint
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(ep.connect_timeout):
                factory = functools.partial(_Connection, self.decode)
                if ep.path is not None:
                    _, conn = await loop.create_unix_connection(factory, ep.path)
                else:
                    _, conn = await loop.create_connection(
                        factory, ep.host, ep.port, ssl=ep.ssl, server_hostname=ep.host if ep.ssl else None
                    )
                try:
                    for command in ep.handshake():
                        reply = await conn.request(hiredis.pack_command(command))
                        if isinstance(reply, hiredis.ReplyError):
                            raise ReplyError(f"{command[0]} refused: {reply}")
                except BaseException:
                    conn.close()
                    raise
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to Redis: {type(exc).__name__}: {exc}") from exc
        return conn

    async def execute(self, *args: Any) -> Any:
        """Send one command; its reply (bytes, int, list, None). Raises ReplyError or ConnectionLost."""
        conn = await self._connection()
        reply = await conn.request(hiredis.pack_command(args))
        if isinstance(reply, hiredis.ReplyError):
            raise ReplyError(str(reply))
        return reply

    async def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a script by its SHA1; when Redis does not have it yet, send it in full (EVAL)."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.text, len(keys), *keys, *args)

    async def evalsha_then_wait(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any], wait: Sequence[Any]
    ) -> tuple[Any, Any]:
        """`evalsha`, then `wait` (a WAIT or WAITAOF) pipelined behind it; both replies.

        The script's error is raised; the wait's is returned (a ReplyError) for the caller to
        tell apart. Waits are shared between the calls of the moment (`_Connection.request_then_wait`).
        """
        packed_wait = hiredis.pack_command(tuple(wait))
        conn = await self._connection()
        reply, confirmed = await conn.request_then_wait(
            hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)), packed_wait
        )
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            conn = await self._connection()
            reply, confirmed = await conn.request_then_wait(
                hiredis.pack_command(("EVAL", script.text, len(keys), *keys, *args)), packed_wait
            )
        if isinstance(reply, hiredis.ReplyError):
            raise ReplyError(str(reply))
        if isinstance(confirmed, hiredis.ReplyError):
            confirmed = ReplyError(str(confirmed))
        return reply, confirmed

    async def ping(self) -> bool:
        return bool(await self.execute("PING") in (b"PONG", "PONG"))

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class ScriptsViaRedisPy:
    """The same calls through a redis.asyncio client, for URLs FastRedis does not speak (Sentinel).

    Sentinel finds the master at connect time and follows a failover: redis-py does that, and a
    deployment with Sentinel trades the lean client's speed for it.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    async def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(script.text, len(keys), *keys, *args)

    async def evalsha_then_wait(
        self, script: Script, keys: Sequence[Any], args: Sequence[Any], wait: Sequence[Any]
    ) -> tuple[Any, Any]:
        """The script, then `wait` (a WAIT or WAITAOF) on the same connection: one round trip.

        Each call takes a connection of the pool, so calls of the same moment do not queue behind
        each other's wait (one fsync of Redis' event loop covers them all).
        """
        for command in ("EVALSHA", "EVAL"):
            async with self.client.pipeline(transaction=False) as pipe:
                body = script.sha if command == "EVALSHA" else script.text
                pipe.execute_command(command, body, len(keys), *keys, *args)
                pipe.execute_command(*wait)
                reply, confirmed = await pipe.execute(raise_on_error=False)
            if not isinstance(reply, NoScriptError):
                break
        if isinstance(reply, Exception):
            raise reply
        return reply, confirmed  # (the wait's error, if any, as FastRedis returns it)

    async def execute(self, *args: Any) -> Any:
        return await self.client.execute_command(*args)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def aclose(self) -> None:
        """The redis.asyncio client is closed by its owner."""


class ScriptClient(Protocol):
    """What the accept step runs its script through: FastRedis, ScriptsViaRedisPy, or either
    wrapped with a durability wait (gateway/ingest/durable.py)."""

    async def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


def script_client(
    url: str, aio: Any, connect_timeout: float = 2.0, decode: bool = False
) -> FastRedis | ScriptsViaRedisPy:
    """The client for the hot scripts: FastRedis, or `aio` for a Sentinel URL (whose replies are
    as `aio` gives them: `decode` applies to FastRedis only)."""
    if "+sentinel://" in url:
        return ScriptsViaRedisPy(aio)
    return FastRedis(url, connect_timeout=connect_timeout, decode=decode)

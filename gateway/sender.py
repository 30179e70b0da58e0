"""The HTTP client of the delivery worker: aiohttp, chosen by measurement (bench/http_clients.py).

One event loop and one connection pool per worker process, reused across jobs: an RQ job is a
sync function, so each send runs the loop until that request is done. A forked process (RQ's
fork-per-job Worker) notices the new pid and builds its own loop and pool.

No redirects are followed, the environment's proxies are ignored, a total deadline bounds every
request, only the first bytes of a response are read, and every address connected to is vetted
by `gateway.netguard` inside the resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from gateway import __version__
from gateway.netguard import AddressNotAllowed, check_address

log = logging.getLogger("gateway.sender")

USER_AGENT = f"invitation-gateway/{__version__}"
RESPONSE_CAP = 512  # bytes of a response body that are read and kept in the attempt record


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout: float


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    latency_ms: float


class SendError(Exception):
    """The request got no HTTP response. `blocked` marks an address the policy refused."""

    def __init__(self, reason: str, latency_ms: float, blocked: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.latency_ms = latency_ms
        self.blocked = blocked


class _VettingResolver(AbstractResolver):
    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = []
        refusal: AddressNotAllowed | None = None
        for r in results:
            try:
                check_address(r["host"], self._sender.allow_private)
            except AddressNotAllowed as exc:
                refusal = exc
            else:
                allowed.append(r)
        if not allowed:
            raise refusal or AddressNotAllowed(f"{host} resolved to no address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class Sender:
    """Sends one request at a time from sync code, over a pool kept for the process' life."""

    def __init__(self, allow_private: bool = False, response_cap: int = RESPONSE_CAP) -> None:
        self.allow_private = allow_private
        self.response_cap = response_cap
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    def _ensure(self) -> tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]:
        if self._pid != os.getpid() or self._loop is None or self._session is None or self._loop.is_closed():
            # A fork inherited the parent's loop and sockets: leave them alone, start afresh.
            self._loop = asyncio.new_event_loop()
            self._session = self._loop.run_until_complete(self._open())
            self._pid = os.getpid()
        return self._loop, self._session

    async def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=_VettingResolver(self), limit=100, ttl_dns_cache=10)
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no proxies or netrc from the environment
            cookie_jar=aiohttp.DummyCookieJar(),  # targets never share cookies
            auto_decompress=False,  # we keep raw first bytes; no decompression bombs
            # identity: the recorded first bytes of a response are readable text
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    def send(self, request: OutboundRequest) -> Response:
        loop, session = self._ensure()
        try:
            return loop.run_until_complete(self._send(session, request))
        except SendError:
            raise
        except BaseException:
            # Interrupted mid-request (RQ's job timeout fires as an exception inside the loop):
            # the loop's state is unknown, so the next send starts with a fresh loop and pool.
            self.close()
            raise

    async def _send(self, session: aiohttp.ClientSession, request: OutboundRequest) -> Response:
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 2)

        url = URL(request.url, encoded=True)
        if url.host is not None and _is_ip_literal(url.host):
            try:
                check_address(url.host, self.allow_private)
            except AddressNotAllowed as exc:
                raise SendError(str(exc), elapsed(), blocked=True) from None
        timeout = aiohttp.ClientTimeout(total=request.timeout, connect=min(request.timeout, 5.0))
        try:
            async with session.request(
                request.method,
                url,
                headers=list(request.headers),
                data=request.body,
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                body = await _read_capped(resp, self.response_cap)
                return Response(resp.status, dict(resp.headers), body, elapsed())
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressNotAllowed):
                raise SendError(str(exc.os_error), elapsed(), blocked=True) from None
            raise SendError(f"cannot connect: {exc.os_error.strerror or exc.os_error}", elapsed()) from None
        except TimeoutError:
            raise SendError(f"timed out after {request.timeout:g} s", elapsed()) from None
        except aiohttp.ClientResponseError as exc:
            # Not str(exc): it quotes the URL, which can hold a secret or an invitee's number.
            raise SendError(f"{type(exc).__name__}: {exc.status} {exc.message}", elapsed()) from None
        except aiohttp.ClientError as exc:
            raise SendError(type(exc).__name__, elapsed()) from None

    def close(self) -> None:
        """Close the pool and the loop (best effort: after an interruption they may be broken)."""
        loop, session, self._loop, self._session = self._loop, self._session, None, None
        if loop is None or self._pid != os.getpid() or loop.is_closed():
            return
        try:
            if session is not None and not loop.is_running():
                loop.run_until_complete(session.close())
        except Exception:
            log.debug("closing the HTTP session failed", exc_info=True)
        finally:
            if not loop.is_running():
                loop.close()


def _is_ip_literal(host: str) -> bool:
    """As aiohttp decides (any `:` means IPv6, zone ids included): such hosts skip the resolver."""
    if ":" in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total < cap:
        chunk = await resp.content.read(cap - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)

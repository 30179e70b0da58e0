"""The HTTP client of the delivery worker: aiohttp, chosen by measurement (bench/http_clients.py).

One connection pool per worker process, on the worker's one event loop, reused across jobs and
shared by every delivery in flight. No redirects are followed, the environment's proxies are
ignored (a target's `proxy`, or HTTPS_PROXY, is passed explicitly), a total deadline bounds
every request, only the first bytes of a response are read, and every address connected to is
vetted by `gateway.delivery.netguard` inside the resolver.

Through a proxy the proxy resolves the target, so the target's address is vetted here before
the request (the proxy may resolve it again: a rebinding window that only a direct connection
closes), and the proxy's own address is the operator's choice and is not vetted.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from gateway import __version__
from gateway.delivery.netguard import AddressNotAllowed, AllowPrivate, check_address
from gateway.delivery.request import OutboundRequest, Response

log = logging.getLogger("gateway.sender")

USER_AGENT = f"invitation-gateway/{__version__}"
RESPONSE_CAP = 512  # bytes of a response body that are read and kept in the attempt record


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
        if host in self._sender.proxy_hosts:
            return results  # the operator's proxy, wherever it is
        return self._sender.vet(host, results)

    async def close(self) -> None:
        await self._inner.close()


class Sender:
    """Sends requests concurrently over one pool; `open` and every call run on one event loop."""

    def __init__(
        self, allow_private: AllowPrivate = False, response_cap: int = RESPONSE_CAP, limit: int = 256
    ) -> None:
        self.allow_private: AllowPrivate = allow_private
        self.response_cap = response_cap
        self.proxy_hosts: set[str] = set()
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._resolver: _VettingResolver | None = None
        # Per IP literal and policy: the refusal, or None when allowed (parsed once, not per send).
        self._literals: dict[tuple[str, AllowPrivate], str | None] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        # Per URL string: (parsed URL, refusal of an IP-literal host, is an IP literal).
        self._urls: dict[str, tuple[URL, str | None, bool]] = {}
        self._allowed_private = allow_private
        self._proxies: dict[str, URL] = {}

    async def open(self) -> None:
        if self._session is not None:
            return
        self._resolver = _VettingResolver(self)
        connector = aiohttp.TCPConnector(resolver=self._resolver, limit=self._limit, ttl_dns_cache=10)
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no proxies or netrc from the environment
            cookie_jar=aiohttp.DummyCookieJar(),  # targets never share cookies
            auto_decompress=False,  # we keep raw first bytes; no decompression bombs
            # identity: the recorded first bytes of a response are readable text
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _literal_refusal(self, host: str) -> str | None:
        """Why an IP-literal host is refused (None: allowed, or not a literal: the resolver checks)."""
        key = (host, self.allow_private)
        if key not in self._literals:
            if len(self._literals) > 4096:
                self._literals.clear()
            refusal = None
            if _is_ip_literal(host):
                try:
                    check_address(host, self.allow_private)
                except AddressNotAllowed as exc:
                    refusal = str(exc)
            self._literals[key] = refusal
        return self._literals[key]

    def vet(self, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
        allowed = []
        refusal: AddressNotAllowed | None = None
        for r in results:
            try:
                check_address(r["host"], self.allow_private)
            except AddressNotAllowed as exc:
                refusal = exc
            else:
                allowed.append(r)
        if not allowed:
            raise refusal or AddressNotAllowed(f"{host} resolved to no address")
        return allowed

    def _target(self, url: str) -> tuple[URL, str | None, bool]:
        """The parsed URL, why its host is refused (None: allowed or not an IP literal), and
        whether it is an IP literal: worked out once per URL, not per send."""
        found = self._urls.get(url)
        if found is None:
            if len(self._urls) > 4096:
                self._urls.clear()
            parsed = URL(url, encoded=True)
            host = parsed.host
            refusal = self._literal_refusal(host) if host is not None else None
            found = self._urls[url] = (parsed, refusal, host is not None and _is_ip_literal(host))
        return found

    async def send(self, request: OutboundRequest) -> Response:
        session = self._session
        if session is None:
            await self.open()
            session = self._session
        assert session is not None and self._resolver is not None
        started = time.perf_counter()
        if self._allowed_private is not self.allow_private:
            self._urls.clear()  # the policy changed: every refusal is worked out again
            self._allowed_private = self.allow_private
        url, refusal, literal = self._target(request.url)
        proxy: URL | None = None
        if refusal is not None:
            raise SendError(refusal, _ms_since(started), blocked=True)
        if request.proxy:
            if url.host is not None and not literal:
                # The proxy resolves the target: vet what it would connect to, here.
                try:
                    infos = await self._resolver._inner.resolve(url.host, url.port or 0, socket.AF_UNSPEC)
                    self.vet(url.host, infos)
                except AddressNotAllowed as exc:
                    raise SendError(str(exc), _ms_since(started), blocked=True) from None
                except OSError as exc:
                    raise SendError(
                        f"cannot resolve the target: {exc.strerror or type(exc).__name__}", _ms_since(started)
                    ) from None
            proxy = self._proxies.get(request.proxy)
            if proxy is None:
                proxy = self._proxies[request.proxy] = URL(request.proxy)
            if proxy.host:
                self.proxy_hosts.add(proxy.host)
        timeout = self._timeouts.get(request.timeout)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=request.timeout, connect=min(request.timeout, 5.0))
            self._timeouts[request.timeout] = timeout
        try:
            async with session.request(
                request.method,
                url,
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                timeout=timeout,
                proxy=proxy,
            ) as resp:
                cap = request.response_cap or self.response_cap
                length = resp.content_length
                if length is not None and length <= cap:
                    body = await resp.read()  # the usual short answer: one await, connection kept
                else:
                    body = await _read_capped(resp, cap)
                # The headers as aiohttp parsed them (read-only, case-insensitive): no copy.
                return Response(resp.status, resp.headers, body, _ms_since(started))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressNotAllowed):
                raise SendError(str(exc.os_error), _ms_since(started), blocked=True) from None
            raise SendError(
                f"cannot connect: {exc.os_error.strerror or exc.os_error}", _ms_since(started)
            ) from None
        except TimeoutError:
            raise SendError(f"timed out after {request.timeout:g} s", _ms_since(started)) from None
        except aiohttp.ClientResponseError as exc:
            # Not str(exc): it quotes the URL, which can hold a secret or an invitee's number.
            raise SendError(f"{type(exc).__name__}: {exc.status} {exc.message}", _ms_since(started)) from None
        except aiohttp.ClientError as exc:
            raise SendError(type(exc).__name__, _ms_since(started)) from None


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


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
    if resp.content_length is not None and resp.content_length <= cap:
        return await resp.read()  # the usual short answer: one await, the connection kept
    chunks: list[bytes] = []
    total = 0
    while total < cap:
        chunk = await resp.content.read(cap - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)

"""The HTTP client of the delivery worker: pyreqwest (Rust's reqwest), chosen by measurement.

bench/http_clients.py and bench/delivery_instructions.py measured it against aiohttp, the
client this worker used before: about a third of aiohttp's CPU per request, 32 requests in
flight on one event loop (HTTP/1.1 and the response read in Rust, not in Python).

Every delivery in flight shares the worker's clients and their connection pools, on the worker's
one event loop, across jobs. No redirects are followed, the environment's proxies are ignored (a
target's `proxy`, or HTTPS_PROXY, is passed explicitly), a total deadline bounds every request,
only the first bytes of a response are read, and no cookie or compressed body is accepted.

Every address connected to is vetted by `gateway.config.addresses`. An IP literal is checked
as it is. A name is resolved here, its addresses checked, and the request goes through a client
pinned to an allowed address (reqwest's `resolve` override): the client never resolves the name
itself, so a DNS answer that changes between the check and the connect (rebinding) cannot slip
through. A pin lasts `DNS_TTL` seconds; one client per name, as aiohttp kept one pool per host.
reqwest is given one address per name: when a connection to it fails, the name's next vetted
address is pinned for the sends that follow.

Through a proxy the proxy resolves the target, so the target's address is vetted here before the
request (the proxy may resolve it again: a rebinding window that only a direct connection
closes), and the proxy's own address is the operator's choice and is not vetted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, PyreqwestError, RequestTimeoutError
from pyreqwest.http import Url
from pyreqwest.proxy import ProxyBuilder

from gateway import __version__
from gateway.config.addresses import AddressNotAllowed, AllowPrivate, check_address
from gateway.delivery.request import OutboundRequest, Response

log = logging.getLogger("gateway.sender")

USER_AGENT = f"invitation-gateway/{__version__}"
RESPONSE_CAP = 512  # bytes of a response body that are read and kept in the attempt record
DNS_TTL = 10.0  # seconds a name's vetted address is used before it is resolved again
CONNECT_TIMEOUT = timedelta(seconds=5)
RETIRED_KEPT = 32  # clients of names whose address changed, kept open for their requests in flight


class SendError(Exception):
    """The request got no HTTP response. `blocked` marks an address the policy refused."""

    def __init__(self, reason: str, latency_ms: float, blocked: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.latency_ms = latency_ms
        self.blocked = blocked


@dataclass(slots=True)
class _Pin:
    address: str
    client: Client
    expires: float  # time.monotonic()
    addresses: tuple[str, ...] = ()  # every vetted address of the name, in resolver order


@dataclass(frozen=True, slots=True)
class _Target:
    url: Url | None  # as reqwest parsed it: the very object the request is built from
    host: str | None  # reqwest's host: a domain (ASCII, lowercase, punycode) or an IP literal
    port: int
    refusal: str | None  # why the URL or its IP-literal host is refused (None: allowed, or a name)
    literal: bool


class Sender:
    """Sends requests concurrently; `open`, `close` and every `send` run on one event loop."""

    def __init__(
        self, allow_private: AllowPrivate = False, response_cap: int = RESPONSE_CAP, limit: int = 256
    ) -> None:
        self.allow_private: AllowPrivate = allow_private
        self.response_cap = response_cap
        self._limit = limit
        self._direct: Client | None = None  # IP-literal hosts
        self._pins: dict[str, _Pin] = {}  # per name: the client pinned to its vetted address
        self._resolving: dict[str, asyncio.Future[_Pin]] = {}
        self._retired: list[Client] = []
        self._proxied: dict[str, Client] = {}  # per proxy URL
        self._timeouts: dict[float, timedelta] = {}
        # Per URL string: host, port, refusal, literal (parsed once, not per send).
        self._urls: dict[str, _Target] = {}
        self._literals: dict[tuple[str, AllowPrivate], str | None] = {}
        self._policy: AllowPrivate = allow_private  # the policy the caches above were made with
        self._closed = False

    def _client(self, pin: tuple[str, str] | None = None, proxy: str | None = None) -> Client:
        builder = (
            ClientBuilder()
            .no_proxy()  # nothing from the environment; a target's proxy is added below
            .follow_redirects(False)
            .gzip(False)  # the first bytes of a response are kept as they came: no decompression
            .brotli(False)
            .deflate(False)
            .zstd(False)
            .user_agent(USER_AGENT)
            # identity: the recorded first bytes of a response are readable text
            .default_headers({"Accept-Encoding": "identity"})
            .connect_timeout(CONNECT_TIMEOUT)
            .max_connections(self._limit)
        )
        if pin is not None:
            builder = builder.resolve(pin[0], pin[1], 0)
        if proxy is not None:
            builder = builder.proxy(ProxyBuilder.all(proxy))
        return builder.build()

    async def open(self) -> None:
        if self._direct is None:
            self._closed = False
            self._direct = self._client()

    async def close(self) -> None:
        clients = [self._direct, *(p.client for p in self._pins.values()), *self._retired]
        clients += self._proxied.values()
        self._direct = None
        self._pins.clear()
        self._retired.clear()
        self._proxied.clear()
        self._closed = True
        for client in clients:
            if client is not None:
                await client.close()

    def _literal_refusal(self, host: str) -> str | None:
        """Why an IP-literal host is refused (None: allowed, or not a literal)."""
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

    def vet(self, host: str, addresses: list[str]) -> list[str]:
        """The addresses `host` resolved to that the policy allows; AddressNotAllowed if none."""
        allowed = []
        refusal: AddressNotAllowed | None = None
        for address in addresses:
            try:
                check_address(address, self.allow_private)
            except AddressNotAllowed as exc:
                refusal = exc
            else:
                allowed.append(address)
        if not allowed:
            raise refusal or AddressNotAllowed(f"{host} resolved to no address")
        return allowed

    def _target(self, url: str) -> _Target:
        """Host, port and the refusal of an IP-literal host: worked out once per URL, not per send."""
        found = self._urls.get(url)
        if found is None:
            if len(self._urls) > 4096:
                self._urls.clear()
            found = self._urls[url] = self._parse(url)
        return found

    def _parse(self, url: str) -> _Target:
        # urlsplit's host first: it refuses what reqwest would also refuse (zone ids) as blocked.
        split_host = urlsplit(url).hostname
        if split_host is not None and _is_ip_literal(split_host):
            refusal = self._literal_refusal(split_host)
            if refusal is not None:
                return _Target(None, None, 0, refusal, True)
        # Then the host as reqwest itself sees it (UTS 46, percent-decoding, backslashes, IPv4
        # shorthand): the one vetted, resolved and pinned, so the pin always matches and
        # reqwest never resolves a name itself. The request is built from this same Url.
        try:
            parsed = Url(url)
        except ValueError as exc:
            why = str(exc)  # the url crate's fixed wording ("invalid port number"), else the type
            if not why or "://" in why or len(why) > 80 or urlsplit(url).netloc in why:
                why = type(exc).__name__
            return _Target(None, None, 0, f"the URL is not valid: {why}", False)
        if parsed.username or parsed.password is not None:
            return _Target(None, None, 0, "the URL carries user:password@", False)
        port = parsed.port_or_known_default or 0
        domain = parsed.domain
        if domain is not None:
            return _Target(parsed, domain, port, None, False)
        host = parsed.host_str
        if host is None:
            return _Target(parsed, None, port, None, False)
        address = host.strip("[]")
        return _Target(parsed, address, port, self._literal_refusal(address), True)

    async def _addresses(self, host: str, port: int) -> list[str]:
        """What `host` resolves to, vetted (AddressNotAllowed, or OSError when it does not resolve)."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        seen: dict[str, None] = {}
        for info in infos:
            seen[str(info[4][0])] = None
        return self.vet(host, list(seen))

    async def _pinned(self, host: str, port: int) -> _Pin:
        """The client for `host`, pinned to a vetted address; resolved at most once per DNS_TTL."""
        pin = self._pins.get(host)
        if pin is not None and pin.expires > time.monotonic():
            return pin
        pending = self._resolving.get(host)
        if pending is None:
            # One resolution per name, whatever the number of deliveries waiting for it.
            pending = asyncio.ensure_future(self._pin(host, port))
            self._resolving[host] = pending
            pending.add_done_callback(lambda _: self._resolving.pop(host, None))
        return await asyncio.shield(pending)

    async def _pin(self, host: str, port: int) -> _Pin:
        addresses = tuple(await self._addresses(host, port))
        old = self._pins.get(host)
        if old is not None and old.address in addresses:
            # Still vetted: keep it (and its connections), rather than go back to a first
            # address that failed over to this one.
            old.expires = time.monotonic() + DNS_TTL
            old.addresses = addresses
            return old
        return await self._repin(host, addresses[0], addresses)

    async def _repin(self, host: str, address: str, addresses: tuple[str, ...]) -> _Pin:
        if self._closed:
            raise SendError("the sender is closed", 0.0)
        old = self._pins.get(host)
        pin = _Pin(address, self._client(pin=(host, address)), time.monotonic() + DNS_TTL, addresses)
        self._pins[host] = pin
        if old is not None:
            # Its requests in flight finish on it; the oldest of those set aside is closed.
            self._retired.append(old.client)
            if len(self._retired) > RETIRED_KEPT:
                await self._retired.pop(0).close()
        return pin

    async def _fail_over(self, host: str, client: Client) -> None:
        """A connection to a name's pinned address failed: its next vetted address, if any, from
        the next send on (reqwest is given one address per name; aiohttp tried each in turn)."""
        pin = self._pins.get(host)
        if pin is None or pin.client is not client or len(pin.addresses) < 2:
            return  # moved on already, or nowhere else to go
        i = pin.addresses.index(pin.address) if pin.address in pin.addresses else -1
        await self._repin(host, pin.addresses[(i + 1) % len(pin.addresses)], pin.addresses)

    def _timeout(self, seconds: float) -> timedelta:
        found = self._timeouts.get(seconds)
        if found is None:
            found = self._timeouts[seconds] = timedelta(seconds=seconds)
        return found

    async def send(self, request: OutboundRequest) -> Response:
        started = time.perf_counter()
        if self._policy is not self.allow_private:
            # The policy changed: every refusal and pinned address is worked out again.
            self._urls.clear()
            self._retired.extend(p.client for p in self._pins.values())
            self._pins.clear()
            self._policy = self.allow_private
            while len(self._retired) > RETIRED_KEPT:
                await self._retired.pop(0).close()
        target = self._urls.get(request.url) or self._target(request.url)
        if target.refusal is not None:
            raise SendError(target.refusal, _ms_since(started), blocked=True)
        host = target.host
        try:
            if request.proxy:
                if host is not None and not target.literal:
                    await self._addresses(host, target.port)  # what the proxy would connect to
                client = self._proxied.get(request.proxy)
                if client is None:
                    client = self._proxied[request.proxy] = self._client(proxy=request.proxy)
            elif host is None or target.literal:
                if self._direct is None:
                    await self.open()
                assert self._direct is not None
                client = self._direct
            else:
                pin = self._pins.get(host)
                if pin is None or pin.expires <= time.monotonic():
                    pin = await self._pinned(host, target.port)
                client = pin.client
        except AddressNotAllowed as exc:
            raise SendError(str(exc), _ms_since(started), blocked=True) from None
        except OSError as exc:
            raise SendError(
                f"cannot resolve the target: {exc.strerror or type(exc).__name__}", _ms_since(started)
            ) from None
        except UnicodeError:
            # The IDNA codec of getaddrinfo: an empty or over-long label.
            raise SendError("cannot resolve the target: not a valid host name", _ms_since(started)) from None
        cap = request.response_cap or self.response_cap
        try:
            assert target.url is not None
            timeout = self._timeouts.get(request.timeout) or self._timeout(request.timeout)
            builder = client.request(request.method, target.url).timeout(timeout)
            if request.headers:
                builder = builder.headers(request.headers)
            body = request.body
            if request.text is not None:
                builder = builder.body_text(request.text)  # as rendered: no decode of `body`
            elif body is not None:
                try:
                    # Copied into Rust as text, not lent as bytes: reqwest's thread drops a lent
                    # Python object under the GIL, which costs that thread a Python thread state
                    # made and destroyed per request (bench/README.md, "Delivery").
                    builder = builder.body_text(body.decode())
                except UnicodeDecodeError:
                    builder = builder.body_bytes(body)
            async with builder.build_streamed() as resp:
                # Never let Content-Length size the read: with Transfer-Encoding: chunked too,
                # hyper ignores it and the body is as long as the target likes. `read(n)` returns
                # n bytes, or fewer only once the body has ended: one await, whatever the body.
                chunk = await resp.body_reader.read(cap)
                data = b"" if chunk is None else bytes(chunk)[:cap]
                headers: Mapping[str, str] = resp.headers  # case-insensitive, read-only by use
                return Response(resp.status, headers, data, round((time.perf_counter() - started) * 1000, 2))
        except RequestTimeoutError:
            raise SendError(f"timed out after {request.timeout:g} s", _ms_since(started)) from None
        except ConnectError as exc:
            if not request.proxy and host is not None and not target.literal:
                await self._fail_over(host, client)
            raise SendError(f"cannot connect: {_cause(exc, request.url)}", _ms_since(started)) from None
        except PyreqwestError as exc:
            # Never str(exc): it quotes the URL, which can hold a secret or an invitee's number.
            raise SendError(f"{type(exc).__name__}: {_cause(exc, request.url)}", _ms_since(started)) from None
        except ValueError as exc:
            # Anything else the request builder refuses (type only: the value may be a secret).
            raise SendError(f"cannot build the request ({type(exc).__name__})", _ms_since(started)) from None


def _cause(exc: PyreqwestError, url: str) -> str:
    """The innermost cause reqwest gives that quotes no part of the URL (else the error's type)."""
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    parts = urlsplit(url)
    secrets = [p for p in (url, parts.netloc, parts.path, parts.query) if p and p != "/"]
    for cause in reversed(causes or []):
        message = str(cause.get("message", "")) if isinstance(cause, dict) else ""
        if message and "://" not in message and not any(s in message for s in secrets):
            return message
    return type(exc).__name__


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _is_ip_literal(host: str) -> bool:
    """Any `:` means IPv6 (zone ids included); otherwise what ipaddress parses."""
    if ":" in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

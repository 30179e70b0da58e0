"""What every dashboard page is made with (gateway/admin/dashboard.py wires the pages).

`Dashboard` holds the store, the session codec and the templates (package data beside this
module); `Pages` is the base of every group of pages (dashboard.py's `EventPages`,
target_pages.py's `TargetPages`, callback_pages.py's `CallbackPages`): sign in and out, the
wrapper that checks a page's session, key and CSRF token, error pages. The helpers below format
what several pages show.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin import AdminError, Invalid, NotFound
from gateway.admin.keys import Principal, authenticate, get_key
from gateway.admin.service import Service
from gateway.admin.sessions import COOKIE_NAME, MAX_AGE, Session, SessionCodec
from gateway.store.events import Store

log = logging.getLogger("gateway.admin.dashboard")

# The pages and the static files are package data of gateway.admin (templates/, static/).
PACKAGE = "gateway.admin"


def _asset_version() -> str:
    """A digest of the static files, in their URLs: a changed stylesheet is fetched anew."""
    digest = hashlib.sha256()
    for path in sorted((files(PACKAGE) / "static").iterdir(), key=lambda p: p.name):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


ASSET_VERSION = _asset_version()

# Pages hold personal data (phone numbers): never cached, never framed, no inline script.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the headers above to every dashboard response; `no-store` to every page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Under a Mount the path keeps its prefix (/dashboard/static/...); root_path is the prefix.
        path, root = scope["path"], scope.get("root_path", "")
        static = path.removeprefix(root).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CsrfRefused(HTTPException):
    def __init__(self) -> None:
        super().__init__(
            403, "The form's CSRF token is missing or does not match your session: reload the page."
        )


class Dashboard:
    """The dashboard's state: the store, the session codec and the template environment."""

    def __init__(
        self,
        store: Store,
        secret: bytes,
        trusted_proxies: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.codec = SessionCodec(secret)
        self.trusted = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)
        self.env = Environment(
            loader=PackageLoader(PACKAGE, "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    # -- requests, sessions and responses ------------------------------------------------------
    def is_https(self, request: Request) -> bool:
        """https directly, or said so by X-Forwarded-Proto from a trusted proxy."""
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else None
        if peer is None or not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if not any(address in net for net in self.trusted):
            return False
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return proto == "https"

    def session_of(self, request: Request) -> Session | None:
        return self.codec.loads(request.cookies.get(COOKIE_NAME))

    async def principal_of(self, session: Session | None) -> Principal | None:
        """The signed-in key, looked up again: a revoked or deleted key ends its sessions."""
        if session is None or session.key_id is None:
            return None
        key = await run_in_threadpool(get_key, self.store, session.key_id)
        if key is None or key.revoked:
            return None
        return Principal(key.key_id, key.name, key.networks)

    def set_session(self, request: Request, response: Response, session: Session) -> Response:
        response.set_cookie(
            COOKIE_NAME,
            self.codec.dumps(session),
            max_age=MAX_AGE,
            path=page_root(request) or "/",
            httponly=True,
            samesite="lax",
            secure=self.is_https(request),
        )
        return response

    def render(
        self,
        request: Request,
        template: str,
        session: Session,
        principal: Principal | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        flashes = session.flashes
        page = self.env.get_template(template).render(
            root=page_root(request),
            asset_version=ASSET_VERSION,
            csrf=session.csrf,
            principal=principal,
            principal_label=_label(principal),
            principal_networks=_networks_label(principal),
            flashes=flashes,
            **context,
        )
        response = HTMLResponse(page, status_code=status_code)
        if flashes or self.session_of(request) != session:
            self.set_session(request, response, session.without_flashes())
        return response

    def redirect(self, request: Request, path: str, session: Session | None = None) -> Response:
        response = RedirectResponse(page_root(request) + path, status_code=303)
        if session is not None:
            self.set_session(request, response, session)
        return response


def page_root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _label(principal: Principal | None) -> str:
    if principal is None:
        return ""
    return f"{principal.name} ({'operator' if principal.is_operator else 'provider'})"


def _networks_label(principal: Principal | None) -> str:
    if principal is None:
        return ""
    if principal.networks is None:
        return "every network"
    return "networks: " + ", ".join(sorted(principal.networks))


Handler = Callable[[Request, Session, Principal], Awaitable[Response]]


_AGO = re.compile(r"([0-9]{1,9})\s*(s|m|h|d|w)")
_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, field: str, now: float | None = None) -> int | None:
    """A time filter as typed, as the CLI takes it: a duration ago (30m, 2h, 7d) or ISO 8601
    (UTC when it names no offset). Epoch ms, or Invalid naming the field."""
    text = text.strip()
    if not text:
        return None
    ago = _AGO.fullmatch(text)
    if ago:
        return int(((time.time() if now is None else now) - int(ago[1]) * _AGO_UNITS[ago[2]]) * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(
            f"{text!r} is neither a duration ago (30m, 2h, 7d) nor ISO 8601 (2026-11-26T12:00:00Z)", field
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def state_label(health: Mapping[str, Any] | None, configured: bool = True) -> str:
    if not configured:
        return "not configured"
    if not health:
        return "active"
    state = str(health.get("state", "active"))
    return "paused (by hand)" if state == "paused" and health.get("manual") else state


def short_time(iso: str | None) -> str:
    """2026-11-26 04:05:13 (UTC) for lists; the full ISO time stays in the <time> element."""
    if not iso:
        return ""
    return iso.replace("T", " ")[:19]


def type_label(event_type: str | None) -> str:
    return {"invitation_created": "created", "invitation_accepted": "accepted"}.get(
        event_type or "", event_type or ""
    )


def safe_back(request: Request, back: str | None, default: str) -> str:
    """A path inside the dashboard to return to after a POST (never another site)."""
    root = page_root(request)
    if back and back.startswith(root + "/") and not back.startswith("//") and "\\" not in back:
        return back[len(root) :]
    return default


class Pages:
    """The route handlers. Each data call runs in a thread (redis-py is synchronous)."""

    def __init__(self, dash: Dashboard, service: Service, queue_name: str) -> None:
        self.dash = dash
        self.service = service
        self.queue_name = queue_name

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    # -- sign in and out ---------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        session = self.dash.session_of(request)
        if await self.dash.principal_of(session):
            return self.dash.redirect(request, "/")
        session = session or Session.new()
        return self.dash.render(request, "login.html", session, None)

    async def login(self, request: Request) -> Response:
        session, form = await self._checked_form(request)
        principal = await self.call(authenticate, self.dash.store, str(form.get("key") or ""))
        if principal is None:
            log.warning("dashboard: sign-in refused (unknown or revoked key) from %s", peer_of(request))
            return self.dash.render(
                request, "login.html", session, None, status_code=401, error="Unknown or revoked key."
            )
        log.info("dashboard: %s signed in", principal.key_id)
        # A fresh session (and CSRF token) at sign-in: a token seen before cannot be reused.
        return self.dash.redirect(request, "/", Session.new(principal.key_id))

    async def logout(self, request: Request) -> Response:
        await self._checked_form(request)
        response = self.dash.redirect(request, "/login")
        response.delete_cookie(COOKIE_NAME, path=page_root(request) or "/")
        return response

    async def _checked_form(self, request: Request) -> tuple[Session, FormData]:
        """The POSTed form, if it carries the session's CSRF token; else 403."""
        session = self.dash.session_of(request)
        form = await request.form(max_files=0, max_fields=2_000)  # 200 ids to replay at most
        token = form.get("csrf")
        if session is None or not session.csrf_ok(token if isinstance(token, str) else None):
            raise CsrfRefused()
        return session, form

    # -- pages that need a signed-in key ----------------------------------------------------------
    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = self.dash.session_of(request)
            if request.method == "POST":
                session, _ = await self._checked_form(request)
            principal = await self.dash.principal_of(session)
            if session is None or principal is None:
                if request.method == "POST":
                    raise HTTPException(401, "Your session has ended: sign in again.")
                return self.dash.redirect(request, "/login")
            try:
                return await handler(request, session, principal)
            except NotFound as exc:
                return self.error(request, session, principal, 404, "Not found", exc.detail)
            except AdminError as exc:  # a Conflict or Invalid the page did not expect
                return self.error(request, session, principal, exc.status_code, exc.title, exc.detail)

        return endpoint

    def error(
        self,
        request: Request,
        session: Session,
        principal: Principal | None,
        status: int,
        heading: str,
        detail: str,
    ) -> Response:
        return self.dash.render(
            request,
            "error.html",
            session,
            principal,
            status_code=status,
            status=status,
            heading=heading,
            detail=detail,
        )

    def _networks(self, p: Principal) -> list[str]:
        """The networks a key can pick from: its own, or (operator) those the targets serve."""
        if p.networks is not None:
            return sorted(p.networks)
        nets = {n for t in self.service.list_targets(p) for n in t.get("networks", []) if n != "*"}
        return sorted(nets)


def peer_of(request: Request) -> str:
    return request.client.host if request.client else "?"

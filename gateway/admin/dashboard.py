"""The dashboard at /dashboard: server-rendered pages over the same data as the admin API.

Pages (Jinja2 templates in `templates/`, package data beside this module; no JavaScript needed):

    GET  /login, POST /login, POST /logout      sign in with an admin key, sign out
    GET  /                                      overview: each target's last 24 hours
    GET  /events, GET /events/{id}              search events; one event, its attempts per target
    GET  /targets, GET|POST /targets/new        list and create targets
    GET|POST /targets/{name}                    edit (each message next to its field)
    POST /targets/{name}/pause|resume|test|delete
    GET  /failures, POST /failures/replay       dead letters; replay one or all shown

Every read and change goes through `gateway.admin.service` with the signed-in key's Principal,
so a provider's key sees only its networks, exactly as through the API (anything else is 404).
The session is a signed cookie (`sessions.py`) naming the key, checked again on every request;
every form carries the session's CSRF token, checked on every POST.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin import AdminError, Conflict, Invalid, NotFound
from gateway.admin.charts import Bucket, activity_chart
from gateway.admin.forms import (
    FORM_KEYS,
    SECRET_FIELDS,
    TEXT_FIELDS,
    declaration_from_form,
    field_of,
    form_from_declaration,
    validate,
)
from gateway.admin.keys import Principal, authenticate, get_key
from gateway.admin.queries import STATE_FILTERS, EventFilter, FailedFilter
from gateway.admin.queries import Page as ResultPage
from gateway.admin.redaction import REDACTED
from gateway.admin.service import Service
from gateway.admin.sessions import COOKIE_NAME, MAX_AGE, Session, SessionCodec, session_secret
from gateway.config.load import target_from_dict
from gateway.events import EVENT_TYPES
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
            path=_root(request) or "/",
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
            root=_root(request),
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
        response = RedirectResponse(_root(request) + path, status_code=303)
        if session is not None:
            self.set_session(request, response, session)
        return response


def _root(request: Request) -> str:
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


# -- the pages ---------------------------------------------------------------------------------------


_AGO = re.compile(r"([0-9]{1,9})\s*(s|m|h|d|w)")
_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _when(text: str, field: str, now: float | None = None) -> int | None:
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


def _state_label(health: Mapping[str, Any] | None, configured: bool = True) -> str:
    if not configured:
        return "not configured"
    if not health:
        return "active"
    state = str(health.get("state", "active"))
    return "paused (by hand)" if state == "paused" and health.get("manual") else state


def _short_time(iso: str | None) -> str:
    """2026-11-26 04:05:13 (UTC) for lists; the full ISO time stays in the <time> element."""
    if not iso:
        return ""
    return iso.replace("T", " ")[:19]


def _type_label(event_type: str | None) -> str:
    return {"invitation_created": "created", "invitation_accepted": "accepted"}.get(
        event_type or "", event_type or ""
    )


def _safe_back(request: Request, back: str | None, default: str) -> str:
    """A path inside the dashboard to return to after a POST (never another site)."""
    root = _root(request)
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
            log.warning("dashboard: sign-in refused (unknown or revoked key) from %s", _peer(request))
            return self.dash.render(
                request, "login.html", session, None, status_code=401, error="Unknown or revoked key."
            )
        log.info("dashboard: %s signed in", principal.key_id)
        # A fresh session (and CSRF token) at sign-in: a token seen before cannot be reused.
        return self.dash.redirect(request, "/", Session.new(principal.key_id))

    async def logout(self, request: Request) -> Response:
        await self._checked_form(request)
        response = self.dash.redirect(request, "/login")
        response.delete_cookie(COOKIE_NAME, path=_root(request) or "/")
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

    async def overview(self, request: Request, session: Session, p: Principal) -> Response:
        data, targets = await self.call(lambda: (self.service.overview(p), self.service.list_targets(p)))
        health = {t["name"]: t["health"] for t in targets}
        rows = []
        for t in data["targets"]:
            name = t["target"]
            buckets = [
                Bucket(
                    h["start"][11:16],
                    received=h["received"],
                    delivered=h["delivered"],
                    failed=h["failed"],
                    waiting=h["waiting"],
                )
                for h in t["hours"]
            ]
            chart = activity_chart(buckets, title=f"{name}, last 24 hours by hour")
            state = t["state"] if t["configured"] else "skipped"
            rows.append(
                {
                    "name": name,
                    "state": state,
                    "state_label": _state_label(health.get(name), t["configured"]),
                    "reason": (health.get(name) or {}).get("reason"),
                    "received": t["received"],
                    "delivered": t["delivered"],
                    "failed": t["failed"],
                    "waiting": t["waiting"],
                    "chart": Markup(chart),  # noqa: S704 - activity_chart escapes its text
                }
            )
        return self.dash.render(
            request,
            "overview.html",
            session,
            p,
            section="overview",
            rows=rows,
            truncated=data["truncated"],
            scanned=data["events"],
            axis_from=_short_time(data["since"])[11:16],
        )

    async def events(self, request: Request, session: Session, p: Principal) -> Response:
        q = {
            k: request.query_params.get(k, "").strip()
            for k in ("network", "invitee", "invitor", "state", "since", "until")
        }
        cursor = request.query_params.get("cursor") or None
        filter_error = None
        page = ResultPage([], None)
        try:
            filters = EventFilter(
                network=q["network"] or None,
                invitee=q["invitee"] or None,
                invitor=q["invitor"] or None,
                state=q["state"] or None,
                since_ms=_when(q["since"], "since"),
                until_ms=_when(q["until"], "until"),
            )
            page = await self.call(self.service.list_events, p, filters, cursor, 50)
        except Invalid as exc:
            filter_error = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        events = [
            {
                **e,
                "received_at_short": _short_time(e.get("received_at")),
                "type_label": _type_label(e.get("type")),
                "deliveries": [{"target": n, **d} for n, d in e.get("deliveries", {}).items()],
            }
            for e in page.items
        ]
        next_url = None
        if page.next_cursor:
            next_url = f"{_root(request)}/events?" + urlencode(
                {**{k: v for k, v in q.items() if v}, "cursor": page.next_cursor}
            )
        networks = await self.call(self._networks, p)
        return self.dash.render(
            request,
            "events.html",
            session,
            p,
            section="events",
            q=q,
            events=events,
            next_url=next_url,
            networks=networks,
            states=STATE_FILTERS,
            filter_error=filter_error,
        )

    def _networks(self, p: Principal) -> list[str]:
        """The networks a key can pick from: its own, or (operator) those the targets serve."""
        if p.networks is not None:
            return sorted(p.networks)
        nets = {n for t in self.service.list_targets(p) for n in t.get("networks", []) if n != "*"}
        return sorted(nets)

    async def event(self, request: Request, session: Session, p: Principal) -> Response:
        data = await self.call(self.service.get_event, p, request.path_params["event_id"])
        event = {**data["event"], "type_label": _type_label(data["event"].get("type"))}
        deliveries = [
            {
                **d,
                "id": d["delivery_id"],
                "replayable": d.get("status") in ("failed", "expired"),
                "timeline": d.get("attempts", []),
                "attempt_count": len(d.get("attempts", [])),
            }
            for d in data["deliveries"]
        ]
        return self.dash.render(
            request, "event.html", session, p, section="events", event=event, deliveries=deliveries
        )

    # -- targets -----------------------------------------------------------------------------------
    async def targets(self, request: Request, session: Session, p: Principal) -> Response:
        targets = await self.call(self.service.list_targets, p)
        rows = [
            {
                "name": t["name"],
                "source": t.get("source"),
                "state": t["health"]["state"],
                "state_label": _state_label(t["health"]),
                "reason": t["health"].get("reason"),
                "networks": t.get("networks", []),
                "method": t.get("method", ""),
                "url": t.get("url", ""),
                "held": t["health"].get("held_deliveries", 0),
            }
            for t in targets
        ]
        return self.dash.render(request, "targets.html", session, p, section="targets", targets=rows)

    def _form_page(
        self,
        request: Request,
        session: Session,
        p: Principal,
        form: Mapping[str, Any],
        errors: Mapping[str, str],
        creating: bool,
        target: Mapping[str, Any] | None = None,
        status_code: int = 200,
        test: Mapping[str, Any] | None = None,
    ) -> Response:
        read_only = None
        preview = None
        health = None
        if target is not None:
            health = {**target["health"], "state_label": _state_label(target["health"])}
            if target.get("source") == "file":
                read_only = "Declared in the configuration file: change it there (`gateway targets apply`)."
            preview = self._preview(p, target["name"])
        return self.dash.render(
            request,
            "target_form.html",
            session,
            p,
            status_code=status_code,
            section="targets",
            form={**form, **dict.fromkeys(SECRET_FIELDS, "")},
            errors=errors,
            creating=creating,
            health=health,
            read_only=read_only,
            kept=sorted(k for k in target or {} if k not in FORM_KEYS and k not in ("source", "health")),
            preview=preview,
            test=test,
            networks=sorted(p.networks or ()),
            event_types=EVENT_TYPES,
            methods=("GET", "POST", "PUT", "PATCH", "DELETE"),
        )

    def _preview(self, p: Principal, name: str) -> str | None:
        """The request a sample event renders for the target (secrets hidden); None if it cannot."""
        try:
            return request_text(self.service.validate_target(p, name)["request"])
        except AdminError:
            log.info("no preview for target %s", name, exc_info=True)
            return None

    async def new_target(self, request: Request, session: Session, p: Principal) -> Response:
        form: dict[str, Any] = {"events": list(EVENT_TYPES)}
        if p.networks is not None and len(p.networks) == 1:
            form["networks"] = next(iter(p.networks))
        return self._form_page(request, session, p, form, {}, creating=True)

    async def create_target(self, request: Request, session: Session, p: Principal) -> Response:
        form = await _form_fields(request)
        data, errors = declaration_from_form(form)
        validate(data, errors)
        if not errors:
            try:
                await self.call(self.service.create_target, p, data)
            except AdminError as exc:
                _add_problems(errors, exc)
        if errors:
            return self._form_page(request, session, p, form, errors, creating=True, status_code=422)
        name = data["name"]
        return self.dash.redirect(
            request, f"/targets/{quote(name)}", session.with_flash("ok", f"Target {name} created.")
        )

    async def edit_target(self, request: Request, session: Session, p: Principal) -> Response:
        target = await self.call(self.service.get_target, p, request.path_params["name"])
        return self._form_page(request, session, p, form_from_declaration(target), {}, False, target)

    async def test_target(self, request: Request, session: Session, p: Principal) -> Response:
        """Have a worker send a sample event now, and show the exchange (or that none came)."""
        name = request.path_params["name"]
        outcome = await self.call(self.service.test_target, p, name, TEST_WAIT)
        target = await self.call(self.service.get_target, p, name)
        if outcome["completed"]:
            test = test_view(outcome["result"])
        else:
            test = {"outcome": "no answer", "error": outcome["detail"]}
        form = form_from_declaration(target)
        return self._form_page(request, session, p, form, {}, False, target, test=test)

    async def update_target(self, request: Request, session: Session, p: Principal) -> Response:
        name = request.path_params["name"]
        target = await self.call(self.service.get_target, p, name)
        form = {**await _form_fields(request), "name": name}
        data, errors = declaration_from_form(form, existing=target)
        validate(data, errors, check=_check_edit)
        if not errors:
            try:
                await self.call(self.service.update_target, p, name, data)
            except NotFound:
                raise
            except AdminError as exc:
                _add_problems(errors, exc)
        if errors:
            return self._form_page(request, session, p, form, errors, False, target, status_code=422)
        return self.dash.redirect(
            request, f"/targets/{quote(name)}", session.with_flash("ok", f"Target {name} saved.")
        )

    async def delete_target(self, request: Request, session: Session, p: Principal) -> Response:
        name = request.path_params["name"]
        try:
            await self.call(self.service.delete_target, p, name)
        except Conflict as exc:
            return self.dash.redirect(
                request, f"/targets/{quote(name)}", session.with_flash("error", exc.detail)
            )
        return self.dash.redirect(request, "/targets", session.with_flash("ok", f"Target {name} deleted."))

    async def pause_target(self, request: Request, session: Session, p: Principal) -> Response:
        name = request.path_params["name"]
        result = await self.call(self.service.pause_target, p, name, f"paused in the dashboard by {p.name}")
        back = _safe_back(request, (await request.form()).get("back"), "/targets")  # type: ignore[arg-type]
        text = f"{name} paused; its deliveries wait until it is resumed."
        if result["before"] != "active":
            text = f"{name} was already {result['before']}; now paused by hand."
        return self.dash.redirect(request, back, session.with_flash("ok", text))

    async def resume_target(self, request: Request, session: Session, p: Principal) -> Response:
        name = request.path_params["name"]
        result = await self.call(self.service.resume_target, p, name)
        back = _safe_back(request, (await request.form()).get("back"), "/targets")  # type: ignore[arg-type]
        held = result["held_deliveries"]
        text = f"{name} resumed (was {result['before']}); {held} held deliveries are due now."
        return self.dash.redirect(request, back, session.with_flash("ok", text))

    # -- failures ----------------------------------------------------------------------------------
    async def failures(self, request: Request, session: Session, p: Principal) -> Response:
        q = {k: request.query_params.get(k, "").strip() for k in ("target", "network", "since")}
        filter_error = None
        items: list[dict[str, Any]] = []
        try:
            filters = FailedFilter(
                targets=frozenset([q["target"]]) if q["target"] else frozenset(),
                networks=frozenset([q["network"]]) if q["network"] else frozenset(),
                since_ms=_when(q["since"], "since"),
            )
            page = await self.call(self.service.failed_deliveries, p, filters, None, FAILURES_SHOWN)
            items = page.items
        except Invalid as exc:
            filter_error = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        failures = [
            {
                **f,
                "id": f["delivery_id"],
                "network_id": f["network"],
                "type_label": _type_label(f["event"]),
                "failed_at_short": _short_time(f["failed_at"]),
            }
            for f in items
        ]
        targets = await self.call(self.service.list_targets, p)
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.dash.render(
            request,
            "failures.html",
            session,
            p,
            section="failures",
            q=q,
            failures=failures,
            target_names=sorted(t["name"] for t in targets),
            networks=await self.call(self._networks, p),
            filter_error=filter_error,
            back=back,
        )

    async def replay(self, request: Request, session: Session, p: Principal) -> Response:
        form = await request.form()
        ids = [i for i in form.getlist("id") if isinstance(i, str) and i]
        back = _safe_back(request, form.get("back"), "/failures")  # type: ignore[arg-type]
        if not ids:
            return self.dash.redirect(request, back, session.with_flash("error", "Nothing to replay."))
        results: dict[str, str] = await self.call(self.service.replay, p, ids)
        counts = Counter(results.values())
        parts = [f"{counts.get('replayed', 0)} replayed"]
        for result, label in (
            ("pending", "already waiting"),
            ("held", "held (target paused or disabled)"),
            ("delivered", "already delivered"),
            ("unknown", "unknown"),
        ):
            if counts.get(result):
                parts.append(f"{counts[result]} {label}")
        kind = "ok" if counts.get("replayed") else "warn"
        return self.dash.redirect(request, back, session.with_flash(kind, ", ".join(parts) + "."))

    # -- holds -------------------------------------------------------------------------------------
    async def holds(self, request: Request, session: Session, p: Principal) -> Response:
        items = await self.call(self.service.list_holds, p)
        holds = [
            {**h, "since_short": _short_time(h["since"]), "until_short": _short_time(h["until"])}
            for h in items
        ]
        return self.dash.render(request, "holds.html", session, p, section="holds", holds=holds)

    async def lift_hold(self, request: Request, session: Session, p: Principal) -> Response:
        lifted = await self.call(self.service.lift_hold, p, request.path_params["hold_id"])
        text = (
            f"The hold on {lifted['prefix']} for {lifted['network']} is lifted; what it kept back "
            "stays suppressed until released."
        )
        return self.dash.redirect(request, "/holds", session.with_flash("ok", text))


FAILURES_SHOWN = 200  # the failures page lists (and "replay all shown" replays) at most this many
TEST_WAIT = 15.0  # seconds "Send test" waits for a worker (it lapses unsent after that)


def test_view(result: Mapping[str, Any]) -> dict[str, Any]:
    """A worker's test result (secrets already redacted by the worker) as the page shows it."""
    req = result.get("request") or {}
    resp = result.get("response") or {}
    response_text = None
    if resp:
        lines = [f"HTTP {resp.get('status', '')}"]
        lines += [f"{k}: {v}" for k, v in resp.get("headers") or []]
        if resp.get("body"):
            lines += ["", str(resp["body"])]
        response_text = "\n".join(lines)
    return {
        "outcome": result.get("outcome", "failed"),
        "status_code": resp.get("status"),
        "latency_ms": result.get("latency_ms"),
        "error": result.get("error"),
        "request": request_text(req) if req else None,
        "response": response_text,
        "at": result.get("at"),
        "worker": result.get("worker"),
    }


_SAMPLE_SECRET = "whsec_" + "A" * 32  # stands in for a masked signing secret in a local check


def request_text(req: Mapping[str, Any]) -> str:
    """A request as the worker reports it (secrets already hidden), in HTTP's own layout."""
    lines = [f"{req.get('method', '')} {req.get('url', '')}"]
    lines += [f"{k}: {v}" for k, v in req.get("headers") or []]
    if req.get("body"):
        lines += ["", str(req["body"])]
    return "\n".join(lines)


def _check_edit(data: Mapping[str, Any]) -> object:
    """The target check for an edit: the form's own keys (the rest was checked when stored), a
    masked signing secret standing for the stored one."""
    data = {k: v for k, v in data.items() if k in FORM_KEYS}
    if data.get("signing_secret") == REDACTED:
        data["signing_secret"] = _SAMPLE_SECRET
    return target_from_dict(data)


def _add_problems(errors: dict[str, str], exc: AdminError) -> None:
    """The service's refusal next to the fields it names (Invalid lists every problem)."""
    problems = exc.problems if isinstance(exc, Invalid) else [(exc.field, exc.detail)]
    for field, reason in problems:
        errors.setdefault(field_of(field), reason)


async def _form_fields(request: Request) -> dict[str, Any]:
    form = await request.form()
    fields: dict[str, Any] = {f: form.get(f) or "" for f in TEXT_FIELDS if isinstance(form.get(f) or "", str)}
    fields["events"] = [e for e in form.getlist("events") if isinstance(e, str)]
    return fields


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def create_dashboard(
    store: Store,
    queue_name: str = "gateway-deliveries",
    trusted_proxies: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> ASGIApp:
    """The dashboard's ASGI app, to be mounted at /dashboard."""
    dash = Dashboard(store, session_secret(os.environ if environ is None else environ), trusted_proxies)
    pages = Pages(dash, Service(store, queue_name), queue_name)
    p = pages.page

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        session = dash.session_of(request) or Session.new()
        principal = await dash.principal_of(session)
        heading = {401: "Signed out", 403: "Refused", 404: "Not found", 405: "Not allowed"}.get(
            exc.status_code, "Error"
        )
        return pages.error(request, session, principal, exc.status_code, heading, exc.detail)

    routes = [
        Route("/", p(pages.overview), methods=["GET"]),
        Route("/login", pages.login_page, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/events", p(pages.events), methods=["GET"]),
        Route("/events/{event_id}", p(pages.event), methods=["GET"]),
        Route("/targets", p(pages.targets), methods=["GET"]),
        Route("/targets/new", p(pages.new_target), methods=["GET"]),
        Route("/targets/new", p(pages.create_target), methods=["POST"]),
        Route("/targets/{name}", p(pages.edit_target), methods=["GET"]),
        Route("/targets/{name}", p(pages.update_target), methods=["POST"]),
        Route("/targets/{name}/pause", p(pages.pause_target), methods=["POST"]),
        Route("/targets/{name}/resume", p(pages.resume_target), methods=["POST"]),
        Route("/targets/{name}/delete", p(pages.delete_target), methods=["POST"]),
        Route("/targets/{name}/test", p(pages.test_target), methods=["POST"]),
        Route("/failures", p(pages.failures), methods=["GET"]),
        Route("/failures/replay", p(pages.replay), methods=["POST"]),
        Route("/holds", p(pages.holds), methods=["GET"]),
        Route("/holds/{hold_id}/lift", p(pages.lift_hold), methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[(PACKAGE, "static")]), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    return SecurityHeaders(app)

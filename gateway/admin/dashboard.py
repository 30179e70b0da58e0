"""The dashboard at /dashboard: server-rendered pages over the same data as the admin API.

Pages (Jinja2 templates in `templates/`, package data beside this module; no JavaScript needed):

    GET  /login, POST /login, POST /logout      sign in with an admin key, sign out
    GET  /                                      overview: each target's last 24 hours
    GET  /events, GET /events/{id}              search events; one event, its attempts per target
    GET  /targets, GET|POST /targets/new        list and create targets
    GET|POST /targets/{name}                    edit (each message next to its field)
    POST /targets/{name}/pause|resume|test|delete
    GET  /failures, POST /failures/replay       dead letters; replay one or all shown
    GET  /holds, POST /holds/{id}/lift          the guard's holds; lift one
    the Callbacks and Connect pages             callback_pages.py

The target pages are in target_pages.py, what every page is made with in page_kit.py.

Every read and change goes through `gateway.admin.service` with the signed-in key's Principal,
so a provider's key sees only its networks, exactly as through the API (anything else is 404).
The session is a signed cookie (`sessions.py`) naming the key, checked again on every request;
every form carries the session's CSRF token, checked on every POST.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from gateway.admin import Invalid
from gateway.admin.callback_pages import callback_routes
from gateway.admin.charts import Bucket, activity_chart
from gateway.admin.keys import Principal
from gateway.admin.page_kit import (
    PACKAGE,
    Dashboard,
    Pages,
    SecurityHeaders,
    page_root,
    parse_when,
    safe_back,
    short_time,
    state_label,
    type_label,
)
from gateway.admin.queries import STATE_FILTERS, EventFilter, FailedFilter
from gateway.admin.queries import Page as ResultPage
from gateway.admin.service import Service
from gateway.admin.sessions import Session, session_secret
from gateway.admin.target_pages import TargetPages
from gateway.store.events import Store


class EventPages(Pages):
    """The overview, events, failures and holds pages."""

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
                    "state_label": state_label(health.get(name), t["configured"]),
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
            axis_from=short_time(data["since"])[11:16],
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
                since_ms=parse_when(q["since"], "since"),
                until_ms=parse_when(q["until"], "until"),
            )
            page = await self.call(self.service.list_events, p, filters, cursor, 50)
        except Invalid as exc:
            filter_error = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        events = [
            {
                **e,
                "received_at_short": short_time(e.get("received_at")),
                "type_label": type_label(e.get("type")),
                "deliveries": [{"target": n, **d} for n, d in e.get("deliveries", {}).items()],
            }
            for e in page.items
        ]
        next_url = None
        if page.next_cursor:
            next_url = f"{page_root(request)}/events?" + urlencode(
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

    async def event(self, request: Request, session: Session, p: Principal) -> Response:
        data = await self.call(self.service.get_event, p, request.path_params["event_id"])
        event = {**data["event"], "type_label": type_label(data["event"].get("type"))}
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

    # -- failures ----------------------------------------------------------------------------------
    async def failures(self, request: Request, session: Session, p: Principal) -> Response:
        q = {k: request.query_params.get(k, "").strip() for k in ("target", "network", "since")}
        filter_error = None
        items: list[dict[str, Any]] = []
        try:
            filters = FailedFilter(
                targets=frozenset([q["target"]]) if q["target"] else frozenset(),
                networks=frozenset([q["network"]]) if q["network"] else frozenset(),
                since_ms=parse_when(q["since"], "since"),
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
                "type_label": type_label(f["event"]),
                "failed_at_short": short_time(f["failed_at"]),
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
        back = safe_back(request, form.get("back"), "/failures")  # type: ignore[arg-type]
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
            {**h, "since_short": short_time(h["since"]), "until_short": short_time(h["until"])} for h in items
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


def create_dashboard(
    store: Store,
    queue_name: str = "gateway-deliveries",
    trusted_proxies: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
    public_url: str | None = None,
) -> ASGIApp:
    """The dashboard's ASGI app, to be mounted at /dashboard (`public_url`: the ingest's base URL
    for the Connect page, GATEWAY_PUBLIC_URL)."""
    dash = Dashboard(store, session_secret(os.environ if environ is None else environ), trusted_proxies)
    service = Service(store, queue_name)
    pages = EventPages(dash, service, queue_name)
    targets = TargetPages(dash, service, queue_name)
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
        Route("/targets", p(targets.targets), methods=["GET"]),
        Route("/targets/new", p(targets.new_target), methods=["GET"]),
        Route("/targets/new", p(targets.create_target), methods=["POST"]),
        Route("/targets/{name}", p(targets.edit_target), methods=["GET"]),
        Route("/targets/{name}", p(targets.update_target), methods=["POST"]),
        Route("/targets/{name}/pause", p(targets.pause_target), methods=["POST"]),
        Route("/targets/{name}/resume", p(targets.resume_target), methods=["POST"]),
        Route("/targets/{name}/delete", p(targets.delete_target), methods=["POST"]),
        Route("/targets/{name}/test", p(targets.test_target), methods=["POST"]),
        Route("/failures", p(pages.failures), methods=["GET"]),
        Route("/failures/replay", p(pages.replay), methods=["POST"]),
        Route("/holds", p(pages.holds), methods=["GET"]),
        Route("/holds/{hold_id}/lift", p(pages.lift_hold), methods=["POST"]),
        *callback_routes(pages, public_url),
        Mount("/static", app=StaticFiles(packages=[(PACKAGE, "static")]), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    return SecurityHeaders(app)

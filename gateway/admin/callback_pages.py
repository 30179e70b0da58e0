"""The dashboard's Callbacks and Connect Acrobits pages (gateway/admin/dashboard.py mounts them).

    GET  /callbacks                      callbacks as received; rejected ones with what to change
    GET  /connect?network=N[&test=ID]    the portal's values, the tokens, a test callback's result
    POST /connect/tokens                 make a token (shown once, on the page this answers)
    POST /connect/tokens/{id}/remove     remove one
    POST /connect/test                   send a test callback (a confirmation box must be ticked)

Everything goes through the Service with the signed-in key, as the API does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.admin import AdminError, Invalid, NotFound
from gateway.admin.api import base_url, send_to
from gateway.admin.callbacks import OUTCOMES, CallbackFilter
from gateway.admin.connect import SHAPES, TEST_INVITEE
from gateway.admin.keys import Principal
from gateway.admin.page_kit import Pages, page_root, parse_when, short_time, type_label
from gateway.admin.queries import Page
from gateway.admin.sessions import Session
from gateway.events import EVENT_TYPES

CALLBACKS_SHOWN = 50


class CallbackPages:
    def __init__(self, pages: Pages, public_url: str | None) -> None:
        self.pages = pages
        self.dash = pages.dash
        self.service = pages.service
        self.public_url = public_url

    # -- Callbacks ----------------------------------------------------------------------------------
    async def callbacks(self, request: Request, session: Session, p: Principal) -> Response:
        q = {k: request.query_params.get(k, "").strip() for k in ("network", "outcome", "since", "view")}
        if q["view"] == "unroutable" and not p.is_operator:
            q["view"] = ""
        cursor = request.query_params.get("cursor") or None
        filter_error = None
        page = Page([], None)
        try:
            filters = CallbackFilter(
                network=q["network"] or None if q["view"] != "unroutable" else None,
                outcome="rejected" if q["view"] == "rejected" else q["outcome"] or None,
                unroutable=q["view"] == "unroutable",
                since_ms=parse_when(q["since"], "since"),
            )
            page = await self.pages.call(self.service.callbacks.list, p, filters, cursor, CALLBACKS_SHOWN)
        except Invalid as exc:
            filter_error = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        items = [
            {
                **c,
                "received_at_short": short_time(c["received_at"]),
                "type_label": type_label(c["event"]),
                "fields_text": ", ".join(f"{k}={v}" for k, v in c["fields"].items()),
            }
            for c in page.items
        ]
        kept = {k: v for k, v in q.items() if v}
        next_url = None
        if page.next_cursor:
            next_url = f"{page_root(request)}/callbacks?" + urlencode({**kept, "cursor": page.next_cursor})
        return self.dash.render(
            request,
            "callbacks.html",
            session,
            p,
            section="callbacks",
            q=q,
            items=items,
            next_url=next_url,
            networks=await self.pages.call(self.pages._networks, p),
            outcomes=OUTCOMES,
            filter_error=filter_error,
            view_url=lambda view: (
                f"{page_root(request)}/callbacks?"
                + urlencode({k: v for k, v in {**kept, "view": view}.items() if v and k != "outcome"})
            ),
        )

    # -- Connect Acrobits --------------------------------------------------------------------------------
    async def connect(self, request: Request, session: Session, p: Principal) -> Response:
        return await self._connect_page(request, session, p, request.query_params.get("network", "").strip())

    async def _connect_page(
        self,
        request: Request,
        session: Session,
        p: Principal,
        network: str,
        new_token: dict[str, Any] | None = None,
        status_code: int = 200,
    ) -> Response:
        networks = await self.pages.call(self.pages._networks, p)
        if not network and len(networks) == 1:
            network = networks[0]
        doc = None
        test = None
        if network:
            url, source = base_url(request, self.public_url)
            doc = await self.pages.call(self.service.connect.settings, p, network, url, source)
            test_id = request.query_params.get("test")
            if test_id:
                test = await self.pages.call(self._test_view, p, network, test_id)
        return self.dash.render(
            request,
            "connect.html",
            session,
            p,
            status_code=status_code,
            section="connect",
            network=network,
            networks=networks,
            doc=doc,
            settings=(new_token or {}).get("settings") or (doc or {}).get("settings"),
            new_token=new_token,
            test=test,
            event_types=EVENT_TYPES,
            shapes=SHAPES,
            test_invitee=TEST_INVITEE,
        )

    def _test_view(self, p: Principal, network: str, test_id: str) -> dict[str, Any]:
        """A test's callback as the inspector kept it, and its event's deliveries as they are now."""
        callback = self.service.connect.test_callback(p, network, test_id)
        event = None
        if callback and callback.get("event_id"):
            event = self.service.get_event(p, callback["event_id"])
        return {"id": test_id, "callback": callback, "event": event}

    async def make_token(self, request: Request, session: Session, p: Principal) -> Response:
        form = await request.form()
        network = str(form.get("network") or "")
        try:
            made = await self.pages.call(
                self.service.connect.create_token, p, network, base_url(request, self.public_url)[0]
            )
        except AdminError as exc:
            return self._refused(request, session, network, exc)
        # Answered on this page, never through a redirect: the token is in no URL and no cookie.
        return await self._connect_page(request, session.with_flash("ok", _made(made)), p, network, made)

    async def remove_token(self, request: Request, session: Session, p: Principal) -> Response:
        form = await request.form()
        network = str(form.get("network") or "")
        token_id = request.path_params["token_id"]
        try:
            await self.pages.call(self.service.connect.remove_token, p, token_id)
        except AdminError as exc:
            return self._refused(request, session, network, exc)
        text = f"Token {token_id} removed: callbacks presenting it are refused (401) from now on."
        return self._back(request, session, network, "ok", text)

    async def send_test(self, request: Request, session: Session, p: Principal) -> Response:
        form = await request.form()
        network = str(form.get("network") or "")
        if form.get("confirm") != "yes":
            text = "Tick the box first: a test callback is delivered to the network's real targets."
            return self._back(request, session, network, "error", text)
        invitee = str(form.get("invitee") or "").strip() or None
        try:
            result = await self.pages.call(
                self.service.connect.send_test,
                p,
                network,
                send_to(request, self.public_url),
                str(form.get("event") or EVENT_TYPES[0]),
                str(form.get("format") or "json"),
                invitee,
            )
        except AdminError as exc:
            return self._refused(request, session, network, exc)
        if result["error"]:
            session = session.with_flash("error", result["error"])
        else:
            session = session.with_flash("ok" if result["status"] == 204 else "warn", _sent(result))
        path = f"/connect?network={quote(network, safe='')}&test={result['test_id']}#test"
        return self.dash.redirect(request, path, session)

    def _refused(self, request: Request, session: Session, network: str, exc: AdminError) -> Response:
        """Back to the page with the reason (the network's page, unless it is not the key's)."""
        return self._back(request, session, "" if isinstance(exc, NotFound) else network, "error", exc.detail)

    def _back(self, request: Request, session: Session, network: str, kind: str, text: str) -> Response:
        path = "/connect" + (f"?network={quote(network, safe='')}" if network else "")
        return self.dash.redirect(request, path, session.with_flash(kind, text))


def _made(made: dict[str, Any]) -> str:
    return (
        f"Token {made['id']} made for {made['network']}: copy it now, it is not shown again. "
        "The values below carry it; the earlier tokens keep working until you remove them."
    )


def _sent(result: dict[str, Any]) -> str:
    sent = result["sent"]
    return f"Test callback sent ({sent['method']} {sent['url']}): answered {result['status']}."


def callback_routes(pages: Pages, public_url: str | None) -> list[BaseRoute]:
    """The pages' routes, mounted by `create_dashboard`."""
    c = CallbackPages(pages, public_url)
    p = pages.page
    return [
        Route("/callbacks", p(c.callbacks), methods=["GET"]),
        Route("/connect", p(c.connect), methods=["GET"]),
        Route("/connect/tokens", p(c.make_token), methods=["POST"]),
        Route("/connect/tokens/{token_id}/remove", p(c.remove_token), methods=["POST"]),
        Route("/connect/test", p(c.send_test), methods=["POST"]),
    ]

"""The dashboard's target pages (gateway/admin/dashboard.py mounts them).

    GET  /targets, GET|POST /targets/new        list and create targets
    GET|POST /targets/{name}                    edit (each message next to its field)
    POST /targets/{name}/pause|resume|test|delete

Every read and change goes through the Service with the signed-in key, as the API does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from gateway.admin import AdminError, Conflict, Invalid, NotFound
from gateway.admin.forms import (
    FORM_KEYS,
    SECRET_FIELDS,
    TEXT_FIELDS,
    declaration_from_form,
    field_of,
    form_from_declaration,
    validate,
)
from gateway.admin.keys import Principal
from gateway.admin.page_kit import (
    Pages,
    safe_back,
    state_label,
)
from gateway.admin.redaction import REDACTED
from gateway.admin.sessions import Session
from gateway.config.load import target_from_dict
from gateway.events import EVENT_TYPES

log = logging.getLogger("gateway.admin.dashboard")


class TargetPages(Pages):
    # -- targets -----------------------------------------------------------------------------------
    async def targets(self, request: Request, session: Session, p: Principal) -> Response:
        targets = await self.call(self.service.list_targets, p)
        rows = [
            {
                "name": t["name"],
                "source": t.get("source"),
                "state": t["health"]["state"],
                "state_label": state_label(t["health"]),
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
            health = {**target["health"], "state_label": state_label(target["health"])}
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
        back = safe_back(request, (await request.form()).get("back"), "/targets")  # type: ignore[arg-type]
        text = f"{name} paused; its deliveries wait until it is resumed."
        if result["before"] != "active":
            text = f"{name} was already {result['before']}; now paused by hand."
        return self.dash.redirect(request, back, session.with_flash("ok", text))

    async def resume_target(self, request: Request, session: Session, p: Principal) -> Response:
        name = request.path_params["name"]
        result = await self.call(self.service.resume_target, p, name)
        back = safe_back(request, (await request.form()).get("back"), "/targets")  # type: ignore[arg-type]
        held = result["held_deliveries"]
        text = f"{name} resumed (was {result['before']}); {held} held deliveries are due now."
        return self.dash.redirect(request, back, session.with_flash("ok", text))


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

"""The admin JSON API under /api/v1, described by `openapi.SPEC` (served at /api/v1/openapi.json).

Every request but the spec's carries `Authorization: Bearer gwk_...` (keys.py). What a key may
see is the Service's business (service.py); here requests become Service calls and errors become
application/problem+json (RFC 9457): 400 unreadable body or a query parameter not as the document
says, 401 no or bad key, 403 an operator endpoint with a provider key, 404 unknown or not the key's,
409 conflict, 422 a bad value in a body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.authentication import AuthenticationError, has_required_scope
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin import AdminError, BadParameter, Invalid
from gateway.admin.callbacks import CallbackFilter
from gateway.admin.documents import replay_json
from gateway.admin.keys import KeyAuthBackend, Principal
from gateway.admin.openapi import SPEC
from gateway.admin.queries import MAX_LIMIT, EventFilter, FailedFilter, Page, SuppressedFilter
from gateway.admin.service import Service
from gateway.events import EVENT_TYPES, INVITATION_CREATED
from gateway.exceptions import problem_document
from gateway.store.events import Store

log = logging.getLogger("gateway.admin")

PROBLEM = "application/problem+json"
TEST_WAIT = 30  # seconds a test send waits for a worker, by default
MAX_TEST_WAIT = 60
_BEARER = 'Bearer realm="invitation-gateway admin API"'
T = TypeVar("T")


def _problem(
    status: int,
    title: str,
    detail: str,
    field: str | None = None,
    problems: list[tuple[str | None, str]] | None = None,
) -> Response:
    body = problem_document(status, title, detail, field, problems)
    response = Response(json.dumps(body), status_code=status, media_type=PROBLEM)
    if status == 401:
        response.headers["WWW-Authenticate"] = _BEARER
    return response


async def _admin_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdminError)
    return _problem(exc.status_code, exc.title, exc.detail, exc.field, getattr(exc, "problems", None))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = _problem(exc.status_code, exc.detail, f"{request.method} {request.url.path}: {exc.detail}")
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def _auth_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    return _problem(401, "Unauthorized", str(exc))


def _principal(request: Request) -> Principal:
    if not has_required_scope(request, ["provider"]) or not isinstance(request.user, Principal):
        raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": _BEARER})
    return request.user


def _operator(request: Request) -> Principal:
    principal = _principal(request)
    if not has_required_scope(request, ["operator"]):
        raise HTTPException(403, "Forbidden: keys are managed with an operator key")
    return principal


# -- reading parameters -------------------------------------------------------------------------
#
# A query parameter that is not as the OpenAPI document says is a 400 naming it (BadParameter);
# a bad value in a body is a 422 (Invalid). An empty value is refused, never read as "no filter":
# `?network=$NET` with NET unset would otherwise widen a list to every network, and no enum or
# pattern of the document has an empty member.


def _query(request: Request, name: str) -> str | None:
    """The parameter's value (None when absent): given once, not empty."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadParameter("give it once", name)
    if not values:
        return None
    if not values[0]:
        raise BadParameter("is empty: give a value or leave the parameter out", name)
    return values[0]


def _query_list(request: Request, name: str) -> frozenset[str]:
    values = request.query_params.getlist(name)
    if "" in values:
        raise BadParameter("is empty: give a value or leave the parameter out", name)
    return frozenset(values)


def _time(request: Request, name: str) -> int | None:
    """An ISO 8601 date-time (UTC when it names no offset), as epoch ms."""
    text = _query(request, name)
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        raise BadParameter(
            f"must be an ISO 8601 date-time like 2026-05-01T12:00:00Z, got {text!r}", name
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return int(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise BadParameter(f"out of range: {text!r}", name) from None


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = _query(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(f"must be a whole number, got {text!r}", name) from None
    if not low <= value <= high:
        raise BadParameter(f"must be {low} to {high}, got {value}", name)
    return value


def _bool(request: Request, name: str) -> bool:
    text = _query(request, name)
    if text is None or text.lower() in ("false", "0"):
        return False
    if text.lower() in ("true", "1"):
        return True
    raise BadParameter(f"must be true or false, got {text!r}", name)


def _in_query(build: Callable[[], T]) -> T:
    """What the service refuses of values read from the query string is a bad parameter (400)."""
    try:
        return build()
    except Invalid as exc:
        raise BadParameter(exc.detail, exc.field) from None


def _blank(raw: bytes) -> bool:
    """No body. Whitespace alone is a body, and not JSON (RFC 8259 wants a value): 400, as
    schemathesis expects of a document whose request body is optional."""
    return not raw


async def _body(request: Request, required: bool = True) -> Any:
    raw = await request.body()
    if _blank(raw):
        if required:
            raise AdminError("a JSON body is required")
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AdminError("the body is not JSON") from None


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object", "body")
    return data


def _page(page: Page) -> JSONResponse:
    return JSONResponse(page.to_dict())


def _event_filter(request: Request) -> EventFilter:
    return EventFilter(
        network=_query(request, "network"),
        type=_query(request, "type"),
        invitee=_query(request, "invitee"),
        invitor=_query(request, "invitor"),
        state=_query(request, "state"),
        since_ms=_time(request, "since"),
        until_ms=_time(request, "until"),
    )


def _failed_filter(request: Request) -> FailedFilter:
    return FailedFilter(
        targets=_query_list(request, "target"),
        networks=_query_list(request, "network"),
        event=_query(request, "event"),
        since_ms=_time(request, "since"),
        until_ms=_time(request, "until"),
        error=_query(request, "error"),
    )


def _names(f: dict[str, Any], key: str) -> frozenset[str]:
    value = f.get(key, [])
    # An empty name is refused, not read as "no filter": it would select every one.
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Invalid("must be a list of non-empty strings", key)
    return frozenset(value)


def _when(f: dict[str, Any], key: str) -> int | None:
    if key not in f:
        return None
    value = f[key]
    if not isinstance(value, str):
        raise Invalid("must be an ISO 8601 date-time", key)
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise Invalid(f"must be an ISO 8601 date-time, got {value!r}", key) from None
    try:
        return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise Invalid(f"out of range: {value!r}", key) from None


def _failed_filter_from(data: Any) -> FailedFilter:
    """The `failed` selection of a replay body: the filters of GET /deliveries/failed."""
    f = _object(data)
    unknown = sorted(set(f) - {"target", "network", "event", "since", "until", "error"})
    if unknown:
        raise Invalid("unknown filter (known: target, network, event, since, until, error)", unknown[0])

    def names(key: str) -> frozenset[str]:
        return _names(f, key)

    def when(key: str) -> int | None:
        return _when(f, key)

    # An empty one is refused, not read as "no filter": it would replay every dead letter.
    for key in ("event", "error"):
        if key in f and (not isinstance(f[key], str) or not f[key]):
            raise Invalid("must be a non-empty string (leave it out for no filter)", key)
    return FailedFilter(
        targets=names("target"),
        networks=names("network"),
        event=f.get("event"),
        since_ms=when("since"),
        until_ms=when("until"),
        error=f.get("error"),
    )


def _suppressed_filter(request: Request) -> SuppressedFilter:
    return SuppressedFilter(
        networks=_query_list(request, "network"),
        reasons=_query_list(request, "reason"),
        since_ms=_time(request, "since"),
        until_ms=_time(request, "until"),
    )


def _suppressed_filter_from(data: Any) -> SuppressedFilter:
    """The body of POST /suppressed/release: the filters of GET /suppressed."""
    f = _object(data)
    unknown = sorted(set(f) - {"network", "reason", "since", "until"})
    if unknown:
        raise Invalid("unknown filter (known: network, reason, since, until)", unknown[0])
    return SuppressedFilter(_names(f, "network"), _names(f, "reason"), _when(f, "since"), _when(f, "until"))


# -- the API ------------------------------------------------------------------------------------


def _callback_filter(request: Request) -> CallbackFilter:
    return CallbackFilter(
        network=_query(request, "network"),
        outcome=_query(request, "outcome"),
        unroutable=_bool(request, "unroutable"),
        since_ms=_time(request, "since"),
        until_ms=_time(request, "until"),
    )


def base_url(request: Request, public_url: str | None) -> tuple[str, str]:
    """(the ingest's base URL as the portal reaches it, where it came from): GATEWAY_PUBLIC_URL,
    else the scheme and host this request came to."""
    if public_url:
        return public_url, "GATEWAY_PUBLIC_URL"
    return f"{request.url.scheme}://{request.url.netloc}", "request"


def send_to(request: Request, public_url: str | None) -> str:
    """Where a test callback goes: GATEWAY_PUBLIC_URL, else this web process' own address (never
    the Host header the request named)."""
    if public_url:
        return public_url
    server = request.scope.get("server")
    if not server or server[1] is None:
        raise Invalid("this web process listens on no TCP port: set GATEWAY_PUBLIC_URL", "network")
    host = f"[{server[0]}]" if ":" in server[0] else server[0]
    return f"{request.url.scheme}://{host}:{server[1]}"


def admin_api(
    store: Store, queue_name: str = "gateway-deliveries", public_url: str | None = None
) -> Starlette:
    """The ASGI app to mount at /api/v1 (`public_url`: GATEWAY_PUBLIC_URL)."""
    service = Service(store, queue_name)

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    async def listing(fn: Callable[..., Page], *args: Any) -> Page:
        """A list read from query parameters only: what the service refuses is one of them (400)."""
        try:
            page: Page = await call(fn, *args)
        except Invalid as exc:  # a cursor this API did not give out
            raise BadParameter(exc.detail, exc.field) from None
        return page

    async def from_query(fn: Callable[..., Any], *args: Any) -> Any:
        """A read whose arguments all came from the query string: what the service refuses is a
        bad parameter (400), not a bad body (422)."""
        try:
            return await call(fn, *args)
        except Invalid as exc:
            raise BadParameter(exc.detail, exc.field) from None

    async def openapi(request: Request) -> Response:
        return JSONResponse(SPEC)

    async def me(request: Request) -> Response:
        p = _principal(request)
        return JSONResponse(
            {
                "id": p.key_id,
                "name": p.name,
                "kind": "operator" if p.is_operator else "provider",
                "networks": None if p.networks is None else sorted(p.networks),
            }
        )

    async def events(request: Request) -> Response:
        p = _principal(request)
        filters = _in_query(lambda: _event_filter(request))
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        return _page(await listing(service.list_events, p, filters, _query(request, "cursor"), limit))

    async def event(request: Request) -> Response:
        p = _principal(request)
        return JSONResponse(await call(service.get_event, p, request.path_params["event_id"]))

    async def targets(request: Request) -> Response:
        p = _principal(request)
        if request.method == "POST":
            data = await _body(request)
            made = await call(service.create_target, p, data)
            return JSONResponse(
                made, status_code=201, headers={"Location": f"/api/v1/targets/{made['name']}"}
            )
        return JSONResponse(await call(service.targets_page, p))

    async def target(request: Request) -> Response:
        p = _principal(request)
        name = request.path_params["name"]
        if request.method == "PUT":
            data = await _body(request)
            return JSONResponse(await call(service.update_target, p, name, data))
        if request.method == "DELETE":
            await call(service.delete_target, p, name)
            return Response(status_code=204)
        return JSONResponse(await call(service.get_target, p, name))

    async def pause(request: Request) -> Response:
        p = _principal(request)
        body = _object(await _body(request, required=False))
        reason = body.get("reason")
        if "reason" in body and not isinstance(reason, str):
            raise Invalid("must be a string", "reason")
        return JSONResponse(await call(service.pause_target, p, request.path_params["name"], reason))

    async def resume(request: Request) -> Response:
        p = _principal(request)
        return JSONResponse(await call(service.resume_target, p, request.path_params["name"]))

    async def validate(request: Request) -> Response:
        p = _principal(request)
        # No body: the stored target. A body, even {}, is a declaration to validate.
        declaration = None if _blank(await request.body()) else _object(await _body(request))
        return JSONResponse(await call(service.validate_target, p, request.path_params["name"], declaration))

    async def test(request: Request) -> Response:
        p = _principal(request)
        body = _object(await _body(request, required=False))
        unknown = sorted(set(body) - {"wait", "invitee", "invitor", "network_id", "event"})
        if unknown:
            raise Invalid("unknown key (known: wait, invitee, invitor, network_id, event)", unknown[0])
        wait = body.get("wait", TEST_WAIT)
        if isinstance(wait, bool) or not isinstance(wait, int) or not 1 <= wait <= MAX_TEST_WAIT:
            raise Invalid(f"must be whole seconds from 1 to {MAX_TEST_WAIT}", "wait")
        fields = {k: v for k, v in body.items() if k != "wait"}
        for key, value in fields.items():
            if not isinstance(value, str) or not value:
                raise Invalid("must be a non-empty string", key)
        if "event" in fields and fields["event"] not in EVENT_TYPES:
            raise Invalid(f"must be one of {', '.join(EVENT_TYPES)}", "event")
        return JSONResponse(await call(service.test_target, p, request.path_params["name"], wait, fields))

    async def failed(request: Request) -> Response:
        p = _principal(request)
        filters = _in_query(lambda: _failed_filter(request))
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        return _page(await listing(service.failed_deliveries, p, filters, _query(request, "cursor"), limit))

    async def delivery(request: Request) -> Response:
        p = _principal(request)
        return JSONResponse(await call(service.get_delivery, p, request.path_params["delivery_id"]))

    async def replay_one(request: Request) -> Response:
        p = _principal(request)
        did = request.path_params["delivery_id"]
        force = _bool(request, "force")
        # Not found (or not the key's) before anything is replayed.
        await call(service.get_delivery, p, did)
        results = await call(service.replay, p, [did], force)
        return JSONResponse(replay_json(results))

    async def replay(request: Request) -> Response:
        p = _principal(request)
        body = _object(await _body(request))
        unknown = sorted(set(body) - {"delivery_ids", "failed", "force"})
        if unknown:
            raise Invalid("unknown key (known: delivery_ids, failed, force)", unknown[0])
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise Invalid("must be true or false", "force")
        if ("delivery_ids" in body) == ("failed" in body):
            raise Invalid(
                "give delivery_ids or failed (a selection of dead letters), not both", "delivery_ids"
            )
        if "delivery_ids" in body:
            ids = body["delivery_ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
                raise Invalid("must be a non-empty list of delivery ids", "delivery_ids")
            results = await call(service.replay, p, ids, force)
        else:
            results = await call(service.replay_failed, p, _failed_filter_from(body["failed"]), force)
        return JSONResponse(replay_json(results))

    async def erasure(request: Request) -> Response:
        p = _principal(request)
        body = _object(await _body(request))
        unknown = sorted(set(body) - {"number", "networks"})
        if unknown:
            raise Invalid("unknown key (known: number, networks)", unknown[0])
        if "number" not in body:
            raise Invalid("is required: the phone number to forget", "number")
        networks = body.get("networks")
        if "networks" in body and not isinstance(networks, list):
            raise Invalid("must be a non-empty list of network ids (leave it out for all)", "networks")
        return JSONResponse(await call(service.forget, p, body["number"], networks))

    async def holds(request: Request) -> Response:
        p = _principal(request)
        network = _query(request, "network") or None
        return JSONResponse({"items": await call(service.list_holds, p, network)})

    async def hold(request: Request) -> Response:
        p = _principal(request)
        lifted = await call(service.lift_hold, p, request.path_params["hold_id"])
        log.info("hold %s (network %s) lifted by key %s", lifted["id"], lifted["network"], p.key_id)
        return JSONResponse(lifted)

    async def suppressed(request: Request) -> Response:
        p = _principal(request)
        filters = _in_query(lambda: _suppressed_filter(request))
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        return _page(await listing(service.suppressed, p, filters, _query(request, "cursor"), limit))

    async def release(request: Request) -> Response:
        p = _principal(request)
        filters = _suppressed_filter_from(await _body(request, required=False))
        results = await call(service.release_suppressed, p, filters)
        return JSONResponse(replay_json(results))

    async def overview(request: Request) -> Response:
        p = _principal(request)
        return JSONResponse(await call(service.overview, p))

    # -- callbacks as received, connecting Acrobits (callbacks.py, connect.py) --------------------
    async def callbacks(request: Request) -> Response:
        p = _principal(request)
        filters = _in_query(lambda: _callback_filter(request))
        limit = _int(request, "limit", 50, 1, MAX_LIMIT)
        if filters.unroutable and not p.is_operator:
            raise HTTPException(403, "Forbidden: unroutable callbacks are an operator key's")
        return _page(await listing(service.callbacks.list, p, filters, _query(request, "cursor"), limit))

    async def test_callback(request: Request) -> Response:
        p = _principal(request)
        body = _object(await _body(request))
        unknown = sorted(set(body) - {"network", "event", "format", "invitee"})
        if unknown:
            raise Invalid("unknown key (known: network, event, format, invitee)", unknown[0])
        for key in ("event", "format", "invitee"):
            if key in body and not isinstance(body[key], str):
                raise Invalid("must be a string", key)
        where = send_to(request, public_url)
        return JSONResponse(
            await call(
                service.connect.send_test,
                p,
                body.get("network"),
                where,
                body.get("event", INVITATION_CREATED),
                body.get("format", "json"),
                body.get("invitee"),
            )
        )

    async def connect(request: Request) -> Response:
        p = _principal(request)
        network = _query(request, "network")
        if network is None:
            raise BadParameter("is required: the network to connect", "network")
        url, source = base_url(request, public_url)
        return JSONResponse(await from_query(service.connect.settings, p, network, url, source))

    async def tokens(request: Request) -> Response:
        p = _principal(request)
        if request.method == "POST":
            body = _object(await _body(request))
            unknown = sorted(set(body) - {"network"})
            if unknown:
                raise Invalid("unknown key (known: network)", unknown[0])
            made = await call(
                service.connect.create_token, p, body.get("network"), base_url(request, public_url)[0]
            )
            log.info("ingest token %s for network %s made by key %s", made["id"], made["network"], p.key_id)
            return JSONResponse(made, status_code=201)
        network = _query(request, "network")
        return JSONResponse({"items": await from_query(service.connect.list_tokens, p, network)})

    async def token(request: Request) -> Response:
        p = _principal(request)
        removed = await call(service.connect.remove_token, p, request.path_params["token_id"])
        log.info(
            "ingest token %s of network %s removed by key %s", removed["id"], removed["network"], p.key_id
        )
        return JSONResponse(removed)

    async def keys_(request: Request) -> Response:
        p = _operator(request)
        if request.method == "POST":
            body = _object(await _body(request))
            unknown = sorted(set(body) - {"name", "networks"})
            if unknown:
                raise Invalid("unknown key (known: name, networks)", unknown[0])
            name = body.get("name")
            if not isinstance(name, str):
                raise Invalid("must be a string", "name")
            networks = body.get("networks")
            if networks is not None and (
                not isinstance(networks, list) or not all(isinstance(n, str) for n in networks)
            ):
                raise Invalid("must be a list of network ids, or null for an operator key", "networks")
            made, secret = await call(service.create_key, p, name, networks)
            log.info("admin API key %s (%s) made by key %s", made["id"], made["name"], p.key_id)
            return JSONResponse({**made, "key": secret}, status_code=201)
        return JSONResponse({"items": await call(service.list_keys, p)})

    async def key(request: Request) -> Response:
        p = _operator(request)
        revoked = await call(service.revoke_key, p, request.path_params["key_id"])
        log.info("admin API key %s revoked by key %s", revoked["id"], p.key_id)
        return JSONResponse(revoked)

    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/me", me, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/events/{event_id}", event, methods=["GET"]),
        Route("/targets", targets, methods=["GET", "POST"]),
        Route("/targets/{name}", target, methods=["GET", "PUT", "DELETE"]),
        Route("/targets/{name}/pause", pause, methods=["POST"]),
        Route("/targets/{name}/resume", resume, methods=["POST"]),
        Route("/targets/{name}/validate", validate, methods=["POST"]),
        Route("/targets/{name}/test", test, methods=["POST"]),
        Route("/deliveries/failed", failed, methods=["GET"]),
        Route("/deliveries/replay", replay, methods=["POST"]),
        Route("/deliveries/{delivery_id}", delivery, methods=["GET"]),
        Route("/deliveries/{delivery_id}/replay", replay_one, methods=["POST"]),
        Route("/erasures", erasure, methods=["POST"]),
        Route("/holds", holds, methods=["GET"]),
        Route("/holds/{hold_id}", hold, methods=["DELETE"]),
        Route("/suppressed", suppressed, methods=["GET"]),
        Route("/suppressed/release", release, methods=["POST"]),
        Route("/overview", overview, methods=["GET"]),
        Route("/callbacks", callbacks, methods=["GET"]),
        Route("/callbacks/test", test_callback, methods=["POST"]),
        Route("/connect", connect, methods=["GET"]),
        Route("/tokens", tokens, methods=["GET", "POST"]),
        Route("/tokens/{token_id}", token, methods=["DELETE"]),
        Route("/keys", keys_, methods=["GET", "POST"]),
        Route("/keys/{key_id}", key, methods=["DELETE"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(AuthenticationMiddleware, backend=KeyAuthBackend(store), on_error=_auth_error),
        ],
        exception_handlers={AdminError: _admin_error, HTTPException: _http_error},
    )

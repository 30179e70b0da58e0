"""The OpenAPI 3.1 description of the admin API (api.py), as data; served at /api/v1/openapi.json.

Written by hand next to the code it describes, and checked against the running server by
schemathesis (tests/admin/test_schemathesis.py): every status an operation can answer is listed.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.admin.queries import EVENT_TYPE_CHOICES, MAX_LIMIT, STATE_FILTERS, STATES, SUPPRESSION_KINDS

_EVENT_TYPES = ["invitation_created", "invitation_accepted"]
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _link(operation: str, parameter: str, pointer: str) -> dict[str, Any]:
    return {"operationId": operation, "parameters": {parameter: f"$response.body#{pointer}"}}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/{_PROBLEM_NAMES[c]}"} for c in codes}


_PROBLEM_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    422: "Invalid",
}
_PROBLEM_TEXT = {
    400: "The body is missing or is not JSON, or a query parameter is not as documented (`field` names it).",
    401: "No key, or an unknown or revoked one.",
    403: "An operator endpoint called with a provider key.",
    404: "No such thing, or not one this key may see (the two are not told apart).",
    409: "The name is taken, or the target is declared in the configuration file.",
    422: "A value in the body is not valid; `field` names it.",
}


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


_DATETIME = {"type": "string", "format": "date-time"}
# Query parameters are never empty: an empty one is refused (400), not read as "no filter".
_TEXT = {"type": "string", "minLength": 1}
_TEXTS = {"type": "array", "items": _TEXT}
# minLength with an enum says nothing more to a validator, but it has schemathesis' coverage phase
# try the empty value every run (its fuzzing found `?type=` read as "no filter" only by luck).
_EVENT_TYPE = {**_TEXT, "enum": list(EVENT_TYPE_CHOICES)}
_SUPPRESSED_BY = {
    "type": ["string", "null"],
    "enum": [*SUPPRESSION_KINDS, None],
    "description": "The rule that held it back (set once suppressed, kept after a release).",
}
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_LIMIT = _param(
    "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "Page size."
)
_CURSOR = _param("cursor", "query", _TEXT, "`next_cursor` of the previous page.")
_TARGET_NAME = _param(
    "name", "path", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "The target's name."
)
_DELIVERY_ID = _param(
    "delivery_id", "path", {"type": "string"}, "EVENTID-TARGET, as in lists and in the Idempotency-Key sent."
)
_FAILED_FILTERS = [
    _param("target", "query", _TEXTS, "Only these targets."),
    _param("network", "query", _TEXTS, "Only these network ids."),
    _param("event", "query", _EVENT_TYPE, "Only this event type."),
    _param("since", "query", _DATETIME, "Failed at or after."),
    _param("until", "query", _DATETIME, "Failed at or before."),
    _param("error", "query", _TEXT, "The last error contains this (any case)."),
]

_SUPPRESSED_FILTERS = [
    _param("network", "query", _TEXTS, "Only these network ids."),
    _param(
        "reason",
        "query",
        {"type": "array", "items": {**_TEXT, "enum": list(SUPPRESSION_KINDS)}},
        "Only those held back by these rules.",
    ),
    _param("since", "query", _DATETIME, "Received at or after."),
    _param("until", "query", _DATETIME, "Received at or before."),
]

_HEALTH = {
    "type": "object",
    "required": ["state", "manual", "reason", "since", "failures", "held_deliveries", "in_flight"],
    "properties": {
        "state": {"type": "string", "enum": ["active", "paused", "disabled"]},
        "manual": {"type": "boolean", "description": "Paused by hand (no probes)."},
        "reason": _NULLABLE_STR,
        "since": {"type": ["string", "null"], "format": "date-time"},
        "failures": {"type": "integer", "description": "Consecutive failures."},
        "held_deliveries": {"type": "integer"},
        "in_flight": {"type": "integer"},
    },
}

_TARGET_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    "networks": {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "minItems": 1,
        "description": 'Network ids served; ["*"] for all (operator keys only).',
    },
    "events": {"type": "array", "items": {"type": "string", "enum": _EVENT_TYPES}, "minItems": 1},
    "url": {"type": "string", "pattern": "^https?://", "description": "URL template with %placeholders%."},
    "post_data": {"type": "string", "description": "Body template; none means GET."},
    "content_type": {"type": "string", "minLength": 1},
    "method": {"type": "string", "enum": list(_METHODS)},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    "auth": {
        "type": "object",
        "required": ["username", "password"],
        "additionalProperties": False,
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
        "description": "HTTP Basic.",
    },
    "signing_secret": {"type": "string", "description": "Standard Webhooks whsec_... secret."},
    "success_codes": {
        "type": "array",
        "items": {"type": "integer", "minimum": 100, "maximum": 599},
        "minItems": 1,
    },
    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
    "retry": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 604800}, "maxItems": 25},
    "vars": {"type": "object", "additionalProperties": {"type": "string"}},
    "rate": {"type": "string", "pattern": "^[1-9][0-9]{0,8}/(s|m|min|h)$"},
    "concurrency": {"type": "integer", "minimum": 1, "maximum": 1000},
    "expire_after": {"type": ["integer", "string"], "description": 'Seconds, or "90s", "5m", "1h", "2d".'},
    "accepted_waits_for_created": {
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, {"const": False}],
        "description": "How long an invitation_accepted delivery waits at most for its invitation_created "
        'one (seconds or "6h"); false: never. Default: the created delivery\'s expiry.',
    },
    "proxy": {"type": "string"},
    "pause_after": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "failures": {"type": "integer", "minimum": 0, "maximum": 100000},
            "seconds": {"type": "integer", "minimum": 0, "maximum": 604800},
        },
    },
    "probe_interval": {"type": "integer", "minimum": 1, "maximum": 3600},
    "sends": {
        "type": ["string", "null"],
        "enum": ["sms", "email", None],
        "description": "What it sends to the invitee, at the provider's cost (check and startup warn "
        "about a network routing to it without limits).",
    },
    "preset": {
        "type": "string",
        "description": "A preset (shipped, or in GATEWAY_PRESETS_DIR); `vars` gives its variables.",
    },
    "oauth2": {
        "type": "object",
        "required": ["token_url", "client_id", "client_secret"],
        "additionalProperties": False,
        "properties": {k: {"type": "string"} for k in ("token_url", "client_id", "client_secret", "scope")},
    },
    "delivered_statuses": {
        "type": ["array", "object"],
        "items": {"type": "integer", "minimum": 300, "maximum": 599},
        "additionalProperties": {"type": "string"},
        "description": 'Answers that count as delivered: [409], or {"404": "text the body contains"}.',
    },
    "previous_signing_secret": {"type": "string", "description": "During a rotation, with its end:"},
    "previous_signing_secret_until": {"type": "string", "format": "date-time"},
    "lookups": {
        "type": "object",
        "additionalProperties": {"type": "object"},
        "description": "Lookups by name (README, Lookups): url, fields, cache, not_found, on_not_found, ...",
    },
}

_TARGET_DECLARATION = {
    "type": "object",
    "examples": [
        {
            "name": "crm",
            "networks": ["net-1"],
            "url": "https://crm.example.com/invitations",
            "post_data": '{"phone": "%invitee%", "from": "%invitor%"}',
            "content_type": "application/json",
            "retry": [5, 300],
        }
    ],
    "required": ["name", "networks", "url"],
    "additionalProperties": False,
    "properties": {
        **_TARGET_FIELDS,
        # What a declaration may say more loosely than a read answers, as in the file: one network
        # or event as a string, a method in any case, null for no post_data, secret or proxy.
        "networks": {"anyOf": [_TARGET_FIELDS["networks"], {"type": "string", "minLength": 1}]},
        "events": {"anyOf": [_TARGET_FIELDS["events"], {"type": "string", "enum": _EVENT_TYPES}]},
        "method": {
            "type": "string",
            "pattern": "^(" + "|".join("".join(f"[{c}{c.lower()}]" for c in m) for m in _METHODS) + ")$",
        },
        **{
            k: {**_TARGET_FIELDS[k], "type": ["string", "null"]}
            for k in ("post_data", "signing_secret", "proxy")
        },
        # What a read adds may be sent back with an update; it is ignored.
        "source": {"type": "string", "enum": ["file", "api"], "readOnly": True},
        "health": {**_HEALTH, "readOnly": True},
    },
    "description": (
        "A target, as in the configuration file's [[targets]] (README). No ${ENV} references: "
        "secrets are given as values, stored in Redis and shown as ******** (send ******** back "
        "to keep the stored value)."
    ),
}

# PUT /targets/{name} and POST /targets/{name}/validate: the path names the target, so the body
# may leave `name` out (given, it must be the path's, else 422).
_NAMED_TARGET_DECLARATION = {
    **_TARGET_DECLARATION,
    "required": ["networks", "url"],
    "description": (
        "A TargetDeclaration for the target the path names: `name` may be left out (it is the "
        "path's); given, it must be the same."
    ),
}

_TARGET = {
    "type": "object",
    "required": ["name", "networks", "url", "events", "method", "source", "health"],
    "properties": {
        **_TARGET_FIELDS,
        "source": {"type": "string", "enum": ["file", "api"]},
        "health": _HEALTH,
    },
}

_EVENT: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "type",
        "invitee",
        "invitee_raw",
        "invitor",
        "network_id",
        "received_at",
        "source_format",
    ],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": list(EVENT_TYPE_CHOICES)},
        "invitee": {"type": "string"},
        "invitee_raw": {"type": "string"},
        "invitee_e164": {
            **_NULLABLE_STR,
            "description": "The number in E.164 (null: it has none, or the event predates the field).",
        },
        "invitor": {"type": "string"},
        "network_id": {"type": "string"},
        "received_at": {"type": "string", "format": "date-time"},
        "source_format": {"type": "string"},
        "client": _NULLABLE_STR,
        "message": {"type": "string"},
        "created_id": {
            "type": "string",
            "description": "On an invitation_accepted: the same invitation's invitation_created event, "
            "when a target orders the two (README, Delivery, retries, records).",
        },
    },
}

_DELIVERY_STATE = {
    "status": {"type": "string", "enum": list(STATES)},
    "attempt_count": {"type": "integer", "description": "Requests made."},
    "retries": {"type": "integer"},
    "throttles": {"type": "integer"},
    "replays": {"type": "integer"},
    "last_status_code": _NULLABLE_INT,
    "last_error": _NULLABLE_STR,
    "updated_at": {"type": ["string", "null"], "format": "date-time"},
    "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
    "waiting": _NULLABLE_STR,
    "suppressed_by": _SUPPRESSED_BY,
}

_ATTEMPT = {
    "type": "object",
    "required": ["target", "outcome"],
    "properties": {
        "target": {"type": "string"},
        "attempt": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "outcome": {"type": "string"},
        "status_code": _NULLABLE_INT,
        "latency_ms": {"type": ["number", "null"]},
        "error": _NULLABLE_STR,
        "response": _NULLABLE_STR,
        "note": {
            "type": "string",
            "description": "Why it was made when it was: an invitation_accepted delivery that waited "
            "for its invitation_created one, or went after the ordering bound.",
        },
    },
}

_ERASURE = {
    "type": "object",
    "required": [
        "erasure_id",
        "number_digest",
        "networks",
        "events",
        "deliveries_cancelled",
        "dead_letters",
        "keys",
        "holders",
    ],
    "properties": {
        "erasure_id": {"type": "string", "description": "As in the audit line of the log."},
        "number_digest": {"type": "string", "description": "sha256 of the number's digits, shortened."},
        "networks": {"type": ["array", "null"], "items": {"type": "string"}, "description": "null: all."},
        "events": {"type": "integer"},
        "deliveries_cancelled": {"type": "integer", "description": "Waiting ones, never sent now."},
        "dead_letters": {"type": "integer"},
        "keys": {"type": "integer", "description": "Redis keys deleted, the events' own included."},
        "holders": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}},
            "description": "The same counts per holder (events, limits, lookups, test_sends, ...).",
        },
    },
}

_COUNTS = {k: {"type": "integer"} for k in ("received", "delivered", "failed", "waiting", "suppressed")}

_KEY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "kind", "networks", "created_at", "last_used_at", "revoked", "revoked_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["operator", "provider"]},
        "networks": {"type": ["array", "null"], "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "last_used_at": {"type": ["string", "null"], "format": "date-time"},
        "revoked": {"type": "boolean"},
        "revoked_at": {"type": ["string", "null"], "format": "date-time"},
    },
}

_REPLAY_RESULT = {
    "type": "object",
    "required": ["results", "counts"],
    "properties": {
        "results": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Per delivery id: replayed | pending (already waiting) | held (target paused) "
            "| delivered (force sends it again) | unknown | another status (refused).",
        },
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}


def _page(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": item}, "next_cursor": _NULLABLE_STR},
    }


_TARGET_OK = _json(_ref("Target"), "The target.")
_STATE_CHANGE = _json(
    {
        "type": "object",
        "required": ["target", "before", "state", "held_deliveries"],
        "properties": {
            "target": {"type": "string"},
            "before": {"type": "string"},
            "state": {"type": "string"},
            "held_deliveries": {"type": "integer"},
        },
    },
    "The state before and after.",
)

# -- callbacks as received, connecting Acrobits (gateway/admin/callbacks.py, connect.py) -----------

_OUTCOMES = ["accepted", "duplicate", "suppressed", "spooled", "rejected"]
_PORTAL_KEYS = [
    f"invitation{which}{key}"
    for which in ("Created", "Accepted")
    for key in ("Url", "PostData", "ContentType")
]
_PORTAL = {
    "type": "object",
    "required": _PORTAL_KEYS,
    "properties": {k: {"type": "string"} for k in _PORTAL_KEYS},
}
_NETWORK_BODY = {"type": "string", "minLength": 1, "maxLength": 128, "description": "A network id (not '*')."}

_CALLBACK_SCHEMAS: dict[str, Any] = {
    "Callback": {
        "type": "object",
        "required": [
            "id",
            "received_at",
            "network",
            "event",
            "method",
            "path",
            "content_type",
            "body",
            "body_bytes",
            "fields",
            "field_names",
            "client",
            "token",
            "outcome",
            "status",
            "event_id",
            "duplicate_of",
            "reason",
            "field",
            "test_id",
            "hint",
        ],
        "properties": {
            "id": {"type": "string"},
            "received_at": {"type": "string", "format": "date-time"},
            "network": {"type": ["string", "null"], "description": "null: unroutable (operator keys only)."},
            "event": {"type": "string", "enum": _EVENT_TYPES},
            "method": {"type": "string"},
            "path": {"type": "string", "description": "Path and query, the token segment as ****."},
            "content_type": _NULLABLE_STR,
            "body": {"type": "string", "description": "The first 1 KiB, secrets masked."},
            "body_bytes": {"type": "integer"},
            "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            "field_names": {"type": ["array", "null"], "items": {"type": "string"}},
            "client": _NULLABLE_STR,
            "token": {"type": ["string", "null"], "enum": ["path", "query", "header", None]},
            "outcome": {"type": "string", "enum": _OUTCOMES},
            "status": {"type": "integer", "description": "The HTTP status answered."},
            "event_id": _NULLABLE_STR,
            "duplicate_of": _NULLABLE_STR,
            "reason": _NULLABLE_STR,
            "field": _NULLABLE_STR,
            "test_id": _NULLABLE_STR,
            "hint": {
                "type": ["string", "null"],
                "description": "What to change in the portal (or why nothing).",
            },
        },
    },
    "IngestToken": {
        "type": "object",
        "required": ["id", "network", "source", "ref", "created_at", "created_by"],
        "properties": {
            "id": {"type": ["string", "null"], "description": "null: declared in the file."},
            "network": {"type": "string"},
            "source": {"type": "string", "enum": ["api", "file"]},
            "ref": {"type": "string", "description": "${VAR}, or the start of the token's sha256 digest."},
            "created_at": {"type": ["string", "null"], "format": "date-time"},
            "created_by": _NULLABLE_STR,
        },
    },
    "PortalSettings": {
        "type": "object",
        "required": ["get", "json"],
        "properties": {"get": _PORTAL, "json": _PORTAL},
    },
}

_TOKENS = _json(
    {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("IngestToken")}},
    },
    "The tokens.",
)
_CALLBACK_PATHS: dict[str, Any] = {
    "/callbacks": {
        "get": {
            "operationId": "listCallbacks",
            "summary": "Callbacks as received, newest first, each with what became of it.",
            "description": (
                "The last GATEWAY_CALLBACKS_KEPT callbacks the ingest took and as many rejected ones, per "
                "network, for GATEWAY_CALLBACKS_DAYS. A page may hold fewer than `limit` items and still "
                "carry a `next_cursor`."
            ),
            "parameters": [
                _param("network", "query", _TEXT, "Only this network id."),
                _param("outcome", "query", {**_TEXT, "enum": _OUTCOMES}, "Only this outcome."),
                _param(
                    "unroutable",
                    "query",
                    {"type": "boolean"},
                    "Only the callbacks whose network could not be told (operator keys only: 403).",
                ),
                _param("since", "query", _DATETIME, "Received at or after."),
                _param("until", "query", _DATETIME, "Received at or before."),
                _CURSOR,
                _LIMIT,
            ],
            "responses": {
                "200": _json(_page(_ref("Callback")), "A page of callbacks."),
                **_problems(400, 401, 403),
            },
        }
    },
    "/callbacks/test": {
        "post": {
            "operationId": "sendTestCallback",
            "summary": "Send one callback through this deployment's ingest, as the Contacts server would.",
            "description": (
                "With a one-time token for the network, to GATEWAY_PUBLIC_URL or this web process. It is "
                "delivered to the network's real targets (invitee +12025550123 unless given)."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["network"],
                            "additionalProperties": False,
                            "properties": {
                                "network": _NETWORK_BODY,
                                "event": {"type": "string", "enum": _EVENT_TYPES},
                                "format": {"type": "string", "enum": ["get", "json"]},
                                "invitee": {"type": "string", "pattern": "^[+]?[0-9]{3,20}$"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": [
                            "test_id",
                            "network",
                            "sent",
                            "status",
                            "answer",
                            "error",
                            "callback",
                            "event",
                        ],
                        "properties": {
                            "test_id": {"type": "string"},
                            "network": {"type": "string"},
                            "sent": {"type": "object"},
                            "status": _NULLABLE_INT,
                            "answer": {"type": "string"},
                            "error": _NULLABLE_STR,
                            "callback": {"anyOf": [_ref("Callback"), {"type": "null"}]},
                            "event": {"type": ["object", "null"]},
                        },
                    },
                    "What was sent, the answer, the callback as kept, its event with the deliveries so far.",
                ),
                **_problems(400, 401, 404, 422),
            },
        }
    },
    "/connect": {
        "get": {
            "operationId": "connectAcrobits",
            "summary": "What to paste into the Cloud Softphone portal for a network (the token as <TOKEN>).",
            "parameters": [_param("network", "query", _TEXT, "The network id.", required=True)],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": [
                            "network",
                            "base_url",
                            "base_url_source",
                            "token",
                            "settings",
                            "tokens",
                            "targets",
                        ],
                        "properties": {
                            "network": {"type": "string"},
                            "base_url": {"type": "string"},
                            "base_url_source": {
                                "type": "string",
                                "enum": ["GATEWAY_PUBLIC_URL", "request", "--url"],
                            },
                            "token": {"type": "string"},
                            "settings": _ref("PortalSettings"),
                            "tokens": {"type": "array", "items": _ref("IngestToken")},
                            "targets": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "The portal's values, the network's tokens and the targets its callbacks go to.",
                ),
                **_problems(400, 401, 404),
            },
        }
    },
    "/tokens": {
        "get": {
            "operationId": "listIngestTokens",
            "summary": "Ingest tokens: made through the API (by id) and declared in the file.",
            "parameters": [_param("network", "query", _TEXT, "Only this network's.")],
            "responses": {"200": _TOKENS, **_problems(400, 401, 404)},
        },
        "post": {
            "operationId": "createIngestToken",
            "summary": "Make an ingest token for a network: shown in this answer only, kept hashed.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["network"],
                            "additionalProperties": False,
                            "properties": {"network": _NETWORK_BODY},
                        }
                    }
                },
            },
            "responses": {
                "201": _json(
                    {
                        "allOf": [
                            _ref("IngestToken"),
                            {
                                "type": "object",
                                "required": ["token", "settings"],
                                "properties": {
                                    "token": {"type": "string"},
                                    "settings": _ref("PortalSettings"),
                                },
                            },
                        ]
                    },
                    "The token (its secret in `token`) and the portal's values with it.",
                ),
                **_problems(400, 401, 404, 409, 422),
            },
        },
    },
    "/tokens/{token_id}": {
        "parameters": [_param("token_id", "path", {"type": "string"}, "The token's id.")],
        "delete": {
            "operationId": "removeIngestToken",
            "summary": "Remove an API-made ingest token: refused (401) from the next callback on.",
            "responses": {"200": _json(_ref("IngestToken"), "The removed token."), **_problems(401, 404)},
        },
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "invitation-gateway admin API",
        "version": __version__,
        "description": (
            "Events, targets, deliveries and keys of an invitation-gateway. Every request carries "
            "`Authorization: Bearer gwk_...`. A provider key sees only its networks: anything else "
            "answers 404. Errors are application/problem+json (RFC 9457)."
        ),
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"key": []}],
    "paths": {
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
        "/me": {
            "get": {
                "operationId": "whoami",
                "summary": "The key in use.",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["id", "name", "kind", "networks"],
                            "properties": {
                                k: _KEY["properties"][k] for k in ("id", "name", "kind", "networks")
                            },
                        },
                        "The key.",
                    ),
                    **_problems(401),
                },
            }
        },
        "/events": {
            "get": {
                "operationId": "listEvents",
                "summary": "Invitations received, newest first.",
                "description": (
                    "A page may hold fewer than `limit` items and still carry a `next_cursor`: one "
                    "request looks at a bounded number of events."
                ),
                "parameters": [
                    _param("network", "query", _TEXT, "Only this network id."),
                    _param("type", "query", _EVENT_TYPE, "Event type."),
                    _param("invitee", "query", _TEXT, "Invitee, as normalized, as sent or in E.164."),
                    _param("invitor", "query", _TEXT, "Invitor."),
                    _param(
                        "state",
                        "query",
                        {**_TEXT, "enum": list(STATE_FILTERS)},
                        "A delivery in this state (waiting: pending or retrying).",
                    ),
                    _param("since", "query", _DATETIME, "Received at or after."),
                    _param("until", "query", _DATETIME, "Received at or before."),
                    _CURSOR,
                    _LIMIT,
                ],
                "responses": {
                    "200": {
                        **_json(_page(_ref("EventSummary")), "A page of events."),
                        "links": {"event": _link("getEvent", "event_id", "/items/0/id")},
                    },
                    **_problems(400, 401),
                },
            }
        },
        "/events/{event_id}": {
            "get": {
                "operationId": "getEvent",
                "summary": "One event, each delivery and every attempt.",
                "parameters": [_param("event_id", "path", {"type": "string"}, "The event id (a ULID).")],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["event", "deliveries"],
                            "properties": {
                                "event": _ref("Event"),
                                "deliveries": {"type": "array", "items": _ref("EventDelivery")},
                            },
                        },
                        "The event.",
                    ),
                    **_problems(401, 404),
                },
            }
        },
        "/targets": {
            "get": {
                "operationId": "listTargets",
                "summary": "The targets this key may see (file-declared and API-made).",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["version", "items", "unconfigured"],
                            "properties": {
                                "version": {
                                    "type": "integer",
                                    "description": "The configuration's version (0: none loaded).",
                                },
                                "items": {"type": "array", "items": _ref("Target")},
                                "unconfigured": {
                                    "type": "array",
                                    "description": "Targets removed from the configuration while paused, "
                                    "disabled or holding deliveries (resuming one lets the workers record "
                                    "its deliveries as skipped). An operator key's only: empty for a "
                                    "provider key.",
                                    "items": {
                                        "type": "object",
                                        "required": ["name", "health"],
                                        "properties": {"name": {"type": "string"}, "health": _HEALTH},
                                    },
                                },
                            },
                        },
                        "The targets.",
                    ),
                    **_problems(401),
                },
            },
            "post": {
                "operationId": "createTarget",
                "summary": "Make a target; every process uses it at once.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TargetDeclaration")}},
                },
                "responses": {
                    "201": {
                        **_TARGET_OK,
                        "description": "Made.",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "links": {
                            op: _link(op, "name", "/name")
                            for op in (
                                "getTarget",
                                "updateTarget",
                                "pauseTarget",
                                "resumeTarget",
                                "deleteTarget",
                            )
                        },
                    },
                    **_problems(400, 401, 409, 422),
                },
            },
        },
        "/targets/{name}": {
            "parameters": [_TARGET_NAME],
            "get": {"operationId": "getTarget", "responses": {"200": _TARGET_OK, **_problems(401, 404)}},
            "put": {
                "operationId": "updateTarget",
                "summary": "Replace an API-made target's declaration (the name stays).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NamedTargetDeclaration")}},
                },
                "responses": {"200": _TARGET_OK, **_problems(400, 401, 404, 409, 422)},
            },
            "delete": {
                "operationId": "deleteTarget",
                "summary": "Delete an API-made target; deliveries still waiting for it are skipped.",
                "responses": {"204": {"description": "Deleted."}, **_problems(401, 404, 409)},
            },
        },
        "/targets/{name}/pause": {
            "parameters": [_TARGET_NAME],
            "post": {
                "operationId": "pauseTarget",
                "summary": "Hold every delivery to the target until it is resumed.",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"reason": {"type": "string", "maxLength": 500}},
                            }
                        }
                    },
                },
                "responses": {"200": _STATE_CHANGE, **_problems(400, 401, 404, 422)},
            },
        },
        "/targets/{name}/resume": {
            "parameters": [_TARGET_NAME],
            "post": {
                "operationId": "resumeTarget",
                "summary": "Send the held deliveries now (also re-enables a target disabled by 410).",
                "description": (
                    "An operator key may also resume a target listed as `unconfigured` by GET "
                    "/targets: its held deliveries are then recorded as skipped."
                ),
                "responses": {"200": _STATE_CHANGE, **_problems(401, 404)},
            },
        },
        "/targets/{name}/validate": {
            "parameters": [_TARGET_NAME],
            "post": {
                "operationId": "validateTarget",
                "summary": "The exact request the target sends for a sample invitation, secrets redacted.",
                "description": (
                    "Nothing is sent. Without a body, the stored target. With a body (even {}), that "
                    "declaration is validated (as an update would) and shown instead; it is not saved."
                ),
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("NamedTargetDeclaration")}},
                },
                "responses": {"200": _json(_ref("Preview"), "The request."), **_problems(400, 401, 404, 422)},
            },
        },
        "/targets/{name}/test": {
            "parameters": [_TARGET_NAME],
            "post": {
                "operationId": "testTarget",
                "summary": "A worker sends a sample invitation to the target now; the exchange comes back.",
                "description": (
                    "Waits up to `wait` seconds for a worker: `completed` is false when none answered "
                    "(the request then lapses unsent)."
                ),
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "wait": {"type": "integer", "minimum": 1, "maximum": 60, "default": 30},
                                    "invitee": {"type": "string", "minLength": 1},
                                    "invitor": {"type": "string", "minLength": 1},
                                    "network_id": {"type": "string", "minLength": 1},
                                    "event": {"type": "string", "enum": _EVENT_TYPES},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("TestResult"), "The exchange."),
                    **_problems(400, 401, 404, 422),
                },
            },
        },
        "/deliveries/failed": {
            "get": {
                "operationId": "listFailedDeliveries",
                "summary": "Dead letters (failed or expired deliveries), newest first.",
                "parameters": [*_FAILED_FILTERS, _CURSOR, _LIMIT],
                "responses": {
                    "200": {
                        **_json(_page(_ref("DeadLetter")), "A page of dead letters."),
                        "links": {
                            "delivery": _link("getDelivery", "delivery_id", "/items/0/delivery_id"),
                            "replay": _link("replayDelivery", "delivery_id", "/items/0/delivery_id"),
                        },
                    },
                    **_problems(400, 401),
                },
            }
        },
        "/deliveries/replay": {
            "post": {
                "operationId": "replayDeliveries",
                "summary": "Replay deliveries by id, or the dead letters a selection names.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "delivery_ids": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "minItems": 1,
                                    },
                                    "failed": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "target": _TEXTS,
                                            "network": _TEXTS,
                                            "event": _EVENT_TYPE,
                                            "since": _DATETIME,
                                            "until": _DATETIME,
                                            "error": _TEXT,
                                        },
                                    },
                                    "force": {"type": "boolean", "default": False},
                                },
                                "oneOf": [{"required": ["delivery_ids"]}, {"required": ["failed"]}],
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("ReplayResult"), "What each replay did."),
                    **_problems(400, 401, 422),
                },
            }
        },
        "/deliveries/{delivery_id}": {
            "parameters": [_DELIVERY_ID],
            "get": {
                "operationId": "getDelivery",
                "summary": "One delivery, its event and its attempts.",
                "responses": {"200": _json(_ref("Delivery"), "The delivery."), **_problems(401, 404)},
            },
        },
        "/deliveries/{delivery_id}/replay": {
            "parameters": [_DELIVERY_ID],
            "post": {
                "operationId": "replayDelivery",
                "summary": "Replay one delivery.",
                "parameters": [
                    _param("force", "query", {"type": "boolean"}, "Send it again even if it was delivered.")
                ],
                "responses": {
                    "200": _json(_ref("ReplayResult"), "What the replay did."),
                    **_problems(400, 401, 404),
                },
            },
        },
        "/holds": {
            "get": {
                "operationId": "listHolds",
                "summary": "Destination prefixes the guard holds now, oldest first.",
                "description": (
                    "A held prefix's created invitations are kept, suppressed, until the hold ends "
                    "(`until`) or is lifted. The alert target is told when one starts and ends."
                ),
                "parameters": [_param("network", "query", _TEXT, "Only this network id.")],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": _ref("Hold")}},
                        },
                        "The holds.",
                    ),
                    **_problems(400, 401),
                },
            }
        },
        "/holds/{hold_id}": {
            "parameters": [_param("hold_id", "path", {"type": "string"}, "The hold's id (GET /holds).")],
            "delete": {
                "operationId": "liftHold",
                "summary": "Lift a hold now: the prefix takes invitations again.",
                "description": (
                    "What it held back stays suppressed: POST /suppressed/release with "
                    '`{"network": [...], "reason": ["guard"]}` sends it.'
                ),
                "responses": {
                    "200": _json(
                        {
                            "allOf": [
                                _ref("Hold"),
                                {
                                    "type": "object",
                                    "required": ["lifted"],
                                    "properties": {"lifted": {"type": "string"}},
                                },
                            ]
                        },
                        "The hold, lifted.",
                    ),
                    **_problems(401, 404),
                },
            },
        },
        "/suppressed": {
            "get": {
                "operationId": "listSuppressed",
                "summary": "Deliveries held back by an abuse limit, newest first.",
                "parameters": [*_SUPPRESSED_FILTERS, _CURSOR, _LIMIT],
                "responses": {
                    "200": _json(_page(_ref("Suppressed")), "A page of suppressed deliveries."),
                    **_problems(400, 401),
                },
            }
        },
        "/suppressed/release": {
            "post": {
                "operationId": "releaseSuppressed",
                "summary": "Release every suppressed delivery the filters select (at most 10,000).",
                "description": (
                    "Each is due at once and delivered once, as a replay. Check the count first "
                    "with GET /suppressed and the same filters. An empty body releases all of them."
                ),
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "network": {"type": "array", "items": {"type": "string"}},
                                    "reason": {
                                        "type": "array",
                                        "items": {"type": "string", "enum": list(SUPPRESSION_KINDS)},
                                    },
                                    "since": _DATETIME,
                                    "until": _DATETIME,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("ReplayResult"), "What each release did, and how many of each."),
                    **_problems(400, 401, 422),
                },
            }
        },
        "/erasures": {
            "post": {
                "operationId": "forgetNumber",
                "summary": "Erase a phone number: every record that holds it, in the key's networks.",
                "description": (
                    "Removes every event whose invitee or invitor is the number (in any spelling it "
                    "arrived in), with its deliveries (waiting ones are cancelled and never sent), "
                    "attempts and dead letters, and the number's dedupe keys, abuse-limit logs, "
                    "cached lookup answers and test sends. An operator key erases in every network, "
                    "a provider key in its own; `networks` narrows either. The answer counts what was "
                    "removed; the log gets one line without the number (`number_digest`). The number "
                    "goes in the body, never in a URL (URLs end up in access logs)."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["number"],
                                "properties": {
                                    "number": {
                                        "type": "string",
                                        "minLength": 3,
                                        "maxLength": 64,
                                        "description": "+15551231234, 15551231234, +1 (555) 123-1234: "
                                        "3 to 20 digits with an optional leading +, separators allowed.",
                                    },
                                    "networks": {
                                        "type": "array",
                                        "items": {"type": "string", "minLength": 1},
                                        "minItems": 1,
                                        "description": "Only these networks (each must be the key's).",
                                    },
                                },
                            },
                            "examples": {"number": {"value": {"number": "+1 555 123 1234"}}},
                        }
                    },
                },
                "responses": {
                    "200": _json(_ref("Erasure"), "What was removed."),
                    **_problems(400, 401, 422),
                },
            }
        },
        "/overview": {
            "get": {
                "operationId": "overview",
                "summary": "Per target, last 24 hours: received, delivered, failed, waiting, per hour.",
                "responses": {"200": _json(_ref("Overview"), "The counts."), **_problems(401)},
            }
        },
        **_CALLBACK_PATHS,
        "/keys": {
            "get": {
                "operationId": "listKeys",
                "summary": "Every key, revoked ones included (operator keys only).",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": _ref("Key")}},
                        },
                        "The keys.",
                    ),
                    **_problems(401, 403),
                },
            },
            "post": {
                "operationId": "createKey",
                "summary": "Make a key; its secret (`key`) is in this answer only.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string", "minLength": 1, "maxLength": 100},
                                    "networks": {
                                        "type": ["array", "null"],
                                        "items": {"type": "string"},
                                        "description": "A provider key's networks; null: operator.",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "allOf": [
                                _ref("Key"),
                                {
                                    "type": "object",
                                    "required": ["key"],
                                    "properties": {"key": {"type": "string", "pattern": "^gwk_"}},
                                },
                            ]
                        },
                        "The key, with its secret.",
                    ),
                    **_problems(400, 401, 403, 422),
                },
            },
        },
        "/keys/{key_id}": {
            "parameters": [_param("key_id", "path", {"type": "string"}, "The key's id.")],
            "delete": {
                "operationId": "revokeKey",
                "summary": "Revoke a key (it stays listed, refused).",
                "responses": {"200": _json(_ref("Key"), "The revoked key."), **_problems(401, 403, 404)},
            },
        },
    },
    "components": {
        "securitySchemes": {
            "key": {"type": "http", "scheme": "bearer", "description": "gwk_... (gateway keys)"}
        },
        "responses": {
            name: {
                "description": _PROBLEM_TEXT[code],
                "content": {"application/problem+json": {"schema": _ref("Problem")}},
            }
            for code, name in _PROBLEM_NAMES.items()
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "field": {"type": ["string", "null"]},
                    "invalid-params": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": ["string", "null"]},
                                "reason": {"type": "string"},
                            },
                        },
                    },
                },
            },
            **_CALLBACK_SCHEMAS,
            "Event": _EVENT,
            "EventSummary": {
                **_EVENT,
                "required": [*_EVENT["required"], "deliveries"],
                "properties": {
                    **_EVENT["properties"],
                    "deliveries": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string"},
                                "attempts": {"type": "integer"},
                                "last_status_code": _NULLABLE_INT,
                                "waiting": {
                                    **_NULLABLE_STR,
                                    "description": "Why it waits or was held back (a suppression's reason).",
                                },
                                "suppressed_by": _SUPPRESSED_BY,
                            },
                        },
                    },
                },
            },
            "EventDelivery": {
                "type": "object",
                "required": ["delivery_id", "target", "status", "target_health", "attempts"],
                "properties": {
                    "delivery_id": {"type": "string"},
                    "target": {"type": "string"},
                    **_DELIVERY_STATE,
                    "target_health": _HEALTH,
                    "attempts": {"type": "array", "items": _ref("Attempt")},
                },
            },
            "Delivery": {
                "type": "object",
                "required": [
                    "delivery_id",
                    "target",
                    "status",
                    "event",
                    "target_health",
                    "target_configured",
                    "attempts",
                ],
                "properties": {
                    "delivery_id": {"type": "string"},
                    "target": {"type": "string"},
                    **_DELIVERY_STATE,
                    "event": _ref("Event"),
                    "target_health": _HEALTH,
                    "target_configured": {
                        "type": "boolean",
                        "description": "False once the target is gone from the configuration.",
                    },
                    "attempts": {"type": "array", "items": _ref("Attempt")},
                },
            },
            "Attempt": _ATTEMPT,
            "DeadLetter": {
                "type": "object",
                "required": ["delivery_id", "failed_at", "target", "network", "event", "event_id", "status"],
                "properties": {
                    "delivery_id": {"type": "string"},
                    "failed_at": {"type": "string", "format": "date-time"},
                    "target": {"type": "string"},
                    "network": {"type": "string"},
                    "event": {"type": "string"},
                    "event_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["failed", "expired"]},
                    "attempts": {"type": "integer"},
                    "replays": {"type": "integer"},
                    "last_status_code": _NULLABLE_INT,
                    "last_error": _NULLABLE_STR,
                },
            },
            "Hold": {
                "type": "object",
                "required": ["id", "network", "prefix", "reason", "since", "until"],
                "properties": {
                    "id": {"type": "string"},
                    "network": {"type": "string"},
                    "prefix": {"type": "string", "description": "+ and the held digits, e.g. +8821."},
                    "reason": {"type": "string"},
                    "since": _DATETIME,
                    "until": {**_DATETIME, "description": "When it ends by itself."},
                },
            },
            "Suppressed": {
                "type": "object",
                "required": ["delivery_id", "received_at", "target", "network", "event", "event_id"],
                "properties": {
                    "delivery_id": {"type": "string"},
                    "received_at": _DATETIME,
                    "target": {"type": "string"},
                    "network": {"type": "string"},
                    "event": {"type": "string"},
                    "event_id": {"type": "string"},
                    "reason": _NULLABLE_STR,
                    "kind": _SUPPRESSED_BY,
                    "replays": {"type": "integer"},
                },
            },
            "TargetDeclaration": _TARGET_DECLARATION,
            "NamedTargetDeclaration": _NAMED_TARGET_DECLARATION,
            "Target": _TARGET,
            "ReplayResult": _REPLAY_RESULT,
            "Erasure": _ERASURE,
            "Overview": {
                "type": "object",
                "required": ["since", "until", "events", "truncated", "targets"],
                "properties": {
                    "since": {"type": "string", "format": "date-time"},
                    "until": {"type": "string", "format": "date-time"},
                    "events": {"type": "integer", "description": "Events counted."},
                    "truncated": {"type": "boolean", "description": "The count stopped at its bound."},
                    "targets": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["target", "configured", "state", "paused", "hours", *_COUNTS],
                            "properties": {
                                "target": {"type": "string"},
                                "configured": {"type": "boolean"},
                                "state": {"type": "string"},
                                "paused": {"type": "boolean"},
                                **_COUNTS,
                                "hours": {
                                    "type": "array",
                                    "minItems": 24,
                                    "maxItems": 24,
                                    "items": {
                                        "type": "object",
                                        "required": ["start", "start_ms", *_COUNTS],
                                        "properties": {
                                            "start": {"type": "string", "format": "date-time"},
                                            "start_ms": {"type": "integer"},
                                            **_COUNTS,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "Key": _KEY,
            "Request": {
                "type": ["object", "null"],
                "required": ["method", "url", "headers", "body"],
                "properties": {
                    "method": {"type": "string"},
                    "url": {"type": "string"},
                    "headers": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                    },
                    "body": _NULLABLE_STR,
                    "timeout": {"type": "number"},
                    "proxy": _NULLABLE_STR,
                },
            },
            "Preview": {
                "type": "object",
                "required": ["target", "event", "lookups", "request", "success_codes"],
                "properties": {
                    "target": {"type": "string"},
                    "event": {"type": "object"},
                    "lookups": {"type": "object"},
                    "request": _ref("Request"),
                    "success_codes": {"type": ["array", "string"], "items": {"type": "integer"}},
                },
            },
            "TestResult": {
                "type": "object",
                "required": ["test_id", "target", "completed", "result", "detail"],
                "properties": {
                    "test_id": {"type": "string"},
                    "target": {"type": "string"},
                    "completed": {"type": "boolean"},
                    "detail": _NULLABLE_STR,
                    "result": {
                        "type": ["object", "null"],
                        "required": ["target", "worker", "at", "request", "response", "outcome", "error"],
                        "properties": {
                            "target": {"type": "string"},
                            "worker": {"type": "string"},
                            "at": {"type": "string", "format": "date-time"},
                            "lookups": {"type": "object"},
                            "request": _ref("Request"),
                            "response": {
                                "type": ["object", "null"],
                                "properties": {
                                    "status": {"type": "integer"},
                                    "headers": {"type": "array", "items": {"type": "array"}},
                                    "body": {"type": "string"},
                                },
                            },
                            "latency_ms": {"type": ["number", "null"]},
                            "outcome": {"type": "string"},
                            "error": _NULLABLE_STR,
                        },
                    },
                },
            },
        },
    },
}

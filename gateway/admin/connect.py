"""Connect Acrobits, per network: the values to paste into the Cloud Softphone portal, the
network's ingest tokens, and a test callback sent through the real ingest (`Service.connect`).

**Tokens.** The gateway keeps an ingest token only as its sha256 digest (or, in the targets file,
as a `${VAR}` name), so it can show one only when it makes one: `create_token` makes a token for a
network, answers it once with the portal's values filled in, and keeps its digest in Redis
beside the configuration (`Store.save_api_token`): the configuration's version moves, and every
web process loads it at once (the same announcement as `targets apply`), so the new token opens
the network on the next callback, no restart, no file edit. Earlier tokens keep working until
removed (`remove_token`). The file's tokens are listed beside them (`source: file`), and stay
the file's to change.

**Test callback.** `send_test` makes a one-time token (`gwtest_...`, digest in Redis for a
minute, opening that one network once) and sends one callback with it, over HTTP, to this
deployment's ingest (GATEWAY_PUBLIC_URL, or the web process' own address), in the portal's
shape: the URL, post data and content type `settings` gives, the fields substituted as the
Contacts server does (unescaped), its headers. So the callback takes the real path: the
ingest's parsing, limits and dedupe, the accept, the targets' deliveries. It is delivered to the
network's real targets (an SMS target sends an SMS): its invitee is TEST_INVITEE unless another
number is given, its invitor `gateway-test-<id>`. The answer carries the callback as the
inspector kept it, and its event with the deliveries so far.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gateway.admin import Conflict, Invalid, NotFound
from gateway.admin.callbacks import CallbackFilter, Callbacks
from gateway.admin.keys import Principal
from gateway.config.load import config_from_dict
from gateway.events import EVENT_TYPES, INVITATION_CREATED
from gateway.exceptions import ConfigError
from gateway.ingest.inspector import token_digest_hex
from gateway.ingest.tokens import TEST_TOKEN_PREFIX
from gateway.logs import short_id
from gateway.networks import token_digest
from gateway.records import iso_ms
from gateway.store.callbacks import put_test_token
from gateway.store.codec import dumps
from gateway.store.events import Store

TOKEN_PLACEHOLDER = "<TOKEN>"  # noqa: S105 - what the portal values show in place of a token
TOKENS_PER_NETWORK = 10  # API-made tokens a network may have at once (a rotation needs two)
SHAPES = ("get", "json")
# A fictional number (NANP's 555-01XX are reserved for fiction): what a test invites by default.
TEST_INVITEE = "+12025550123"
TEST_WAIT = 3.0  # seconds a test waits for its rejected callback's entry (written in the background)
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_GET_FIELDS = "invitee=%invitee%&invitor=%invitor%&network_id=%network_id%"
_JSON_FIELDS = '{"invitee": "%invitee%", "invitor": "%invitor%", "network_id": "%network_id%"}'
_HEADERS = {"User-Agent": "Sync Server 1.1", "Connection": "close", "Cache-Control": "max-age=0"}


def portal_settings(base_url: str, token: str = TOKEN_PLACEHOLDER) -> dict[str, dict[str, str]]:
    """The six portal keys, for GET and for JSON, with the token as the URL's last segment."""
    out: dict[str, dict[str, str]] = {}
    for shape in SHAPES:
        values: dict[str, str] = {}
        for event in EVENT_TYPES:
            which = "Created" if event == INVITATION_CREATED else "Accepted"
            url = f"{base_url}/{event}/{token}"
            get = shape == "get"
            values[f"invitation{which}Url"] = f"{url}?{_GET_FIELDS}" if get else url
            values[f"invitation{which}PostData"] = "" if get else _JSON_FIELDS
            values[f"invitation{which}ContentType"] = "" if get else "application/json"
        out[shape] = values
    return out


def check_network(network: object) -> str:
    """A network id a token can be made for: any text the ingest takes as one, but "*"."""
    if not isinstance(network, str) or network == "*" or not 0 < len(network) <= 128:
        raise Invalid("a network id: 1 to 128 characters, not '*'", "network")
    if not network.isprintable() or network != network.strip() or "/" in network:
        raise Invalid("a network id has no control characters, slashes or surrounding spaces", "network")
    return network


def _ref(digest_or_var: str) -> str:
    """How a token is named in lists: `${VAR}`, or the start of its digest."""
    return digest_or_var if digest_or_var.startswith("${") else digest_or_var[:19] + "..."


class Connect:
    def __init__(
        self, store: Store, callbacks: Callbacks, get_event: Callable[[Principal, str], dict[str, Any]]
    ) -> None:
        self.store = store
        self.callbacks = callbacks
        self.get_event = get_event  # Service.get_event: a test's event with its deliveries

    def _network(self, p: Principal, network: object) -> str:
        network = check_network(network)
        if not p.can_see(network):
            raise NotFound(f"no network {network}")
        return network

    # -- the portal's values ---------------------------------------------------------------------
    def settings(self, p: Principal, network: object, base_url: str, source: str) -> dict[str, Any]:
        """GET /connect: what to paste into the portal for `network` (the token as <TOKEN>)."""
        network = self._network(p, network)
        _, data = self.store.load_config()
        try:
            config = config_from_dict(data) if data else None
        except ConfigError:  # unreadable here (a newer release's?): no targets named, the rest holds
            config = None
        targets = sorted(
            {t.name for event in EVENT_TYPES for t in (config.routes(event, network) if config else [])}
        )
        return {
            "network": network,
            "base_url": base_url,
            "base_url_source": source,
            "token": TOKEN_PLACEHOLDER,
            "settings": portal_settings(base_url),
            "tokens": self.list_tokens(p, network),
            "targets": targets,
        }

    # -- tokens ----------------------------------------------------------------------------------
    def list_tokens(self, p: Principal, network: object = None) -> list[dict[str, Any]]:
        """The ingest tokens of `network` (None: of every network the key sees): made through the
        API (id, time, by whom) and declared in the file (`${VAR}` or the start of the digest)."""
        wanted = None if network is None else self._network(p, network)
        items = []
        for token_id, record in sorted(self.store.api_tokens().items(), key=lambda kv: kv[1]["created_at"]):
            net = str(record["network"])
            if p.can_see(net) and (wanted is None or net == wanted):
                items.append(_token_json(token_id, record))
        _, data = self.store.load_config()
        files = json.loads(self.store.redis.get(self.store.keys.config_file) or "null") or data or {}
        for net, table in sorted((files.get("networks") or {}).items()):
            # ("*": tokens that open every network, an operator key's to see)
            if not p.can_see(net) or (wanted is not None and net not in (wanted, "*")):
                continue
            for ref in table.get("tokens", []):
                items.append(
                    {
                        "id": None,
                        "network": net,
                        "source": "file",
                        "ref": _ref(ref),
                        "created_at": None,
                        "created_by": None,
                    }
                )
        return items

    def create_token(self, p: Principal, network: object, base_url: str) -> dict[str, Any]:
        """A new ingest token for `network`, answered once (`token`, and the portal's `settings`
        with it); only its digest is kept."""
        network = self._network(p, network)
        made = [r for r in self.store.api_tokens().values() if r["network"] == network]
        if len(made) >= TOKENS_PER_NETWORK:
            raise Conflict(
                f"network {network} has {len(made)} tokens made here already: remove one first", "network"
            )
        token = secrets.token_urlsafe(32)
        token_id = short_id()
        record = {
            "network": network,
            "digest": token_digest(token),
            "created_at": int(time.time() * 1000),
            "created_by": p.name,
        }
        self.store.save_api_token(token_id, record)
        return {**_token_json(token_id, record), "token": token, "settings": portal_settings(base_url, token)}

    def remove_token(self, p: Principal, token_id: str) -> dict[str, Any]:
        """Remove an API-made token: refused (401) from the next callback on, in every process."""
        record = self.store.api_tokens().get(token_id) if _TOKEN_ID.fullmatch(token_id) else None
        if record is None or not p.can_see(str(record["network"])):
            raise NotFound(f"no token {token_id}")
        self.store.delete_api_token(token_id)
        return _token_json(token_id, record)

    # -- the test callback -------------------------------------------------------------------------
    def send_test(
        self,
        p: Principal,
        network: object,
        send_to: str,
        event: str = INVITATION_CREATED,
        shape: str = "json",
        invitee: str | None = None,
    ) -> dict[str, Any]:
        """Send one callback in the portal's `shape` to the ingest at `send_to` (module docstring)."""
        network = self._network(p, network)
        if event not in EVENT_TYPES:
            raise Invalid(f"must be one of {', '.join(EVENT_TYPES)}", "event")
        if shape not in SHAPES:
            raise Invalid(f"must be one of {', '.join(SHAPES)}", "format")
        if invitee is not None and not re.fullmatch(r"\+?[0-9]{3,20}", invitee):
            raise Invalid("a phone number: 3 to 20 digits with an optional leading +", "invitee")
        test_id = secrets.token_hex(8)
        token = TEST_TOKEN_PREFIX + secrets.token_urlsafe(24)
        put_test_token(
            self.store.redis,
            self.store.keys,
            token_digest_hex(token),
            dumps({"network": network, "test_id": test_id}),
        )
        which = "Created" if event == INVITATION_CREATED else "Accepted"
        values = portal_settings(send_to.rstrip("/"), token)[shape]
        fields = {
            "invitee": invitee or TEST_INVITEE,
            "invitor": f"gateway-test-{test_id[:6]}",
            "network_id": network,
        }
        url, body = values[f"invitation{which}Url"], values[f"invitation{which}PostData"]
        for name, value in fields.items():  # unescaped, as the Contacts server substitutes them
            url, body = url.replace(f"%{name}%", value), body.replace(f"%{name}%", value)
        content_type = values[f"invitation{which}ContentType"] or "application/x-www-form-urlencoded"
        status, answer, error = _send(url, body, content_type)
        sent = {
            "method": "POST" if body else "GET",
            "url": url.replace(token, "****"),
            "content_type": content_type if body else None,
            "body": body,
        }
        callback = self.callbacks.find_test(p, network, test_id)
        deadline = time.monotonic() + TEST_WAIT
        while callback is None and status is not None and status != 204 and time.monotonic() < deadline:
            time.sleep(0.1)  # a rejected one's entry is written in the background
            callback = self.callbacks.find_test(p, network, test_id)
        event_id = callback.get("event_id") if callback else None
        return {
            "test_id": test_id,
            "network": network,
            "sent": sent,
            "status": status,
            "answer": answer,
            "error": error,
            "callback": callback,
            "event": self.get_event(p, event_id) if event_id else None,
        }

    def test_callback(self, p: Principal, network: object, test_id: str) -> dict[str, Any] | None:
        """A test's callback as the inspector kept it (the Connect page, after the test)."""
        network = self._network(p, network)
        page = self.callbacks.list(p, CallbackFilter(network=network, test_id=test_id), None, 1)
        return page.items[0] if page.items else None


def _token_json(token_id: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": token_id,
        "network": record["network"],
        "source": "api",
        "ref": _ref(str(record["digest"])),
        "created_at": iso_ms(int(record["created_at"])),
        "created_by": record.get("created_by"),
    }


def _send(
    url: str, body: str, content_type: str, timeout: float = 10.0
) -> tuple[int | None, str, str | None]:
    """(status, the answer's first KiB, error) of one request, sent as the Contacts server does."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname or "", parts.port, timeout=timeout)
    headers = dict(_HEADERS)
    if body:
        headers["Content-Type"] = content_type
    try:
        conn.request("POST" if body else "GET", target, body=body.encode() if body else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(1024).decode("utf-8", "replace"), None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # unreachable, a URL it refuses
        where = f"{parts.scheme}://{parts.netloc}"
        return None, "", f"cannot reach the ingest at {where} ({type(exc).__name__}): set GATEWAY_PUBLIC_URL"
    finally:
        conn.close()

"""The dashboard's target form: form fields to a target declaration and back (pure).

A declaration is validated by `gateway.config.load.target_from_dict`, the same code that checks the
targets file, so the dashboard shows the file's messages. That check stops at the first problem;
`validate` asks again with the faulty key set aside, so that every field's message shows at
once, each next to its field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.load import target_from_dict
from gateway.events import EVENT_TYPES
from gateway.exceptions import ConfigError, config_problems

TEXT_FIELDS = (
    "name",
    "networks",
    "url",
    "method",
    "content_type",
    "post_data",
    "headers",
    "auth_username",
    "auth_password",
    "signing_secret",
    "vars",
    "success_codes",
    "timeout",
    "retry",
    "rate",
    "concurrency",
    "expire_after",
    "pause_failures",
    "pause_seconds",
    "probe_interval",
    "proxy",
)
SECRET_FIELDS = ("auth_password", "signing_secret")  # never sent back to the browser
# The declaration keys the form edits. Others (a preset, lookups, oauth2, ...) are kept as stored
# when a target is edited here, and changed through the API or the file.
FORM_KEYS = frozenset(
    {
        "name",
        "networks",
        "events",
        "url",
        "method",
        "content_type",
        "post_data",
        "headers",
        "auth",
        "signing_secret",
        "vars",
        "success_codes",
        "timeout",
        "retry",
        "rate",
        "concurrency",
        "expire_after",
        "pause_after",
        "probe_interval",
        "proxy",
    }
)

# The configuration key a ConfigError names -> the form field its message goes next to.
_FIELD_OF_KEY = {"auth": "auth_username", "pause_after": "pause_failures"}
# Required keys get a harmless stand-in while the rest is checked; optional ones are dropped.
_STAND_INS: dict[str, Any] = {
    "name": "checking",
    "networks": ["checking"],
    "url": "https://example.com/",
    "events": list(EVENT_TYPES),
}
_MAX_ROUNDS = 30


class FormErrors(dict[str, str]):
    """Field name -> message; "_" for what belongs to no field."""


def field_of(key: str | None) -> str:
    if key is None:
        return "_"
    return _FIELD_OF_KEY.get(key, key)


def _split_list(text: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", text.strip()) if part]


def _number(text: str, field: str, errors: FormErrors, whole: bool = True) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    if not whole:
        try:
            return float(text)
        except ValueError:
            pass
    errors[field] = f"must be a {'whole ' if whole else ''}number, got {text!r}"
    return None


def _pairs(text: str, sep: str, field: str, errors: FormErrors, example: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, found, value = line.partition(sep)
        if not found or not key.strip():
            errors[field] = f"line {n} must read {example}, got {line.strip()!r}"
            return out
        out[key.strip()] = value.strip()
    return out


def declaration_from_form(
    form: Mapping[str, Any], existing: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], FormErrors]:
    """The target declaration the form describes, and the errors found reading it.

    `form` maps each field to its text (`events` to a list). With `existing` (an edit), empty
    secret fields keep the current secret.
    """
    errors = FormErrors()
    text = {f: str(form.get(f) or "") for f in TEXT_FIELDS}
    data: dict[str, Any] = {"name": text["name"].strip()}
    data["networks"] = _split_list(text["networks"])
    events = [e for e in form.get("events") or [] if e]
    if not events:
        errors["events"] = "choose at least one event"
    data["events"] = events or list(EVENT_TYPES)
    data["url"] = text["url"].strip()
    for key in ("method", "content_type", "rate", "proxy"):
        if text[key].strip():
            data[key] = text[key].strip()
    if text["post_data"].strip():
        data["post_data"] = text["post_data"].replace("\r\n", "\n")
    headers = _pairs(text["headers"], ":", "headers", errors, "Name: value")
    if headers:
        data["headers"] = headers
    variables = _pairs(text["vars"], "=", "vars", errors, "name = value")
    if variables:
        data["vars"] = variables

    old_auth = (existing or {}).get("auth") or {}
    user, password = text["auth_username"].strip(), text["auth_password"]
    if user and not password and old_auth.get("password"):
        password = old_auth["password"]
    if user or password:
        if not user or not password:
            errors["auth_username"] = "Basic auth needs both a user and a password"
        data["auth"] = {"username": user, "password": password}
    secret = text["signing_secret"].strip() or (existing or {}).get("signing_secret")
    if secret:
        data["signing_secret"] = secret

    if text["success_codes"].strip():
        codes = [_number(c, "success_codes", errors) for c in _split_list(text["success_codes"])]
        data["success_codes"] = [c for c in codes if c is not None]
    timeout = _number(text["timeout"], "timeout", errors, whole=False)
    if timeout is not None:
        data["timeout"] = timeout
    if text["retry"].strip():
        steps = [_number(r, "retry", errors) for r in _split_list(text["retry"])]
        data["retry"] = [r for r in steps if r is not None]
    for key in ("concurrency", "probe_interval"):
        value = _number(text[key], key, errors)
        if value is not None:
            data[key] = value
    expire = text["expire_after"].strip()
    if expire:
        data["expire_after"] = int(expire) if expire.isdigit() else expire
    failures = _number(text["pause_failures"], "pause_failures", errors)
    seconds = _number(text["pause_seconds"], "pause_seconds", errors)
    if failures is not None or seconds is not None:
        data["pause_after"] = {
            "failures": 10 if failures is None else failures,
            "seconds": 60 if seconds is None else seconds,
        }
    for key, value in (existing or {}).items():
        if key not in FORM_KEYS and key not in ("source", "health"):
            data[key] = value
    return data, errors


def validate(
    data: Mapping[str, Any],
    errors: FormErrors | None = None,
    check: Callable[[Mapping[str, Any]], object] = target_from_dict,
) -> FormErrors:
    """Every field's first problem, each under its form field ("_" for none).

    The check reports what it can at once; some problems (a bad name) stop it early, so it is
    asked again with the faulty keys set aside until it passes or finds nothing new.
    """
    errors = FormErrors() if errors is None else errors
    probe = dict(data)
    seen: set[str | None] = set()
    for _ in range(_MAX_ROUNDS):
        try:
            check(probe)
            break
        except ConfigError as exc:
            problems = config_problems(exc)
        new = [p for p in problems if p.key not in seen]
        for problem in new:
            errors.setdefault(field_of(problem.key), problem.reason if problem.key else str(problem))
            seen.add(problem.key)
            if problem.key in _STAND_INS:
                probe[problem.key] = _STAND_INS[problem.key]
            elif problem.key is not None:
                probe.pop(problem.key, None)
        if not new or all(p.key is None for p in new):
            break
    return errors


def form_from_declaration(data: Mapping[str, Any]) -> dict[str, Any]:
    """The form's fields for a stored declaration; secrets are left out."""
    form: dict[str, Any] = {f: "" for f in TEXT_FIELDS}
    form["name"] = data.get("name", "")
    form["networks"] = ", ".join(data.get("networks") or [])
    form["events"] = list(data.get("events") or EVENT_TYPES)
    for key in ("url", "content_type", "post_data", "rate", "proxy"):
        if data.get(key) is not None:
            form[key] = str(data[key])
    if data.get("method") and (data.get("method") != "GET" or data.get("post_data") is None):
        form["method"] = data["method"]
    form["headers"] = "\n".join(f"{k}: {v}" for k, v in (data.get("headers") or {}).items())
    form["vars"] = "\n".join(f"{k} = {v}" for k, v in (data.get("vars") or {}).items())
    if data.get("auth"):
        form["auth_username"] = data["auth"].get("username", "")
    if data.get("success_codes"):
        form["success_codes"] = ", ".join(str(c) for c in data["success_codes"])
    for key in ("timeout", "concurrency", "expire_after", "probe_interval"):
        if data.get(key) is not None:
            value = data[key]
            form[key] = f"{value:g}" if isinstance(value, float) else str(value)
    if data.get("retry") is not None:
        form["retry"] = ", ".join(str(r) for r in data["retry"])
    pause = data.get("pause_after")
    if pause:
        form["pause_failures"] = str(pause.get("failures", ""))
        form["pause_seconds"] = str(pause.get("seconds", ""))
    return form

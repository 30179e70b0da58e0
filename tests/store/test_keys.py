"""Key names live in gateway/store/keys.py: the Lua scripts build theirs from the prefix, and
the two must agree (pure: the .lua files read as text)."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from gateway.store.keys import LUA_KEYS, Keys, limit_key

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
# A key-name piece appended in Lua: `p .. ':due'`, `ek .. ':deliveries'`, `p .. ':' .. k`.
_LUA_PIECE = re.compile(r"\.\.\s*'(:[a-z:-]*)'")
_PLACEHOLDER = re.compile(r"\{[a-z]+\}")


def _lua_texts() -> dict[str, str]:
    folder = files("gateway.store") / "scripts"
    return {f.name: f.read_text(encoding="utf-8") for f in folder.iterdir() if f.name.endswith(".lua")}


def _template_pieces() -> set[str]:
    pieces = set()
    for template in LUA_KEYS:
        assert template.startswith("{p}:"), template
        pieces.update(p for p in _PLACEHOLDER.split(template.removeprefix("{p}")) if p)
    return pieces


def test_every_key_piece_a_script_appends_is_a_documented_lua_key_and_every_one_is_used() -> None:
    texts = _lua_texts()
    assert {"ingest.lua", "claim.lua", "complete.lua", "resume.lua"} <= set(texts)
    used: dict[str, set[str]] = {}
    for name, text in texts.items():
        for piece in _LUA_PIECE.findall(text):
            used.setdefault(piece, set()).add(name)
    documented = _template_pieces()
    assert set(used) - documented == set(), {p: used[p] for p in set(used) - documented}
    assert documented - set(used) == set(), "documented in keys.LUA_KEYS, built by no script"


def test_the_scripts_build_keys_from_the_prefix_only() -> None:
    for name, text in _lua_texts().items():
        # Every key is `p .. ':...'` (or built from one); never a literal prefix, never KEYS but
        # in forget_if_same.lua, whose caller passes the key (TokenCache).
        assert "'gw:" not in text, name
        if name != "forget_if_same.lua":
            assert "KEYS[" not in text, name


def test_keys_builds_what_the_scripts_build() -> None:
    k = Keys("pfx")
    python = {
        "{p}:config:version": k.config_version,
        "{p}:event:{id}": k.event("ID"),
        "{p}:event:{id}:deliveries": k.deliveries("ID"),
        "{p}:event:{id}:attempts": k.attempts("ID"),
        "{p}:events": k.events,
        "{p}:events:net:{network}": k.network_events("NET"),
        "{p}:suppressed": k.suppressed,
        "{p}:counters": k.counters,
        "{p}:due": k.due,
        "{p}:parked:{target}": k.parked("T"),
        "{p}:held": k.held,
        "{p}:target:{name}": k.target("T"),
        "{p}:inflight:{target}": k.inflight("T"),
        "{p}:reserved": k.reserved,
        "{p}:probes": k.probes,
        "{p}:dead": k.dead,
        "{p}:wake": k.wake,
        "{p}:callbacks:net:{network}": k.callbacks("NET"),
        "{p}:callbacks:rejected:{network}": k.callbacks_rejected("NET"),
        "{p}:callbacks:unroutable": k.callbacks_unroutable,
        "{p}:callbacks:networks": k.callbacks_networks,
        "{p}:callbacks:test:{digest}": k.callbacks_test("D"),
    }
    values = {"{p}": "pfx", "{id}": "ID", "{network}": "NET", "{target}": "T", "{name}": "T", "{digest}": "D"}
    for template, built in python.items():
        assert template in LUA_KEYS, template
        expected = _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)
        assert built == expected, template


def test_limit_keys_are_hashed_and_carry_no_number() -> None:
    key = limit_key("lim", "net", "invitee", "86400", "+15551234567", 20000)
    assert re.fullmatch(r"lim:[0-9a-f]{24}", key)
    assert limit_key("lim", "net", "invitee", "86400", "+15551234567", 20000) == key
    assert limit_key("lim", "net", "invitee", "86400", "+15551234568", 20000) != key


def test_no_module_but_keys_py_spells_a_key_name() -> None:
    """A key is named from the prefix only in gateway/store/keys.py (a heuristic: the ways the
    code used to build one)."""
    spelled = re.compile(r"""prefix\}:|prefix \+ ":|prefix, \*parts|_k\(\s*["']|\+ ":[a-z]""")
    offenders = [
        str(path.relative_to(GATEWAY))
        for path in GATEWAY.rglob("*.py")
        if path != GATEWAY / "store" / "keys.py" and spelled.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []

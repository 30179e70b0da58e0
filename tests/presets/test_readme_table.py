"""The README's table of preset variables says what the preset files say (gateway/config/presets/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config.presets import Preset, load_preset, preset_names

README = Path(__file__).resolve().parents[2] / "README.md"
_HEADER = "| preset | address variable | required variables | optional variables (default) |"


def _rows() -> dict[str, list[str]]:
    text = README.read_text()
    table = text[text.index(_HEADER) :].split("\n\n", 1)[0].splitlines()[2:]
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


ROWS = _rows()


def _names(cell: str) -> list[str]:
    """The variable names a cell lists: each `name` at the start of an item (not in parentheses)."""
    depth, names, item = 0, [], ""
    for c in cell + ",":
        depth += c == "("
        depth -= c == ")"
        if c == "," and depth == 0:
            m = re.match(r"\s*`([a-z_]+)`", item)
            if m:
                names.append(m.group(1))
            item = ""
        else:
            item += c
    return names


def test_every_preset_has_a_row() -> None:
    assert sorted(ROWS) == sorted(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_the_row_names_every_variable_and_each_default(name: str) -> None:
    preset: Preset = load_preset(name)
    _, required, optional = ROWS[name]
    assert _names(required) == list(preset.required), required
    optional_vars = [v for v in preset.variables if not v.required]
    assert sorted(_names(optional)) == sorted(v.name for v in optional_vars), optional
    for v in optional_vars:
        shown = "empty" if v.default == "" else f"`{v.default}`"
        assert f"`{v.name}` ({shown}" in optional, (v.name, v.default, optional)


@pytest.mark.parametrize("name", preset_names())
def test_the_address_variable_is_what_the_url_starts_with(name: str) -> None:
    preset = load_preset(name)
    address = ROWS[name][0]
    var = re.match(r"`([a-z_]+)`", address)
    assert var is not None, address
    variable = preset.variable(var.group(1))
    assert variable is not None and variable.raw
    url = preset.target["url"]
    if "scheme and host" in address:
        assert url.startswith(f"{{{{{variable.name}}}}}/"), url  # the preset adds the path
    else:
        assert "the whole URL" in address and url.startswith(f"{{{{{variable.name}}}}}"), (address, url)
        assert url.split("}}", 1)[1][:1] in ("", "?"), url
    assert ("required" in address) == (variable.required and variable.name == "base_url"), address
    if variable.default is not None:
        assert f"(`{variable.default}`)" in address, address

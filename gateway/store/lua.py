"""The Lua scripts of gateway/store/scripts/, read as package data (so a wheel carries them)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from gateway.fastredis import Script


@cache
def load(name: str, *needs: str) -> Script:
    """scripts/NAME.lua, after the files it `needs` (shared functions such as resume.lua)."""
    folder = files("gateway.store") / "scripts"
    text = "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in (*needs, name))
    return Script(text)

"""Presets: ready-made targets for well-known APIs, filled in from a few variables (pure but for I/O).

A preset is a TOML file, `NAME.toml`, shipped in this package's `presets/` (package data, read
through importlib.resources) or in the operator's own directory named by `GATEWAY_PRESETS_DIR`
(whose file of a name replaces the shipped one of that name). It holds a
`description`, the `[variables]` it takes (each required, or with a default) and the `[target]`
table it stands for, whose strings use `{{variable}}`. A target declares `preset = "NAME"` and
gives the variables in its `vars`; every other key it sets replaces the preset's (`headers` and
`vars` are merged, the target's entries winning). The result is an ordinary target declaration,
validated like any other.

A variable's value is template text: it may hold `%placeholders%` (filled and escaped per
delivery, like any placeholder) and `${ENV}` references. Its literal text is escaped here for
where it lands (percent-encoded in a URL, JSON-escaped in a JSON body, ...), so a value with a
quote or an `&` stays one value; a variable marked `raw` (a base URL, a secret URL path) is
inserted as it is.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from gateway.exceptions import ConfigError
from gateway.templating import Escape, Template, body_kind, escape_none, escape_url

# The presets shipped with the package (package data: a wheel or `pip install .` carries them).
PRESETS_DIR: Traversable = files("gateway.config") / "presets"
# The operator's own presets, beside (and before) the shipped ones. Read here, where presets are
# looked up, rather than passed down from Settings through every loader of a configuration.
PRESETS_DIR_VARIABLE = "GATEWAY_PRESETS_DIR"
_REF = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_VARIABLE_KEYS = frozenset({"required", "default", "raw", "doc"})
# Keys a preset cannot set: they say which target this is, not how to reach the API.
_TARGET_ONLY = frozenset({"name", "networks", "preset"})


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    required: bool
    default: str | None
    raw: bool  # inserted as it is (a base URL, a URL path from ${ENV}), never escaped
    doc: str


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    description: str
    variables: tuple[Variable, ...]
    target: Mapping[str, Any]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables if v.required)

    def variable(self, name: str) -> Variable | None:
        return next((v for v in self.variables if v.name == name), None)


def preset_dirs(environ: Mapping[str, str] | None = None) -> tuple[Traversable, ...]:
    """Where presets are looked up, first match wins: `GATEWAY_PRESETS_DIR`, then the shipped ones."""
    own = (os.environ if environ is None else environ).get(PRESETS_DIR_VARIABLE, "")
    return (Path(own), PRESETS_DIR) if own else (PRESETS_DIR,)


def preset_names(directory: Traversable | None = None) -> list[str]:
    """The presets of `directory`, or every one that can be used (own and shipped)."""
    dirs = preset_dirs() if directory is None else (directory,)
    return sorted({p.name[:-5] for d in dirs if d.is_dir() for p in d.iterdir() if p.name.endswith(".toml")})


def load_preset(name: str, directory: Traversable | None = None) -> Preset:
    """Read and check one preset file. An unknown name is a ConfigError listing the known ones."""
    dirs = preset_dirs() if directory is None else (directory,)
    if _NAME.fullmatch(name):
        for d in dirs:
            if (d / f"{name}.toml").is_file():
                return _load_preset_file(name, d / f"{name}.toml")
    if directory is None and not dirs[0].is_dir():
        raise ConfigError(f"unknown preset {name!r}: {PRESETS_DIR_VARIABLE} ({dirs[0]}) is not a directory")
    known = ", ".join(preset_names(directory)) or "none"
    raise ConfigError(f"unknown preset {name!r} (known: {known})")


_loaded: dict[str, Preset] = {}  # by file: each is read once per process


def _load_preset_file(name: str, path: Traversable) -> Preset:
    key = str(path)
    if key not in _loaded:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"preset {name!r} ({path}) cannot be read: {exc}") from None
        _loaded[key] = preset_from_dict(name, data)
    return _loaded[key]


def preset_from_dict(name: str, data: Mapping[str, Any]) -> Preset:
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"preset {name!r}: {reason}")

    unknown = sorted(set(data) - {"description", "variables", "target"})
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} (known: description, variables, target)")
    target = data.get("target")
    if not isinstance(target, dict) or not target:
        raise bad("needs a [target] table")
    own = sorted(set(target) & _TARGET_ONLY)
    if own:
        raise bad(f"[target] cannot set {own[0]!r}: each target sets it")
    variables: list[Variable] = []
    raw_vars = data.get("variables", {})
    if not isinstance(raw_vars, dict):
        raise bad("[variables] must be a table")
    for vname, spec in raw_vars.items():
        if not isinstance(spec, dict) or set(spec) - _VARIABLE_KEYS:
            raise bad(f"variable {vname!r} must be a table of {', '.join(sorted(_VARIABLE_KEYS))}")
        required = spec.get("required", False) is True
        default = spec.get("default")
        if required == (default is not None) or (default is not None and not isinstance(default, str)):
            raise bad(f"variable {vname!r} must be either required = true or have a string default")
        variables.append(
            Variable(vname, required, default, spec.get("raw", False) is True, spec.get("doc", ""))
        )
    declared = {v.name for v in variables}
    used = {m for text in _strings(target) for m in _REF.findall(text)}
    if used - declared:
        raise bad(f"[target] uses {{{{{sorted(used - declared)[0]}}}}}, which [variables] does not declare")
    if declared - used:
        raise bad(f"variable {sorted(declared - used)[0]!r} is declared but never used")
    return Preset(name, str(data.get("description", "")), tuple(variables), target)


def apply_preset(data: Mapping[str, Any], directory: Traversable | None = None) -> dict[str, Any]:
    """The target declaration `data` (which has `preset = "NAME"`) with its preset filled in."""
    target_name = data.get("name")
    name = data.get("preset")
    if not isinstance(name, str):
        raise ConfigError(f"must be the name of a preset, got {name!r}", target_name, "preset")
    try:
        preset = load_preset(name, directory)
    except ConfigError as exc:
        raise ConfigError(exc.reason, target_name, "preset") from None

    given = data.get("vars", {})
    if not isinstance(given, dict):
        raise ConfigError('must be a table of name = "text"', target_name, "vars")
    values: dict[str, str] = {}
    for var in preset.variables:
        value = given.get(var.name, var.default)
        if value is None:
            doc = f" ({var.doc})" if var.doc else ""
            raise ConfigError(
                f"preset {name!r} needs the variable {var.name!r}{doc}", target_name, f"vars.{var.name}"
            )
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}", target_name, f"vars.{var.name}")
        values[var.name] = value

    merged: dict[str, Any] = {k: v for k, v in preset.target.items()}
    for key, value in data.items():
        if key == "preset":
            continue
        if key in ("headers", "vars") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            # Merged by name, case-insensitively for headers: the target's entry wins.
            lowered = {k.lower() for k in value} if key == "headers" else set(value)
            kept = {
                k: v for k, v in merged[key].items() if (k.lower() if key == "headers" else k) not in lowered
            }
            merged[key] = {**kept, **value}
        else:
            merged[key] = value
    # The preset's variables are consumed here; the target's other vars stay placeholders.
    rest = {k: v for k, v in merged.get("vars", {}).items() if preset.variable(k) is None}
    if rest:
        merged["vars"] = rest
    else:
        merged.pop("vars", None)
    kind = body_kind(merged.get("content_type", "application/x-www-form-urlencoded"))
    body_escape = kind.escape if kind is not None else escape_none
    for key in list(merged):
        if key == "url":
            merged[key] = _fill(merged[key], preset, values, escape_url)
        elif key == "post_data":
            merged[key] = _fill(merged[key], preset, values, body_escape)
        elif key in ("name", "networks", "events"):
            continue
        else:
            merged[key] = _fill(merged[key], preset, values, escape_none)
    return merged


def _fill(obj: Any, preset: Preset, values: Mapping[str, str], escape: Escape) -> Any:
    if isinstance(obj, dict):
        return {k: _fill(v, preset, values, escape) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, preset, values, escape) for v in obj]
    if not isinstance(obj, str):
        return obj

    def one(match: re.Match[str]) -> str:
        var = preset.variable(match[1])
        if var is None:
            return match[0]  # not this preset's: left for the target's validation to name
        value = values[var.name]
        if var.raw:
            return value
        # Literal text escaped for where it lands; %placeholders% and ${ENV} kept as references.
        out = []
        for kind, part in Template.parse(value).parts:
            if kind == "text":
                out.append(escape(part))
            elif kind == "ph":
                out.append(f"%{part}%")
            else:
                out.append("${" + part + "}")
        return "".join(out)

    return _REF.sub(one, obj)


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []

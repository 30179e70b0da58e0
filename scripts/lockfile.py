"""The lock: requirements/{base,standalone,dev}.txt, and whether it still matches pyproject.toml.

    python scripts/lockfile.py write UV        compile the three files with the uv binary UV
    python scripts/lockfile.py check           every disagreement with pyproject.toml, one a line
    python scripts/lockfile.py digest          the digest of pyproject.toml's dependency tables
    python scripts/lockfile.py build-requires  pyproject.toml's build requirements, one a line

`scripts/lock` runs `write` (uv comes from a throwaway venv); `scripts/bootstrap` installs a file
with `pip install --require-hashes` and runs `check` to warn; tests/test_lock.py fails on any
problem `check` finds. Only the standard library is needed, but for `check`'s comparison of
versions (the `packaging` library, which the dev set has).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Each installable set, the extras it takes, smallest first: each one holds the one before it.
SETS: dict[str, tuple[str, ...]] = {"base": (), "standalone": ("standalone",), "dev": ("dev",)}
DIGEST_LINE = "# pyproject-digest: "
FROM_PYPROJECT = "invitation-gateway (pyproject.toml)"  # uv's `# via` for a direct requirement
CONSTRAINED = "-c requirements/dev.txt"  # the smaller sets take the dev set's pins as constraints
HEADER = """\
# The locked `{spec}` set: every package pinned with its hashes, for
# `pip install --require-hashes -r requirements/{name}.txt` ({command}).
# Made by scripts/lock from pyproject.toml (uv pip compile --universal --generate-hashes, for
# Python 3.11 and newer on every platform); do not edit by hand. setuptools is pinned here to
# build the project itself (pip install --no-build-isolation --no-deps -e .).
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject(root: Path = ROOT) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def dependency_tables(data: Mapping[str, Any]) -> dict[str, Any]:
    """What the lock is made from: the requirements, extras, Python bound and build backend."""
    project = data.get("project", {})
    return {
        "name": project.get("name"),
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system.requires": data.get("build-system", {}).get("requires", []),
    }


def digest(root: Path = ROOT) -> str:
    """A digest of the dependency tables only: comments, tools' settings and layout do not count."""
    text = json.dumps(dependency_tables(pyproject(root)), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# -- reading a lock file ------------------------------------------------------------------------


@dataclass(slots=True)
class Pin:
    name: str  # canonical
    version: str
    marker: str  # "" for every environment
    hashes: int = 0
    via: set[str] = field(default_factory=set)


@dataclass(slots=True)
class LockFile:
    digest: str
    pins: list[Pin]
    options: list[str]  # lines such as --index-url, which a lock must not hold

    def by_name(self) -> dict[str, list[Pin]]:
        out: dict[str, list[Pin]] = {}
        for pin in self.pins:
            out.setdefault(pin.name, []).append(pin)
        return out


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")


def read_lock(path: Path) -> LockFile:
    found = ""
    pins: list[Pin] = []
    options: list[str] = []
    in_via = False
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if line.startswith(DIGEST_LINE):
            found = line[len(DIGEST_LINE) :].strip()
        elif match := _PIN.match(line):
            pins.append(Pin(canonical(match[1]), match[2], (match[3] or "").strip()))
            in_via = False
        elif stripped.startswith("--hash=") and pins:
            pins[-1].hashes += 1
        elif stripped == "# via" and pins:
            in_via = True
        elif stripped.startswith("# via ") and pins:
            pins[-1].via.add(stripped[len("# via ") :].strip())
            in_via = False
        elif in_via and stripped.startswith("#   ") and pins:
            pins[-1].via.add(stripped[len("#   ") :].strip())
        elif stripped.startswith("-"):
            options.append(stripped)
    return LockFile(found, pins, options)


def lock_path(name: str, root: Path = ROOT) -> Path:
    return root / "requirements" / f"{name}.txt"


# -- comparing it with pyproject.toml ---------------------------------------------------------------


def requirements_of(data: Mapping[str, Any], extras: Iterable[str]) -> list[str]:
    """The direct requirements of the project with `extras`, its own extras expanded."""
    project = data["project"]
    me = canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional.get(extra, []):
            name, _, rest = text.partition("[")
            if canonical(name.strip()) == me and rest:
                todo += [e.strip() for e in rest.split("]")[0].split(",")]
            else:
                out.append(text)
    return out


def check(root: Path = ROOT) -> list[str]:
    """Every way the lock files disagree with pyproject.toml (and each other); [] when they agree."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement

    data = pyproject(root)
    want = digest(root)
    problems: list[str] = []
    locks: dict[str, LockFile] = {}
    for name in SETS:
        path = lock_path(name, root)
        if not path.is_file():
            problems.append(f"{path.relative_to(root)} is missing: run scripts/lock")
            continue
        locks[name] = read_lock(path)
    build = [Requirement(t) for t in data.get("build-system", {}).get("requires", [])]
    for name, lock in locks.items():
        where = f"requirements/{name}.txt"
        if lock.digest != want:
            problems.append(
                f"{where}: made from other dependency tables than pyproject.toml's "
                f"({lock.digest or 'no digest'} != {want}): run scripts/lock"
            )
        problems += [f"{where}: {option!r}: a lock names no index or other option" for option in lock.options]
        pins = lock.by_name()
        direct = [Requirement(t) for t in requirements_of(data, SETS[name])] + build
        wanted = {canonical(r.name) for r in direct}
        for req in direct:
            if req.marker is not None and not req.marker.evaluate():
                continue  # not for this platform: nothing to compare here
            here = [
                p for p in pins.get(canonical(req.name), []) if not p.marker or Marker(p.marker).evaluate()
            ]
            if not here:
                problems.append(f"{where}: {req} (pyproject.toml) is not in the lock: run scripts/lock")
            elif not any(req.specifier.contains(p.version, prereleases=True) for p in here):
                versions = ", ".join(p.version for p in here)
                problems.append(f"{where}: {req} (pyproject.toml) is not met by the pinned {versions}")
        for pin in lock.pins:
            if pin.hashes == 0:
                problems.append(f"{where}: {pin.name}=={pin.version} has no --hash")
            if FROM_PYPROJECT in pin.via and pin.name not in wanted:
                problems.append(
                    f"{where}: {pin.name} is pinned as a requirement of pyproject.toml, "
                    "which no longer requires it: run scripts/lock"
                )
            sources = pin.via - {FROM_PYPROJECT, CONSTRAINED}
            if not pin.via - {CONSTRAINED} and pin.name not in wanted:
                problems.append(f"{where}: {pin.name} is pinned, and nothing requires it: run scripts/lock")
            for source in sources:
                if canonical(source) not in pins:
                    problems.append(f"{where}: {pin.name} is pinned for {source}, which is not in the lock")
    # Each set holds the smaller one with the same pins (bootstrap keeps the larger set installed).
    names = [n for n in SETS if n in locks]
    for small, large in itertools.pairwise(names):
        big = {(p.name, p.version) for p in locks[large].pins}  # (markers may differ: wider there)
        for pin in locks[small].pins:
            if (pin.name, pin.version) not in big:
                problems.append(
                    f"requirements/{small}.txt pins {pin.name}=={pin.version}, "
                    f"requirements/{large}.txt does not: run scripts/lock"
                )
    return problems


# -- writing it -------------------------------------------------------------------------------------


def write(uv: str, root: Path = ROOT) -> None:
    """Compile the three sets with uv at the newest versions allowed; dev first, the others within it."""
    data = pyproject(root)
    build = "\n".join(data.get("build-system", {}).get("requires", [])) + "\n"
    (root / "requirements").mkdir(exist_ok=True)
    for name in ("dev", "standalone", "base"):
        path = lock_path(name, root)
        args = [uv, "pip", "compile", "pyproject.toml", "-", "--universal", "--generate-hashes"]
        args += ["--python-version", "3.11", "--no-header", "--quiet", "--upgrade", "-o", str(path)]
        for extra in SETS[name]:
            args += ["--extra", extra]
        if name != "dev":
            args += ["-c", "requirements/dev.txt"]
        subprocess.run(args, input=build, text=True, cwd=root, check=True)
        extras = f"[{','.join(SETS[name])}]" if SETS[name] else ""
        command = f"scripts/bootstrap {name}" if extras else "scripts/bootstrap"
        header = HEADER.format(spec=f"invitation-gateway{extras}", name=name, command=command)
        body = path.read_text(encoding="utf-8")
        path.write_text(header + f"{DIGEST_LINE}{digest(root)}\n" + body, encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) == 2:
        write(argv[1])
        return 0
    if argv == ["digest"]:
        print(digest())
        return 0
    if argv == ["build-requires"]:
        print("\n".join(pyproject().get("build-system", {}).get("requires", [])))
        return 0
    if argv == ["check"]:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

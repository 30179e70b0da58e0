"""The shipped Procfile under honcho, as its users run it on a laptop: `honcho start`.

Real honcho, real Redis (the test server), the real `gateway` command of this venv, a targets
file in an empty folder, a target on loopback. A callback is delivered; SIGTERM to honcho stops
everything within honcho's grace (5 s, then it SIGKILLs) with nothing logged at ERROR, also when
the stop comes one second after the start; every process honcho started is gone afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from redis import Redis
from rq.worker import Worker

from gateway.embedded import free_port
from tests.conftest import ROOT, TargetServer
from tests.e2e.e2e_support import SETTINGS, http_call, toml_str, wait_until

HONCHO_GRACE = 5.0  # honcho's KILL_WAIT: SIGKILL to whatever still runs this long after SIGTERM
BIN = Path(sys.executable).parent


class Honcho:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.log_path = folder / "honcho.log"
        self._log = self.log_path.open("wb")
        honcho = BIN / "honcho"
        assert honcho.is_file(), f"{honcho} is missing: honcho is in the dev extra (scripts/bootstrap dev)"
        self.proc = subprocess.Popen(
            [str(honcho), "start"], cwd=folder, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop_and_check(self) -> str:
        """SIGTERM to honcho; everything must be gone within its grace, with no SIGKILL and no ERROR."""
        started = self.descendants()
        assert started, self.output()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            # A bound on waiting: honcho itself SIGKILLs at 5 s, so a stop that needed it is late.
            self.proc.wait(HONCHO_GRACE + 5)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"honcho still runs {HONCHO_GRACE + 5:g} s after SIGTERM\n{self.output()}"
            ) from None
        output = self.output()
        assert "SIGKILL" not in output, output
        assert not re.search(r"\bERROR\b|Traceback", output), output
        for process in started:
            gone = wait_until(
                lambda process=process: not _running(process) or "gone",
                f"process {process.pid} to be gone",
                HONCHO_GRACE,
            )
            assert gone, output
        return output

    def close(self) -> None:
        for process in self.descendants() if self.proc.poll() is None else []:
            process.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def procfile_app(tmp_path: Path, redis_url: str, target_url: str) -> Iterator[tuple[Honcho, str]]:
    """An app folder with the shipped Procfile and a `targets.toml`, run by `honcho start`."""
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(ROOT / "Procfile", folder / "Procfile")
    target = f'[[targets]]\nname = "crm"\nnetworks = ["*"]\nurl = {toml_str(target_url)}\n'
    (folder / "targets.toml").write_text(SETTINGS + target)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_", "HONCHO_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `gateway` as the Procfile names it
        REDIS_URL=redis_url,
        PORT=str(port),  # honcho gives the first line (web) PORT itself
        GATEWAY_OPEN_INGEST="true",
        GATEWAY_DATA_DIR=str(tmp_path / "data"),
        PYTHONUNBUFFERED="1",
    )
    honcho = Honcho(folder, env)
    try:
        yield honcho, f"http://127.0.0.1:{port}"
    finally:
        honcho.close()


def test_the_procfile_under_honcho_delivers_and_stops_cleanly(
    tmp_path: Path, redis_url: str, redis: Redis, target_server: TargetServer
) -> None:
    with procfile_app(tmp_path, redis_url, target_server.url + "/crm") as (honcho, base):

        def ready() -> bool:
            # Web answers, a worker beats, and the release step applied the file.
            try:
                health = http_call(base, "GET", "/healthz", timeout=2)
                return http_call(base, "GET", "/readyz", timeout=2).status == 200 and (
                    health.json()["config_version"] > 0
                )
            except OSError:
                return False

        wait_until(ready, "web, worker and the release step", 60, 0.2, explain=honcho.output)
        answer = http_call(base, "GET", "/invitation_created?invitee=15551231234&invitor=jon&network_id=net1")
        assert answer.status == 204, answer.body
        (request,) = target_server.wait_for("/crm", 1)
        assert request.method == "GET"
        wait_until(  # an idle worker after its job, as in the reported hang
            lambda: any(w.successful_job_count and w.get_state() == "idle" for w in Worker.all(redis)),
            "the worker idle after its job",
            10,
            explain=honcho.output,
        )
        output = honcho.stop_and_check()
    assert "applied; staying up until honcho stops the processes" in output, output
    assert re.search(r"worker\.1\s*\| .*warm shut down requested", output), output


def test_the_procfile_under_honcho_stops_cleanly_one_second_after_the_start(
    tmp_path: Path, redis_url: str, target_server: TargetServer
) -> None:
    with procfile_app(tmp_path, redis_url, target_server.url + "/crm") as (honcho, _):
        time.sleep(1.0)  # the stop of the issue: one second after the start, whatever each is doing
        honcho.stop_and_check()

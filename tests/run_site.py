"""``./run`` as a person starts it, for tests: its own data dir and port, a log file, and a
tear-down that leaves nothing behind even when the test fails half-way (the launcher's process
group, then anything still naming the data dir, then the data dir's PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import psutil
from django.conf import settings

from config.devserver import embedded

RUN = Path(settings.BASE_DIR) / "run"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_env(data_dir: Path, port: int) -> dict[str, str]:
    """The test's environment less what would point ./run at the tests' own servers."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "CACHE_URL",
                "DJANGO_SETTINGS_MODULE", "MEDIA_ROOT"}
    }  # fmt: skip
    env.update(DATA_DIR=str(data_dir), PORT=str(port), WEB_WORKERS="1")
    return env


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def processes_of(data_dir: Path) -> list[psutil.Process]:
    """Processes of a ./run on ``data_dir``: naming it, or started with it as DATA_DIR
    (gunicorn's and Celery's command lines do not name it)."""
    found = {p.pid: p for p in processes_mentioning(str(data_dir))}
    for process in psutil.process_iter():
        try:
            if process.environ().get("DATA_DIR") == str(data_dir):
                found[process.pid] = process
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return [p for p in found.values() if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(data_dir: Path) -> None:
    """Stop whatever still runs for ``data_dir``: its PostgreSQL as pg_ctl stops it (a SIGKILL
    would leave its pid file and shared memory), then its Redis, workers, anything else."""
    if (embedded.postgres_dir(data_dir) / "postmaster.pid").exists():
        embedded.postgres_stop(data_dir)
    left = processes_of(data_dir)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=10)


def wait_until(condition, timeout: float, log: Path, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; ./run said:\n{log.read_text()[-4000:]}")


class RunningSite:
    """``with RunningSite(tmp_path, EXTRA=...) as site:`` starts ./run and waits for "ready"."""

    def __init__(self, tmp_path: Path, **extra_env: str) -> None:
        self.data_dir = tmp_path / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = run_env(self.data_dir, self.port) | extra_env
        self.log_path = tmp_path / "run.log"
        self.launcher: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RunningSite:
        log = self.log_path.open("w")
        self.launcher = subprocess.Popen(
            [str(RUN)], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        launcher = self.launcher
        try:
            self.wait_until(
                lambda: "Site ready at" in self.log() or launcher.poll() is not None, 240, "ready"
            )
            if "Site ready at" not in self.log():
                raise AssertionError(f"./run exited before ready:\n{self.log()[-4000:]}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition, timeout: float, what: str):
        return wait_until(condition, timeout, self.log_path, what)

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C does: the launcher's exit code once it stopped everything."""
        assert self.launcher is not None
        self.launcher.send_signal(signal.SIGTERM)
        return self.launcher.wait(90)

    def close(self) -> None:
        if self.launcher is not None and self.launcher.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
            if self.launcher.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.launcher.pid, signal.SIGKILL)
                self.launcher.wait(10)
        reap(self.data_dir)

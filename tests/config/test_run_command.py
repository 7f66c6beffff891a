"""``./run`` for real: the whole site starts, answers, and SIGTERM leaves nothing behind."""

from __future__ import annotations

import csv
import json
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
import pytest
import redis
from django.conf import settings
from PIL import Image as PILImage

from tests.run_site import RUN, RunningSite, free_port, processes_of, run_env

pytestmark = pytest.mark.slow  # starts ./run (PostgreSQL, Redis, Celery, gunicorn) in subprocesses

CLIP = "clip-vit-base-patch32"


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:  # loopback only
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


class Poller(threading.Thread):
    """GETs the home page every quarter second and keeps what each answer was: a status, an
    outage (refused, reset) or a slow answer (no answer within the client's 30 s), told apart
    so a loaded machine's slowness is never mistaken for the site being down."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.statuses, self.done = url, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.statuses.append(get(self.url))
            except urllib.error.HTTPError as exc:
                self.statuses.append(exc.code)
            except TimeoutError:
                self.statuses.append("slow")
            except urllib.error.URLError as exc:
                slow = isinstance(exc.reason, TimeoutError)
                self.statuses.append("slow" if slow else f"outage: {exc.reason!r}")
            except OSError as exc:
                self.statuses.append(f"outage: {exc!r}")
            time.sleep(0.25)

    def outages(self) -> list[object]:
        return [s for s in self.statuses if s != 200 and s != "slow"]


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
    site = RunningSite(
        tmp_path,
        EMBEDDING_MODEL_SOURCES=f"{CLIP}={tiny_model_dirs[CLIP]}",
        EMBEDDING_SWEEP_SECONDS="3600",  # only the queued message itself can finish the job
    )
    data_dir, env = site.data_dir, site.env
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

        site.wait_until(answered, 90, f"the worker to answer {args}")

    with site:
        launcher = site.launcher
        ready = [line for line in site.log().splitlines() if line.startswith("[run]")]
        assert ready[-4].startswith(f"[run] Site ready at http://127.0.0.1:{site.port}/")
        # "Ready" means a web worker answered its self-check, not only that the port listens.
        assert "GET /health/" in site.log()
        poller = Poller(f"{site.url}/")
        poller.start()
        try:
            # A worker killed with SIGKILL comes back; the site answers meanwhile.
            worker = find_child(launcher, "celery", " worker")
            worker.kill()
            site.wait_until(
                lambda: (w := find_child(launcher, "celery", " worker")) and w.pid != worker.pid,
                60, "a new worker",
            )  # fmt: skip
            site.wait_until(lambda: site.log().count(" ready.") >= 2, 120, "ready")
            assert "[run] worker stopped (killed by SIGKILL); restarting in" in site.log()

            # A task queued before Redis is killed is still there after its restart, and done.
            # The worker leaves the model's queue alone for now.
            celery_control("cancel_consumer", "embed.clip-vit-base-patch32")
            csv_path, images = mini_flickr30k(tmp_path / "flickr")
            imported = subprocess.run(
                [str(RUN), "manage", "import_flickr30k", "--csv", str(csv_path),
                 "--images", str(images)],
                env=env, capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert imported.returncode == 0, imported.stdout + imported.stderr
            queue = redis.Redis(unix_socket_path=str(socket_path))
            assert queue.llen("embed.clip-vit-base-patch32") == 1
            find_child(launcher, "redis-server").kill()
            site.wait_until(lambda: "[run] redis is back" in site.log(), 60, "redis")
            model_queue = redis.Redis(unix_socket_path=str(socket_path))
            assert model_queue.llen("embed.clip-vit-base-patch32") == 1
            site.wait_until(
                lambda: site.log().count("Connected to redis") >= 3, 60, "the worker on Redis"
            )
            celery_control("add_consumer", "embed.clip-vit-base-patch32")
            pg = f"host={data_dir / 'postgres'} user=postgres dbname=postgres"
            with psycopg.connect(pg) as conn:
                count = "SELECT count(*) FROM search_imageembedding"
                site.wait_until(lambda: conn.execute(count).fetchone()[0] == 2, 120, "embeddings")
        finally:
            poller.done.set()
            poller.join()
        # Every answer was a page; none refused or failed (a slow answer on a loaded machine
        # is not an outage, and is told apart from one).
        assert 200 in poller.statuses and not poller.outages(), poller.statuses

        tree = psutil.Process(launcher.pid).children(recursive=True)
        postmaster_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        started = [*tree, psutil.Process(postmaster_pid)]
        assert site.stop() == 0

    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    assert not processes_of(data_dir)
    assert not (data_dir / "postgres" / "postmaster.pid").exists(), site.log()[-3000:]


def test_run_refuses_to_say_ready_when_the_cache_is_unreachable(tmp_path: Path) -> None:
    dead = tmp_path / "no-redis-here.sock"
    site = RunningSite(tmp_path, CACHE_URL=f"unix://{dead}?db=1", RUN_SELF_CHECK_SECONDS="5")
    with pytest.raises(AssertionError, match="self-check"), site:
        pass
    assert site.launcher is not None and site.launcher.returncode == 1
    assert "Site ready" not in site.log()
    assert "[run] error: the site's self-check (/health/) failed" in site.log()
    assert "no-redis-here.sock" in site.log()
    assert not processes_of(site.data_dir)


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
    assert not processes_of(data_dir)
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
    assert not processes_of(tmp_path / "data")


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

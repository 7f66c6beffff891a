"""Shared fixtures. Tests use the real embedded PostgreSQL + pgvector (settings start it) and
an embedded Redis started here unless CELERY_BROKER_URL points at one."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from django.conf import settings

from config.devserver import embedded

if TYPE_CHECKING:
    from tests.s3_server import Bucket

# Every process the tests start inherits this variable (pg_ctl's server and a daemon too), so
# the end of the session can find any of them still alive, wherever it was re-parented.
RUN_MARKER = "IMAGESEARCH_TEST_RUN"
os.environ[RUN_MARKER] = f"{os.getpid()}-{secrets.token_hex(4)}"
# No test may reach past this machine: a hub id loads from the local cache only (the test of
# an unreachable hub unsets this and points the hub at a closed loopback port).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A running Redis for Celery tests: the configured one, or an embedded one for the run."""
    if os.environ.get("CELERY_BROKER_URL"):
        yield settings.CELERY_BROKER_URL
        return
    process = embedded.redis_start(Path(settings.TEST_DATA_DIR))
    try:
        yield settings.CELERY_BROKER_URL
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _place_names_forget() -> None:
    """Each test starts without the place names a process keeps for a minute
    (gallery.selectors.place_names_known): each test's database is a new gallery."""
    from gallery.selectors import place_names_forget

    place_names_forget()


@pytest.fixture
def s3_bucket(settings) -> Iterator[Bucket]:
    """An empty private bucket on a running S3 server (tests/s3_server.py), with the site's
    image storages on it."""
    from config.settings.base import image_storages
    from tests.s3_server import s3_bucket_serving

    with s3_bucket_serving() as bucket:
        settings.STORAGES = {**settings.STORAGES, **image_storages(bucket.environ)}
        yield bucket


@pytest.fixture(autouse=True)
def _rate_limits_reset(redis_url: str) -> None:
    """Each test starts with an empty cache: no rate-limit counts carried over. The cache is the
    Redis that ./run uses too (the session's test Redis, database 1), so it must be up."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Tasks sent with apply_async run at once in this process, as the worker would run them
    (what a worker process sends, e.g. mail, lands in this process's django.core.mail.outbox)."""
    from config.celery import app

    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = False, False


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CLIP and ALIGN checkpoints on disk, standing in for the hub download (no internet
    here); they load through the same ``from_pretrained`` path as the real weights."""
    from tests.tiny_models import build_tiny_align, build_tiny_clip

    root = tmp_path_factory.mktemp("models")
    return {
        "clip-vit-base-patch32": build_tiny_clip(root / "clip"),
        "align-base": build_tiny_align(root / "align"),
    }


@pytest.fixture
def tiny_models(settings, tiny_model_dirs: dict[str, Path]) -> dict[str, Path]:
    """Point the model settings at the tiny checkpoints."""
    settings.EMBEDDING_MODEL_SOURCES = {k: str(v) for k, v in tiny_model_dirs.items()}
    settings.EMBEDDING_DEVICE = "cpu"
    return tiny_model_dirs


# --- Browser tests: Debian's Chromium driven by pytest-playwright (never a downloaded browser).
# Playwright's sync API runs an event loop in the test thread; Django's ORM refuses to run
# inside one unless told that this (test-only) use is fine.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {
        **browser_type_launch_args,
        "executable_path": "/usr/bin/chromium",
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ],
    }  # fmt: skip


# --- Nothing outlives the run ---------------------------------------------------------------
def _session_database_server() -> set[int]:
    """The test database's own server (./run test stops it after pytest) and its backends."""
    pid_file = embedded.postgres_dir(Path(settings.DATA_DIR)) / "postmaster.pid"
    try:
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        return {postmaster.pid, *(c.pid for c in postmaster.children(recursive=True))}
    except (OSError, ValueError, IndexError, psutil.Error):
        return set()


def processes_left_behind() -> list[psutil.Process]:
    """Processes this run started (they carry its marker) that are still alive."""
    marker = os.environ[RUN_MARKER]
    keep = {os.getpid(), *_session_database_server()}
    left = []
    for process in psutil.process_iter():
        if process.pid in keep:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(RUN_MARKER) == marker:
                left.append(process)
        except psutil.Error:
            continue
    return left


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a process running (after every fixture's teardown), and
    kill it, so a failed test can never leave a server behind on the machine."""
    left = processes_left_behind()
    if not left:
        return
    lines = []
    for process in left:
        try:
            lines.append(f"  pid {process.pid}: {' '.join(process.cmdline())[:200]}")
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=10)
    print(
        "\nFAILED: processes started by the tests were still running at the end of the run "
        "(now killed):\n" + "\n".join(lines),
        file=sys.stderr,
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- Markers: ./run test -m "not browser and not slow" is a developer's quick run --------------
# A test that drives Chromium or talks to a live server says so by the fixtures it asks for, and
# so does one that needs a Celery worker process: such a test is marked without anyone
# remembering to. Other slow tests (./run, gunicorn, compose or qemu in a subprocess, an HNSW
# index over thousands of vectors) carry pytest.mark.slow in their own files.
BROWSER_FIXTURES = frozenset({"page", "context", "new_context", "browser", "live_server"})
SLOW_FIXTURES = frozenset({"start_worker"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if BROWSER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.browser)
        if SLOW_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.slow)

"""Shared fixtures. Tests use the real embedded PostgreSQL + pgvector (settings start it) and
an embedded Redis started here unless CELERY_BROKER_URL points at one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from config import embedded


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

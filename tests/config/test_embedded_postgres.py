"""The embedded PostgreSQL's shared_buffers: set when this process starts the server, never by
restarting a server others already use, and a size the machine cannot give falls back."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from config.devserver import embedded

pytestmark = pytest.mark.slow  # starts PostgreSQL servers of its own


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is private to root, and the embedded PostgreSQL runs
    # as its own user when started by root.
    parent = Path(tempfile.mkdtemp(prefix="embedded-pg-"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        embedded.postgres_stop(parent / "data")
        shutil.rmtree(parent, ignore_errors=True)


def _server_state(uri: str) -> tuple[str, object]:
    with psycopg.connect(uri) as conn:
        row = conn.execute(
            "SELECT current_setting('shared_buffers'), pg_postmaster_start_time()"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_server_this_process_starts_gets_the_configured_shared_buffers(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_SHARED_BUFFERS", "160MB")
    uri = embedded.postgres_start(data_dir)  # a new data dir: initdb, start, restart
    buffers, started = _server_state(uri)
    assert buffers == "160MB"

    # Others hold connections to a running server: a changed setting waits for the next start.
    monkeypatch.setenv("POSTGRES_SHARED_BUFFERS", "192MB")
    with psycopg.connect(uri) as other_client:
        uri = embedded.postgres_start(data_dir)
        assert _server_state(uri) == ("160MB", started)
        assert other_client.execute("SELECT 1").fetchone() == (1,)

    embedded.postgres_stop(data_dir)
    assert _server_state(embedded.postgres_start(data_dir))[0] == "192MB"


def test_shared_buffers_the_machine_cannot_give_fall_back_to_the_default(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 TB is within PostgreSQL's range, and more memory than the kernel maps for it.
    monkeypatch.setenv("POSTGRES_SHARED_BUFFERS", "4TB")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uri = embedded.postgres_start(data_dir)
    assert _server_state(uri)[0] == "128MB"
    assert any("would not start with shared_buffers=4TB" in str(w.message) for w in caught)
    # Recorded settings no longer hold the size that failed.
    assert "4TB" not in (embedded.postgres_dir(data_dir) / "postgresql.auto.conf").read_text()


@pytest.mark.parametrize("value", ["12", "lots", "1 GiB", "-1GB"])
def test_a_size_without_a_postgresql_unit_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_SHARED_BUFFERS", value)
    with pytest.raises(embedded.EmbeddedServiceError, match="POSTGRES_SHARED_BUFFERS"):
        embedded.postgres_shared_buffers()


def test_the_default_is_a_gigabyte_or_a_quarter_of_the_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POSTGRES_SHARED_BUFFERS", raising=False)
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    expected = max(128, min(1024, memory_mb // 4))
    assert embedded.postgres_shared_buffers() == f"{expected}MB"
    assert embedded.postgres_shared_buffers({"POSTGRES_SHARED_BUFFERS": " 2GB "}) == "2GB"

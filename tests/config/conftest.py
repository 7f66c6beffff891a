"""Fixtures of the configuration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection


@pytest.fixture
def empty_database(django_db_blocker: object) -> Iterator[str]:
    """The name of a new, empty database on the test server, dropped afterwards: for running
    ``manage.py migrate`` from nothing, as a new site does."""
    name = f"migrate_check_{uuid.uuid4().hex[:8]}"
    params = connection.get_connection_params()
    params["dbname"] = "postgres"
    params.pop("options", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

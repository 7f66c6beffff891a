"""Migrations build the whole schema on an empty database, vector extension and indexes included."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
from django.conf import settings
from django.db import connection

from encoders.registry import MODELS
from workers.indexes import hnsw_index_name


def test_migrations_apply_to_an_empty_database(empty_database: str) -> None:
    db = settings.DATABASES["default"]
    url = f"postgresql://{db['USER']}@/{empty_database}?host={db['HOST']}&port={db['PORT'] or 5432}"
    env = dict(os.environ, DATABASE_URL=url, DJANGO_SETTINGS_MODULE="config.settings.dev")
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    params = connection.get_connection_params()
    params.update(dbname=empty_database)
    params.pop("options", None)
    with psycopg.connect(**params) as check:
        extensions = {row[0] for row in check.execute("SELECT extname FROM pg_extension")}
        indexes = {row[0] for row in check.execute("SELECT indexname FROM pg_indexes")}
        tables = {row[0] for row in check.execute("SELECT tablename FROM pg_tables")}
    assert "vector" in extensions
    assert {hnsw_index_name(m) for m in MODELS} <= indexes
    assert {
        "gallery_image",
        "gallery_caption",
        "gallery_collection",
        "search_imageembedding",
    } <= tables

"""Online index builds: `manage.py embedding_index_build` builds a model's HNSW index with
CREATE INDEX CONCURRENTLY under a build name, reporting pg_stat_progress_create_index, and swaps
it in; writes go on meanwhile; a killed build's invalid index is dropped by the next one; and
migrate builds inline only small models, saying what to run for the others.

Real parts: the builds run on their own connections against the test database, so these tests
commit (transaction=True): a concurrent build waits for every open transaction to end."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from gallery.models import Image
from search.ranking import embeddings_nearest
from tests.factories import ImageFactory, UserFactory
from workers.indexes import (
    IndexBuildProgress,
    embedding_index_build,
    embedding_index_states,
    embedding_indexes_ensure,
    hnsw_build_name,
    hnsw_index_name,
)
from workers.partitions import partition_name
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db(transaction=True)
CLIP = "clip-vit-base-patch32"
TABLE = "search_imageembedding"
# CLIP's embeddings and its index live on its partition (workers.partitions).
PARTITION = partition_name(CLIP)


@pytest.fixture(autouse=True)
def indexes_restored() -> Iterator[None]:
    """Every model's index as the other tests expect it, whatever a test dropped or left."""
    yield
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX IF EXISTS "{hnsw_build_name(CLIP)}"')
        cursor.execute('DROP INDEX IF EXISTS "search_emb_hnsw_clip_vit_base_patch32_m32"')
    embedding_indexes_ensure()


def unit_rows(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def embeddings_add(n: int, seed: int = 0) -> list[Image]:
    images = Image.objects.bulk_create(ImageFactory.build_batch(n, dataset=True, file="x.jpg"))
    embeddings_store(
        model_id=CLIP, image_ids=[i.pk for i in images], vectors=unit_rows(n, seed=seed)
    )
    return images


def raw_connection(autocommit: bool = True) -> psycopg.Connection:
    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    return psycopg.connect(**params, autocommit=autocommit)


def index_valid(name: str) -> bool | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [f'"{name}"']
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


def search_plan(vector: np.ndarray) -> str:
    """The plan of the product's nearest-neighbour query, sorting priced out (a few rows would
    rather be scanned): only a valid HNSW index matching the query can give its order."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_sort = off")
        return embeddings_nearest(model_id=CLIP, vector=vector, k=5).explain()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 180) -> object:
    """Poll ``condition`` until it is truthy; a deadline only so that a broken build fails the
    test instead of hanging it."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)
    return value


def build_phase(watch: psycopg.Connection) -> tuple[int, str] | None:
    row = watch.execute(
        "SELECT pid, phase FROM pg_stat_progress_create_index WHERE relid = %s::regclass",
        [PARTITION],
    ).fetchone()
    return (row[0], row[1]) if row else None


class SnapshotHeld:
    """A repeatable-read transaction holding a snapshot taken before a build: a concurrent
    build waits for it in its "waiting for old snapshots" phase, so the build is certainly still
    running, after its index is already written to, until the snapshot is let go."""

    def __enter__(self) -> SnapshotHeld:
        self.conn = raw_connection(autocommit=False)
        self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self.conn.execute("SELECT 1")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


def test_the_command_builds_concurrently_swaps_the_index_in_and_search_uses_it() -> None:
    embeddings_add(40)
    old = "search_emb_hnsw_clip_vit_base_patch32_m32"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX "{hnsw_index_name(CLIP)}"')
        cursor.execute(
            f'CREATE INDEX "{old}" ON {PARTITION} USING hnsw ((vector::vector(512)) '
            "vector_cosine_ops) WITH (m = 32)"
        )
    assert embedding_index_states(model_ids=[CLIP])[0].status == "old"

    out = io.StringIO()
    call_command("embedding_index_build", "--model", CLIP, stdout=out)

    assert index_valid(hnsw_index_name(CLIP)) is True
    assert index_valid(hnsw_build_name(CLIP)) is None  # renamed, not left beside it
    assert index_valid(old) is None  # the older graph's index is dropped after the swap
    assert "swapped in" in out.getvalue() and old in out.getvalue()
    assert f"Index Scan using {hnsw_index_name(CLIP)}" in search_plan(unit_rows(1, seed=7)[0])
    assert embedding_index_states(model_ids=[CLIP])[0].status == "ready"

    # Nothing to do the second time, unless asked to rebuild.
    out = io.StringIO()
    call_command("embedding_index_build", "--all", stdout=out)
    assert "every model's search index is current" in out.getvalue()


def test_the_command_refuses_a_transaction_pooler_and_says_how_to_run_it(settings) -> None:
    settings.DATABASE_PGBOUNCER = "transaction"
    with pytest.raises(CommandError, match="DATABASE_PGBOUNCER unset") as refused:
        call_command("embedding_index_build", "--model", CLIP, stdout=io.StringIO())
    assert "worker-cpu" in str(refused.value)


@contextmanager
def build_held(
    **build: object,
) -> Iterator[tuple[psycopg.Connection, int, threading.Thread, list[object]]]:
    """``embedding_index_build(model_id=CLIP, **build)`` in a thread, held in its last wait
    phase by a snapshot kept open for the block: yields the watching connection, the build's
    backend pid, the thread and the list its outcome (result or exception) is appended to."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(embedding_index_build(model_id=CLIP, **build))  # type: ignore[arg-type]
        except Exception as exc:  # asserted by the caller
            outcome.append(exc)

    with raw_connection() as watch, SnapshotHeld():
        builder = threading.Thread(target=run)
        builder.start()
        pid, _ = wait_for(
            lambda: (
                (found := build_phase(watch)) and found[1] == "waiting for old snapshots" and found
            ),
            "the build to wait for the held snapshot",
        )  # type: ignore[misc]
        yield watch, pid, builder, outcome


def test_writes_and_searches_go_on_while_a_build_runs() -> None:
    """A rebuild of a model's index, held before it can finish: an embedding stored from
    another connection meanwhile commits at once, searches use the old index, the admin's
    state says "building" with pg_stat_progress_create_index's phase; after the swap the
    stored row is found through the new index."""
    embeddings_add(200)
    extra = Image.objects.bulk_create(ImageFactory.build_batch(1, dataset=True, file="x.jpg"))[0]
    readings: list[IndexBuildProgress] = []
    held = build_held(rebuild=True, on_progress=readings.append, poll_seconds=0.02)
    with held as (watch, pid, builder, outcome):
        vector = unit_rows(1, seed=99)[0]
        with raw_connection() as writer:
            writer.execute("SET lock_timeout = '60s'")  # fail rather than hang if blocked
            writer.execute(
                f"INSERT INTO {TABLE} (image_id, model_id, vector, created_at) "
                "VALUES (%s, %s, %s::vector, now())",
                [extra.pk, CLIP, "[" + ",".join(map(str, vector.tolist())) + "]"],
            )
        # The insert has committed, and the build is still running.
        assert build_phase(watch) == (pid, "waiting for old snapshots")
        assert builder.is_alive()
        # Searches meanwhile: the old index (the new one is not valid yet).
        assert f"Index Scan using {hnsw_index_name(CLIP)} " in search_plan(vector)
        state = embedding_index_states(model_ids=[CLIP])[0]
        assert state.status == "building" and state.progress is not None
        assert state.progress.phase == "waiting for old snapshots"
        html = admin_changelist()
        assert "building: waiting for old snapshots" in html

    builder.join(timeout=180)
    (result,) = outcome
    assert not isinstance(result, Exception), result
    assert result.built and result.rows == 200  # type: ignore[attr-defined]  # counted before
    assert {reading.phase for reading in readings} >= {"waiting for old snapshots"}
    assert index_valid(hnsw_index_name(CLIP)) and index_valid(hnsw_build_name(CLIP)) is None
    plan = search_plan(vector)
    assert f"Index Scan using {hnsw_index_name(CLIP)} " in plan
    nearest = embeddings_nearest(model_id=CLIP, vector=vector, k=1)
    assert [e.image_id for e in nearest] == [extra.pk]


def test_a_killed_builds_invalid_index_is_dropped_by_the_next_build() -> None:
    embeddings_add(50)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX "{hnsw_index_name(CLIP)}"')
    with build_held() as (watch, pid, builder, failed):
        watch.execute("SELECT pg_terminate_backend(%s)", [pid])  # a killed build
        builder.join(timeout=180)
    assert failed and isinstance(failed[0], psycopg.OperationalError)
    assert index_valid(hnsw_build_name(CLIP)) is False  # left behind, invalid
    assert embedding_index_states(model_ids=[CLIP])[0].status == "missing"

    result = embedding_index_build(model_id=CLIP)

    assert hnsw_build_name(CLIP) in result.dropped and result.built
    assert index_valid(hnsw_index_name(CLIP)) is True
    assert index_valid(hnsw_build_name(CLIP)) is None


def admin_changelist() -> str:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client.get(reverse("admin:workers_embeddingmodel_changelist")).content.decode()


def test_migrate_builds_no_big_index_and_says_what_to_run(settings, caplog) -> None:
    embeddings_add(3)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX "{hnsw_index_name(CLIP)}"')
    settings.HNSW_INLINE_BUILD_MAX_ROWS = 2

    out = io.StringIO()
    call_command("migrate", stdout=out, verbosity=1)

    assert index_valid(hnsw_index_name(CLIP)) is None  # not built inline
    command = f"manage.py embedding_index_build --model {CLIP}"
    assert command in out.getvalue() and "HNSW_INLINE_BUILD_MAX_ROWS=2" in out.getvalue()
    assert command in caplog.text
    # The admin's models page says so too, and offers the build.
    html = admin_changelist()
    assert command in html and "missing: build needed" in html
    # Searches still answer, exactly, meanwhile.
    assert len(embeddings_nearest(model_id=CLIP, vector=unit_rows(1, seed=3)[0], k=5)) == 3

    # A small model is built by migrate at once.
    settings.HNSW_INLINE_BUILD_MAX_ROWS = 3
    out = io.StringIO()
    call_command("migrate", stdout=out, verbosity=1)
    assert index_valid(hnsw_index_name(CLIP)) is True
    assert "embedding_index_build" not in out.getvalue()


def test_the_admin_action_queues_the_build_and_the_task_builds(monkeypatch) -> None:
    from workers import admin, tasks

    embeddings_add(20)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX "{hnsw_index_name(CLIP)}"')
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        admin, "task_send", lambda name, *, queue, kwargs: sent.append((name, kwargs))
    )
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.post(
        reverse("admin:workers_embeddingmodel_changelist"),
        {"action": "build_index", "_selected_action": [CLIP]},
        follow=True,
    )
    assert "online index build queued" in response.content.decode()
    assert sent == [
        ("workers.tasks.embedding_index_build_task", {"model_id": CLIP, "rebuild": False})
    ]

    # What the worker runs, by the name sent.
    from config.celery import app

    outcome = app.tasks[sent[0][0]](**sent[0][1])
    assert outcome["built"] is True and outcome["rows"] == 20
    assert index_valid(hnsw_index_name(CLIP)) is True
    assert "missing: build needed" not in admin_changelist()
    assert tasks.embedding_index_build_task.name == sent[0][0]

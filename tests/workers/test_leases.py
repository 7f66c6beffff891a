"""No work done twice, nothing lost: leases owned per run and written with the database's
clock, bounded claims, a backstop that leaves queued messages alone, and a sweep whose cost
follows new images. Real Postgres, real tiny models through the real loader."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from gallery.models import Image
from tests.factories import ImageFactory, jpeg_bytes
from workers import pipeline, queueing
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.services import (
    embedding_jobs_claim,
    embedding_jobs_create_missing,
    embedding_jobs_missing_statement,
    embedding_jobs_start,
)
from workers.tasks import embed_images_task

CLIP = "clip-vit-base-patch32"
LEASE = timedelta(seconds=300)


def photos(n: int) -> list[Image]:
    return [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(i * 30 % 256, 90, 40), size=(40, 30)))
        for i in range(n)
    ]


@pytest.fixture
def model_calls(tiny_models, monkeypatch) -> Counter[int]:
    """Every image the real model is asked to embed, counted (by its decoded size, unique per
    photo here)."""
    seen: Counter[int] = Counter()
    real = pipeline.encoder_for(CLIP)
    lock = threading.Lock()

    class Counting:
        model_id, dim = real.model_id, real.dim

        def embed_images(self, images):
            with lock:
                seen.update(id(image) for image in images)
                seen["images"] += len(images)
            return real.embed_images(images)

    monkeypatch.setattr(pipeline, "encoder_for", lambda model_id: Counting())
    return seen


@pytest.mark.django_db
def test_a_batch_held_by_another_run_is_skipped_until_its_lease_ends(model_calls) -> None:
    images = photos(4)
    ids = [i.pk for i in images]
    embedding_jobs_create_missing(model_id=CLIP)
    # Another delivery took the first two, a moment ago.
    assert embedding_jobs_start(model_id=CLIP, image_ids=ids[:2], lease=LEASE, owner="other")
    outcome = embed_images_task(CLIP, ids)
    assert outcome["embedded"] == 2 and outcome["skipped"] == 2
    assert set(ImageEmbedding.objects.values_list("image_id", flat=True)) == set(ids[2:])
    assert model_calls["images"] == 2

    # That run died: once its lease has run out (by the database's clock) the jobs are free.
    EmbeddingJob.objects.filter(image_id__in=ids[:2]).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert embed_images_task(CLIP, ids)["embedded"] == 2
    # And a late duplicate of the same message finds nothing to do.
    assert embed_images_task(CLIP, ids)["embedded"] == 0
    assert model_calls["images"] == 4
    assert ImageEmbedding.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_batch_at_once_embed_each_image_once(model_calls) -> None:
    images = photos(8)
    ids = [i.pk for i in images]
    embedding_jobs_create_missing(model_id=CLIP)
    start = threading.Barrier(2)
    outcomes: list[dict] = []

    def deliver() -> None:
        try:
            start.wait()
            outcomes.append(embed_images_task(CLIP, ids))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sum(int(o["embedded"]) for o in outcomes) == 8, outcomes
    assert model_calls["images"] == 8
    assert sorted(ImageEmbedding.objects.values_list("image_id", flat=True)) == sorted(ids)
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}


@pytest.mark.django_db
def test_a_run_longer_than_its_lease_keeps_what_it_holds_and_leaves_what_another_took(
    model_calls, monkeypatch
) -> None:
    """A message bigger than the worker's sub-batch (an import queued in batches of 48 for
    workers that embed 8 at a time) can outlast one lease: every sub-batch renews the lease of
    all the jobs still to do, and a job another run took meanwhile is not embedded again."""
    ids = [i.pk for i in photos(6)]
    embedding_jobs_create_missing(model_id=CLIP)
    real_store = pipeline.embeddings_store
    leases_left: list[bool] = []

    def store(**kwargs: object) -> int:
        stored = real_store(**kwargs)
        if not leases_left:
            # The first sub-batch took longer than the lease: every lease the run took at its
            # start has run out, and another run took the next image.
            EmbeddingJob.objects.filter(image_id__in=ids[2:]).update(
                lease_until=timezone.now() - timedelta(seconds=1)
            )
            assert embedding_jobs_start(model_id=CLIP, image_ids=ids[2:3], lease=LEASE, owner="o")
        leases_left.append(
            not EmbeddingJob.objects.filter(
                image_id__in=ids[4:], lease_until__lt=timezone.now()
            ).exists()
        )
        return stored

    monkeypatch.setattr(pipeline, "embeddings_store", store)
    result = pipeline.images_embed_batch(model_id=CLIP, image_ids=ids, batch_size=2)

    assert (result.embedded, result.skipped) == (5, 1)
    assert model_calls["images"] == 5  # never the image the other run holds
    assert set(ImageEmbedding.objects.values_list("image_id", flat=True)) == set(ids) - {ids[2]}
    taken = EmbeddingJob.objects.get(image_id=ids[2])
    assert (taken.status, taken.lease_owner) == ("pending", "o")
    # The second sub-batch renewed the third's leases too: nobody could take them meanwhile.
    assert leases_left[1:] == [True, True]


def database_now() -> timezone.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


@pytest.mark.django_db
@pytest.mark.parametrize("offset_hours", [-2, 2])
def test_leases_use_the_database_clock_whatever_the_workers_clock_says(
    monkeypatch, offset_hours: int
) -> None:
    images = photos(3)
    ids = [i.pk for i in images]
    embedding_jobs_create_missing(model_id=CLIP)
    embedding_jobs_claim(model_id=CLIP, unstarted_after=None, limit=10)
    real_now = timezone.now
    # The worker's clock is two hours off (a host without NTP).
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(hours=offset_hours))
    assert embedding_jobs_start(model_id=CLIP, image_ids=ids, lease=LEASE, owner="me") == ids
    pipeline_lease = EmbeddingJob.objects.filter(image_id__in=ids)
    for job in pipeline_lease:
        held_for = (job.lease_until - database_now()).total_seconds()
        assert 290 < held_for <= 300, held_for
    # Running jobs are not due for the sweep, nor free for another run.
    assert embedding_jobs_claim(model_id=CLIP, unstarted_after=timedelta(0), limit=10) == []
    assert embedding_jobs_start(model_id=CLIP, image_ids=ids, lease=LEASE, owner="other") == []


@pytest.mark.django_db
def test_the_sweep_never_resends_what_may_still_be_queued_and_claims_a_bounded_number(
    settings, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    settings.EMBEDDING_QUEUE_MAX_BATCHES = 3
    images = photos(10)
    sent: list[list[int]] = []
    monkeypatch.setattr(queueing, "send_batches", lambda model_id, batches: sent.extend(batches))
    waiting = {"messages": 0}
    monkeypatch.setattr(queueing, "broker_queue_length", lambda queue: waiting["messages"])

    def sweep() -> list[list[int]]:
        before = len(sent)
        with django_capture_on_commit_callbacks(execute=True):
            queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=2)
        return sent[before:]

    # A backlog of five batches: at most three go to the queue, the rest wait unsent.
    assert [len(b) for b in sweep()] == [2, 2, 2]
    assert EmbeddingJob.objects.filter(enqueued_at__isnull=True).count() == 4
    # The queue holds two of them: room for one more batch.
    waiting["messages"] = 2
    assert [len(b) for b in sweep()] == [2]
    # Hours later those messages are still queued (a long backfill): nothing is sent again.
    EmbeddingJob.objects.exclude(enqueued_at=None).update(
        enqueued_at=timezone.now() - timedelta(hours=5)
    )
    waiting["messages"] = 1
    assert [len(b) for b in sweep()] == [2]  # only the last unsent batch
    assert sweep() == []
    every = [image_id for batch in sent for image_id in batch]
    assert sorted(every) == sorted(i.pk for i in images)  # each once, none lost
    # The queue drained and those jobs were never taken: their messages were lost; sent again.
    waiting["messages"] = 0
    assert sum(len(b) for b in sweep()) == 6  # bounded by the room: three batches


def plan(model_id: str) -> str:
    sql, params = embedding_jobs_missing_statement(model_id=model_id)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        return json.dumps(cursor.fetchone()[0])


@pytest.mark.django_db
def test_the_sweep_looks_for_new_images_by_key_not_across_the_whole_table(settings) -> None:
    settings.EMBEDDING_SWEEP_SETTLE_SECONDS = 600
    template = photos(1)[0]
    images = Image._meta.db_table
    columns = [
        f.column
        for f in Image._meta.concrete_fields
        if f.column not in ("id", "sha256", "file", "flickr30k_id", "original_filename")
        and not f.generated  # PostgreSQL computes those
    ]
    listed = ", ".join(columns)
    # Twenty thousand images from two hours ago, all with their jobs: an established site.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {images} ({listed}, sha256, file, original_filename, flickr30k_id) "
            f"SELECT {listed}, md5(n::text), 'x/' || n, n || '.jpg', 5000000 + n "
            f"FROM {images}, generate_series(1, 20000) n WHERE id = %s",
            [template.pk],
        )
        cursor.execute(f"UPDATE {images} SET created_at = now() - interval '2 hours'")
    embedding_jobs_create_missing(model_id=CLIP)
    cursor_at = EmbeddingModel.objects.get(model_id=CLIP).jobs_cursor
    assert cursor_at == Image.objects.order_by("-id").values_list("id", flat=True)[0]
    # A new image, not yet settled: found above the cursor, which stays below it.
    new = photos(1)[0]
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {images}; ANALYZE {EmbeddingJob._meta.db_table}")
    explained = plan(CLIP)
    assert f'"Index Name": "{images}_pkey"' in explained, explained
    assert "Seq Scan" not in explained and "Hash Anti Join" not in explained, explained
    assert embedding_jobs_create_missing(model_id=CLIP) == 1
    assert EmbeddingJob.objects.filter(image=new, model_id=CLIP, status="pending").exists()
    assert EmbeddingModel.objects.get(model_id=CLIP).jobs_cursor == cursor_at


@pytest.mark.django_db
def test_disabling_a_model_makes_its_next_sweep_look_at_every_image_again() -> None:
    from workers.services import (
        embedding_model_disable,
        embedding_model_enable,
    )

    images = photos(3)
    Image.objects.update(created_at=timezone.now() - timedelta(days=1))
    embedding_model_enable(model_id="align-base")
    embedding_jobs_create_missing(model_id="align-base")
    assert EmbeddingModel.objects.get(model_id="align-base").jobs_cursor == images[-1].pk
    embedding_model_disable(model_id="align-base")  # its pending jobs go
    embedding_model_enable(model_id="align-base")
    assert embedding_jobs_create_missing(model_id="align-base") == 3

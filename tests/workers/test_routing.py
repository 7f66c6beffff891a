"""A queue per model, batch size by device, coalesced uploads, the time limit, and a worker's
start checks (image storage, model loads retried), with real Celery workers (solo pool) on a
real Redis and Postgres, and the tiny models through the real loader."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from config.celery import app
from gallery.services.images import image_upload
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from tests.s3_server import Bucket
from tests.workers.test_celery_worker import Worker, wait_for, worker_environment
from workers import heartbeat, pipeline, queueing
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.models import Worker as WorkerRow
from workers.routing import batch_size_for, embedding_queue, worker_models

CLIP = "clip-vit-base-patch32"
ALIGN = "align-base"


def photos(n: int, shade: int = 0) -> list:
    colours = [(i * 20 % 256, shade, 90) for i in range(n)]
    return [ImageFactory(dataset=True, content=jpeg_bytes(color=c, size=(48, 32))) for c in colours]


def models_enable(*model_ids: str) -> None:
    for model_id in model_ids:
        EmbeddingModel.objects.update_or_create(
            model_id=model_id, defaults={"enabled": True, "unavailable_reason": ""}
        )


def purge(*queues: str) -> None:
    with app.connection_for_write() as broker:
        for name in queues:
            broker.default_channel.queue_purge(name)


def heartbeat_of(worker: Worker) -> WorkerRow | None:
    return WorkerRow.objects.filter(pid=worker.process.pid).first()


# --- in this process: sizes and the served models ------------------------------------------


@pytest.mark.django_db
def test_batch_size_is_chosen_by_device_unless_set(settings) -> None:
    settings.EMBEDDING_BATCH_SIZE = 0
    sizes = [batch_size_for(device) for device in ("cuda", "cuda:1", "cpu", "mps")]
    assert sizes == [256, 256, 32, 32]
    settings.EMBEDDING_DEVICE = "cuda"  # told, not detected: no GPU is needed to report it
    assert heartbeat.WorkerProcess(name="gpu@test").batch_size == 256
    settings.EMBEDDING_DEVICE = "cpu"
    assert heartbeat.WorkerProcess(name="cpu@test").batch_size == 32
    settings.EMBEDDING_BATCH_SIZE = 64
    assert (batch_size_for("cuda"), batch_size_for("cpu")) == (64, 64)


@pytest.mark.django_db
def test_the_sweep_sizes_batches_for_the_biggest_live_worker_of_the_model(settings) -> None:
    settings.EMBEDDING_BATCH_SIZE = 0
    models_enable(CLIP, ALIGN)
    assert queueing.sweep_batch_size(model_id=CLIP) == 32  # no live worker: the CPU size
    for pid, size, loaded in ((1, 32, [CLIP]), (2, 256, [CLIP]), (3, 512, [ALIGN])):
        WorkerRow.objects.create(
            name=f"w{pid}", hostname="h", pid=pid, device="cpu", batch_size=size,
            models_loaded=loaded, started_at="2026-01-01T00:00Z", last_seen="2099-01-01T00:00Z",
        )  # fmt: skip
    assert queueing.sweep_batch_size(model_id=CLIP) == 256
    assert queueing.sweep_batch_size(model_id=ALIGN) == 512


@pytest.mark.django_db
def test_a_worker_serves_the_enabled_models_it_is_given(settings) -> None:
    models_enable(CLIP, ALIGN)
    settings.EMBEDDING_WORKER_MODELS = []
    assert sorted(worker_models()) == [ALIGN, CLIP]
    settings.EMBEDDING_WORKER_MODELS = [ALIGN, "siglip-base-patch16-224"]  # not enabled: left out
    assert worker_models() == [ALIGN]
    assert embedding_queue(ALIGN) == "embed.align-base"


def test_the_memory_limit_is_measured_as_celery_measures_prefork_children(settings) -> None:
    settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD = 1  # KiB: any Python process is past it
    assert heartbeat.memory_over_limit()
    settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD = 1024 * 1024 * 1024  # 1 TiB
    assert not heartbeat.memory_over_limit()
    settings.CELERY_WORKER_MAX_MEMORY_PER_CHILD = 0  # no limit
    assert not heartbeat.memory_over_limit()


# --- the soft time limit ---------------------------------------------------------------------


class SlowStorage(FileSystemStorage):
    """The image folder behind a slow network: each read waits a second first."""

    def _open(self, name: str, mode: str = "rb") -> Any:
        time.sleep(1.0)
        return super()._open(name, mode)


@pytest.mark.django_db
def test_a_batch_past_its_soft_time_limit_releases_its_jobs_to_be_queued_again(
    settings, tiny_models, django_capture_on_commit_callbacks
) -> None:
    images = photos(4)
    ids = [i.pk for i in images]
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": f"{__name__}.SlowStorage"}}
    settings.EMBEDDING_TASK_SOFT_TIME_LIMIT = 0.5
    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=ids)

    assert "time_limit" in result
    jobs = EmbeddingJob.objects.filter(model_id=CLIP)
    # Back to waiting, unsent, held by nobody, with why: not failed.
    assert {(j.status, j.enqueued_at, j.lease_until, j.lease_owner) for j in jobs} == {
        ("pending", None, None, "")
    }
    assert all("time limit" in j.error for j in jobs)
    assert not ImageEmbedding.objects.exists()

    # Later, with the storage answering in time, the sweep queues them and they are embedded.
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    }
    sent: list[list[int]] = []
    original = queueing.send_batches
    queueing.send_batches = lambda model_id, batches: sent.extend(batches)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            queueing.embeddings_enqueue_missing(model_id=CLIP)
    finally:
        queueing.send_batches = original
    assert sent == [sorted(ids)]
    assert pipeline.embedding_batch_run(model_id=CLIP, image_ids=sent[0])["embedded"] == 4
    assert set(jobs.values_list("status", flat=True)) == {"done"}


# --- real workers --------------------------------------------------------------------------


@pytest.fixture
def start_worker(redis_url: str, tiny_models, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    base = worker_environment(
        redis_url, tiny_models,
        EMBEDDING_MODELS=f"{CLIP},{ALIGN}", WORKER_HEARTBEAT_SECONDS="0.5",
        WORKER_STALE_SECONDS="5", WORKER_RETRY_SECONDS="0.5",
    )  # fmt: skip
    app.control.purge()
    purge(embedding_queue(CLIP), embedding_queue(ALIGN))
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        log = tmp_path / f"worker{len(workers)}.log"
        workers.append(Worker({**base, **env}, log))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop()
    app.control.purge()
    purge(embedding_queue(CLIP), embedding_queue(ALIGN))


def consuming(worker: Worker, *queues: str) -> Callable[[], bool]:
    def check() -> bool:
        row = heartbeat_of(worker)
        return row is not None and row.queues == sorted(queues)

    return check


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_model_s_batches_wait_in_its_queue_for_a_worker_that_serves_it(start_worker) -> None:
    models_enable(CLIP, ALIGN)
    images = photos(4)
    align_only = start_worker(EMBEDDING_WORKER_MODELS=ALIGN)
    wait_for(consuming(align_only, embedding_queue(ALIGN)), 120, align_only.log)
    assert heartbeat_of(align_only).models_loaded == [ALIGN]

    assert queueing.embeddings_enqueue_missing(model_id=CLIP) == 1
    assert queueing.embeddings_enqueue_missing(model_id=ALIGN) == 1
    align_stored = ImageEmbedding.objects.filter(model_id=ALIGN)
    wait_for(lambda: align_stored.count() == 4, 120, align_only.log)
    # The CLIP batch is in CLIP's own queue, untouched by the worker that serves only ALIGN.
    time.sleep(1.5)  # a few more heartbeats and loop turns of the worker
    assert queueing.broker_queue_length(embedding_queue(CLIP)) == 1
    assert not ImageEmbedding.objects.filter(model_id=CLIP).exists()

    clip_only = start_worker(EMBEDDING_WORKER_MODELS=CLIP)
    clip_stored = ImageEmbedding.objects.filter(model_id=CLIP)
    wait_for(lambda: clip_stored.count() == 4, 120, clip_only.log)
    assert sorted(clip_stored.values_list("image_id", flat=True)) == sorted(i.pk for i in images)
    wait_for(lambda: heartbeat_of(clip_only).embedded == 4, 30, clip_only.log)
    assert heartbeat_of(align_only).embedded == 4  # its ALIGN images only
    assert heartbeat_of(clip_only).queues == [embedding_queue(CLIP)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_uploads_within_the_window_are_embedded_in_one_task_and_one_model_call(
    settings, start_worker
) -> None:
    models_enable(CLIP)
    settings.EMBEDDING_COALESCE_SECONDS = 8
    worker = start_worker(EMBEDDING_WORKER_MODELS=CLIP)
    wait_for(consuming(worker, embedding_queue(CLIP)), 120, worker.log)
    owner = UserFactory()
    uploaded = []
    for i in range(6):  # six requests, each its own transaction
        content = jpeg_bytes(color=(30 * i, 120, 60), size=(48, 32))
        upload = SimpleUploadedFile(f"p{i}.jpg", content, content_type="image/jpeg")
        uploaded.append(image_upload(owner=owner, file=upload).pk)
    stored = ImageEmbedding.objects.filter(model_id=CLIP)
    wait_for(lambda: stored.count() == 6, 120, worker.log)
    assert sorted(stored.values_list("image_id", flat=True)) == sorted(uploaded)
    wait_for(lambda: heartbeat_of(worker).embedded == 6, 30, worker.log)
    # One batch of six through the model, not six batches of one.
    assert heartbeat_of(worker).batches == 1
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_worker_that_cannot_reach_the_storage_takes_no_batches_until_it_can(
    start_worker, s3_bucket: Bucket, admin_client
) -> None:
    models_enable(CLIP)
    [image] = photos(1)
    content = s3_bucket.read(image.file.name)
    s3_bucket.stop()
    worker = start_worker(EMBEDDING_WORKER_MODELS=CLIP, **s3_bucket.environ)
    wait_for(lambda: (r := heartbeat_of(worker)) is not None and r.storage_error, 120, worker.log)
    row = heartbeat_of(worker)
    assert row.models_loaded == [CLIP] and row.queues == []
    page = admin_client.get("/admin/workers/worker/").content.decode()
    assert "unreachable, takes no batches" in page

    assert queueing.embeddings_enqueue_missing(model_id=CLIP) == 1
    time.sleep(2)  # heartbeats and loop turns: the batch stays queued
    assert queueing.broker_queue_length(embedding_queue(CLIP)) == 1
    assert not EmbeddingJob.objects.filter(started_at__isnull=False).exists()

    s3_bucket.restart()  # moto forgets objects: put the image back
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=image.file.name, Body=content)
    wait_for(consuming(worker, embedding_queue(CLIP)), 60, worker.log)
    assert heartbeat_of(worker).storage_error == ""
    wait_for(lambda: ImageEmbedding.objects.filter(image=image).exists(), 120, worker.log)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_model_that_failed_to_load_is_tried_again_and_its_queue_taken(
    start_worker, tiny_model_dirs, tmp_path: Path
) -> None:
    models_enable(CLIP)
    images = photos(3)
    later = tmp_path / "weights-arrive-later"
    worker = start_worker(EMBEDDING_WORKER_MODELS=CLIP, EMBEDDING_MODEL_SOURCES=f"{CLIP}={later}")
    wait_for(lambda: (r := heartbeat_of(worker)) is not None and CLIP in r.models_failed, 120,
             worker.log)  # fmt: skip
    assert heartbeat_of(worker).queues == []
    assert queueing.embeddings_enqueue_missing(model_id=CLIP) == 1  # a probe batch: it waits

    shutil.copytree(tiny_model_dirs[CLIP], later)  # the weights volume is mounted at last
    wait_for(consuming(worker, embedding_queue(CLIP)), 60, worker.log)
    row = heartbeat_of(worker)
    assert (row.models_loaded, row.models_failed) == ([CLIP], {})
    stored = ImageEmbedding.objects.filter(model_id=CLIP)
    wait_for(lambda: stored.count() == 3, 120, worker.log)
    assert sorted(stored.values_list("image_id", flat=True)) == sorted(i.pk for i in images)
    assert "loads now: taking its batches" in worker.log.read_text()
    connection.close()

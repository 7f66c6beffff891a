"""Real Celery workers (solo pool) on a real Redis, embedding into the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from config.celery import app
from tests.factories import ImageFactory, jpeg_bytes
from workers import queueing
from workers.models import EmbeddingJob, ImageEmbedding

pytestmark = pytest.mark.django_db(transaction=True)

LEASE_SECONDS = 3
CLIP = "clip-vit-base-patch32"


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
             "--loglevel=INFO", "--without-mingle", "--without-gossip"],
            cwd=settings.BASE_DIR, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def worker_environment(redis_url: str, tiny_models: dict[str, str], **extra: str) -> dict[str, str]:
    """A worker process's environment: this test database, broker and media folder, and the
    tiny models; ``extra`` adds or overrides settings."""
    db = connection.settings_dict
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}",
        CELERY_BROKER_URL=redis_url,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        EMBEDDING_MODEL_SOURCES=",".join(f"{k}={v}" for k, v in tiny_models.items()),
        OMP_NUM_THREADS="1",
        **extra,
    )


@pytest.fixture
def start_worker(redis_url: str, tiny_models, tmp_path: Path) -> Iterator:
    # A short lease, so the batch of a killed worker is due again within the test.
    env = worker_environment(redis_url, tiny_models, EMBEDDING_JOB_LEASE_SECONDS=str(LEASE_SECONDS))
    app.control.purge()
    workers: list[Worker] = []

    def start(**extra_env: str) -> Worker:
        workers.append(Worker({**env, **extra_env}, tmp_path / "worker.log"))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop()
    app.control.purge()


def wait_for(condition, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out; worker log:\n{log.read_text()[-4000:]}")


def test_worker_takes_a_queued_batch_into_postgres(start_worker, tmp_path: Path) -> None:
    images = ImageFactory.create_batch(6, dataset=True)
    worker = start_worker()
    queued = queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=4)
    assert queued == 2
    wait_for(lambda: ImageEmbedding.objects.filter(model_id=CLIP).count() == 6, 120, worker.log)
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}
    assert {e.image_id for e in ImageEmbedding.objects.all()} == {i.pk for i in images}


def test_worker_killed_mid_run_then_restarted_leaves_one_embedding_per_image(
    start_worker, tmp_path: Path
) -> None:
    total = 160
    images = [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(i % 256, 40, 90), size=(640, 480)))
        for i in range(total)
    ]
    worker = start_worker()
    queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=4)
    stored = ImageEmbedding.objects.filter(model_id=CLIP)
    held = EmbeddingJob.objects.filter(model_id=CLIP, status="pending", started_at__isnull=False)
    wait_for(lambda: stored.count() >= 8 and held.exists(), 120, worker.log)
    worker.process.kill()  # SIGKILL: no clean-up, the batch in hand is never acknowledged
    worker.process.wait()
    partial = stored.count()
    assert 0 < partial < total, "the worker should have died mid-run"

    # The dead worker's batch (usually one was in hand) is held until its lease runs out; then
    # the sweep knows it is lost and queues it again, while the batches still in the queue are
    # left to the queue. Without that, Redis would redeliver it only after an hour.
    time.sleep(LEASE_SECONDS + 0.5)
    worker = start_worker()
    queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=4)
    wait_for(lambda: stored.count() == total, 300, worker.log)
    assert sorted(stored.values_list("image_id", flat=True)) == sorted(i.pk for i in images)
    assert not EmbeddingJob.objects.exclude(status="done").exists()


def test_a_worker_with_its_own_media_folder_embeds_from_object_storage(
    start_worker, s3_bucket, tmp_path: Path
) -> None:
    """Web and worker as on two hosts: no shared folder, only the bucket (tests/s3_server.py,
    moto's S3 server standing in for MinIO, which cannot be installed here)."""
    images = ImageFactory.create_batch(5, dataset=True)
    assert s3_bucket.keys() == sorted(i.file.name for i in images)
    worker_media = tmp_path / "worker-host" / "media"
    worker = start_worker(MEDIA_ROOT=str(worker_media), **s3_bucket.environ)
    queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=4)
    stored = ImageEmbedding.objects.filter(model_id=CLIP)
    wait_for(lambda: stored.count() == 5, 120, worker.log)
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}
    assert not worker_media.exists() and not Path(settings.MEDIA_ROOT).exists()

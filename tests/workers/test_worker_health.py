"""Model health per worker, with real Celery workers (solo pool) on a real Redis and Postgres:
each worker checks the models at start and records a heartbeat; a worker that cannot load a
model does not take it away from the site while another worker loads it, and stops taking its
batches; a model is unavailable only when no live worker loads it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from config.celery import app
from tests.factories import ImageFactory, jpeg_bytes
from tests.workers.test_celery_worker import Worker, wait_for, worker_environment
from workers import queueing
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.models import Worker as WorkerRow
from workers.routing import embedding_queue
from workers.selectors import workers_live

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CLIP = "clip-vit-base-patch32"


@pytest.fixture
def start_worker(redis_url: str, tiny_models, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start a worker; keyword arguments override its environment (e.g. a bad device)."""
    base = worker_environment(
        redis_url, tiny_models,
        EMBEDDING_MODELS=CLIP, WORKER_HEARTBEAT_SECONDS="0.5", WORKER_STALE_SECONDS="5",
    )  # fmt: skip
    app.control.purge()
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        log = tmp_path / f"worker{len(workers)}.log"
        workers.append(Worker({**base, **env}, log))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop()
    app.control.purge()


def heartbeat_of(worker: Worker) -> WorkerRow | None:
    return WorkerRow.objects.filter(pid=worker.process.pid).first()


def model_reason() -> str:
    return EmbeddingModel.objects.get(model_id=CLIP).unavailable_reason


def test_a_worker_records_its_heartbeat_and_leaves_the_list(settings, start_worker) -> None:
    settings.WORKER_STALE_SECONDS = 5
    # A worker that died an hour ago, without a clean shutdown.
    dead = WorkerRow.objects.create(
        name="celery@gone", hostname="gone", pid=1, device="cuda", batch_size=256,
        models_loaded=[CLIP], started_at=timezone.now() - timedelta(hours=2),
        last_seen=timezone.now() - timedelta(hours=1),
    )  # fmt: skip
    assert dead not in workers_live()
    worker = start_worker()
    wait_for(lambda: heartbeat_of(worker) is not None, 120, worker.log)
    row = heartbeat_of(worker)
    assert row is not None
    assert (row.models_loaded, row.models_failed, row.device, row.batch_size) == (
        [CLIP],
        {},
        "cpu",
        32,  # EMBEDDING_BATCH_SIZE 0: by the device
    )
    assert row.name.startswith("celery@")
    first_seen = row.last_seen
    wait_for(lambda: heartbeat_of(worker).last_seen > first_seen, 30, worker.log)
    assert list(workers_live()) == [heartbeat_of(worker)]
    assert not WorkerRow.objects.filter(pk=dead.pk).exists()  # pruned by the heartbeat

    worker.stop()  # a clean shutdown takes it off the list at once
    assert heartbeat_of(worker) is None


def test_a_worker_that_cannot_load_a_model_does_not_block_one_that_can(start_worker) -> None:
    images = [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(i * 20 % 256, 60, 90), size=(48, 32)))
        for i in range(12)
    ]
    # Told to use a GPU; this machine has none.
    broken = start_worker(DJANGO_SETTINGS_MODULE="tests.cuda_worker_settings")
    wait_for(lambda: heartbeat_of(broken) is not None, 120, broken.log)
    row = heartbeat_of(broken)
    assert row is not None and row.models_loaded == []
    assert "CUDA is not available" in row.models_failed[CLIP]
    # Alone, it is the only word on the model: unavailable, with its reason, as before.
    assert "CUDA is not available" in model_reason()

    healthy = start_worker()
    wait_for(lambda: heartbeat_of(healthy) is not None, 120, healthy.log)
    # A live worker loads it: available again, whatever the broken one keeps saying.
    wait_for(lambda: model_reason() == "", 30, healthy.log)
    assert queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=2) == 6
    stored = ImageEmbedding.objects.filter(model_id=CLIP)
    wait_for(lambda: stored.count() == 12, 180, healthy.log)
    assert sorted(stored.values_list("image_id", flat=True)) == sorted(i.pk for i in images)
    assert set(EmbeddingJob.objects.values_list("status", "error")) == {("done", "")}
    assert model_reason() == ""
    # Every image went through the healthy worker's model, once; the broken one took none.
    wait_for(lambda: heartbeat_of(healthy).embedded == 12, 30, healthy.log)
    assert heartbeat_of(broken).embedded == 0
    assert "it takes no embedding batches of it" in broken.log.read_text()
    assert heartbeat_of(broken).queues == []

    # The healthy worker goes: now no live worker loads the model, and the site says so.
    healthy.stop()
    wait_for(lambda: "CUDA is not available" in model_reason(), 30, broken.log)


def test_every_batch_delivered_twice_to_two_workers_is_embedded_once(start_worker) -> None:
    images = [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(i * 20 % 256, 90, 60), size=(48, 32)))
        for i in range(12)
    ]
    workers = [start_worker(), start_worker()]
    for worker in workers:
        wait_for(lambda worker=worker: heartbeat_of(worker) is not None, 120, worker.log)
    ids = [i.pk for i in images]
    # As Redis does after a visibility timeout, or a sweep racing an upload: each batch's
    # message twice over, the same task id, back to back, so both workers run copies at once.
    for start in range(0, 12, 3):
        for _ in range(2):
            app.send_task(
                "workers.tasks.embed_images_task", args=(CLIP, ids[start : start + 3]),
                queue=embedding_queue(CLIP), task_id=f"batch-{start}",
            )  # fmt: skip
    stored = ImageEmbedding.objects.filter(model_id=CLIP)
    wait_for(lambda: stored.count() == 12, 180, workers[0].log)

    def model_calls() -> int:
        return sum(WorkerRow.objects.values_list("embedded", flat=True))

    # Each worker counts the images its model embedded; their heartbeats carry the counts.
    wait_for(lambda: model_calls() >= 12, 30, workers[0].log)
    # Every message has run by now (both queues drained); one more beat each for late counts.
    wait_for(lambda: queueing.broker_queue_length(embedding_queue(CLIP)) == 0, 60, workers[1].log)
    time.sleep(1.5)
    assert model_calls() == 12
    assert sorted(stored.values_list("image_id", flat=True)) == sorted(ids)
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}

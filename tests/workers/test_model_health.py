"""A model's availability follows the live workers' heartbeats: one worker that cannot load a
model hands its batches back while another loads it, and the model is unavailable to the site
only when no live worker loads it. Real Postgres, real tiny models through the real loader."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import ImageFactory, jpeg_bytes
from workers import heartbeat
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding, Worker
from workers.services import (
    WorkerReport,
    embedding_jobs_create_missing,
    embedding_model_mark_unavailable,
    worker_heartbeat_record,
)
from workers.tasks import embed_images_task

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


def reason() -> str:
    return EmbeddingModel.objects.get(model_id=CLIP).unavailable_reason


def other_worker(*, loads: list[str], seen_ago: timedelta = timedelta(0), pid: int = 7) -> Worker:
    report = WorkerReport(
        name="celery@gpu-2", hostname="gpu-2", pid=pid, device="cuda", batch_size=256,
        models_loaded=loads, models_failed={},
    )  # fmt: skip
    worker = worker_heartbeat_record(report=report)
    Worker.objects.filter(pk=worker.pk).update(last_seen=timezone.now() - seen_ago)
    return worker


def test_a_worker_that_cannot_load_a_model_hands_its_batch_to_those_that_can(
    settings, tmp_path, monkeypatch
) -> None:
    images = [ImageFactory(dataset=True, content=jpeg_bytes(size=(40, 30))) for _ in range(3)]
    ids = [i.pk for i in images]
    embedding_jobs_create_missing(model_id=CLIP)
    other_worker(loads=[CLIP])
    # This process is a worker whose copy of the weights is missing.
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "missing")}
    monkeypatch.setattr(heartbeat, "_current", heartbeat.WorkerProcess(name="celery@cpu-1"))

    outcome = embed_images_task(CLIP, ids)
    assert outcome["released"] == 3 and "missing" in str(outcome["unavailable_here"])
    # Not failed, not blocked: unsent and with nothing against them, for the sweep to queue.
    jobs = EmbeddingJob.objects.filter(image_id__in=ids)
    assert {(j.status, j.error, j.enqueued_at, j.lease_owner) for j in jobs} == {
        ("pending", "", None, "")
    }
    assert reason() == ""  # the site keeps the model: another worker loads it
    row = Worker.objects.get(name="celery@cpu-1")
    assert "missing" in row.models_failed[CLIP] and row.models_loaded == []


def test_a_model_is_unavailable_only_when_no_live_worker_loads_it(settings) -> None:
    settings.WORKER_STALE_SECONDS = 60
    healthy = other_worker(loads=[CLIP])
    assert not embedding_model_mark_unavailable(model_id=CLIP, reason="CUDA is not available")
    assert reason() == ""
    # The healthy worker stops beating: the next word against the model stands.
    Worker.objects.filter(pk=healthy.pk).update(last_seen=timezone.now() - timedelta(minutes=5))
    assert embedding_model_mark_unavailable(model_id=CLIP, reason="CUDA is not available")
    assert reason() == "CUDA is not available"
    # A worker that loads it says so in its heartbeat: available again.
    other_worker(loads=[CLIP])
    assert reason() == ""
    assert not ImageEmbedding.objects.exists()


def test_the_admin_lists_the_live_workers_and_what_each_can_do(client, settings) -> None:
    from django.urls import reverse

    from tests.factories import UserFactory

    settings.WORKER_STALE_SECONDS = 60
    other_worker(loads=[CLIP])
    broken = WorkerReport(
        name="celery@cpu-9", hostname="cpu-9", pid=9, device="cuda", batch_size=32,
        models_loaded=[], models_failed={CLIP: "CUDA is not available"},
    )  # fmt: skip
    worker_heartbeat_record(report=broken)
    gone = other_worker(loads=["align-base"], seen_ago=timedelta(minutes=10), pid=8)
    Worker.objects.filter(pk=gone.pk).update(name="celery@gone")
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get(reverse("admin:workers_worker_changelist")).content.decode()
    assert "celery@gpu-2" in page and "celery@cpu-9" in page
    assert f"{CLIP}: CUDA is not available" in page
    assert "celery@gone" not in page  # a dead worker leaves the list

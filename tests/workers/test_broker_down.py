"""With the broker down, uploads and sweeps still commit; the work waits for the next sweep."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from config.celery import app
from gallery.models import Image
from gallery.services.images import image_upload
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from workers import queueing
from workers.models import EmbeddingJob

pytestmark = pytest.mark.django_db


def _reset_connections() -> None:
    # Drop the cached connection pools so the next publish connects to the current broker_url.
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker_down(tmp_path: Path) -> Iterator[None]:
    previous = app.conf.broker_url
    app.conf.broker_url = f"redis+socket://{tmp_path / 'no-redis-here.sock'}"
    _reset_connections()
    yield
    app.conf.broker_url = previous
    _reset_connections()


def test_upload_succeeds_and_stays_pending_when_the_broker_is_down(
    broker_down, django_capture_on_commit_callbacks, caplog
) -> None:
    upload = SimpleUploadedFile("cat.jpg", jpeg_bytes(), content_type="image/jpeg")
    with caplog.at_level(logging.WARNING), django_capture_on_commit_callbacks(execute=True):
        image = image_upload(owner=UserFactory(), file=upload)
    assert Image.objects.filter(pk=image.pk).exists()
    job = EmbeddingJob.objects.get(image=image)
    assert (job.status, job.enqueued_at) == ("pending", None)
    assert "broker unavailable" in caplog.text


def test_sweep_with_the_broker_down_leaves_jobs_for_the_next_sweep(
    broker_down, django_capture_on_commit_callbacks
) -> None:
    ImageFactory.create_batch(3, dataset=True)
    with django_capture_on_commit_callbacks(execute=True):
        queueing.embeddings_enqueue_missing(model_id="clip-vit-base-patch32", batch_size=2)
    jobs = EmbeddingJob.objects.all()
    assert len(jobs) == 3 and all(j.enqueued_at is None for j in jobs)

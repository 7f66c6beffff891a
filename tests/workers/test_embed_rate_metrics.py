"""The embed rate on /metrics, from the database so it covers workers on every host: stored
embeddings per model, and each live worker's count from its heartbeat."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client

from tests.factories import ImageFactory
from tests.workers.test_healthz_metrics import MODEL, OTHER, live_worker, metric
from workers.models import EmbeddingModel, Worker
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db


def scrape() -> str:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def test_metrics_count_embeddings_per_model_and_images_per_live_worker() -> None:
    EmbeddingModel.objects.update_or_create(model_id=MODEL, defaults={"enabled": True})
    EmbeddingModel.objects.update_or_create(model_id=OTHER, defaults={"enabled": True})
    images = ImageFactory.create_batch(3, dataset=True)
    embeddings_store(
        model_id=MODEL, image_ids=[image.pk for image in images], vectors=np.ones((3, 512))
    )
    live_worker(MODEL, pid=7)
    Worker.objects.filter(pid=7).update(embedded=40)

    text = scrape()

    assert metric(text, "imagesearch_embeddings_stored", model=MODEL) == 3
    assert metric(text, "imagesearch_embeddings_stored", model=OTHER) == 0
    labels = {"worker": "celery@test-7", "pid": "7", "device": "cpu"}
    assert metric(text, "imagesearch_worker_images_embedded_total", **labels) == 40

    # A later heartbeat, more images stored: what rate() and deriv() are taken over.
    embeddings_store(
        model_id=MODEL, image_ids=[ImageFactory(dataset=True).pk], vectors=np.ones((1, 512))
    )
    Worker.objects.filter(pid=7).update(embedded=41)
    text = scrape()
    assert metric(text, "imagesearch_embeddings_stored", model=MODEL) == 4
    assert metric(text, "imagesearch_worker_images_embedded_total", **labels) == 41

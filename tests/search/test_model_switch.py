"""Changing models without downtime: enable -> backfill -> make default; disable; progress."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import ImageFactory, UserFactory
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.selectors import embedding_model_default, embedding_progress
from workers.services import (
    EmbeddingModelStateError,
    embedding_model_disable,
    embedding_model_enable,
    embedding_model_make_default,
    embeddings_store,
)

pytestmark = pytest.mark.django_db
CLIP, ALIGN = "clip-vit-base-patch32", "align-base"


def vectors(n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, dim))


def test_settings_enable_the_default_model_on_migrate() -> None:
    assert list(EmbeddingModel.objects.values_list("model_id", "enabled", "is_default")) == [
        (CLIP, True, True)
    ]


def test_new_model_backfills_while_search_keeps_the_old_default(
    django_capture_on_commit_callbacks,
) -> None:
    images = ImageFactory.create_batch(3, dataset=True)
    with django_capture_on_commit_callbacks() as callbacks:
        embedding_model_enable(model_id=ALIGN)
    assert len(callbacks) == 1  # the backfill sweep, sent after commit
    assert embedding_model_default() == CLIP

    with pytest.raises(EmbeddingModelStateError, match="3 of 3 images to embed"):
        embedding_model_make_default(model_id=ALIGN)
    assert embedding_model_default() == CLIP

    embeddings_store(model_id=ALIGN, image_ids=[i.pk for i in images], vectors=vectors(3, 640))
    assert embedding_progress(model_id=ALIGN).pending == 0
    embedding_model_make_default(model_id=ALIGN)
    assert embedding_model_default() == ALIGN
    assert EmbeddingModel.objects.filter(is_default=True).count() == 1


def test_the_default_model_cannot_be_disabled() -> None:
    with pytest.raises(EmbeddingModelStateError, match="default"):
        embedding_model_disable(model_id=CLIP)


def test_disable_keeps_or_deletes_embeddings() -> None:
    images = ImageFactory.create_batch(2, dataset=True)
    embedding_model_enable(model_id=ALIGN)
    embeddings_store(model_id=ALIGN, image_ids=[images[0].pk], vectors=vectors(1, 640))
    EmbeddingJob.objects.create(image=images[1], model_id=ALIGN)
    assert embedding_model_disable(model_id=ALIGN) == 0
    assert ImageEmbedding.objects.filter(model_id=ALIGN).count() == 1
    assert not EmbeddingJob.objects.filter(model_id=ALIGN, status="pending").exists()
    assert embedding_model_disable(model_id=ALIGN, delete_embeddings=True) == 1
    assert not ImageEmbedding.objects.filter(model_id=ALIGN).exists()
    assert not EmbeddingModel.objects.get(model_id=ALIGN).enabled


def test_progress_counts_done_pending_and_failed() -> None:
    images = ImageFactory.create_batch(4, dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[images[0].pk], vectors=vectors(1, 512))
    EmbeddingJob.objects.create(image=images[1], model_id=CLIP, status="failed", error="truncated")
    progress = embedding_progress(model_id=CLIP)
    assert (progress.total, progress.done, progress.failed, progress.pending) == (4, 1, 1, 2)
    assert progress.percent == 25.0


def test_progress_json_is_for_staff(client: Client) -> None:
    ImageFactory.create_batch(2, dataset=True)
    url = reverse("embedding-progress")
    signed_out = client.get(url)
    assert signed_out.status_code == 401 and "staff" in signed_out.json()["error"]
    client.force_login(UserFactory())
    not_staff = client.get(url)
    assert not_staff.status_code == 403 and "staff" in not_staff.json()["error"]
    client.force_login(UserFactory(is_staff=True))
    data = client.get(url).json()
    assert data["models"] == [
        {"model_id": CLIP, "total": 2, "done": 0, "failed": 0, "pending": 2, "blocked": 0,
         "reason": "", "rate_per_minute": 0.0, "unavailable": "", "percent": 0.0,
         "seconds_left": None, "enabled": True, "default": True}
    ]  # fmt: skip


def test_admin_shows_progress_and_switches_the_default(
    client: Client, django_capture_on_commit_callbacks
) -> None:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    image = ImageFactory(dataset=True)
    changelist = reverse("admin:workers_embeddingmodel_changelist")
    with django_capture_on_commit_callbacks():
        response = client.post(reverse("admin:workers_embeddingmodel_add"), {"model_id": ALIGN})
    assert response.status_code == 302
    assert EmbeddingModel.objects.get(model_id=ALIGN).enabled

    page = client.get(changelist).content.decode()
    assert "0.0%" in page  # align: nothing embedded yet
    refused = client.post(
        changelist, {"action": "make_default", "_selected_action": [ALIGN]}, follow=True
    )
    assert "images to embed" in refused.content.decode()
    assert embedding_model_default() == CLIP

    embeddings_store(model_id=ALIGN, image_ids=[image.pk], vectors=vectors(1, 640))
    client.post(changelist, {"action": "make_default", "_selected_action": [ALIGN]})
    assert embedding_model_default() == ALIGN
    assert "100.0%" in client.get(changelist).content.decode()


def test_progress_counts_blocked_images_with_the_reason_and_the_rate(admin_client) -> None:
    from workers.services import (
        embedding_jobs_create_missing,
        embedding_jobs_note_blocked,
        embedding_model_mark_unavailable,
        embeddings_store,
    )

    images = ImageFactory.create_batch(5, dataset=True)
    embedding_jobs_create_missing(model_id=CLIP)
    vectors = np.eye(512, dtype=np.float32)[:2]
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images[:2]], vectors=vectors)
    reason = f"weights for embedding model {CLIP!r} are not available from '/nowhere'"
    embedding_model_mark_unavailable(model_id=CLIP, reason=reason)
    embedding_jobs_note_blocked(model_id=CLIP, image_ids=[images[2].pk], reason=reason)

    progress = embedding_progress(model_id=CLIP)
    assert (progress.done, progress.pending, progress.blocked, progress.failed) == (2, 2, 1, 0)
    assert progress.reason == reason
    assert progress.rate_per_minute == pytest.approx(0.2)  # 2 stored in the 10-minute window
    # Nothing moves while the model cannot load: no time left is promised.
    assert progress.seconds_left is None

    page = admin_client.get("/admin/workers/embeddingmodel/").content.decode()
    assert "lip-vit-base-patch32 is not available: weights for embedding model" in page
    assert "1: weights for embedding model" in page  # the blocked column
    assert "40.0%, model unavailable: weights for embedding model" in page
    assert "images/min" not in page and " left" not in page


def test_a_disabled_model_is_shown_as_disabled_not_pending(admin_client) -> None:
    from workers.services import embedding_model_disable, embedding_model_enable

    ImageFactory.create_batch(3, dataset=True)
    embedding_model_enable(model_id=ALIGN)
    embedding_model_disable(model_id=ALIGN, delete_embeddings=True)
    page = admin_client.get("/admin/workers/embeddingmodel/").content.decode()
    row = page[page.index(f">{ALIGN}<") :].split("</tr>")[0]
    assert "disabled" in row and ">3<" not in row

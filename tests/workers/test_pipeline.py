"""The embedding pipeline against real Postgres, with tiny models through the real loader."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from django.core.files.base import ContentFile

from encoders import open_image
from tests.factories import ImageFactory, jpeg_bytes
from workers import pipeline, queueing
from workers.encoder_cache import encoder_for
from workers.models import EmbeddingJob, ImageEmbedding
from workers.tasks import embed_images_task

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


class CountingEncoder:
    """Wraps the real encoder and records the size of every forward pass."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self.dim, self.calls = inner, inner.model_id, inner.dim, []

    def embed_images(self, images):
        self.calls.append(len(images))
        return self.inner.embed_images(images)

    def embed_texts(self, texts):
        return self.inner.embed_texts(texts)


def photos(n: int) -> list:
    return [
        ImageFactory(
            dataset=True, content=jpeg_bytes(color=(i * 20 % 256, 80, 200 - i), size=(60, 45))
        )
        for i in range(n)
    ]


def test_stored_embeddings_equal_the_encoder_on_the_same_files(tiny_models) -> None:
    images = photos(5)
    result = pipeline.images_embed_batch(model_id=CLIP, image_ids=[i.pk for i in images])
    assert result.embedded == 5 and not result.failed
    encoder = encoder_for(CLIP)
    expected = encoder.embed_images([open_image(i.file.path) for i in images])
    stored = {
        e.image_id: np.asarray(e.vector) for e in ImageEmbedding.objects.filter(model_id=CLIP)
    }
    got = np.stack([stored[i.pk] for i in images])
    assert np.abs(got - expected).max() <= 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert set(EmbeddingJob.objects.values_list("status", "attempts")) == {("done", 1)}


def test_images_go_through_the_model_in_batches(tiny_models) -> None:
    images = photos(10)
    encoder = CountingEncoder(encoder_for(CLIP))
    pipeline.images_embed_batch(
        model_id=CLIP, image_ids=[i.pk for i in images], encoder=encoder, batch_size=4
    )
    assert encoder.calls == [4, 4, 2]


def test_running_twice_stores_one_embedding_per_image(tiny_models) -> None:
    ids = [i.pk for i in photos(4)]
    first = pipeline.images_embed_batch(model_id=CLIP, image_ids=ids)
    second = pipeline.images_embed_batch(model_id=CLIP, image_ids=ids + ids)
    assert (first.embedded, second.embedded, second.skipped) == (4, 0, 4)
    assert ImageEmbedding.objects.filter(model_id=CLIP).count() == 4


def test_a_corrupt_image_fails_alone_with_a_reason(tiny_models) -> None:
    good = photos(3)
    corrupt = ImageFactory(dataset=True, content=b"not a jpeg at all", file=None)
    corrupt.file.save("broken.jpg", ContentFile(b"\xff\xd8\xff\xe0 truncated"), save=True)
    ids = [good[0].pk, corrupt.pk, good[1].pk, good[2].pk]
    result = pipeline.images_embed_batch(model_id=CLIP, image_ids=ids, batch_size=2)
    assert result.embedded == 3
    assert list(result.failed) == [corrupt.pk]
    job = EmbeddingJob.objects.get(image=corrupt, model_id=CLIP)
    assert job.status == "failed" and "cannot" in job.error
    assert set(ImageEmbedding.objects.values_list("image_id", flat=True)) == {i.pk for i in good}


def test_a_missing_file_fails_alone_with_a_reason(tiny_models) -> None:
    good, gone = photos(2)
    gone.file.storage.delete(gone.file.name)
    result = pipeline.images_embed_batch(model_id=CLIP, image_ids=[good.pk, gone.pk])
    assert result.embedded == 1
    assert "unreadable" in result.failed[gone.pk]


def test_missing_weights_leave_jobs_pending_with_the_reason(settings, tmp_path) -> None:
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "no-such-weights")}
    images = photos(2)
    outcome = embed_images_task(CLIP, [i.pk for i in images])
    assert "no-such-weights" in outcome["unavailable"]
    jobs = EmbeddingJob.objects.filter(model_id=CLIP)
    assert {j.status for j in jobs} == {"pending"}
    assert all(CLIP in j.error and "no-such-weights" in j.error for j in jobs)
    assert not ImageEmbedding.objects.exists()


def test_disabled_model_gets_no_new_work(tiny_models) -> None:
    images = photos(2)
    outcome = embed_images_task("align-base", [i.pk for i in images])  # not enabled by settings
    assert "not enabled" in outcome["reason"]
    assert not ImageEmbedding.objects.exists()


def test_sweep_queues_only_images_lacking_an_embedding(
    tiny_models, django_capture_on_commit_callbacks
) -> None:
    images = photos(5)
    pipeline.images_embed_batch(model_id=CLIP, image_ids=[images[0].pk])
    with django_capture_on_commit_callbacks() as callbacks:
        batches = queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=3)
    assert batches == 2 and len(callbacks) == 1
    pending = EmbeddingJob.objects.filter(model_id=CLIP, status="pending")
    assert {j.image_id for j in pending} == {i.pk for i in images[1:]}
    assert all(j.enqueued_at is not None for j in pending)
    # Queued moments ago: a second sweep leaves them to the batches already in the queue.
    with django_capture_on_commit_callbacks():
        assert queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=3) == 0


def test_replace_re_embeds_existing_rows(tiny_models) -> None:
    image = photos(1)[0]
    ImageEmbedding.objects.create(image=image, model_id=CLIP, vector=np.ones(512) / np.sqrt(512))
    result = pipeline.images_embed_batch(model_id=CLIP, image_ids=[image.pk], replace=True)
    assert result.embedded == 1
    stored = np.asarray(ImageEmbedding.objects.get(image=image).vector)
    assert not np.allclose(stored, np.ones(512) / np.sqrt(512))


def test_a_model_that_stays_unavailable_is_logged_once_per_change(
    settings, tmp_path, caplog
) -> None:
    images = photos(2)
    ids = [i.pk for i in images]
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "no-such-weights")}
    with caplog.at_level(logging.DEBUG, logger="workers.pipeline"):
        for _ in range(3):  # three sweeps' probe batches
            assert "unavailable" in embed_images_task(CLIP, ids)
        settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "other-weights")}
        embed_images_task(CLIP, ids)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 2, errors
    assert "no-such-weights" in errors[0] and "other-weights" in errors[1]

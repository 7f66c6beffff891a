"""Jobs recover by themselves once the cause is gone: missing weights, a worker that died, a
batch that failed, a lost message. Real Postgres, real tiny models through the real loader."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import ImageFactory, jpeg_bytes
from workers import queueing
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.routing import embedding_queue
from workers.services import embedding_jobs_create_missing
from workers.tasks import embed_images_task

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


def photos(n: int) -> list:
    return [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(i * 30 % 256, 90, 40), size=(40, 30)))
        for i in range(n)
    ]


def purge_embedding_queue() -> None:
    """Empty the broker's embedding queue: other tests may have left batches in it."""
    from config.celery import app

    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(embedding_queue(CLIP))


def model_state() -> EmbeddingModel:
    return EmbeddingModel.objects.get(model_id=CLIP)


def sweep(capture, **kwargs) -> list[list[int]]:
    """Run the sweep; return the batches it sent (captured, not published)."""
    sent: list[list[int]] = []
    original = queueing.send_batches
    queueing.send_batches = lambda model_id, batches: sent.extend(batches)
    try:
        with capture(execute=True):
            queueing.embeddings_enqueue_missing(model_id=CLIP, **kwargs)
    finally:
        queueing.send_batches = original
    return sent


def test_missing_weights_mark_the_model_then_a_probe_recovers_everything(
    settings, tmp_path, tiny_model_dirs, django_capture_on_commit_callbacks
) -> None:
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "not-there-yet")}
    images = photos(7)
    ids = [i.pk for i in images]
    embedding_jobs_create_missing(model_id=CLIP)

    outcome = embed_images_task(CLIP, ids[:2])
    assert "not-there-yet" in outcome["unavailable"]
    state = model_state()
    assert "not-there-yet" in state.unavailable_reason and state.unavailable_since is not None
    blocked = EmbeddingJob.objects.filter(image_id__in=ids[:2])
    # Not the images' fault: still pending, no attempt spent, waiting to be sent again.
    assert {(j.status, j.attempts, j.enqueued_at) for j in blocked} == {("pending", 0, None)}
    assert all("not-there-yet" in j.error for j in blocked)

    # While the model is unavailable the sweep sends one probe batch, not the whole backlog.
    probe = sweep(django_capture_on_commit_callbacks, batch_size=3)
    assert [len(b) for b in probe] == [3]

    # The weights arrive; the probe batch loads them, clears the model's reason and queues the
    # rest at once, with no manual command.
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tiny_model_dirs[CLIP])}
    sent: list[list[int]] = []
    original = queueing.send_batches
    queueing.send_batches = lambda model_id, batches: sent.extend(batches)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            outcome = embed_images_task(CLIP, probe[0])
    finally:
        queueing.send_batches = original
    assert outcome["embedded"] == 3
    assert model_state().unavailable_reason == ""
    assert sorted(i for batch in sent for i in batch) == sorted(set(ids) - set(probe[0]))
    for batch in sent:
        embed_images_task(CLIP, batch)
    assert ImageEmbedding.objects.filter(model_id=CLIP).count() == 7


def test_cuda_requested_without_a_gpu_is_recorded_not_left_silent(settings, tiny_models) -> None:
    settings.EMBEDDING_DEVICE = "cuda"  # this machine has no GPU
    image = photos(1)[0]
    outcome = embed_images_task(CLIP, [image.pk])
    assert "CUDA is not available" in outcome["unavailable"]
    job = EmbeddingJob.objects.get(image=image, model_id=CLIP)
    assert job.status == "pending" and "CUDA is not available" in job.error
    assert "CUDA is not available" in model_state().unavailable_reason


def test_a_failing_batch_records_its_reason_and_fails_after_the_last_attempt(
    settings, tiny_models, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    settings.EMBEDDING_MAX_ATTEMPTS = 2
    from workers import pipeline

    real = pipeline.encoder_for(CLIP)

    class BrokenEncoder:
        model_id, dim = real.model_id, real.dim

        def embed_images(self, images):
            raise RuntimeError("out of memory in the vision tower")

    monkeypatch.setattr(pipeline, "encoder_for", lambda model_id: BrokenEncoder())
    image = photos(1)[0]
    job = EmbeddingJob.objects.filter(image=image, model_id=CLIP)

    outcome = embed_images_task(CLIP, [image.pk])
    assert "out of memory" in outcome["error"]
    first = job.get()
    assert (first.status, first.attempts) == ("pending", 1)
    assert "RuntimeError: out of memory" in first.error
    # Its lease ended with the failure: the next sweep sends it again.
    assert sweep(django_capture_on_commit_callbacks) == [[image.pk]]

    embed_images_task(CLIP, [image.pk])
    last = job.get()
    assert last.status == "failed" and "gave up after 2 attempts" in last.error


def test_the_sweep_requeues_a_dead_workers_batch_only_once_its_lease_ran_out(
    tiny_models, django_capture_on_commit_callbacks
) -> None:
    images = photos(4)
    embedding_jobs_create_missing(model_id=CLIP)
    now = timezone.now()
    alive, dead = images[:2], images[2:]
    # Two batches a worker took: one still held, one whose worker stopped renewing its lease.
    EmbeddingJob.objects.filter(image__in=alive).update(
        enqueued_at=now, started_at=now, lease_until=now + timedelta(minutes=5)
    )
    EmbeddingJob.objects.filter(image__in=dead).update(
        enqueued_at=now - timedelta(minutes=6),
        started_at=now - timedelta(minutes=6),
        lease_until=now - timedelta(seconds=1),
    )
    assert sweep(django_capture_on_commit_callbacks) == [sorted(i.pk for i in dead)]


def test_a_sent_but_lost_message_is_sent_again_when_the_queue_is_empty(
    redis_url, settings, django_capture_on_commit_callbacks
) -> None:
    purge_embedding_queue()
    images = photos(2)
    embedding_jobs_create_missing(model_id=CLIP)
    old = timezone.now() - timedelta(seconds=settings.EMBEDDING_LOST_AFTER_SECONDS + 5)
    EmbeddingJob.objects.update(enqueued_at=old)  # sent a while ago, never taken
    assert queueing.broker_queue_length(embedding_queue(CLIP)) == 0
    assert sweep(django_capture_on_commit_callbacks) == [sorted(i.pk for i in images)]
    # Sent moments ago: left to the queue.
    assert sweep(django_capture_on_commit_callbacks) == []


def test_an_upload_leaves_its_job_to_the_coalesced_task_of_its_model(
    redis_url, django_capture_on_commit_callbacks
) -> None:
    from django.core.cache import cache
    from django.core.files.uploadedfile import SimpleUploadedFile

    from gallery.services.images import image_upload
    from tests.factories import UserFactory

    purge_embedding_queue()
    cache.clear()
    owner = UserFactory()
    for shade, name in enumerate(("dog.jpg", "cat.jpg", "owl.jpg")):
        content = jpeg_bytes(color=(40 * shade, 90, 40))
        upload = SimpleUploadedFile(name, content, content_type="image/jpeg")
        with django_capture_on_commit_callbacks(execute=True):
            image_upload(owner=owner, file=upload)
    # Unsent: the task claims them when it runs (and the sweep would, were it lost).
    assert list(EmbeddingJob.objects.values_list("enqueued_at", flat=True)) == [None] * 3
    # One task for the three uploads, in the model's own queue.
    assert queueing.broker_queue_length(embedding_queue(CLIP)) == 1
    purge_embedding_queue()

"""The embedding pipeline: decode images in threads while the model embeds the previous batch,
store each batch with one bulk statement, and record per-image failures on their jobs.

Every entry point is safe to run twice: images that already have an embedding are skipped, and
storing ignores rows another run stored first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from encoders import Encoder, ImageDecodeError, open_image
from gallery.models import Image
from search.models import EmbeddingJob, ImageEmbedding
from search.selectors import embedding_models_enabled
from search.services import (
    embedding_jobs_claim,
    embedding_jobs_create_missing,
    embedding_jobs_mark_failed,
    embedding_jobs_record_attempt,
    embeddings_store,
)
from workers.loading import encoder_for

logger = logging.getLogger(__name__)

BROKER_ERRORS = (KombuOperationalError, RedisConnectionError, ConnectionError, OSError)


@dataclass
class BatchResult:
    embedded: int = 0
    skipped: int = 0
    failed: dict[int, str] = field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        self.embedded += other.embedded
        self.skipped += other.skipped
        self.failed.update(other.failed)

    def as_dict(self) -> dict[str, object]:
        return {"embedded": self.embedded, "skipped": self.skipped, "failed": self.failed}


Decoded = tuple[int, "object | None", str]  # image id, PIL image or None, failure reason


def _decode(image: Image) -> Decoded:
    try:
        with image.file.open("rb") as handle:
            return image.pk, open_image(handle, max_pixels=settings.UPLOAD_MAX_PIXELS), ""
    except ImageDecodeError as exc:
        return image.pk, None, str(exc)
    except OSError as exc:
        return image.pk, None, f"image file unreadable: {exc.strerror or exc}"


def _decoded_batches(
    images: Sequence[Image], batch_size: int, pool: ThreadPoolExecutor
) -> Iterator[list[Decoded]]:
    """Yield decoded batches, keeping the next batch decoding in ``pool`` meanwhile.

    PIL releases the GIL while decoding and torch while computing, so the threads overlap
    with the model; only one batch is held ahead, which bounds memory.
    """

    def submit(batch: Sequence[Image]) -> list[Future[Decoded]]:
        return [pool.submit(_decode, image) for image in batch]

    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    ahead = submit(batches[0]) if batches else []
    for following in [*batches[1:], []]:
        current, ahead = ahead, submit(following)
        yield [future.result() for future in current]


def images_embed_batch(
    *,
    model_id: str,
    image_ids: Sequence[int],
    encoder: Encoder | None = None,
    batch_size: int | None = None,
    replace: bool = False,
) -> BatchResult:
    """Embed ``image_ids`` with ``model_id`` and store the vectors.

    Images that already have an embedding are skipped (unless ``replace``), as are ids whose
    image was deleted. An image that cannot be decoded is marked failed with the reason and the
    rest of the batch goes on. Raises ``WeightsUnavailableError`` when the model cannot load.
    """
    result = BatchResult()
    wanted = list(dict.fromkeys(image_ids))
    if not replace:
        done = set(
            ImageEmbedding.objects.filter(model_id=model_id, image_id__in=wanted).values_list(
                "image_id", flat=True
            )
        )
        wanted = [i for i in wanted if i not in done]
        result.skipped += len(done)
    images = list(Image.objects.filter(pk__in=wanted).only("id", "file").order_by("id"))
    result.skipped += len(wanted) - len(images)
    if not images:
        return result

    # Jobs exist before the model loads, so a load failure can be recorded on them.
    embedding_jobs_create_missing(model_id=model_id, image_ids=[i.pk for i in images])
    encoder = encoder or encoder_for(model_id)
    batch_size = batch_size or settings.EMBEDDING_BATCH_SIZE
    embedding_jobs_record_attempt(model_id=model_id, image_ids=[i.pk for i in images])
    with ThreadPoolExecutor(settings.EMBEDDING_DECODE_THREADS, "decode") as pool:
        for batch in _decoded_batches(images, batch_size, pool):
            ok = [(pk, picture) for pk, picture, _ in batch if picture is not None]
            failures = {pk: reason for pk, picture, reason in batch if picture is None}
            if ok:
                vectors = encoder.embed_images([picture for _, picture in ok])
                embeddings_store(
                    model_id=model_id,
                    image_ids=[pk for pk, _ in ok],
                    vectors=vectors,
                    replace=replace,
                )
                result.embedded += len(ok)
            embedding_jobs_mark_failed(model_id=model_id, failures=failures)
            result.failed.update(failures)
    if result.failed:
        logger.warning("%s: %d images failed: %s", model_id, len(result.failed), result.failed)
    return result


def embeddings_enqueue_missing(
    *,
    model_id: str,
    batch_size: int | None = None,
    requeue_after: timedelta | None = None,
    retry_failed: bool = False,
) -> int:
    """Queue batches for every image lacking an embedding for ``model_id``; returns batches.

    Pending jobs queued less than ``requeue_after`` ago are left alone (their batch is still in
    the queue); older ones are queued again, which is how a batch lost with a killed worker is
    finished. Queuing happens after the transaction commits.
    """
    batch_size = batch_size or settings.EMBEDDING_BATCH_SIZE
    if requeue_after is None:
        requeue_after = timedelta(seconds=settings.EMBEDDING_REQUEUE_AFTER_SECONDS)
    embedding_jobs_create_missing(model_id=model_id)
    image_ids = embedding_jobs_claim(
        model_id=model_id, stale_after=requeue_after, include_failed=retry_failed
    )
    batches = [image_ids[i : i + batch_size] for i in range(0, len(image_ids), batch_size)]
    transaction.on_commit(lambda: _send_batches(model_id, batches))
    return len(batches)


def _send_batches(model_id: str, batches: list[list[int]]) -> None:
    """Queue batches; with the broker down, log it and leave the jobs for the next sweep.

    An upload or an import must not fail because Redis is briefly away: the images and their
    pending jobs are already committed, and the periodic sweep queues them once it is back.
    """
    from workers.tasks import embed_images

    for index, batch in enumerate(batches):
        try:
            embed_images.apply_async(args=(model_id, batch), queue=settings.EMBEDDING_QUEUE)
        except BROKER_ERRORS as exc:
            unsent = [image_id for rest in batches[index:] for image_id in rest]
            EmbeddingJob.objects.filter(model_id=model_id, image_id__in=unsent).update(
                enqueued_at=None
            )
            logger.warning(
                "broker unavailable (%s): %d images of %s stay pending for the next sweep",
                exc, len(unsent), model_id,
            )  # fmt: skip
            return


def embeddings_sweep(*, model_id: str | None = None) -> dict[str, int]:
    """Queue the missing embeddings of every enabled model (or just ``model_id``)."""
    enabled = embedding_models_enabled()
    targets = [m for m in enabled if model_id in (None, m)]
    return {m: embeddings_enqueue_missing(model_id=m) for m in targets}


def image_enqueue_embedding(*, image_id: int) -> None:
    """Queue a new image for every enabled model once the transaction commits."""
    for model_id in embedding_models_enabled():
        embedding_jobs_create_missing(model_id=model_id, image_ids=[image_id])
        transaction.on_commit(lambda m=model_id: _send_batches(m, [[image_id]]))

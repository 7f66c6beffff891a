"""The embedding pipeline: decode images in threads while the model embeds the previous batch,
store each batch with one bulk statement, and record per-image failures on their jobs.

Every entry point is safe to run twice: images that already have an embedding are skipped, and
storing ignores rows another run stored first. Queueing lives in ``workers.queueing``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.db.models import Exists, OuterRef
from PIL import Image as PILImage

from encoders import Encoder, EncoderError, ImageDecodeError, open_image
from gallery.decoding import DECODE_MIN_SIDE
from gallery.models import Image
from gallery.storage import StorageUnreachable, stored_file_open
from workers import heartbeat
from workers.encoder_cache import encoder_for
from workers.limits import time_limits
from workers.models import EmbeddingJob, ImageEmbedding
from workers.routing import batch_size_for, device_resolved
from workers.selectors import embedding_model_loaded_elsewhere, embedding_model_unavailable_reason
from workers.services import (
    embedding_jobs_create_missing,
    embedding_jobs_mark_failed,
    embedding_jobs_note_blocked,
    embedding_jobs_note_error,
    embedding_jobs_record_attempt,
    embedding_jobs_release,
    embedding_jobs_renew_lease,
    embedding_jobs_start,
    embedding_model_mark_available,
    embedding_model_mark_unavailable,
    embeddings_store,
)

logger = logging.getLogger(__name__)

# The database going away mid-batch: the task retries these; the jobs' lease runs out if it
# never comes back, and the sweep queues them again.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


class ModelUnavailableError(RuntimeError):
    """The model cannot be loaded in this worker (weights, device, precision): not the images'
    fault, so no job is failed for it."""

    def __init__(self, model_id: str, reason: str) -> None:
        self.model_id = model_id
        self.reason = reason
        super().__init__(reason)


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


Decoded = tuple[int, "PILImage.Image | None", str]  # image id, image or None, failure reason


def _decode(image: Image) -> Decoded:
    """Read and decode one image. A storage that cannot be reached raises
    ``StorageUnreachable`` (the whole batch waits); a missing or corrupt file is this image's
    failure alone."""
    # Reduced as query images are (gallery.decoding): a batch of full-size 80-megapixel RGB copies
    # would take gigabytes, and the same file searched with must give the same vector.
    try:
        with stored_file_open(image.file.name or "") as handle:
            picture = open_image(
                handle, max_pixels=settings.UPLOAD_MAX_PIXELS, min_side=DECODE_MIN_SIDE
            )
            return image.pk, picture, ""
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
    owner: str | None = None,
) -> BatchResult:
    """Embed ``image_ids`` with ``model_id`` and store the vectors.

    Images that already have an embedding are skipped (unless ``replace``, or their job was set
    pending again to re-embed them), as are ids whose image was deleted. An image that cannot
    be decoded is marked failed with the reason and the rest of the batch goes on. Jobs that
    another run holds (``owner`` names this one) are skipped. Raises
    ``ModelUnavailableError`` when the model cannot load.
    """
    result = BatchResult()
    asked_replace = replace
    wanted = list(dict.fromkeys(image_ids))
    if not replace:
        # An embedding beside a pending job was asked to be made anew (staff's re-embed,
        # workers.services.embedding_jobs_request): only the others are done.
        asked_again = EmbeddingJob.objects.filter(
            image_id=OuterRef("image_id"), model_id=model_id, status=EmbeddingJob.Status.PENDING
        )
        stored = list(
            ImageEmbedding.objects.filter(model_id=model_id, image_id__in=wanted)
            .annotate(again=Exists(asked_again))
            .values_list("image_id", "again")
        )
        done = {image_id for image_id, again in stored if not again}
        replace = any(again for _, again in stored)
        wanted = [i for i in wanted if i not in done]
        result.skipped += len(done)
    images = list(Image.objects.filter(pk__in=wanted).only("id", "file").order_by("id"))
    result.skipped += len(wanted) - len(images)
    if not images:
        return result

    ids = [i.pk for i in images]
    lease = timedelta(seconds=settings.EMBEDDING_JOB_LEASE_SECONDS)
    owner = owner or uuid.uuid4().hex
    # Jobs exist and are held before the model loads, so a load failure can be recorded on
    # them and a slow load does not look like a lost batch to the sweep.
    embedding_jobs_create_missing(model_id=model_id, image_ids=ids)
    held = set(embedding_jobs_start(model_id=model_id, image_ids=ids, lease=lease, owner=owner))
    # Only what this run holds: a pending job held by another run (a second delivery of the
    # message, or another batch with the image) is theirs; one that turned done meanwhile was
    # stored by another run. A failed job is nobody's (a person's explicit ask), and done ones
    # are embedded again only when asked to replace.
    status = dict(
        EmbeddingJob.objects.filter(model_id=model_id, image_id__in=ids).values_list(
            "image_id", "status"
        )
    )
    again = {EmbeddingJob.Status.FAILED} | ({EmbeddingJob.Status.DONE} if asked_replace else set())
    images = [i for i in images if i.pk in held or status.get(i.pk) in again]
    result.skipped += len(ids) - len(images)
    ids = [i.pk for i in images]
    if not images:
        return result
    # At DEBUG, which images each worker took and embedded (tests/workers/test_multi_host.py
    # reads them to count each image's trips through a model across the workers' own logs).
    logger.debug("%s: holds images %s", model_id, ids)
    worker = heartbeat.current()
    if encoder is None:
        try:
            encoder = encoder_for(model_id)
        except EncoderError as exc:
            raise ModelUnavailableError(model_id, str(exc)) from exc
        if worker is not None:
            worker.note_loaded(model_id)
    if not batch_size:
        batch_size = worker.batch_size if worker is not None else batch_size_for(device_resolved())
    embedding_jobs_record_attempt(model_id=model_id, image_ids=ids)
    to_do = [pk for pk in ids if pk in held]  # the jobs this run holds and has yet to do
    with ThreadPoolExecutor(settings.EMBEDDING_DECODE_THREADS, "decode") as pool:
        for batch in _decoded_batches(images, batch_size, pool):
            # Every job this run has yet to do, not only this sub-batch's: a message bigger
            # than the sub-batch may outlast one lease, and the sweep would meanwhile hand its
            # later sub-batches to another worker. A job this run no longer holds (its lease
            # ran out and another run took it) is that run's now: never embedded twice.
            kept = set(
                embedding_jobs_renew_lease(
                    model_id=model_id, image_ids=to_do, lease=lease, owner=owner
                )
            )
            lost = {pk for pk, _, _ in batch if pk in held and pk not in kept}
            if lost:
                logger.warning(
                    "%s: %d images were taken by another worker once this one's lease ran "
                    "out; left to it", model_id, len(lost),
                )  # fmt: skip
                result.skipped += len(lost)
                batch = [entry for entry in batch if entry[0] not in lost]
            in_hand = {pk for pk, _, _ in batch}
            to_do = [pk for pk in to_do if pk in kept and pk not in in_hand]
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
                logger.debug("%s: embedded images %s", model_id, [pk for pk, _ in ok])
                if worker is not None:
                    worker.note_embedded(len(ok))
            embedding_jobs_mark_failed(model_id=model_id, failures=failures)
            result.failed.update(failures)
    if result.failed:
        logger.warning("%s: %d images failed: %s", model_id, len(result.failed), result.failed)
    return result


def embedding_batch_run(*, model_id: str, image_ids: Sequence[int]) -> dict[str, object]:
    """Run one queued batch and record every outcome on the jobs (the Celery task's body).

    - the model cannot load here but a live worker loads it: the jobs are handed back, unsent
      and with nothing against them, for the next sweep to queue for the others; this worker's
      heartbeat says why it cannot;
    - no live worker loads it: the model is marked unavailable with the reason (search and
      uploads say so), the jobs go back to waiting, and the sweep probes with one batch per
      interval until a load succeeds;
    - the image storage cannot be reached: the jobs go back to waiting with the reason, and
      the sweep queues them again (they never fail for it);
    - the database went away: raised, for the task to retry; the jobs' lease runs out if it
      never comes back, and the sweep queues them again;
    - the run passed EMBEDDING_TASK_SOFT_TIME_LIMIT: the jobs it holds go back to waiting,
      unsent, with the reason, for the sweep to queue again (not failed; what was stored is
      kept);
    - anything else: the reason goes on the jobs, which are retried by the next sweeps and
      marked failed after EMBEDDING_MAX_ATTEMPTS.
    A batch that runs after the model was unavailable queues the waiting backlog at once.
    """
    owner = uuid.uuid4().hex
    worker = heartbeat.current()
    try:
        with time_limits(
            soft=settings.EMBEDDING_TASK_SOFT_TIME_LIMIT,
            hard=settings.EMBEDDING_TASK_TIME_LIMIT,
            kill=worker is not None,
        ):
            result = images_embed_batch(model_id=model_id, image_ids=image_ids, owner=owner)
    except SoftTimeLimitExceeded:
        reason = (
            f"stopped at the time limit ({settings.EMBEDDING_TASK_SOFT_TIME_LIMIT:g}s, "
            "EMBEDDING_TASK_SOFT_TIME_LIMIT); queued again by the sweep"
        )
        logger.warning("%s: batch of %d images %s", model_id, len(image_ids), reason)
        embedding_jobs_note_blocked(
            model_id=model_id, image_ids=image_ids, reason=reason, owner=owner
        )
        return {"embedded": 0, "time_limit": reason}
    except StorageUnreachable as exc:
        # Not the images' fault: the jobs wait, pending and unsent with the reason (the admin
        # shows it), and the sweep sends them again; no attempt is spent towards "failed".
        logger.warning("%s: batch of %d images waits: %s", model_id, len(image_ids), exc)
        if worker is not None:  # no more batches until a check finds the storage again
            worker.note_storage_unreachable(str(exc))
        embedding_jobs_note_blocked(
            model_id=model_id, image_ids=image_ids, reason=str(exc), owner=owner,
            attempt_returned=True,
        )  # fmt: skip
        return {"embedded": 0, "storage_unreachable": str(exc)}
    except ModelUnavailableError as exc:
        if worker is not None:
            worker.note_failed(model_id, exc.reason)
            if embedding_model_loaded_elsewhere(
                model_id=model_id, hostname=worker.hostname, pid=worker.pid
            ):
                logger.warning(
                    "%s cannot load on this worker (%s); %d images handed back to the workers "
                    "that load it", model_id, exc.reason, len(image_ids),
                )  # fmt: skip
                embedding_jobs_release(model_id=model_id, image_ids=image_ids, owner=owner)
                return {"embedded": 0, "released": len(image_ids), "unavailable_here": exc.reason}
        # One line when the model becomes unavailable (or for a new reason), not one per probe
        # batch of every sweep while it stays so: the admin and the jobs keep the reason.
        if embedding_model_unavailable_reason(model_id=model_id) != exc.reason[:2000]:
            logger.error("%s", exc.reason)
        else:
            logger.debug("%s is still unavailable", model_id)
        embedding_model_mark_unavailable(model_id=model_id, reason=exc.reason)
        embedding_jobs_note_blocked(
            model_id=model_id, image_ids=image_ids, reason=exc.reason, owner=owner
        )
        return {"embedded": 0, "unavailable": exc.reason}
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception as exc:  # recorded on the jobs, never lost in a log
        reason = f"{type(exc).__name__}: {exc}"
        logger.exception("%s: batch of %d images failed", model_id, len(image_ids))
        try:
            embedding_jobs_note_error(
                model_id=model_id,
                image_ids=image_ids,
                reason=reason,
                max_attempts=settings.EMBEDDING_MAX_ATTEMPTS,
            )
        except DatabaseError:
            logger.exception("could not record the failure; the jobs' lease will run out")
        return {"embedded": 0, "error": reason}
    if embedding_model_mark_available(model_id=model_id):
        from workers.queueing import embeddings_enqueue_missing

        logger.info("%s loads again: queueing the images that waited for it", model_id)
        embeddings_enqueue_missing(model_id=model_id)
    return result.as_dict()


def embedding_pending_run(*, model_id: str) -> dict[str, object]:
    """The coalesced task's body: claim up to one worker batch of ``model_id``'s jobs that
    were never sent (uploads) or lost their lease, and run it; a full claim leaves the rest to
    another task. Safe to run twice: a second run claims what is left, usually nothing."""
    from workers.queueing import embedding_pending_claim, embedding_pending_continue

    worker = heartbeat.current()
    limit = worker.batch_size if worker is not None else batch_size_for(device_resolved())
    image_ids = embedding_pending_claim(model_id=model_id, limit=limit)
    if not image_ids:
        return {"embedded": 0, "claimed": 0}
    if len(image_ids) == limit:
        embedding_pending_continue(model_id)
    result = embedding_batch_run(model_id=model_id, image_ids=image_ids)
    return {**result, "claimed": len(image_ids)}

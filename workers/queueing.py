"""Queueing embedding work: which images are due, and sending their batches to the broker.

The sweep knows which jobs are really in flight. A pending job is due again when
- it was never sent (the broker was down, or its model was unavailable),
- a worker took it and its lease ran out (the worker was killed, or the database went away
  mid-batch and the task gave up),
- it was sent but no worker took it, and the queue is empty: its message was lost (Redis
  restarted without it). While the queue still holds work its message may be in it, so it is
  never sent again by time alone: a lost one is found once the queue drains.
Each model has its own queue (``workers.routing``), and every check above is made on it.
The sweep keeps at most EMBEDDING_QUEUE_MAX_BATCHES batches in a model's queue (a claim is
bounded); the rest of a backlog waits, unsent, for the next sweeps. While a model is
unavailable (no live worker can load it), one probe batch per sweep is sent instead of the
backlog; the first batch that loads queues the rest.

Uploads are coalesced: an upload only creates its pending jobs (unsent), and the first upload
of a model in EMBEDDING_COALESCE_SECONDS sends one task that runs after that window and
claims every pending unsent job of the model, one worker batch at a time. A Redis key (SET NX
EX, through the cache) says a task is on its way; if Redis forgets it, a second task is sent,
which finds nothing left to claim, and if the task is lost, the jobs are never-sent ones the
next sweep queues. The leases keep any image from being embedded twice.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import timedelta

from celery import current_app as celery_app
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from kombu.exceptions import ChannelError

from kernel.broker import BROKER_ERRORS
from workers.broker import EMBED_PENDING_TASK, EMBED_TASK, task_send
from workers.routing import batch_size_for, embedding_queue
from workers.selectors import (
    embedding_model_batch_size_live,
    embedding_model_unavailable,
    embedding_models_enabled,
)
from workers.services import (
    embedding_jobs_claim,
    embedding_jobs_create_missing,
    embedding_jobs_mark_unsent,
)

logger = logging.getLogger(__name__)


def broker_queue_length(queue: str) -> int | None:
    """Messages waiting in ``queue`` (not those a worker holds), or None when unknown."""
    try:
        with celery_app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.default_channel
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:
                return 0  # Redis drops an emptied list: a queue never declared holds nothing
    except BROKER_ERRORS:
        return None


def embeddings_enqueue_missing(
    *,
    model_id: str,
    batch_size: int | None = None,
    requeue_after: timedelta | None = None,
    retry_failed: bool = False,
) -> int:
    """Queue batches for the images of ``model_id`` that are due (see above); returns batches.

    ``requeue_after`` (a person's ask, ``manage.py embed``): also re-send jobs sent that long
    ago and never taken, even while the queue holds work. Queuing happens after the
    transaction commits.
    """
    batch_size = batch_size or sweep_batch_size(model_id=model_id)
    lost_after = timedelta(seconds=settings.EMBEDDING_LOST_AFTER_SECONDS)
    waiting = broker_queue_length(embedding_queue(model_id))
    # Sent but never started: with an empty queue the message is gone; with work still queued
    # it may simply not have been reached yet.
    unstarted_after = lost_after if waiting == 0 else None
    if requeue_after is not None:
        unstarted_after = min(requeue_after, unstarted_after or requeue_after)
    unavailable = embedding_model_unavailable(model_id=model_id)
    room = settings.EMBEDDING_QUEUE_MAX_BATCHES - (waiting or 0)
    if unavailable:
        room = min(room, 1)
    if room <= 0:
        return 0
    embedding_jobs_create_missing(model_id=model_id)
    image_ids = embedding_jobs_claim(
        model_id=model_id,
        unstarted_after=unstarted_after,
        include_failed=retry_failed,
        limit=room * batch_size,
    )
    batches = [image_ids[i : i + batch_size] for i in range(0, len(image_ids), batch_size)]
    transaction.on_commit(lambda: send_batches(model_id, batches))
    return len(batches)


def sweep_batch_size(*, model_id: str) -> int:
    """Images per queued batch of ``model_id``: the biggest batch a live worker serving it
    takes (a GPU worker is fed whole batches; a CPU worker splits one into its own), else
    the setting, else the CPU size."""
    return embedding_model_batch_size_live(model_id=model_id) or batch_size_for("cpu")


def send_batches(model_id: str, batches: list[list[int]]) -> None:
    """Queue batches; with the broker down, log it and leave the jobs for the next sweep.

    An upload or an import must not fail because Redis is briefly away: the images and their
    pending jobs are already committed, and the periodic sweep queues them once it is back.
    """
    for index, batch in enumerate(batches):
        error = task_send(EMBED_TASK, args=(model_id, batch), queue=embedding_queue(model_id))
        if error is not None:
            unsent = [image_id for rest in batches[index:] for image_id in rest]
            embedding_jobs_mark_unsent(model_id=model_id, image_ids=unsent)
            logger.warning(
                "broker unavailable (%s): %d images of %s stay pending for the next sweep",
                error, len(unsent), model_id,
            )  # fmt: skip
            return


def embeddings_sweep(*, model_id: str | None = None) -> dict[str, int]:
    """Queue the due embeddings of every enabled model (or just ``model_id``)."""
    enabled = embedding_models_enabled()
    targets = [m for m in enabled if model_id in (None, m)]
    return {m: embeddings_enqueue_missing(model_id=m) for m in targets}


def image_enqueue_embedding(*, image_id: int) -> None:
    """Give a new image a pending job for every enabled model; once the transaction commits,
    the model's coalesced task is scheduled (see above) unless one is on its way.

    For a model that is unavailable the job just waits (unsent): the sweep's probe batch or
    the backlog queued when the model loads again picks it up.
    """
    for model_id in embedding_models_enabled():
        embedding_jobs_create_missing(model_id=model_id, image_ids=[image_id])
        if embedding_model_unavailable(model_id=model_id):
            continue
        transaction.on_commit(functools.partial(embedding_coalesce_schedule, model_id))


def _coalesce_key(model_id: str) -> str:
    return f"embedding-coalesce:{model_id}"


def embedding_coalesce_schedule(model_id: str) -> bool:
    """Send ``model_id``'s coalesced task to run after EMBEDDING_COALESCE_SECONDS, unless one
    is already on its way (its key is set); True when sent.

    The jobs are committed before this runs, and the task drops the key before it claims: a
    job whose upload found the key set is claimed by that task. With the cache unreachable the
    key cannot be read, and a task is sent anyway (a second one claims nothing). With the broker
    down the jobs stay never-sent, for the next sweep.
    """
    window = float(settings.EMBEDDING_COALESCE_SECONDS)
    if window > 0 and not _coalesce_key_set(model_id, window):
        return False
    error = task_send(
        EMBED_PENDING_TASK, args=(model_id,), queue=embedding_queue(model_id),
        countdown=window if window > 0 else None,
    )  # fmt: skip
    if error is not None:
        embedding_coalesce_reset(model_id)
        logger.warning(
            "broker unavailable (%s): new images of %s stay pending for the next sweep",
            error, model_id,
        )  # fmt: skip
        return False
    return True


def _coalesce_key_set(model_id: str, window: float) -> bool:
    """SET NX EX: True when this call set the key (no task on its way), or the cache cannot
    tell (a task too many is harmless, one too few would leave uploads to the sweep)."""
    try:
        if cache.add(_coalesce_key(model_id), 1, timeout=window):
            return True
        return cache.get(_coalesce_key(model_id)) is None  # None: unreachable (fail-open cache)
    except Exception:  # noqa: BLE001 - any cache failure: send rather than wait for the sweep
        logger.warning("cache unavailable: sending the coalesced task of %s", model_id)
        return True


def embedding_coalesce_reset(model_id: str) -> None:
    """The coalesced task is running (or was never sent): the next upload sends another."""
    try:
        cache.delete(_coalesce_key(model_id))
    except Exception:  # noqa: BLE001 - the key's own expiry does the same a moment later
        logger.warning("cache unavailable: the coalescing key of %s expires by itself", model_id)


def embedding_pending_claim(*, model_id: str, limit: int) -> list[int]:
    """For the coalesced task: drop the key, then claim at most ``limit`` jobs of ``model_id``
    never sent (uploads') or whose lease ran out."""
    embedding_coalesce_reset(model_id)
    return embedding_jobs_claim(model_id=model_id, unstarted_after=None, limit=limit)


def embedding_pending_continue(model_id: str) -> None:
    """A coalesced task claimed a full batch: more may wait, for another task (any worker of
    the model's queue) rather than one long task past its time limit."""
    error = task_send(EMBED_PENDING_TASK, args=(model_id,), queue=embedding_queue(model_id))
    if error is not None:
        logger.warning("broker unavailable (%s): the next sweep queues the rest of %s", error,
                       model_id)  # fmt: skip


def images_added_enqueue(
    sender: object, *, image_ids: Sequence[int] | None, **kwargs: object
) -> dict[str, int]:
    """``gallery.signals.images_added``: new images get their jobs now and are queued once the
    transaction commits; a bulk import (no ids) runs the sweep. Returns batches per model (the
    sweep's; one image's batches are not counted)."""
    if image_ids is None:
        return embeddings_sweep()
    for image_id in image_ids:
        image_enqueue_embedding(image_id=image_id)
    return {}

"""Queueing embedding work: which images are due, and sending their batches to the broker.

The sweep knows which jobs are really in flight. A pending job is due again when
- it was never sent (the broker was down, or its model was unavailable),
- a worker took it and its lease ran out (the worker was killed, or the database went away
  mid-batch and the task gave up),
- it was sent but no worker took it, and the queue is empty: its message was lost (Redis
  restarted without it). While the queue still holds work its message may be in it, so it is
  never sent again by time alone: a lost one is found once the queue drains.
The sweep keeps at most EMBEDDING_QUEUE_MAX_BATCHES batches in the queue (a claim is bounded);
the rest of a backlog waits, unsent, for the next sweeps. While a model is unavailable (no
live worker can load it), one probe batch per sweep is sent instead of the backlog; the first
batch that loads queues the rest.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import timedelta

from celery import current_app as celery_app
from django.conf import settings
from django.db import transaction
from kombu.exceptions import ChannelError

from kernel.broker import BROKER_ERRORS
from workers.broker import EMBED_TASK, task_send
from workers.selectors import embedding_model_unavailable, embedding_models_enabled
from workers.services import (
    embedding_jobs_claim,
    embedding_jobs_create_missing,
    embedding_jobs_mark_sent,
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
    batch_size = batch_size or settings.EMBEDDING_BATCH_SIZE
    lost_after = timedelta(seconds=settings.EMBEDDING_LOST_AFTER_SECONDS)
    waiting = broker_queue_length(settings.EMBEDDING_QUEUE)
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


def send_batches(model_id: str, batches: list[list[int]]) -> None:
    """Queue batches; with the broker down, log it and leave the jobs for the next sweep.

    An upload or an import must not fail because Redis is briefly away: the images and their
    pending jobs are already committed, and the periodic sweep queues them once it is back.
    """
    for index, batch in enumerate(batches):
        error = task_send(EMBED_TASK, args=(model_id, batch), queue=settings.EMBEDDING_QUEUE)
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
    """Queue a new image for every enabled model once the transaction commits.

    For a model that is unavailable the job just waits (unsent): the sweep's probe batch or
    the backlog queued when the model loads again picks it up.
    """
    for model_id in embedding_models_enabled():
        embedding_jobs_create_missing(model_id=model_id, image_ids=[image_id])
        if embedding_model_unavailable(model_id=model_id):
            continue
        embedding_jobs_mark_sent(model_id=model_id, image_ids=[image_id])
        transaction.on_commit(functools.partial(send_batches, model_id, [[image_id]]))


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

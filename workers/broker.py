"""Sending workers' tasks by name, the one way (the batches, the sweep, index builds): the task
layer imports the modules that send, so they never import it. With the broker down a send
reports the error; the caller logs it and leaves the work to the periodic sweep (every job is in
the database, so nothing is lost), or tells staff the command to run."""

from __future__ import annotations

from collections.abc import Sequence

from celery import current_app as celery_app

from kernel.broker import BROKER_ERRORS

EMBED_TASK = "workers.tasks.embed_images_task"
EMBED_PENDING_TASK = "workers.tasks.embed_pending_task"
SWEEP_TASK = "workers.tasks.embeddings_sweep_task"
INDEX_BUILD_TASK = "workers.tasks.embedding_index_build_task"


def task_send(
    name: str,
    *,
    queue: str,
    args: Sequence[object] = (),
    kwargs: dict[str, object] | None = None,
    countdown: float | None = None,
) -> BaseException | None:
    """Send task ``name``; None when sent, else the error of a broker that cannot be reached
    (the caller says what waits for the next sweep). Results are never kept: outcomes are
    recorded on the jobs. ``countdown``: run no sooner than that many seconds from now."""
    try:
        celery_app.send_task(
            name, args=args, kwargs=kwargs, queue=queue, ignore_result=True, countdown=countdown
        )
    except BROKER_ERRORS as exc:
        return exc
    return None

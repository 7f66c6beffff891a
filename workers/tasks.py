"""Celery tasks: thin wrappers that take ids and call the pipeline and queueing services.

Named ``*_task`` so that a task and the function it runs are never two things with one name.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError

# heartbeat: imported for its Celery signal handlers (the worker's checks and heartbeat).
from workers import heartbeat, indexes, pipeline, queueing  # noqa: F401
from workers.selectors import embedding_models_enabled

# Database or broker hiccups: worth retrying with backoff. Everything else is recorded on the
# jobs by the pipeline.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, BrokerError, ConnectionError)


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
)
def embed_images_task(model_id: str, image_ids: list[int]) -> dict[str, object]:
    """Embed a batch of images with one model; safe to run twice."""
    if model_id not in embedding_models_enabled():
        return {"skipped": len(image_ids), "reason": f"{model_id} is not enabled"}
    return pipeline.embedding_batch_run(model_id=model_id, image_ids=image_ids)


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
)
def embed_pending_task(model_id: str) -> dict[str, object]:
    """Embed the uploads of ``model_id`` that are waiting (coalesced: one task per window)."""
    if model_id not in embedding_models_enabled():
        return {"skipped": 0, "reason": f"{model_id} is not enabled"}
    return pipeline.embedding_pending_run(model_id=model_id)


@shared_task(acks_late=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3)
def embeddings_sweep_task(model_id: str | None = None) -> dict[str, int]:
    """Queue batches for images lacking an embedding (backfill, new models, lost batches)."""
    return queueing.embeddings_sweep(model_id=model_id)


@shared_task(acks_late=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3)
def embedding_index_build_task(model_id: str, rebuild: bool = False) -> dict[str, object]:
    """Build a model's search index online (staff asked on the admin's models page); a second
    delivery while the first still builds returns at once (the build's advisory lock)."""
    try:
        result = indexes.embedding_index_build(model_id=model_id, rebuild=rebuild)
    except indexes.IndexBuildRunning as exc:
        return {"skipped": True, "reason": exc.message}
    return {"built": result.built, "rows": result.rows, "seconds": round(result.seconds, 1)}

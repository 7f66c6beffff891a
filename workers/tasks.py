"""Celery tasks: thin wrappers that take ids and call the pipeline services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError

from encoders import WeightsUnavailableError
from search.selectors import embedding_models_enabled
from search.services import embedding_jobs_note_blocked
from workers import pipeline

logger = logging.getLogger(__name__)

# Database or broker hiccups: worth retrying with backoff. Anything else is recorded.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, BrokerError, ConnectionError)


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=8,
)
def embed_images(model_id: str, image_ids: list[int]) -> dict[str, object]:
    """Embed a batch of images with one model; safe to run twice."""
    if model_id not in embedding_models_enabled():
        return {"skipped": len(image_ids), "reason": f"{model_id} is not enabled"}
    try:
        result = pipeline.images_embed_batch(model_id=model_id, image_ids=image_ids)
    except WeightsUnavailableError as exc:
        # Not transient: the jobs stay pending with the reason until weights are provided;
        # the periodic sweep queues them again.
        logger.error("%s", exc)
        embedding_jobs_note_blocked(model_id=model_id, image_ids=image_ids, reason=str(exc))
        return {"embedded": 0, "blocked": str(exc)}
    return result.as_dict()


@shared_task(acks_late=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=5)
def embeddings_sweep(model_id: str | None = None) -> dict[str, int]:
    """Queue batches for images lacking an embedding (backfill, new models, lost batches)."""
    return pipeline.embeddings_sweep(model_id=model_id)

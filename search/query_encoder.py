"""Query encoding for search: texts and query images to vectors, with a small LRU cache.

Reads only (no database). The encoder is the process-wide one from ``workers.encoder_cache``, so the
web process loads each model once; ``warm_up`` runs at web-worker start so the first search
does not pay for loading the model.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from encoders import Encoder, EncoderError, WeightsUnavailableError
from workers.encoder_cache import encoder_for

logger = logging.getLogger(__name__)

QUERY_CACHE_SIZE = 1024
# A model whose weights failed to load is not tried again for this long: loading probes the
# disk (or the hub, with its timeouts) each time, and every search would pay for that only to
# fail the same way. Long enough to spare the server, short enough that weights put in place
# are picked up within a minute without a restart.
LOAD_FAILURE_TTL_SECONDS = 60.0

_LoadKey = tuple[str, str | None, str, str | None]
_load_failures: dict[_LoadKey, tuple[float, WeightsUnavailableError]] = {}
_load_failures_lock = threading.Lock()


def query_encoder_for(model_id: str) -> Encoder:
    """The web process's encoder for ``model_id``; a failed load is remembered for a while.

    Raises ``WeightsUnavailableError`` (the remembered one within LOAD_FAILURE_TTL_SECONDS of
    the last failure) and the other ``EncoderError``s of ``encoder_for``.
    """
    dtype = settings.SEARCH_QUERY_DTYPE or None
    # Everything that picks the weights is in the key, so a changed source is tried at once.
    key: _LoadKey = (
        model_id,
        settings.EMBEDDING_MODEL_SOURCES.get(model_id),
        settings.EMBEDDING_DEVICE,
        dtype or settings.EMBEDDING_DTYPE or None,
    )
    with _load_failures_lock:
        failed = _load_failures.get(key)
    if failed is not None and time.monotonic() - failed[0] < LOAD_FAILURE_TTL_SECONDS:
        raise failed[1].with_traceback(None)
    try:
        encoder = encoder_for(model_id, dtype=dtype)
    except WeightsUnavailableError as exc:
        with _load_failures_lock:
            _load_failures[key] = (time.monotonic(), exc)
        raise
    if failed is not None:
        with _load_failures_lock:
            _load_failures.pop(key, None)
    return encoder


def load_failures_forget() -> None:
    """Forget remembered load failures (tests; or after weights were put in place)."""
    with _load_failures_lock:
        _load_failures.clear()


@functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
def _cached_text_vector(model_id: str, source: str | None, dtype: str, text: str) -> np.ndarray:
    vector = query_encoder_for(model_id).embed_texts([text])[0]
    vector.setflags(write=False)  # shared between requests: nobody may modify it
    return vector


def text_embedding(*, model_id: str, text: str) -> np.ndarray:
    """The L2-normalised embedding of a query text (cached per model and text)."""
    # The weights' source and the precision are part of the key: other weights, other vectors.
    return _cached_text_vector(
        model_id,
        settings.EMBEDDING_MODEL_SOURCES.get(model_id),
        settings.SEARCH_QUERY_DTYPE,
        text.strip(),
    )


def image_embedding(*, model_id: str, image: PILImage.Image) -> np.ndarray:
    """The embedding of a query image; computed on the fly, never stored."""
    return query_encoder_for(model_id).embed_images([image])[0]


def warm_up(*, model_ids: list[str]) -> None:
    """Load each model and run one query so the first real search is as fast as the tenth.

    A model that cannot load is logged, not raised: the site keeps serving the others.
    """
    for model_id in model_ids:
        try:
            query_encoder_for(model_id).embed_texts(["warm-up query"])
        except EncoderError as exc:
            logger.error("search model %s not loaded: %s", model_id, exc)

"""Query encoding for search: texts and query images to vectors, with a small LRU cache.

Reads only (no database). The encoder is the process-wide one from ``workers.loading``, so the
web process loads each model once; ``warm_up`` runs at web-worker start so the first search
does not pay for loading the model.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from encoders import Encoder, EncoderError
from workers.loading import encoder_for

logger = logging.getLogger(__name__)

QUERY_CACHE_SIZE = 1024


def _query_encoder(model_id: str) -> Encoder:
    return encoder_for(model_id, dtype=settings.SEARCH_QUERY_DTYPE or None)


@functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
def _cached_text_vector(model_id: str, dtype: str, text: str) -> np.ndarray:
    vector = _query_encoder(model_id).embed_texts([text])[0]
    vector.setflags(write=False)  # shared between requests: nobody may modify it
    return vector


def text_embedding(*, model_id: str, text: str) -> np.ndarray:
    """The L2-normalised embedding of a query text (cached per model and text)."""
    # The precision is part of the key: a setting change must not serve stale vectors.
    return _cached_text_vector(model_id, settings.SEARCH_QUERY_DTYPE, text.strip())


def image_embedding(*, model_id: str, image: PILImage.Image) -> np.ndarray:
    """The embedding of a query image; computed on the fly, never stored."""
    return _query_encoder(model_id).embed_images([image])[0]


def warm_up(*, model_ids: list[str]) -> None:
    """Load each model and run one query so the first real search is as fast as the tenth.

    A model that cannot load is logged, not raised: the site keeps serving the others.
    """
    for model_id in model_ids:
        try:
            _query_encoder(model_id).embed_texts(["warm-up query"])
        except EncoderError as exc:
            logger.error("search model %s not loaded: %s", model_id, exc)

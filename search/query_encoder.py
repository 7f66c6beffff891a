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
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from encoders import Encoder, EncoderError, WeightsUnavailableError, device_resolve
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


# SEARCH_QUERY_DTYPE "auto": int8 when the query encoder runs on the CPU and the int8 graphs
# passed their check against float32 (encoders.onnx: every probe embedding, the query texts of
# encoders.onnx_export.INT8_PROBE_QUERIES and the check images, within cosine MIN_INT8_COSINE;
# recorded in the export's meta.json), float32 otherwise.
AUTO = "auto"


@dataclass(frozen=True)
class QueryPrecision:
    """What a model's query encoder runs in, in this process, and why (for the admin)."""

    dtype: str  # "int8", "float32", "float16"
    backend: str  # "onnx" or "torch"
    reason: str


# The precision of each query encoder this process loaded, by model id.
_precisions: dict[str, QueryPrecision] = {}


def query_dtype_setting() -> str:
    """SEARCH_QUERY_DTYPE as it applies: the setting; empty, EMBEDDING_DTYPE, else "auto"."""
    return (settings.SEARCH_QUERY_DTYPE or settings.EMBEDDING_DTYPE or AUTO).strip().lower()


def _auto_wants_int8() -> bool:
    return _int8_fits(settings.EMBEDDING_BACKEND, settings.EMBEDDING_DEVICE)


@functools.cache
def _int8_fits(backend: str, device: str) -> bool:
    # int8 exists on the CPU only, and only ONNX Runtime's records a check against float32.
    # Cached: the device probe asks torch, and every query encoding comes through here.
    if backend == "torch":
        return False
    try:
        return device_resolve(None if device == "auto" else device) == "cpu"
    except EncoderError:
        return False  # the load itself will say what is wrong with the device


def query_encoder_for(model_id: str) -> Encoder:
    """The web process's encoder for ``model_id``; a failed load is remembered for a while.

    SEARCH_QUERY_DTYPE "auto" (the default) loads int8 where its check passes (see AUTO),
    float32 otherwise. Raises ``WeightsUnavailableError`` (the remembered one within
    LOAD_FAILURE_TTL_SECONDS of the last failure) and the other ``EncoderError``s of
    ``encoder_for``.
    """
    setting = query_dtype_setting()
    auto = setting == AUTO
    dtype = ("int8" if _auto_wants_int8() else None) if auto else setting
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
        if auto and dtype == "int8" and getattr(encoder, "backend", "") != "onnx":
            # ONNX Runtime could not serve it: torch's int8 has no recorded check.
            encoder = encoder_for(model_id, dtype="float32")
    except WeightsUnavailableError as exc:
        with _load_failures_lock:
            _load_failures[key] = (time.monotonic(), exc)
        raise
    if failed is not None:
        with _load_failures_lock:
            _load_failures.pop(key, None)
    if model_id not in _precisions:
        _precisions[model_id] = _precision_of(encoder, setting=setting)
    return encoder


def _precision_of(encoder: Encoder, *, setting: str) -> QueryPrecision:
    from encoders.onnx import MIN_INT8_COSINE  # imports torch: only once a model is loaded

    backend = getattr(encoder, "backend", "torch")
    quantized = getattr(encoder, "quantization", None) is not None
    dtype = "int8" if quantized else str(getattr(encoder, "dtype", "float32")).split(".")[-1]
    cosine = getattr(encoder, "int8_min_cosine", None)
    if cosine is not None:
        check = f"int8 check: lowest cosine to float32 {cosine:.4f} (needs {MIN_INT8_COSINE})"
        reason = f"{check}, passed" if quantized else f"{check}, failed: float32 instead"
    elif setting == AUTO:
        reason = "int8 is for the CPU with ONNX Runtime only"
    else:
        reason = f"SEARCH_QUERY_DTYPE={setting}"
    return QueryPrecision(dtype=dtype, backend=backend, reason=reason)


def query_precision(model_id: str) -> QueryPrecision | None:
    """The precision of ``model_id``'s query encoder in this process; None if not loaded."""
    return _precisions.get(model_id)


def load_failures_forget() -> None:
    """Forget remembered load failures and precisions (tests; or after weights were put in
    place)."""
    with _load_failures_lock:
        _load_failures.clear()
    _precisions.clear()


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
        query_dtype_setting(),
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

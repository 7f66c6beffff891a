"""The settings-aware way to get an encoder: which weights and device, per the settings."""

from __future__ import annotations

from django.conf import settings

from encoders import Encoder, load_encoder


def encoder_for(model_id: str, *, dtype: str | None = None) -> Encoder:
    """The process-wide encoder for ``model_id`` (loaded on first use, then cached).

    ``dtype`` overrides EMBEDDING_DTYPE (the search side may quantise its query encoder).
    EMBEDDING_BACKEND picks torch or ONNX Runtime ("auto": ONNX on the CPU).
    """
    device = settings.EMBEDDING_DEVICE
    return load_encoder(
        model_id,
        source=settings.EMBEDDING_MODEL_SOURCES.get(model_id),
        device=None if device == "auto" else device,
        dtype=dtype or settings.EMBEDDING_DTYPE or None,
        backend=settings.EMBEDDING_BACKEND,
        onnx_threads=settings.EMBEDDING_ONNX_THREADS,
    )

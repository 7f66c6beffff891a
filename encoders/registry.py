"""Which embedding models exist, and loading one (once per process).

Importing this module is cheap on purpose: Django imports it at start-up to validate settings,
so torch and transformers are only imported inside ``load_encoder``.
"""

from __future__ import annotations

import functools
import threading

from .base import INT8, Encoder, EncoderError, ModelSpec, UnknownModelError

MODELS: dict[str, ModelSpec] = {
    spec.model_id: spec
    for spec in (
        ModelSpec("clip-vit-base-patch32", "openai/clip-vit-base-patch32", 512, "clip"),
        ModelSpec("clip-vit-large-patch14", "openai/clip-vit-large-patch14", 768, "clip"),
        ModelSpec("align-base", "kakaobrain/align-base", 640, "align"),
        ModelSpec("siglip-base-patch16-224", "google/siglip-base-patch16-224", 768, "siglip"),
    )
}

DEVICES = ("cuda", "mps", "cpu")

# Accepted spellings of ``dtype`` -> torch dtype attribute name.
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "int8": "int8",
    "qint8": "int8",
}


def model_spec(model_id: str) -> ModelSpec:
    """Return the registered spec for ``model_id`` or raise ``UnknownModelError``."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise UnknownModelError(model_id, sorted(MODELS)) from None


def load_encoder(
    model_id: str,
    *,
    source: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Encoder:
    """Load the encoder for ``model_id``; the same arguments return the same object.

    ``source`` is a hub id or a local directory written by ``save_pretrained`` (default: the
    registered hub id). ``device`` is "cuda" (or "cuda:N"), "mps", "cpu", or None for the best
    available. ``dtype`` defaults to float16 on CUDA and float32 elsewhere (CPU half precision
    is slow and some kernels lack it). ``dtype="int8"`` loads float32 weights and quantises every
    Linear layer to int8 with dynamic activation quantisation: a CPU-only path (its kernels
    exist only there), so with ``device=None`` it means "cpu" and with any other device it is an
    ``EncoderError``.

    Raises ``UnknownModelError``, ``WeightsUnavailableError`` when the files cannot be had
    (offline, missing directory) and ``EncoderError`` for other unusable configurations.
    """
    spec = model_spec(model_id)  # fail on a bad id before importing torch
    source = source or spec.hub_id
    dtype_name = _dtype_name(dtype)
    if dtype_name == INT8:
        # Checked before the device is probed, so asking for int8 on a GPU says that, not
        # whether the GPU happens to be present.
        device = _int8_device(device)
    device = _resolve_device(device)
    dtype_name = dtype_name or _default_dtype(device)
    # The lock keeps two threads that ask at once from both loading a multi-GB model.
    with _load_lock:
        return _load_cached(model_id, source, device, dtype_name)


def clear_encoder_cache() -> None:
    """Forget every loaded encoder (for tests, or to free memory)."""
    with _load_lock:
        _load_cached.cache_clear()


_load_lock = threading.RLock()


@functools.cache
def _load_cached(model_id: str, source: str, device: str, dtype: str) -> Encoder:
    # Only successful loads are cached (functools.cache stores no exceptions), so once missing
    # weights are provided the next call loads them without a restart.
    from .hf import load_hf_encoder

    return load_hf_encoder(MODELS[model_id], source=source, device=device, dtype=dtype)


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":", 1)[0]
    if kind not in DEVICES:
        raise EncoderError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    # Fail here with a plain message rather than deep inside .to(device).
    if kind == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} requested but CUDA is not available")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise EncoderError(f"device {device!r} requested but MPS is not available")
    return device


def _dtype_name(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise EncoderError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}"
        ) from None


def _default_dtype(device: str) -> str:
    return "float16" if device.startswith("cuda") else "float32"


def _int8_device(device: str | None) -> str:
    if device is None or device.split(":", 1)[0] == "cpu":
        return "cpu"
    raise EncoderError(
        f"dtype 'int8' (dynamic quantisation) runs on CPU only, but device {device!r} was "
        "requested; use device='cpu', or dtype float16 on a GPU"
    )

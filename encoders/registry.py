"""Which embedding models exist, and loading one (once per process).

Importing this module is cheap on purpose: Django imports it at start-up to validate settings,
so torch and transformers are only imported inside ``load_encoder``.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import NamedTuple

from .base import INT8, Encoder, EncoderError, ModelSpec, UnknownModelError

MODELS: dict[str, ModelSpec] = {
    spec.model_id: spec
    for spec in (
        ModelSpec("clip-vit-base-patch32", "openai/clip-vit-base-patch32", 512, "clip"),
        ModelSpec("clip-vit-large-patch14", "openai/clip-vit-large-patch14", 768, "clip"),
        ModelSpec("align-base", "kakaobrain/align-base", 640, "align"),
        ModelSpec("siglip-base-patch16-224", "google/siglip-base-patch16-224", 768, "siglip"),
        # SigLIP 2: multilingual (Gemma tokenizer). The base model is the CPU choice; So400m
        # at 384 px is for GPUs (~1.1 B parameters, ~20x the compute per image).
        ModelSpec("siglip2-base-patch16-256", "google/siglip2-base-patch16-256", 768, "siglip2"),
        ModelSpec(
            "siglip2-so400m-patch14-384", "google/siglip2-so400m-patch14-384", 1152, "siglip2"
        ),
    )
}

DEVICES = ("cuda", "mps", "cpu")
# "auto": ONNX Runtime where it runs (CPU, float32 or int8), torch elsewhere (CUDA fp16, MPS).
BACKENDS = ("auto", "torch", "onnx")

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


def weights_on_disk(model_id: str, source: str | None = None) -> bool:
    """Whether loading ``model_id`` from ``source`` needs no download: a local directory, or a
    hub id whose files are already in the Hugging Face cache. Cheap: no torch, no network."""
    source = source or model_spec(model_id).hub_id
    if Path(source).expanduser().is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except ValueError:  # not a valid repo id either: nothing to find anywhere
        return False


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
    backend: str | None = None,
    onnx_threads: int | None = None,
    onnx_cache_dir: str | Path | None = None,
) -> Encoder:
    """Load the encoder for ``model_id``; the same arguments return the same object.

    ``source`` is a hub id or a local directory written by ``save_pretrained`` (default: the
    registered hub id). ``device`` is "cuda" (or "cuda:N"), "mps", "cpu", or None for the best
    available. ``dtype`` defaults to float16 on CUDA and float32 elsewhere (CPU half precision
    is slow and some kernels lack it). ``dtype="int8"`` loads float32 weights and quantises every
    Linear layer to int8 with dynamic activation quantisation: a CPU-only path (its kernels
    exist only there), so with ``device=None`` it means "cpu" and with any other device it is an
    ``EncoderError``.

    ``backend`` is "auto" (default: ONNX Runtime on the CPU in float32/int8, torch otherwise),
    "torch" or "onnx" (which on a GPU, or in float16, warns and uses torch). The ONNX backend
    exports the model once into ``onnx_cache_dir`` (default: the Hugging Face cache's "onnx"
    folder) and runs it with ``onnx_threads`` intra-op threads (default 1). If onnxruntime is
    missing or broken, or the export fails, it warns and loads torch instead.

    Raises ``UnknownModelError``, ``WeightsUnavailableError`` when the files cannot be had
    (offline, missing directory) and ``EncoderError`` for other unusable configurations.
    """
    spec = model_spec(model_id)  # fail on a bad id before importing torch
    source = source or spec.hub_id
    dtype_name = _dtype_name(dtype)
    backend_name = _backend_name(backend)
    if dtype_name == INT8:
        # Checked before the device is probed, so asking for int8 on a GPU says that, not
        # whether the GPU happens to be present.
        device = _int8_device(device)
    device = _resolve_device(device)
    dtype_name = dtype_name or _default_dtype(device)
    key = _LoadKey(
        model_id,
        source,
        device,
        dtype_name,
        _effective_backend(backend_name, device, dtype_name),
        onnx_threads or 1,
        str(onnx_cache_dir) if onnx_cache_dir else None,
    )
    # Loaded encoders are read without a lock: a search must not wait while another model
    # loads. A dict read is atomic, and an entry is only ever added complete.
    encoder = _loaded.get(key)
    if encoder is not None:
        return encoder
    with _locks_guard:
        lock = _load_locks.setdefault(key, threading.Lock())
    # One lock per model and configuration, held only while loading, so two threads that ask
    # at once do not both load a multi-GB model, and other models stay available meanwhile.
    with lock:
        encoder = _loaded.get(key)
        if encoder is None:
            # Only successful loads are stored, so once missing weights are provided the next
            # call loads them without a restart.
            encoder = _load(key)
            _loaded[key] = encoder
    return encoder


def device_resolve(device: str | None = None) -> str:
    """The device ``load_encoder`` runs on when given ``device`` (None: the best available,
    as ``load_encoder`` picks it); ``EncoderError`` for one that is unknown or absent."""
    return _resolve_device(device)


def loaded_model_ids() -> frozenset[str]:
    """Ids of the models this process holds a loaded encoder of (any device, dtype or backend):
    what a warm-up has loaded, or what ``clear_encoder_cache`` would free."""
    return frozenset(key.model_id for key in list(_loaded))  # a copy: another thread may add


def clear_encoder_cache() -> None:
    """Forget every loaded encoder (for tests, or to free memory)."""
    with _locks_guard:
        _loaded.clear()
        _load_locks.clear()


class _LoadKey(NamedTuple):
    model_id: str
    source: str
    device: str
    dtype: str
    backend: str
    onnx_threads: int
    onnx_cache_dir: str | None


_loaded: dict[_LoadKey, Encoder] = {}
_load_locks: dict[_LoadKey, threading.Lock] = {}
_locks_guard = threading.Lock()


def _load(key: _LoadKey) -> Encoder:
    from .hf import hf_checkpoint, load_hf_encoder

    spec = MODELS[key.model_id]
    checkpoint = hf_checkpoint(spec, source=key.source)
    if key.backend == "onnx":
        from .onnx import OnnxOptions, OnnxUnavailableError, load_onnx_encoder

        cache_dir = Path(key.onnx_cache_dir) if key.onnx_cache_dir else None
        try:
            return load_onnx_encoder(
                checkpoint,
                quantize=key.dtype == INT8,
                options=OnnxOptions(threads=key.onnx_threads, cache_dir=cache_dir),
            )
        except OnnxUnavailableError as exc:
            # A search must not fail because an optional speed-up is missing: torch computes
            # the same embeddings, only slower.
            warnings.warn(
                f"ONNX Runtime backend unavailable for {spec.model_id!r}, using torch: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
    return load_hf_encoder(checkpoint, device=key.device, dtype=key.dtype)


def _backend_name(backend: str | None) -> str:
    name = (backend or "auto").lower()
    if name not in BACKENDS:
        raise EncoderError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return name


def _effective_backend(backend: str, device: str, dtype: str) -> str:
    # ONNX Runtime's CPU package has no GPU provider, and CPU float16 is slower than float32.
    onnx_fits = device == "cpu" and dtype in ("float32", INT8)
    if backend == "auto":
        return "onnx" if onnx_fits else "torch"
    if backend == "onnx" and not onnx_fits:
        warnings.warn(
            f"the ONNX backend runs on the CPU in float32 or int8; device {device!r} with "
            f"dtype {dtype!r} uses torch",
            RuntimeWarning,
            stacklevel=3,
        )
        return "torch"
    return backend


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

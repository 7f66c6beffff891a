"""Where embedding work goes and how big it is: one Celery queue per model, the models a worker
serves, and the batch size for a device.

A queue per model (``embed.<model id>``) lets each host take the models that fit it: a GPU
worker set to serve the big models (``EMBEDDING_WORKER_MODELS``) never sees a small model's
batches, which a CPU worker takes. The device class is the worker's choice of models, not a
second queue name, so a model served by both kinds of host is shared by whichever is free.
A worker starts on the housekeeping queue alone and adds a model's queue only once it has
reached the image storage and loaded the model (``workers.heartbeat``).
"""

from __future__ import annotations

from django.conf import settings

from workers.selectors import embedding_models_enabled

QUEUE_PREFIX = "embed."
# Images per forward pass when EMBEDDING_BATCH_SIZE is 0: a GPU is fed in big batches
# (ViT-B/32 in fp16 keeps an H100 busy at 256), a CPU in small ones (latency per batch, memory).
GPU_BATCH_SIZE = 256
CPU_BATCH_SIZE = 32


def embedding_queue(model_id: str) -> str:
    """The queue of ``model_id``'s embedding batches."""
    return f"{QUEUE_PREFIX}{model_id}"


def worker_models() -> list[str]:
    """The enabled models this worker serves: EMBEDDING_WORKER_MODELS among the enabled ones
    (in that order), or every enabled model when the setting is empty."""
    enabled = embedding_models_enabled()
    wanted = settings.EMBEDDING_WORKER_MODELS
    if not wanted:
        return enabled
    return [model_id for model_id in wanted if model_id in enabled]


def batch_size_for(device: str) -> int:
    """Images per forward pass on ``device`` ("cuda", "cuda:1", "mps", "cpu"): the setting, or
    by the device when it is 0."""
    if settings.EMBEDDING_BATCH_SIZE > 0:
        return int(settings.EMBEDDING_BATCH_SIZE)
    return GPU_BATCH_SIZE if device.split(":", 1)[0] == "cuda" else CPU_BATCH_SIZE


def device_resolved() -> str:
    """The device this process embeds on: EMBEDDING_DEVICE, with "auto" made concrete as the
    encoders resolve it (CUDA, then MPS, then the CPU). Imports torch only for "auto"."""
    device = str(settings.EMBEDDING_DEVICE)
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"

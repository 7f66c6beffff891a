"""The encoder interface and the errors every encoder implementation raises.

Nothing here imports torch or Django: callers (views, tasks, settings checks) can depend on these
names without paying for a model framework import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

Family = Literal["clip", "align", "siglip", "siglip2"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: ``dim`` is the width of the published weights' embeddings."""

    model_id: str
    hub_id: str
    dim: int
    family: Family


# Dynamically quantised int8 Linear layers (weights int8, activations quantised per batch).
INT8 = "int8"


@runtime_checkable
class Encoder(Protocol):
    """Maps images and texts into one shared embedding space.

    ``model_id`` is the registry id the vectors are stored under, and ``dim`` the width of every
    vector the encoder returns. Both ``embed_*`` methods take the whole batch the caller wants
    run (an empty sequence gives an array of shape ``(0, dim)``) and return float32 arrays of
    shape ``(len(inputs), dim)`` whose rows are L2-normalised, so a dot product is the cosine
    similarity.
    """

    model_id: str
    dim: int

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded images (any PIL mode; they are converted to RGB)."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; texts longer than the model's context are truncated, never rejected."""
        ...


class EncoderError(Exception):
    """Base class for every error raised by the encoders package."""


class UnknownModelError(EncoderError):
    """A model id that is not in the registry."""

    def __init__(self, model_id: str, known: Sequence[str]) -> None:
        self.model_id = model_id
        self.known = tuple(known)
        super().__init__(
            f"unknown embedding model {model_id!r}; known models: {', '.join(self.known)}"
        )


class WeightsUnavailableError(EncoderError):
    """The model's weights (or processor files) could not be loaded from its source."""

    def __init__(self, model_id: str, source: str, reason: str) -> None:
        self.model_id = model_id
        self.source = source
        self.reason = reason
        super().__init__(
            f"weights for embedding model {model_id!r} are not available from {source!r}: "
            f"{reason}. To provide them, either download them once from the Hugging Face hub "
            "with internet access (they are cached afterwards), or point the model at a local "
            f'directory written by save_pretrained with EMBEDDING_MODEL_SOURCES="{model_id}='
            '/path/to/dir", or unset HF_HUB_OFFLINE if it is set and the hub is reachable.'
        )


class ImageDecodeError(EncoderError):
    """An image file that cannot be decoded; permanent, so record it rather than retry."""


def l2_normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32; an all-zero row stays zero (torch's floor)."""
    features = np.asarray(features, dtype=np.float32)
    norms: np.ndarray = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return np.asarray(features / norms, dtype=np.float32)

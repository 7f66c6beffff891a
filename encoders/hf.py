"""CLIP, ALIGN and SigLIP encoders on top of Hugging Face transformers.

The three families share one implementation: each has ``get_image_features`` /
``get_text_features`` that return embeddings in a joint space, and a processor saved beside the
weights. They differ only in the model class and in how texts are padded (see ``_FAMILIES``).

Only ``registry.load_encoder`` should import this module: it imports torch and transformers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from .base import INT8, EncoderError, ModelSpec, WeightsUnavailableError
from .images import to_rgb


@dataclass(frozen=True)
class _Family:
    model_class: str  # transformers class name
    model_type: str  # config.model_type a checkpoint of this family declares
    # SigLIP's text tower pools the *last* position and was trained on texts padded to the full
    # length, so its texts must be padded the same way; CLIP and ALIGN pool with the attention
    # mask (CLIP: the EOS token, ALIGN: [CLS]), so padding to the longest text is enough.
    text_padding: bool | str
    # Longest text the family was trained on, in tokens (ALIGN: 64 as in AlignProcessor;
    # its BERT would accept 512 positions, but nothing longer was seen in training).
    max_text_tokens: int


_FAMILIES = {
    "clip": _Family("CLIPModel", "clip", True, 77),
    "align": _Family("AlignModel", "align", True, 64),
    "siglip": _Family("SiglipModel", "siglip", "max_length", 64),
}


class HFEncoder:
    """An ``Encoder`` backed by a transformers dual-encoder model and its processor."""

    def __init__(
        self,
        *,
        model_id: str,
        model: Any,
        processor: Any,
        family: str,
        device: str,
        dtype: torch.dtype,
        quantization: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.family = family
        self.device = device
        # The dtype inputs are cast to: float32 for an int8-quantised model, whose quantised
        # layers take float activations and quantise them themselves.
        self.dtype = dtype
        self.quantization = quantization
        self._model = model
        self._tokenizer = processor.tokenizer
        self._image_processor = processor.image_processor
        self._text_padding = _FAMILIES[family].text_padding
        self.dim = _embedding_dim(model.config, family)
        self.max_text_tokens = _max_text_tokens(model.config, self._tokenizer, family)

    def __repr__(self) -> str:
        return (
            f"HFEncoder(model_id={self.model_id!r}, dim={self.dim}, device={self.device!r}, "
            f"dtype={self.dtype}, quantization={self.quantization!r})"
        )

    def embed_images(
        self, images: Sequence[Image.Image], *, max_batch: int | None = None
    ) -> np.ndarray:
        """Embed ``images``, in forward passes of at most ``max_batch`` (default: all)."""
        parts = []
        for chunk in _chunks(images, max_batch):
            # Converted here, not by the processor, so alpha is composited the same way
            # for every family and every image processor backend.
            pixels = self._image_processor(
                images=[to_rgb(image) for image in chunk], return_tensors="pt"
            )["pixel_values"]
            with torch.inference_mode():
                output = self._model.get_image_features(
                    pixel_values=pixels.to(self.device, dtype=self.dtype)
                )
            parts.append(_normalised_numpy(output))
        return self._concat(parts)

    def embed_texts(self, texts: Sequence[str], *, max_batch: int | None = None) -> np.ndarray:
        """Embed ``texts``, truncated to the model's context, ``max_batch`` at a time."""
        parts = []
        for chunk in _chunks(texts, max_batch):
            inputs = self._tokenizer(
                list(chunk),
                padding=self._text_padding,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="pt",
            )
            with torch.inference_mode():
                output = self._model.get_text_features(
                    **{name: tensor.to(self.device) for name, tensor in inputs.items()}
                )
            parts.append(_normalised_numpy(output))
        return self._concat(parts)

    def _concat(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def load_hf_encoder(spec: ModelSpec, *, source: str, device: str, dtype: str) -> HFEncoder:
    """Load ``spec``'s model and processor from ``source`` (hub id or local directory).

    ``dtype`` is a torch dtype name, or "int8" for float32 weights whose Linear layers are then
    dynamically quantised (CPU only; the registry refuses other devices before calling here).
    """
    family = _FAMILIES[spec.family]
    quantization = "int8-dynamic" if dtype == INT8 else None
    if quantization:
        dtype = "float32"
    source = _check_source(spec, source)
    # When offline is requested, say so to transformers explicitly: huggingface_hub reads
    # HF_HUB_OFFLINE only once, at import, so a later change would otherwise be ignored.
    local_only = {"local_files_only": True} if _hub_offline() else {}
    try:
        # The config first: it is the smallest file, so a missing model fails fast, and it lets
        # us refuse a checkpoint of another family before loading weights into the wrong class.
        config = transformers.AutoConfig.from_pretrained(source, **local_only)
        if config.model_type != family.model_type:
            raise EncoderError(
                f"{source!r} holds a {config.model_type!r} model, but {spec.model_id!r} "
                f"needs a {family.model_type!r} checkpoint"
            )
        processor = transformers.AutoProcessor.from_pretrained(source, **local_only)
        model_class = getattr(transformers, family.model_class)
        model = model_class.from_pretrained(
            source, config=config, dtype=getattr(torch, dtype), **local_only
        )
    except (OSError, ValueError) as exc:
        # transformers reports "not cached and offline", "no such repo", "no config.json in
        # this directory" and malformed repo ids as OSError/ValueError subclasses.
        raise WeightsUnavailableError(spec.model_id, source, _first_line(exc)) from exc
    except ImportError as exc:
        # e.g. SigLIP's sentencepiece tokenizer without the sentencepiece/protobuf packages.
        raise EncoderError(
            f"loading {spec.model_id!r} needs a package that is not installed: {exc}"
        ) from exc
    model.to(device)
    model.eval()
    if quantization:
        model = _quantize_linear_int8(model)
    return HFEncoder(
        model_id=spec.model_id,
        model=model,
        processor=processor,
        family=spec.family,
        device=device,
        dtype=getattr(torch, dtype),
        quantization=quantization,
    )


def _quantize_linear_int8(model: Any) -> Any:
    # Eager dynamic quantisation is the int8 Linear path torch itself still ships (its successor
    # lives in the separate torchao package). torch marks it deprecated and warns on every
    # quantised weight it creates; torch is pinned, so those warnings say nothing actionable here.
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:
        raise EncoderError(
            f"this torch ({torch.__version__}) has no int8 dynamic quantisation"
        ) from exc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _check_source(spec: ModelSpec, source: str) -> str:
    # transformers treats anything that is not an existing directory as a hub id, so a mistyped
    # path would surface as a confusing "repo id must be in the form ..." error.
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    # Hub ids are "name" or "org/name"; anything else was meant as a path.
    if source.startswith(("/", "~", ".")) or source.count("/") > 1 or "\\" in source:
        raise WeightsUnavailableError(spec.model_id, source, "no such directory")
    return source


def _hub_offline() -> bool:
    # Same variables and truthy spellings huggingface_hub accepts.
    return any(
        os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _embedding_dim(config: Any, family: str) -> int:
    # Taken from the loaded config rather than the registry, so tiny test models (and any
    # fine-tuned variant) report the width they really produce.
    if family == "siglip":
        text = config.text_config
        return int(getattr(text, "projection_size", None) or text.hidden_size)
    return int(config.projection_dim)


def _max_text_tokens(config: Any, tokenizer: Any, family: str) -> int:
    # The tokenizer's model_max_length is sometimes unset (a huge sentinel), and position
    # embeddings are the hard limit: take the smallest of the three.
    return min(
        _FAMILIES[family].max_text_tokens,
        int(config.text_config.max_position_embeddings),
        int(tokenizer.model_max_length),
    )


def _chunks(items: Sequence[Any], size: int | None) -> Iterator[Sequence[Any]]:
    if size is not None and size < 1:
        raise ValueError(f"max_batch must be positive, got {size}")
    step = size or len(items) or 1
    for start in range(0, len(items), step):
        yield items[start : start + step]


def _normalised_numpy(output: Any) -> np.ndarray:
    # In transformers 5, get_*_features return a ModelOutput whose pooler_output holds the
    # projected embedding; older versions returned the tensor itself.
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    # Normalise in float32: fp16 norms of 768-wide vectors lose precision.
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")

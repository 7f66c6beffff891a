"""CLIP, ALIGN, SigLIP and SigLIP 2 encoders on top of Hugging Face transformers.

The families share one implementation: each has ``get_image_features`` / ``get_text_features``
that return embeddings in a joint space, and a processor saved beside the weights. They differ
only in the model class and in how texts are padded (see ``_FAMILIES``). The processor's output
is the input of both backends: torch here, ONNX Runtime in ``onnx.py``.

Only ``registry.load_encoder`` should import this module: it imports torch and transformers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
import transformers
from PIL import Image

from .base import INT8, EncoderError, ModelSpec, WeightsUnavailableError, l2_normalised
from .images import to_rgb


@dataclass(frozen=True)
class _Family:
    # config.model_type a checkpoint of this family may declare -> transformers class that
    # loads it.
    model_classes: Mapping[str, str]
    # SigLIP's text tower pools the *last* position and was trained on texts padded to the full
    # length, so its texts must be padded the same way; CLIP and ALIGN pool with the attention
    # mask (CLIP: the EOS token, ALIGN: [CLS]), so padding to the longest text is enough.
    text_padding: bool | str
    # Longest text the family was trained on, in tokens (ALIGN: 64 as in AlignProcessor;
    # its BERT would accept 512 positions, but nothing longer was seen in training).
    max_text_tokens: int
    # SigLIP and SigLIP 2 were trained on lowercased text, and the reference implementation
    # (big_vision) lowercases what it embeds; uncased, SigLIP 2 B/16 lost ~7 points of Flickr30k
    # text->image R@1 (google-research/big_vision#166). Done here rather than trusted to the
    # tokenizer: the Gemma tokenizer SigLIP 2's fixed-resolution checkpoints ship with keeps
    # case. Lowercasing twice is harmless where the tokenizer also does it (SiglipTokenizer).
    lowercase_text: bool = False


_FAMILIES = {
    "clip": _Family({"clip": "CLIPModel"}, True, 77),
    "align": _Family({"align": "AlignModel"}, True, 64),
    "siglip": _Family({"siglip": "SiglipModel"}, "max_length", 64, lowercase_text=True),
    # SigLIP 2's fixed-resolution checkpoints (siglip2-base-patch16-256, so400m-patch14-384)
    # are published as SigLIP architectures with a Gemma tokenizer; only the NaFlex variants
    # declare "siglip2" (Siglip2Model, which also takes a patch mask and each image's patch
    # grid). Both are trained on texts padded to 64 tokens.
    "siglip2": _Family(
        {"siglip2": "Siglip2Model", "siglip": "SiglipModel"}, "max_length", 64, lowercase_text=True
    ),
}


class ProcessorEncoder:
    """The part every backend shares: the model's processor turns inputs into arrays.

    Subclasses run the two towers on those arrays (``_image_features`` / ``_text_features``,
    returning unnormalised float embeddings); normalisation and batching happen here, so the
    backends differ only in what runs the graph.
    """

    backend: str

    def __init__(
        self,
        *,
        model_id: str,
        processor: Any,
        family: str,
        config: Any,
        quantization: str | None,
    ) -> None:
        self.model_id = model_id
        self.family = family
        self.quantization = quantization
        self._tokenizer = processor.tokenizer
        self._image_processor = processor.image_processor
        self._text_padding = _FAMILIES[family].text_padding
        self._lowercase_text = _FAMILIES[family].lowercase_text
        self.dim = _embedding_dim(config, family)
        self.max_text_tokens = _max_text_tokens(config, self._tokenizer, family)

    def embed_images(
        self, images: Sequence[Image.Image], *, max_batch: int | None = None
    ) -> np.ndarray:
        """Embed ``images``, in forward passes of at most ``max_batch`` (default: all)."""
        parts = [
            l2_normalised(self._image_features(self.image_inputs(chunk)))
            for chunk in _chunks(images, max_batch)
        ]
        return self._concat(parts)

    def embed_texts(self, texts: Sequence[str], *, max_batch: int | None = None) -> np.ndarray:
        """Embed ``texts``, truncated to the model's context, ``max_batch`` at a time."""
        parts = [
            l2_normalised(self._text_features(self.text_inputs(chunk)))
            for chunk in _chunks(texts, max_batch)
        ]
        return self._concat(parts)

    def image_inputs(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """The processor's arrays for ``images``: what the image tower takes."""
        # Converted here, not by the processor, so alpha is composited the same way
        # for every family and every image processor backend.
        return dict(
            self._image_processor(images=[to_rgb(image) for image in images], return_tensors="np")
        )

    def texts_prepared(self, texts: Sequence[str]) -> list[str]:
        """``texts`` as the model reads them (SigLIP and SigLIP 2: lowercased), before the
        tokenizer: queries and evaluation captions alike go through here."""
        return [text.lower() for text in texts] if self._lowercase_text else list(texts)

    def text_inputs(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The tokenizer's arrays for ``texts``: what the text tower takes."""
        return dict(
            self._tokenizer(
                self.texts_prepared(texts),
                padding=self._text_padding,
                truncation=True,
                max_length=self.max_text_tokens,
                return_tensors="np",
            )
        )

    def _image_features(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _text_features(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _concat(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class HFEncoder(ProcessorEncoder):
    """An ``Encoder`` backed by a transformers dual-encoder model run by torch."""

    backend = "torch"

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
        super().__init__(
            model_id=model_id,
            processor=processor,
            family=family,
            config=model.config,
            quantization=quantization,
        )
        self.device = device
        # The dtype inputs are cast to: float32 for an int8-quantised model, whose quantised
        # layers take float activations and quantise them themselves.
        self.dtype = dtype
        self._model = model

    def __repr__(self) -> str:
        return (
            f"HFEncoder(model_id={self.model_id!r}, dim={self.dim}, device={self.device!r}, "
            f"dtype={self.dtype}, quantization={self.quantization!r})"
        )

    def _image_features(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        # Pixels take the weights' dtype; SigLIP 2's patch mask and patch grids stay integers.
        tensors = {
            name: torch.from_numpy(array).to(
                self.device, dtype=self.dtype if array.dtype.kind == "f" else None
            )
            for name, array in inputs.items()
        }
        with torch.inference_mode():
            return _features_numpy(self._model.get_image_features(**tensors))

    def _text_features(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = {name: torch.from_numpy(array).to(self.device) for name, array in inputs.items()}
        with torch.inference_mode():
            return _features_numpy(self._model.get_text_features(**tensors))


@dataclass
class HFCheckpoint:
    """A checkpoint's config and processor, read; its weights are loaded only when asked.

    Both backends start here: torch loads the weights into ``model_class``; the ONNX backend
    loads them only when it has no export of this checkpoint yet.
    """

    spec: ModelSpec
    source: str
    config: Any
    model_class: Any
    processor: Any
    local_only: dict[str, bool]
    unreachable: str = ""

    def load_model(self, dtype: str, device: str) -> Any:
        with _weights_errors(self.spec, self.source, unreachable=self.unreachable):
            model = self.model_class.from_pretrained(
                self.source, config=self.config, dtype=getattr(torch, dtype), **self.local_only
            )
        return model.to(device).eval()


def hf_checkpoint(spec: ModelSpec, *, source: str) -> HFCheckpoint:
    """Read ``spec``'s config and processor from ``source`` (hub id or local directory)."""
    source = _check_source(spec, source)
    # When offline is requested, say so to transformers explicitly: huggingface_hub reads
    # HF_HUB_OFFLINE only once, at import, so a later change would otherwise be ignored.
    offline = _hub_offline()
    # Without a network, huggingface_hub retries each file five times with backoff (~25 s and
    # a "Retrying" warning each): one short attempt tells, and the local cache is all there is.
    unreachable = "" if offline or Path(source).is_dir() else _hub_unreachable()
    local_only = {"local_files_only": True} if offline or unreachable else {}
    with _weights_errors(spec, source, unreachable=unreachable):
        # The config first: it is the smallest file, so a missing model fails fast, and it lets
        # us refuse a checkpoint of another family before loading weights into the wrong class.
        config = transformers.AutoConfig.from_pretrained(source, **local_only)
        model_class = _model_class(spec, source, config)
        processor = transformers.AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            source, **local_only
        )
    return HFCheckpoint(spec, source, config, model_class, processor, local_only, unreachable)


def load_hf_encoder(checkpoint: HFCheckpoint, *, device: str, dtype: str) -> ProcessorEncoder:
    """The torch encoder of ``checkpoint``.

    ``dtype`` is a torch dtype name, or "int8" for float32 weights whose Linear layers are then
    dynamically quantised (CPU only; the registry refuses other devices before calling here).
    """
    quantization = "int8-dynamic" if dtype == INT8 else None
    if quantization:
        dtype = "float32"
    model = checkpoint.load_model(dtype, device)
    if quantization:
        model = _quantize_linear_int8(model)
    return HFEncoder(
        model_id=checkpoint.spec.model_id,
        model=model,
        processor=checkpoint.processor,
        family=checkpoint.spec.family,
        device=device,
        dtype=getattr(torch, dtype),
        quantization=quantization,
    )


@contextlib.contextmanager
def _weights_errors(spec: ModelSpec, source: str, *, unreachable: str = "") -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError) as exc:
        # transformers reports "not cached and offline", "no such repo", "no config.json in
        # this directory" and malformed repo ids as OSError/ValueError subclasses.
        reason = f"{unreachable}, and they are not in the local cache" if unreachable else ""
        raise WeightsUnavailableError(spec.model_id, source, reason or _first_line(exc)) from exc
    except ImportError as exc:
        # e.g. SigLIP's sentencepiece tokenizer without the sentencepiece/protobuf packages.
        raise EncoderError(
            f"loading {spec.model_id!r} needs a package that is not installed: {exc}"
        ) from exc


def _model_class(spec: ModelSpec, source: str, config: Any) -> Any:
    classes = _FAMILIES[spec.family].model_classes
    if config.model_type not in classes:
        expected = " or ".join(repr(model_type) for model_type in classes)
        raise EncoderError(
            f"{source!r} holds a {config.model_type!r} model, but {spec.model_id!r} "
            f"needs a {expected} checkpoint"
        )
    return getattr(transformers, classes[config.model_type])


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
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]


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


# Long enough for a slow link to answer a TCP handshake, short enough for a worker's sweep.
HUB_PROBE_TIMEOUT_SECONDS = 3.0


def _hub_unreachable() -> str:
    """Why the Hugging Face hub (or the proxy to it) cannot be reached, or "" when it answers.

    One TCP connection with a short timeout: no HTTP, so none of huggingface_hub's retries.
    """
    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    target = endpoint
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(endpoint.hostname or ""):
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname, port), timeout=HUB_PROBE_TIMEOUT_SECONDS):
            return ""
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        via = f" through the proxy {target.hostname}:{port}" if target is not endpoint else ""
        return f"the Hugging Face hub ({constants.ENDPOINT}) is not reachable{via} ({why})"


def _hub_offline() -> bool:
    # Same variables and truthy spellings huggingface_hub accepts.
    return any(
        os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _embedding_dim(config: Any, family: str) -> int:
    # Taken from the loaded config rather than the registry, so tiny test models (and any
    # fine-tuned variant) report the width they really produce.
    if family in ("siglip", "siglip2"):
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


def features_tensor(output: Any) -> torch.Tensor:
    """The embedding tensor of a ``get_*_features`` call, across transformers versions."""
    # In transformers 5, get_*_features return a ModelOutput whose pooler_output holds the
    # projected embedding; older versions returned the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _features_numpy(output: Any) -> np.ndarray:
    # Brought to float32 before normalising: fp16 norms of 768-wide vectors lose precision.
    return features_tensor(output).float().cpu().numpy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")

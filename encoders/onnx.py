"""The ONNX Runtime backend: the same towers, exported once, run without torch on the CPU.

On the CPU, ONNX Runtime runs CLIP-style towers faster than eager torch (fused attention and
layer norms, no Python between layers) and gives the same numbers to ~1e-6, so it is the CPU
default. Each model's text and vision towers (projection included) are exported from the loaded
transformers model once into a cache directory, keyed by the weights' contents and the versions
of torch, transformers and onnxruntime; later loads find the files and never load the torch
weights. Tokenisation and image preprocessing stay the model processor's (``ProcessorEncoder``),
so both backends compute the same function of the same inputs.

Anything that goes wrong on the way (onnxruntime missing or broken, an export that fails or does
not match torch) raises ``OnnxUnavailableError``, on which the loader falls back to torch.

Only ``hf.load_hf_encoder`` should import this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from .base import EncoderError, ModelSpec, WeightsUnavailableError, l2_normalised
from .hf import HFCheckpoint, ProcessorEncoder, features_tensor

# Bump when the exported graphs change for the same weights and versions (wrapper, opset, axes):
# it is part of the cache key, so old exports are not reused.
EXPORT_FORMAT = 1
# 17 has LayerNormalization as one op; the TorchScript exporter supports up to 20.
OPSET = 17
# Largest max abs difference between normalised ONNX and torch embeddings of the probe inputs
# accepted right after an export. Measured ~2e-6 on full-size ViT-B/32; a wrong export (a shape
# frozen at its traced value, say) is off by far more.
MAX_EXPORT_DIFFERENCE = 1e-3
# The project's rule for lossy speed-ups: int8 is kept only if every probe embedding has
# cosine >= this to the float32 one of the same input.
MIN_INT8_COSINE = 0.99
INT8 = "int8-dynamic"

_TOWERS = ("text", "vision")
_ORT_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class OnnxUnavailableError(EncoderError):
    """The ONNX backend cannot serve this model here; the caller falls back to torch."""


@dataclass(frozen=True)
class OnnxOptions:
    """How ONNX Runtime sessions run, and where exports are kept."""

    # Intra-op threads per session: 1 per web worker (several workers share the cores).
    threads: int = 1
    # None: the Hugging Face cache's "onnx" folder, beside the weights it was made from.
    cache_dir: Path | None = None


class OnnxEncoder(ProcessorEncoder):
    """An ``Encoder`` whose towers run in ONNX Runtime sessions on the CPU."""

    backend = "onnx"
    device = "cpu"
    dtype = "float32"

    def __init__(
        self,
        *,
        model_id: str,
        processor: Any,
        family: str,
        config: Any,
        sessions: Mapping[str, Any],
        export_dir: Path,
        quantization: str | None,
    ) -> None:
        super().__init__(
            model_id=model_id,
            processor=processor,
            family=family,
            config=config,
            quantization=quantization,
        )
        self.export_dir = export_dir
        self._sessions = dict(sessions)

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder(model_id={self.model_id!r}, dim={self.dim}, "
            f"quantization={self.quantization!r}, export_dir={str(self.export_dir)!r})"
        )

    def _image_features(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return _run(self._sessions["vision"], inputs)

    def _text_features(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return _run(self._sessions["text"], inputs)


def load_onnx_encoder(
    checkpoint: HFCheckpoint, *, quantize: bool, options: OnnxOptions
) -> OnnxEncoder:
    """Load the checkpoint's towers into ONNX Runtime, exporting them first if needed.

    The float32 torch model is loaded (on the CPU) only when no export for these weights and
    versions is cached. Raises ``OnnxUnavailableError`` for anything ONNX-specific (the caller
    falls back to torch), and lets the weights' own errors through.
    """
    spec, source = checkpoint.spec, checkpoint.source
    config, processor = checkpoint.config, checkpoint.processor

    def load_model() -> Any:
        return checkpoint.load_model("float32", "cpu")

    try:
        import onnxruntime
    except Exception as exc:  # a broken install raises more than ImportError
        raise OnnxUnavailableError(f"onnxruntime cannot be imported: {exc}") from exc
    try:
        return _load(
            spec,
            ort=onnxruntime,
            source=source,
            config=config,
            processor=processor,
            load_model=load_model,
            quantize=quantize,
            options=options,
        )
    except (OnnxUnavailableError, WeightsUnavailableError):
        raise
    except Exception as exc:
        # Export and session errors come as RuntimeError, onnxruntime's own Fail/InvalidGraph,
        # torch.onnx errors...: whichever it is, torch can still serve the model.
        raise OnnxUnavailableError(
            f"the ONNX export of {spec.model_id!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def default_cache_dir() -> Path:
    """Where exports go unless told otherwise: beside the Hugging Face weights cache."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "onnx"


def export_key(spec: ModelSpec, *, source: str, config: Any) -> str | None:
    """The cache key of ``source``'s export, or None if its weights are not on disk yet."""
    files = _weight_files(source)
    if not files:
        return None
    import onnxruntime

    material = {
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "family": spec.family,
        "model_type": config.model_type,
        "files": [[path.name, _fingerprint(path)] for path in files],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return digest[:24]


# --- loading ---------------------------------------------------------------------------------


def _load(
    spec: ModelSpec,
    *,
    ort: Any,
    source: str,
    config: Any,
    processor: Any,
    load_model: Callable[[], Any],
    quantize: bool,
    options: OnnxOptions,
) -> OnnxEncoder:
    cache_dir = Path(options.cache_dir or default_cache_dir()).expanduser()
    probe = _Probe(spec, processor=processor, config=config)
    key = export_key(spec, source=source, config=config)
    export_dir = cache_dir / f"{spec.model_id}-{key}" if key else None
    if export_dir is None or not (export_dir / "meta.json").exists():
        # No export for these weights: load them (which also brings hub weights on disk, so
        # the key can be computed) and export.
        model = load_model()
        key = export_key(spec, source=source, config=config)
        if key is None:
            raise OnnxUnavailableError(f"the weight files of {source!r} cannot be located")
        export_dir = cache_dir / f"{spec.model_id}-{key}"
        with _locked(cache_dir, export_dir.name):
            if not (export_dir / "meta.json").exists():
                _export(model, probe, export_dir=export_dir, ort=ort)
        del model
    meta = json.loads((export_dir / "meta.json").read_text())
    files = {tower: f"{tower}.onnx" for tower in _TOWERS}
    quantization = None
    if quantize:
        if "int8" not in meta:
            with _locked(cache_dir, export_dir.name):
                meta = _ensure_int8(probe, export_dir=export_dir, ort=ort)
        # Judged on the recorded cosine at each load, so a changed rule applies to old exports.
        if meta["int8"]["min_cosine"] >= MIN_INT8_COSINE:
            files = {tower: f"{tower}.int8.onnx" for tower in _TOWERS}
            quantization = INT8
        else:
            warnings.warn(
                f"int8 ONNX for {spec.model_id!r} is below the cosine {MIN_INT8_COSINE} rule "
                f"(min {meta['int8']['min_cosine']:.4f}); using the float32 export",
                RuntimeWarning,
                stacklevel=2,
            )
    sessions = {
        tower: _session(ort, export_dir / name, options.threads) for tower, name in files.items()
    }
    return OnnxEncoder(
        model_id=spec.model_id,
        processor=processor,
        family=spec.family,
        config=config,
        sessions=sessions,
        export_dir=export_dir,
        quantization=quantization,
    )


def _session(ort: Any, path: Path, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Batch and sequence sizes change from call to call: a memory pattern planned for one
    # shape does not fit the next, and the arena would keep every peak it ever reached.
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    # Fed by the graph's own input names and types: an input the exporter found unused is not
    # a graph input, and the processor's integer dtypes may differ from the traced ones.
    feed: dict[str, np.ndarray] = {
        spec.name: np.ascontiguousarray(inputs[spec.name], dtype=_ORT_NUMPY_TYPES[spec.type])
        for spec in session.get_inputs()
    }
    return np.asarray(session.run(None, feed)[0])


@contextlib.contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[None]:
    # Several web workers start at once: one exports, the others wait and reuse its files.
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{name}.lock")):
        yield


# --- export ----------------------------------------------------------------------------------


class _Tower(torch.nn.Module):
    """One tower of a dual encoder as a module of positional tensors, for the exporter."""

    def __init__(self, model: Any, method: str, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = getattr(self.model, self.method)(**dict(zip(self.names, tensors, strict=True)))
        return features_tensor(features)


def _export(model: Any, probe: _Probe, *, export_dir: Path, ort: Any) -> None:
    # Written into a scratch folder and renamed into place, so a reader never sees half a file
    # and a crash leaves nothing that looks complete.
    scratch = export_dir.with_name(f"{export_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        model = model.float().eval()
        meta: dict[str, Any] = {"max_abs_difference": {}}
        for tower, method, inputs, check in (
            ("text", "get_text_features", probe.trace_texts(), probe.check_texts()),
            ("vision", "get_image_features", probe.trace_images(), probe.check_images()),
        ):
            path = scratch / f"{tower}.onnx"
            module = _Tower(model, method, list(inputs))
            # The wrapper is a new module, in training mode: the exporter would restore that
            # mode onto the whole model afterwards, switching dropout on for later torch use.
            module.eval()
            _export_tower(module, inputs, path)
            session = _session(ort, path, threads=1)
            with torch.inference_mode():
                expected = module(*(torch.from_numpy(check[name]) for name in module.names))
            difference = _max_difference(_run(session, check), expected.float().numpy())
            if not difference <= MAX_EXPORT_DIFFERENCE:
                raise OnnxUnavailableError(
                    f"the exported {tower} tower differs from torch by {difference:.2e}"
                )
            meta["max_abs_difference"][tower] = float(difference)
        (scratch / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(export_dir, ignore_errors=True)
        os.replace(scratch, export_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _export_tower(module: _Tower, inputs: Mapping[str, np.ndarray], path: Path) -> None:
    dynamic_axes = {"embeddings": {0: "batch"}}
    for name, array in inputs.items():
        axes = dict(_DYNAMIC_AXES.get(name, {0: "batch"}))
        if name == "pixel_values" and array.ndim == 3:
            axes[1] = "patches"  # SigLIP 2 NaFlex: patch sequences, padded per batch
        dynamic_axes[name] = axes
    args = tuple(torch.from_numpy(inputs[name]) for name in module.names)
    with warnings.catch_warnings(), torch.no_grad():
        # Tracer warnings name Python-level checks on shapes (e.g. "sequence longer than the
        # positions"): expected, since those checks hold for every input the processor makes.
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one needs onnxscript as well, and the checks
        # after export are what tell whether a graph is right, whichever exporter made it.
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=module.names,
            output_names=["embeddings"],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


# Axes that vary between calls. Images of a fixed-size family keep channels, height and width:
# their processor always resizes to the same size.
_DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    "token_type_ids": {0: "batch", 1: "sequence"},
    "pixel_values": {0: "batch"},
    "pixel_attention_mask": {0: "batch", 1: "patches"},
    "spatial_shapes": {0: "batch"},
}


def _ensure_int8(probe: _Probe, *, export_dir: Path, ort: Any) -> dict[str, Any]:
    """Quantise both towers once (dynamic int8) and record their lowest cosine to float32."""
    # Read again under the lock: another process may have quantised while this one waited.
    meta: dict[str, Any] = json.loads((export_dir / "meta.json").read_text())
    if "int8" in meta:
        return meta
    from onnxruntime.quantization import QuantType, quantize_dynamic

    cosines = []
    for tower, inputs in (("text", probe.check_texts()), ("vision", probe.check_images())):
        source, target = export_dir / f"{tower}.onnx", export_dir / f"{tower}.int8.onnx"
        scratch = target.with_name(f"{target.name}.tmp{os.getpid()}")
        # Per-channel weight scales: one outlier channel no longer coarsens every other
        # channel's steps. Same speed as per-tensor; on random ViT-B/32 weights the lowest
        # text cosine to float32 went from 0.9987 to 0.9991 (images 0.99979 -> 0.99984).
        with _quiet_quantizer():
            quantize_dynamic(
                source, scratch, weight_type=QuantType.QInt8, per_channel=True, reduce_range=False
            )
        os.replace(scratch, target)
        full = l2_normalised(_run(_session(ort, source, 1), inputs))
        int8 = l2_normalised(_run(_session(ort, target, 1), inputs))
        cosines.append(float(np.sum(full * int8, axis=1).min()))
    minimum = min(cosines)
    meta = {**meta, "int8": {"min_cosine": minimum}}
    scratch = export_dir / f"meta.json.tmp{os.getpid()}"
    scratch.write_text(json.dumps(meta, indent=2))
    os.replace(scratch, export_dir / "meta.json")
    return meta


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # The quantiser logs straight on the root logger: a line per tensor at INFO, and advice
    # about calibration pre-processing (for static quantisation, not used here) as a warning.
    # Under Django's INFO root level that is hundreds of lines per model; errors still pass.
    def quantiser_chatter(record: logging.LogRecord) -> bool:
        advice = record.getMessage().startswith("Please consider to run pre-processing")
        return record.levelno >= logging.ERROR or not (advice or record.levelno < logging.WARNING)

    root = logging.getLogger()
    root.addFilter(quantiser_chatter)
    try:
        yield
    finally:
        root.removeFilter(quantiser_chatter)


class _Probe:
    """Inputs made by the model's own processor: to trace the towers and to check exports.

    The check inputs differ in batch size, text length and (for SigLIP 2) aspect ratio from the
    traced ones, so a shape frozen into the graph shows up as a difference.
    """

    def __init__(self, spec: ModelSpec, *, processor: Any, config: Any) -> None:
        # A processor-only encoder: the same text padding and truncation as the real one.
        self._encoder = ProcessorEncoder(
            model_id=spec.model_id,
            processor=processor,
            family=spec.family,
            config=config,
            quantization=None,
        )

    def trace_texts(self) -> dict[str, np.ndarray]:
        return self._encoder.text_inputs(["a photo of a cat", "two dogs running on the beach"])

    def check_texts(self) -> dict[str, np.ndarray]:
        return self._encoder.text_inputs(
            [
                "a red car parked in front of an old stone house on a rainy evening",
                "dog",
                "ein Hund im Schnee",
            ]
        )

    def trace_images(self) -> dict[str, np.ndarray]:
        return self._encoder.image_inputs([_photo(0, 64, 48), _photo(1, 48, 64)])

    def check_images(self) -> dict[str, np.ndarray]:
        return self._encoder.image_inputs([_photo(2, 80, 40), _photo(3, 50, 50), _photo(4, 30, 90)])


def _photo(seed: int, width: int, height: int) -> Image.Image:
    # Smooth gradients plus noise: closer to a photo's statistics than pure noise, which
    # matters for the int8 check (quantisation error depends on the activations' range).
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 220
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _max_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(l2_normalised(got) - l2_normalised(expected)).max())


# --- the cache key ---------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HUB_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _weight_files(source: str) -> list[Path]:
    """The config and weight files ``source`` loads from, if they are on disk (sorted)."""
    directory = Path(source).expanduser()
    if directory.is_dir():
        files = [
            path
            for path in directory.iterdir()
            if path.name == "config.json" or path.name.endswith(_WEIGHT_SUFFIXES + (".index.json",))
        ]
    else:
        files = _hub_cached_files(source)
    if not any(path.name.endswith(_WEIGHT_SUFFIXES) for path in files):
        return []
    return sorted(files, key=lambda path: path.name)


def _hub_cached_files(repo_id: str) -> list[Path]:
    # Looks only in the local hub cache, never on the network: before the first download there
    # is nothing to key on, and the loader downloads through transformers first.
    from huggingface_hub import try_to_load_from_cache

    files = []
    names = list(_HUB_FILES)
    while names:
        name = names.pop(0)
        cached = try_to_load_from_cache(repo_id, name)
        if not isinstance(cached, str):
            continue
        path = Path(cached)
        files.append(path)
        if name.endswith(".index.json"):
            shards = set(json.loads(path.read_text()).get("weight_map", {}).values())
            names.extend(sorted(shards - set(names)))
    return files


def _fingerprint(path: Path) -> str:
    resolved = path.resolve()
    # Hub cache files are links to blobs named by their content hash: no need to read them.
    if resolved.parent.name == "blobs" and len(resolved.name) >= 40:
        return resolved.name
    digest = hashlib.sha256()
    with resolved.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

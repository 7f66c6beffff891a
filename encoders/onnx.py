"""The ONNX Runtime backend: the same towers, exported once, run without torch on the CPU.

On the CPU, ONNX Runtime runs CLIP-style towers faster than eager torch (fused attention and
layer norms, no Python between layers) and gives the same numbers to ~1e-6, so it is the CPU
default. Each model's text and vision towers (projection included) are exported from the loaded
transformers model once into a cache directory (``onnx_export.py``), keyed by the weights'
contents and the versions of torch, transformers and onnxruntime; later loads find the files
and never load the torch weights. Tokenisation and image preprocessing stay the model
processor's (``ProcessorEncoder``), so both backends compute the same function of the same
inputs.

Anything that goes wrong on the way (onnxruntime missing or broken, an export that fails or does
not match torch) raises ``OnnxUnavailableError``, on which the loader falls back to torch.

Only ``hf.load_hf_encoder`` should import this module.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import onnx_export
from .base import EncoderError, ModelSpec, WeightsUnavailableError
from .hf import HFCheckpoint, ProcessorEncoder
from .onnx_export import ExportMismatchError, ExportProbe, export_key

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
        int8_min_cosine: float | None = None,
    ) -> None:
        super().__init__(
            model_id=model_id,
            processor=processor,
            family=family,
            config=config,
            quantization=quantization,
        )
        self.export_dir = export_dir
        # The int8 check's lowest cosine to float32 (None: int8 was not asked for): with
        # ``quantization`` None it was asked for and refused (below MIN_INT8_COSINE).
        self.int8_min_cosine = int8_min_cosine
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
    except ExportMismatchError as exc:
        raise OnnxUnavailableError(str(exc)) from exc
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
    probe = ExportProbe(spec, processor=processor, config=config)

    def run_graph(path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        # Exports are checked in the runtime that serves them, as it serves them.
        return _run(_session(ort, path, threads=1), inputs)

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
                onnx_export.export_towers(model, probe, export_dir=export_dir, run_graph=run_graph)
        del model
    meta = json.loads((export_dir / "meta.json").read_text())
    files = {tower: f"{tower}.onnx" for tower in _TOWERS}
    quantization = None
    int8_min_cosine = None
    if quantize:
        if not onnx_export.int8_checked(meta):
            with _locked(cache_dir, export_dir.name):
                meta = onnx_export.quantize_int8(probe, export_dir=export_dir, run_graph=run_graph)
        # Judged on the recorded cosine at each load, so a changed rule applies to old exports.
        int8_min_cosine = float(meta["int8"]["min_cosine"])
        if int8_min_cosine >= MIN_INT8_COSINE:
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
        int8_min_cosine=int8_min_cosine,
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

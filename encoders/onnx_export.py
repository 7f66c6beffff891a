"""Exporting a model's towers to ONNX for the ONNX Runtime backend (``onnx.py``), once per
weights and versions, and checking the export before anyone uses it.

Each tower (projection included) is traced from the loaded transformers model with the
TorchScript exporter, run through the runtime on inputs of other sizes, and kept only if it
gives torch's embeddings (``MAX_EXPORT_DIFFERENCE``); the int8 copies are made from the float32
export and their lowest cosine to it recorded, for the runtime's rule. ``export_key`` names an
export by the weights' contents and the versions of torch, transformers and onnxruntime.

The runtime is passed in (``RunGraph``): this module knows how to make and check a graph, not
how sessions are configured.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from .base import EncoderError, ModelSpec, l2_normalised
from .hf import ProcessorEncoder, features_tensor

# Bump when the exported graphs change for the same weights and versions (wrapper, opset, axes):
# it is part of the cache key, so old exports are not reused.
EXPORT_FORMAT = 1
# 17 has LayerNormalization as one op; the TorchScript exporter supports up to 20.
OPSET = 17
# Largest max abs difference between normalised ONNX and torch embeddings of the probe inputs
# accepted right after an export. Measured ~2e-6 on full-size ViT-B/32; a wrong export (a shape
# frozen at its traced value, say) is off by far more.
MAX_EXPORT_DIFFERENCE = 1e-3

# Runs the graph saved at a path on named inputs in the runtime that will serve it.
RunGraph = Callable[[Path, Mapping[str, np.ndarray]], np.ndarray]


class ExportMismatchError(EncoderError):
    """An exported tower does not compute what the torch tower computes."""


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


def export_towers(model: Any, probe: ExportProbe, *, export_dir: Path, run_graph: RunGraph) -> None:
    """Export both towers of ``model`` into ``export_dir`` with a ``meta.json``, each checked
    against torch on ``probe``'s inputs; ``ExportMismatchError`` when one differs."""
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
            with torch.inference_mode():
                expected = module(*(torch.from_numpy(check[name]) for name in module.names))
            difference = _max_difference(run_graph(path, check), expected.float().numpy())
            if not difference <= MAX_EXPORT_DIFFERENCE:
                raise ExportMismatchError(
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


# Names the int8 recipe and the inputs its check runs on; an export quantised or checked another
# way is quantised and checked again (seconds, once per weights and versions). v2: 7-bit weights.
INT8_PROBE = "queries-v2"


def int8_checked(meta: Mapping[str, Any]) -> bool:
    """Whether ``meta`` (an export's meta.json) holds an int8 check on today's probe inputs."""
    return bool(meta.get("int8", {}).get("probe") == INT8_PROBE)


def quantize_int8(probe: ExportProbe, *, export_dir: Path, run_graph: RunGraph) -> dict[str, Any]:
    """Quantise both towers once (dynamic int8) and record their lowest cosine to float32 on
    the probe's inputs: the query texts of ``ExportProbe.int8_texts`` and the check images."""
    # Read again under the lock: another process may have quantised while this one waited.
    meta: dict[str, Any] = json.loads((export_dir / "meta.json").read_text())
    if int8_checked(meta):
        return meta
    from onnxruntime.quantization import QuantType, quantize_dynamic

    cosines = []
    for tower, inputs in (("text", probe.int8_texts()), ("vision", probe.check_images())):
        source, target = export_dir / f"{tower}.onnx", export_dir / f"{tower}.int8.onnx"
        scratch = target.with_name(f"{target.name}.tmp{os.getpid()}")
        # Per-channel weight scales: one outlier channel no longer coarsens every other
        # channel's steps. Same speed as per-tensor; on random ViT-B/32 weights the lowest
        # text cosine to float32 went from 0.9987 to 0.9991 (images 0.99979 -> 0.99984).
        # 7-bit weights (reduce_range): without AVX-512 VNNI, onnxruntime multiplies u8 by s8
        # with an instruction whose 16-bit pair sums saturate, so full-range weights give
        # other answers there (the tiny test CLIP's text: 0.9735 on an emulated Haswell, 0.9986
        # on a VNNI EPYC). With 7 bits every x86 CPU gives the same figure as VNNI does.
        with _quiet_quantizer():
            quantize_dynamic(
                source, scratch, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
            )
        os.replace(scratch, target)
        full = l2_normalised(run_graph(source, inputs))
        int8 = l2_normalised(run_graph(target, inputs))
        cosines.append(float(np.sum(full * int8, axis=1).min()))
    minimum = min(cosines)
    meta = {
        **meta,
        "int8": {
            "min_cosine": minimum,
            "min_cosine_text": cosines[0],
            "min_cosine_vision": cosines[1],
            "probe": INT8_PROBE,
        },
    }
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


class ExportProbe:
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

    def int8_texts(self) -> dict[str, np.ndarray]:
        """What the int8 text tower is checked on: the check texts and a fixed set of search
        queries, short and long, as people type them (the query encoder's real input)."""
        return self._encoder.text_inputs(
            [
                "a red car parked in front of an old stone house on a rainy evening",
                "dog",
                "ein Hund im Schnee",
                *INT8_PROBE_QUERIES,
            ]
        )

    def trace_images(self) -> dict[str, np.ndarray]:
        return self._encoder.image_inputs([_photo(0, 64, 48), _photo(1, 48, 64)])

    def check_images(self) -> dict[str, np.ndarray]:
        return self._encoder.image_inputs([_photo(2, 80, 40), _photo(3, 50, 50), _photo(4, 30, 90)])


# Search queries the int8 text tower is checked on (INT8_PROBE names this list: change both).
INT8_PROBE_QUERIES = (
    "two dogs running on the beach",
    "a man riding a bicycle down a city street",
    "children playing soccer in a park",
    "a woman in a red dress holding an umbrella",
    "sunset over the mountains",
    "a plate of food on a wooden table",
    "people waiting at a train station at night",
    "a black and white photo of an old man smiling",
    "cat",
    "une femme qui lit un livre dans un café",
)


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

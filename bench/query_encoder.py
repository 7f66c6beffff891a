"""Query encoder alone: torch vs ONNX Runtime, float32 and int8, on this machine's CPU.

    OMP_NUM_THREADS=1 .venv/bin/python bench/query_encoder.py [--queries 200] [--images 20] \
        [--threads 1] [--source DIR] [--data-dir DIR] [--model-dir DIR] [--cache-dir DIR]

What the web worker pays per search before the database: one text (or one query image)
through the model's processor and tower, normalised. Each variant is loaded through
``encoders.load_encoder``, as the product loads it, and timed one query at a time on distinct
texts (no cache). Printed per variant: load time (the first ONNX load exports and quantises into
``--cache-dir``, default ``<data dir>/onnx-cache``), text p50/p95/mean ms, image p50/mean ms,
and the largest absolute difference and lowest cosine to torch float32 on the same inputs (the
project's int8 rule is cosine >= 0.99).

The model is the full-size ViT-B/32 CLIP architecture with random, seeded weights (no weights
can be downloaded here; speed depends on the architecture, not on the values), or real weights
with ``--source`` (a ``save_pretrained`` directory). No database: the script writes only into
its own ``--data-dir`` (default .data/bench/query_encoder; see bench/_harness.py), which holds
the random model (``--model-dir``) and the ONNX exports.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness
from tests.tiny_models import build_full_size_clip

SCRIPT = "query_encoder"
MODEL_ID = "clip-vit-base-patch32"
VARIANTS = (("torch", "fp32"), ("torch", "int8"), ("onnx", "fp32"), ("onnx", "int8"))
_SUBJECTS = ["a dog", "two children", "an old man", "a red car", "a cat", "a woman in a hat"]
_ACTIONS = ["running", "sitting", "sleeping", "standing", "playing", "waiting"]
_PLACES = ["on the beach", "in a park", "on a city street", "near a lake", "in the snow"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--queries", type=int, default=200, help="distinct texts, one per call")
    parser.add_argument("--images", type=int, default=20, help="query images, one per call")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--source", type=Path, default=None, help="real weights directory")
    _harness.add_arguments(parser, script=SCRIPT, database=False)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="the random model, built there once (default <data dir>/clip-vit-b32-random); a "
        "directory that already holds a model (e.g. another bench's) is only read",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="ONNX exports (default <data dir>/onnx-cache)"
    )
    return parser.parse_args(argv)


def model_and_cache_dirs(args: argparse.Namespace, data_dir: Path) -> tuple[Path, Path]:
    """Where the random model is (or is built) and where exports go: in the data dir, or in
    directories given that are a model to read or a bench's own (claimed as the data dir is)."""
    model_dir = args.model_dir or data_dir / "clip-vit-b32-random"
    if args.model_dir and not (args.model_dir / "config.json").exists():
        model_dir = _harness.data_dir_claim(args.model_dir, script=SCRIPT)
    cache_dir = args.cache_dir or data_dir / "onnx-cache"
    if args.cache_dir:
        cache_dir = _harness.data_dir_claim(args.cache_dir, script=SCRIPT)
    return model_dir, cache_dir


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with _harness.own_data_dir(args.data_dir, script=SCRIPT) as data_dir:
        run(args, *model_and_cache_dirs(args, data_dir))


def run(args: argparse.Namespace, model_dir: Path, cache_dir: Path) -> None:
    import numpy as np
    import torch

    from encoders import clear_encoder_cache, load_encoder

    torch.set_num_threads(args.threads)
    source = args.source or build_full_size_clip(model_dir)
    texts = distinct_texts(args.queries)
    images = query_images(args.images)
    import onnxruntime

    print(
        f"model={MODEL_ID} weights={'random' if args.source is None else source} "
        f"threads={args.threads} queries={len(texts)} images={len(images)} "
        f"torch={torch.__version__} onnxruntime={onnxruntime.__version__} "
        f"cpus={os.cpu_count()} loadavg_1min={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    header = (
        f"{'backend':<7} {'dtype':<5} {'load s':>6} {'text p50':>8} {'p95':>6} {'mean':>6} "
        f"{'image p50':>9} {'mean':>6} {'max abs diff':>12} {'min cosine':>10}"
    )
    print(header)
    print("-" * len(header))
    reference: tuple[np.ndarray, np.ndarray] | None = None
    for backend, dtype in VARIANTS:
        clear_encoder_cache()  # each variant loads as a fresh process would
        start = time.perf_counter()
        encoder = load_encoder(
            MODEL_ID,
            source=str(source),
            device="cpu",
            dtype=dtype,
            backend=backend,
            onnx_threads=args.threads,
            onnx_cache_dir=cache_dir,
        )
        load_seconds = time.perf_counter() - start
        if encoder.backend != backend:
            raise SystemExit(f"{backend} {dtype} loaded as {encoder.backend}: see the warning")
        encoder.embed_texts(["warm-up"])
        encoder.embed_images(images[:1])
        text_ms, text_vectors = per_call(encoder.embed_texts, texts)
        image_ms, image_vectors = per_call(encoder.embed_images, images)
        vectors = (text_vectors, image_vectors)
        if reference is None:
            reference = vectors
        pairs = list(zip(vectors, reference, strict=True))
        difference = max(float(np.abs(got - ref).max()) for got, ref in pairs)
        cosine = min(float(np.sum(got * ref, axis=1).min()) for got, ref in pairs)
        print(
            f"{backend:<7} {dtype:<5} {load_seconds:>6.1f} {percentile(text_ms, 50):>8.1f} "
            f"{percentile(text_ms, 95):>6.1f} {np.mean(text_ms):>6.1f} "
            f"{percentile(image_ms, 50):>9.1f} {np.mean(image_ms):>6.1f} "
            f"{difference:>12.2e} {cosine:>10.5f}",
            flush=True,
        )
    print(f"loadavg_1min at the end: {os.getloadavg()[0]:.2f}")


def per_call(embed: Callable[[Sequence[Any]], Any], inputs: Sequence[Any]) -> tuple[list, Any]:
    """Milliseconds of each one-input call, and the stacked embeddings."""
    import numpy as np

    times, rows = [], []
    for item in inputs:
        start = time.perf_counter()
        rows.append(embed([item])[0])
        times.append((time.perf_counter() - start) * 1000)
    return times, np.stack(rows)


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def distinct_texts(count: int) -> list[str]:
    combos = itertools.product(_SUBJECTS, _ACTIONS, _PLACES)
    texts = [f"{subject} {action} {place}" for subject, action, place in combos]
    while len(texts) < count:
        texts += [f"{text} at night" for text in texts]
    return texts[:count]


def query_images(count: int) -> list[Any]:
    # Photo-sized (500x375) gradients with noise: preprocessing (resize, crop) costs what a
    # real query image costs.
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    images = []
    for _ in range(count):
        weights = rng.uniform(0.2, 1.0, 3)
        base = np.stack([x / 500 * weights[0], y / 375 * weights[1], (x + y) / 875], -1) * 220
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])

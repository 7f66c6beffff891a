"""How long `manage.py evaluate` takes on a synthetic Flickr30k 1K test, exact and --ann.

    OMP_NUM_THREADS=1 .venv/bin/python bench/evaluate_speed.py \
        [--images 1000] [--extra-images 0] [--captions 5] [--batch-sizes 250,500,1000] \
        [--data-dir DIR] [--database-url URL]

Builds ``--images`` test-split Flickr30k rows with ``--captions`` captions each (plus
``--extra-images`` train-split rows, which make the HNSW index and ``--gallery all`` bigger)
and random unit image vectors for clip-vit-base-patch32 (512-d). Each caption's query vector is
its image's vector plus noise, so recalls are neither 0 nor 100 and HNSW has real work. Then:

(a) text->image ranks in PostgreSQL, exact (``text_to_image_ranks_exact``) at several batch
    sizes, checked against numpy;
(b) the same through the HNSW index (``text_to_image_ranks_ann``, the site's query);
(c) the numpy ranks alone, for scale;
(d) the whole ``evaluate()`` with a tiny CLIP text encoder (random weights, so the text part
    is cheap and its recalls meaningless): what the command costs beyond a real encoder.

The database is the bench's own embedded PostgreSQL in ``--data-dir`` (default
.data/bench/evaluate_speed), never the site's (see bench/_harness.py), stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "evaluate_speed"
MODEL_ID = "clip-vit-base-patch32"
DIM = 512


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--extra-images", type=int, default=0)
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument(
        "--noise", type=float, default=7.0, help="query noise norm, per unit image vector"
    )
    parser.add_argument("--gallery", choices=["split", "all"], default="split")
    parser.add_argument("--batch-sizes", default="500")
    parser.add_argument("--skip-full", action="store_true", help="skip (d)")
    _harness.add_arguments(parser, script=SCRIPT)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["TQDM_DISABLE"] = "1"  # the progress bars of the code measured
    with _harness.own_django(
        script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url
    ) as data_dir:
        run(args, data_dir)


def timed(label: str, fn):
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    print(f"{label:58} {seconds:8.2f} s", flush=True)
    return value, seconds


def run(args: argparse.Namespace, data_dir: Path) -> None:
    import numpy as np
    from django.db import connection

    from gallery.models import Image
    from search.evaluation import (
        evaluate,
        evaluation_set_load,
        rank_summary,
        ranks_numpy,
        text_to_image_ranks_ann,
        text_to_image_ranks_exact,
    )
    from workers.services import embeddings_store

    total = args.images + args.extra_images
    # Row i is image id i + 1; the first --images rows are the test split.
    ids = _harness.fake_images_replace(
        total,
        splits=[Image.Split.TEST if n < args.images else Image.Split.TRAIN for n in range(total)],
    )
    _harness.fake_captions_create(ids, per_image=args.captions)
    vectors = _harness.unit_vectors(total)
    rng = np.random.default_rng(1)
    timed(
        f"store {total} embeddings (HNSW maintained)",
        lambda: embeddings_store(model_id=MODEL_ID, image_ids=ids, vectors=vectors),
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE search_imageembedding")

    data = evaluation_set_load(split="test", gallery=args.gallery)
    targets = data.caption_image_ids
    clean = vectors[[int(t) - 1 for t in targets]]
    queries = clean + args.noise * rng.normal(size=clean.shape).astype(np.float32) / np.sqrt(DIM)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = data.gallery_image_ids
    print(f"{len(queries)} queries x {len(gallery)} images; {total} images in the HNSW index")

    reference, _ = timed(
        "(c) numpy ranks",
        lambda: ranks_numpy(
            queries=[queries],
            candidates=[vectors[[int(i) - 1 for i in gallery]]],
            query_keys=targets,
            candidate_keys=gallery,
        ),
    )
    for batch_size in args.batch_sizes:
        exact, _ = timed(
            f"(a) pgvector exact, {batch_size} queries per statement",
            lambda b=batch_size: text_to_image_ranks_exact(
                model_id=MODEL_ID,
                queries=queries,
                target_image_ids=targets,
                gallery_image_ids=gallery,
                batch_size=b,
            ),
        )
        print(f"    equal to numpy for {(exact == reference).sum()} of {len(exact)} queries")
    summary = rank_summary(reference)
    print(f"    exact: R@1 {summary.r1:.2f} R@5 {summary.r5:.2f} R@10 {summary.r10:.2f}")
    ann, _ = timed(
        "(b) pgvector HNSW top 10, one statement per query",
        lambda: text_to_image_ranks_ann(
            model_id=MODEL_ID,
            queries=queries,
            target_image_ids=targets,
            split="test" if args.gallery == "split" else None,
            k=10,
        ),
    )
    summary = rank_summary(ann.ranks)
    print(
        f"    hnsw:  R@1 {summary.r1:.2f} R@5 {summary.r5:.2f} R@10 {summary.r10:.2f}"
        f"  (plan uses the index: {ann.plan_uses_index})"
    )
    if args.skip_full:
        return

    from django.conf import settings

    from tests.tiny_models import build_tiny_clip

    settings.EMBEDDING_MODEL_SOURCES = {MODEL_ID: str(build_tiny_clip(data_dir / "tiny-clip"))}
    settings.EMBEDDING_DEVICE = "cpu"
    for ann_mode in (False, True):
        timed(
            f"(d) evaluate(), tiny CLIP texts, {'--ann' if ann_mode else 'exact'}",
            lambda a=ann_mode: evaluate(
                model_ids=[MODEL_ID], split="test", gallery=args.gallery, ann=a
            ),
        )


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])

"""How long `manage.py evaluate` takes on a synthetic Flickr30k 1K test, exact and --ann.

    OMP_NUM_THREADS=1 .venv/bin/python bench/evaluate_speed.py \
        [--images 1000] [--extra-images 0] [--captions 5] [--batch-sizes 250,500,1000]

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

The database is a separate embedded PostgreSQL in ``--data-dir`` (default
/tmp/bench-evaluate-data), stopped when the script ends.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-evaluate-data"))
    args = parser.parse_args(argv)
    args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = args.data_dir.resolve()
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.dev"
    os.environ["DATA_DIR"] = str(data_dir)
    os.environ["DEBUG"] = "0"
    os.environ["TQDM_DISABLE"] = "1"  # the progress bars of the code measured
    for name in ("DATABASE_URL", "MEDIA_ROOT"):
        os.environ.pop(name, None)
    sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()
    from config import embedded

    try:
        run(args, data_dir)
    finally:
        from django.db import connections

        connections.close_all()
        embedded.postgres_stop(data_dir)


def timed(label: str, fn):
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    print(f"{label:58} {seconds:8.2f} s", flush=True)
    return value, seconds


def run(args: argparse.Namespace, data_dir: Path) -> None:
    import numpy as np
    from django.core.management import call_command
    from django.db import connection

    from gallery.models import Caption, Image
    from search.evaluation import (
        evaluate,
        evaluation_set_load,
        rank_summary,
        ranks_numpy,
        text_to_image_ranks_ann,
        text_to_image_ranks_exact,
    )
    from search.models import ImageEmbedding
    from search.services import embeddings_store

    call_command("migrate", verbosity=0)
    # A clean slate each run: this database belongs to the benchmark alone.
    ImageEmbedding.objects.all().delete()
    Image.objects.all().delete()

    rng = np.random.default_rng(0)
    total = args.images + args.extra_images
    rows = [
        Image(
            source=Image.Source.FLICKR30K,
            owner=None,
            visibility=Image.Visibility.PUBLIC,
            file=f"bench/{n}.jpg",
            sha256=f"{n:064x}",
            original_filename=f"{n}.jpg",
            flickr30k_id=n,
            split=Image.Split.TEST if n < args.images else Image.Split.TRAIN,
        )
        for n in range(total)
    ]
    Image.objects.bulk_create(rows, batch_size=2000)
    Caption.objects.bulk_create(
        [
            Caption(image=image, text=f"caption {c} of image {image.flickr30k_id}", position=c)
            for image in rows
            for c in range(args.captions)
        ],
        batch_size=5000,
    )
    vectors = rng.normal(size=(total, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    timed(
        f"store {total} embeddings (HNSW maintained)",
        lambda: embeddings_store(
            model_id=MODEL_ID, image_ids=[r.pk for r in rows], vectors=vectors
        ),
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE search_imageembedding")

    data = evaluation_set_load(split="test", gallery=args.gallery)
    targets = data.caption_image_ids
    row_of = {r.pk: i for i, r in enumerate(rows)}
    clean = vectors[[row_of[int(t)] for t in targets]]
    queries = clean + args.noise * rng.normal(size=clean.shape).astype(np.float32) / np.sqrt(DIM)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = data.gallery_image_ids
    print(f"{len(queries)} queries x {len(gallery)} images; {total} images in the HNSW index")

    reference, _ = timed(
        "(c) numpy ranks",
        lambda: ranks_numpy(
            queries=[queries],
            candidates=[vectors[[row_of[int(i)] for i in gallery]]],
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
    main()

"""How long `import_embeddings` takes for a Flickr30k-sized set (31,783 x 512-d), run by hand.

    OMP_NUM_THREADS=1 .venv/bin/python bench/import_speed.py [--rows 31783] [--keep-index] \
        [--data-dir DIR] [--database-url URL]

Prints the seconds ``embeddings_import`` takes to load ``--rows`` unit vectors into a model with
no embeddings (HNSW index dropped and rebuilt once) and, with --keep-index, the same load
inserting into the live HNSW index row by row (``rebuild_index_min_rows`` above the row count).

Runs on its own embedded PostgreSQL in ``--data-dir`` (default .data/bench/import_speed), never
the site's data: see bench/_harness.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _harness

SCRIPT = "import_speed"
MODEL_ID = "clip-vit-base-patch32"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=31_783)
    parser.add_argument("--keep-index", action="store_true", help="also time without rebuild")
    _harness.add_arguments(parser, script=SCRIPT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with _harness.own_django(script=SCRIPT, data_dir=args.data_dir, database_url=args.database_url):
        run(args)


def run(args: argparse.Namespace) -> None:
    from workers.models import EmbeddingJob, ImageEmbedding
    from workers.services import INDEX_REBUILD_MIN_ROWS, embeddings_import

    image_ids = _harness.fake_images_replace(args.rows)
    names = [f"{image_id}.jpg" for image_id in image_ids]
    vectors = _harness.unit_vectors(args.rows)

    modes = [("index dropped, one rebuild", min(INDEX_REBUILD_MIN_ROWS, args.rows))]
    if args.keep_index:
        modes.append(("rows inserted into the live index", args.rows + 1))
    print(f"{'mode':<36} {'rows':>7} {'seconds':>8}")
    for label, threshold in modes:
        ImageEmbedding.objects.filter(model_id=MODEL_ID).delete()
        EmbeddingJob.objects.filter(model_id=MODEL_ID).delete()
        started = time.perf_counter()
        result = embeddings_import(
            model_id=MODEL_ID, vectors=vectors, filenames=names, rebuild_index_min_rows=threshold
        )
        seconds = time.perf_counter() - started
        print(f"{label:<36} {result.stored:>7} {seconds:>8.1f}")


if __name__ == "__main__":
    _harness.main_guarded(main, sys.argv[1:])

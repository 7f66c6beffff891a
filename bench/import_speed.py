"""How long `import_embeddings` takes for a Flickr30k-sized set (31,783 x 512-d), run by hand.

    OMP_NUM_THREADS=1 .venv/bin/python bench/import_speed.py [--rows 31783] [--keep-index]

Uses its own embedded PostgreSQL in /tmp/bench-import-data. Prints the seconds for a load into
a model with no embeddings (index dropped and rebuilt once) and, with --keep-index, the same
load inserting into the live HNSW index row by row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATA_DIR", "/tmp/bench-import-data")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.core.management import call_command  # noqa: E402

from config import embedded  # noqa: E402
from gallery.models import Image  # noqa: E402
from search import services  # noqa: E402
from search.models import EmbeddingJob, ImageEmbedding  # noqa: E402

MODEL = "clip-vit-base-patch32"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=31_783)
    parser.add_argument("--keep-index", action="store_true", help="also time without rebuild")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    names = [f"{1_000_000 + i}.jpg" for i in range(args.rows)]
    if Image.objects.filter(source="flickr30k").count() != args.rows:
        Image.objects.all().delete()
        Image.objects.bulk_create(
            [
                Image(source="flickr30k", visibility="public", file="x.jpg", sha256=f"{i:064x}",
                      original_filename=name, flickr30k_id=1_000_000 + i)
                for i, name in enumerate(names)
            ],
            batch_size=5000,
        )  # fmt: skip
    vectors = np.random.default_rng(0).normal(size=(args.rows, 512)).astype(np.float32)

    modes = [("index dropped, one rebuild", services.INDEX_REBUILD_MIN_ROWS)]
    if args.keep_index:
        modes.append(("rows inserted into the live index", args.rows + 1))
    print(f"{'mode':<36} {'rows':>7} {'seconds':>8}")
    for label, threshold in modes:
        ImageEmbedding.objects.filter(model_id=MODEL).delete()
        EmbeddingJob.objects.filter(model_id=MODEL).delete()
        started = time.perf_counter()
        result = services.embeddings_import(
            model_id=MODEL, vectors=vectors, filenames=names, rebuild_index_min_rows=threshold
        )
        seconds = time.perf_counter() - started
        print(f"{label:<36} {result.stored:>7} {seconds:>8.1f}")
    embedded.postgres_stop(Path(os.environ["DATA_DIR"]))


if __name__ == "__main__":
    main()

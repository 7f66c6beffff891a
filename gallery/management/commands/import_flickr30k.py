"""manage.py import_flickr30k --csv PATH --images DIR [--split train|val|test|all] [--limit N]"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from gallery.flickr30k import (
    SPLITS,
    Flickr30kFormatError,
    flickr30k_annotations_read,
    karpathy_split_difference,
)
from gallery.services.flickr30k import flickr30k_import

# How many skipped files the summary names one by one; the rest are counted.
LISTED = 20


class Command(BaseCommand):
    help = (
        "Import Flickr30k: each image of the annotations (flickr_annotations_30k.csv, or "
        "Karpathy's dataset_flickr30k.json) with its captions and split, copied from the "
        "images folder into the media storage. A rerun adds nothing; missing or corrupt files "
        "are listed and skipped. Then embedding is queued for every enabled model."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--csv",
            required=True,
            type=Path,
            help="flickr_annotations_30k.csv, or Karpathy's dataset_flickr30k.json",
        )
        parser.add_argument("--images", required=True, type=Path, help="folder of the JPEGs")
        parser.add_argument("--split", choices=[*SPLITS, "all"], default="all")
        parser.add_argument("--limit", type=int, default=None, help="only the first N entries")
        parser.add_argument(
            "--threads",
            type=int,
            default=min(8, os.cpu_count() or 1),
            help="threads reading and decode-checking files",
        )
        parser.add_argument(
            "--no-enqueue", action="store_true", help="do not queue embedding afterwards"
        )

    def handle(self, *args: object, **options: Any) -> None:
        annotations: Path = options["csv"]
        images_dir: Path = options["images"]
        limit: int | None = options["limit"]
        if not annotations.is_file():
            raise CommandError(f"no annotations file at {annotations}")
        if not images_dir.is_dir():
            raise CommandError(f"no images folder at {images_dir}")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        try:
            entries = flickr30k_annotations_read(
                path=annotations, split=str(options["split"]), limit=limit
            )
        except Flickr30kFormatError as exc:
            raise CommandError(str(exc)) from exc
        if options["split"] == "all" and limit is None:
            # Papers' 1K-test figures assume Karpathy's split; say so now if this file's differs.
            warning = karpathy_split_difference(Counter(entry.split for entry in entries))
            if warning:
                self.stdout.write(f"{annotations.name}: {warning}")
        with tqdm(total=len(entries), unit="img", desc="flickr30k") as bar:
            result = flickr30k_import(
                entries=entries,
                images_dir=images_dir,
                threads=int(options["threads"]),
                on_progress=bar.update,
                enqueue=not options["no_enqueue"],
            )
        self.stdout.write(
            f"{len(entries)} entries: created {result.created} images "
            f"({result.captions} captions), {result.already_present} already imported, "
            f"{len(result.missing)} missing, {len(result.corrupt)} corrupt"
        )
        for name in result.missing[:LISTED]:
            self.stdout.write(f"  missing: {name}")
        for name, reason in list(result.corrupt.items())[:LISTED]:
            self.stdout.write(f"  corrupt: {name}: {reason}")
        if len(result.missing) > LISTED or len(result.corrupt) > LISTED:
            self.stdout.write(f"  ... (only the first {LISTED} of each kind are listed)")
        for model_id, batches in result.queued.items():
            self.stdout.write(f"queued {batches} embedding batches for {model_id}")

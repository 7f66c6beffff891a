"""manage.py backfill_photo_facts [--redo] [--batch N]: read the taken date, camera and GPS
position from the EXIF of images stored before uploads and imports read them."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gallery.services.images import PhotoFactsBackfillResult, images_photo_facts_backfill


class Command(BaseCommand):
    help = (
        "Fill in when each photo was taken, its camera and GPS position from the EXIF of its "
        "stored file, for images that have none of these yet (--redo: every image). Safe to run "
        "again or to interrupt: it only writes what changed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--redo", action="store_true", help="re-read every image's file")
        parser.add_argument(
            "--batch", type=int, default=200, help="images read per transaction (default 200)"
        )

    def handle(self, *args: object, **options: Any) -> None:
        def progress(so_far: PhotoFactsBackfillResult) -> None:
            if options["verbosity"] > 1:
                self.stdout.write(f"  {so_far.read} read, {so_far.updated} updated")

        result = images_photo_facts_backfill(
            redo=options["redo"], batch_size=max(1, options["batch"]), progress=progress
        )
        missing = f", {result.missing} files missing" if result.missing else ""
        self.stdout.write(
            f"{result.read} images read, {result.updated} updated with what their EXIF says"
            f"{missing}."
        )

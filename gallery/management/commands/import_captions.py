"""manage.py import_captions --lang vi FILE (CSV or JSONL: file name or flickr30k_id, caption)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.flickr30k import LANG_PATTERN, Flickr30kFormatError, caption_rows_read
from gallery.services.flickr30k import captions_import

# How many unknown images the summary names one by one; the rest are counted.
LISTED = 20


class Command(BaseCommand):
    help = (
        "Add captions in another language to imported Flickr30k images, e.g. Vietnamese or "
        "Multi30k's German, French or Czech ones, so `evaluate --lang` can query with them. "
        "FILE is CSV (columns filename or flickr30k_id, and caption; without a header row: "
        'file name, caption) or JSONL ({"filename": "1000092795.jpg", "caption": "..."}, or '
        '"flickr30k_id", the img_id of the annotations). An "image_id" is refused: it could be '
        "a Flickr30k id or this site's image number. Rows whose image is not imported are "
        "listed and skipped; a rerun adds nothing. Relative paths are from where you run the "
        "command."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="captions, .csv or .jsonl")
        parser.add_argument("--lang", required=True, help="language tag: vi, de, fr, cs, ...")

    def handle(self, *args: object, **options: Any) -> None:
        path: Path = options["file"]
        lang = str(options["lang"])
        if not LANG_PATTERN.match(lang):
            raise CommandError(f"--lang must be a language tag such as vi, de or fr, not {lang!r}")
        if not path.is_file():
            raise CommandError(f"no captions file at {path}")
        try:
            rows = caption_rows_read(path=path)
        except (Flickr30kFormatError, UnicodeDecodeError) as exc:
            raise CommandError(str(exc)) from exc
        result = captions_import(rows=rows, lang=lang)
        self.stdout.write(
            f"{len(rows)} rows: added {result.added} {lang} captions, "
            f"{result.already_present} already present, {len(result.unknown)} unknown images"
        )
        for unknown in result.unknown[:LISTED]:
            self.stdout.write(f"  unknown image: {unknown}")
        if len(result.unknown) > LISTED:
            self.stdout.write(f"  ... (only the first {LISTED} are listed)")

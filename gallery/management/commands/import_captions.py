"""manage.py import_captions --lang vi FILE (CSV or JSONL: file name or flickr30k_id, caption)"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import Max

from gallery.flickr30k import LANG_PATTERN, CaptionRow, Flickr30kFormatError, caption_rows_read
from gallery.models import Caption, Image

# How many unknown images the summary names one by one; the rest are counted.
LISTED = 20


@dataclass
class CaptionsImportResult:
    added: int = 0
    already_present: int = 0
    # "where: image" for each row whose image is not an imported Flickr30k image.
    unknown: list[str] = field(default_factory=list)


# The write sits with its only caller: gallery/services.py belongs to another change in flight
# (see the commit message); it moves there as `captions_import` once that lands.
def captions_import(*, rows: Sequence[CaptionRow], lang: str) -> CaptionsImportResult:
    """Add ``rows`` as ``lang`` captions of the data-set images they name.

    Only Flickr30k images are matched (by the file name they were imported from, or by their
    Flickr30k id), never people's uploads. A caption the image already has in ``lang`` is not
    added again (compared in NFC, as rows are read), so a rerun adds nothing; new ones are
    numbered after the image's existing ``lang`` captions.
    """
    result = CaptionsImportResult()
    dataset = Image.objects.filter(source=Image.Source.FLICKR30K)
    ids = {row.flickr30k_id for row in rows if row.flickr30k_id is not None}
    names = {row.filename for row in rows if row.filename}
    by_id = dict(dataset.filter(flickr30k_id__in=ids).values_list("flickr30k_id", "pk"))
    by_name = dict(
        dataset.filter(original_filename__in=names).values_list("original_filename", "pk")
    )

    def image_of(row: CaptionRow) -> int | None:
        if row.flickr30k_id is not None:
            return by_id.get(row.flickr30k_id)
        return by_name.get(row.filename)

    with transaction.atomic():
        resolved = [(row, image_of(row)) for row in rows]
        image_ids = {image_id for _, image_id in resolved if image_id is not None}
        present = {
            (image_id, unicodedata.normalize("NFC", text))
            for image_id, text in Caption.objects.filter(
                image_id__in=image_ids, lang=lang
            ).values_list("image_id", "text")
        }
        next_position = dict(
            Caption.objects.filter(image_id__in=image_ids, lang=lang)
            .order_by()
            .values("image_id")
            .annotate(last=Max("position"))
            .values_list("image_id", "last")
        )
        new = []
        for row, image_id in resolved:
            if image_id is None:
                result.unknown.append(f"{row.where}: {row.image}")
            elif (image_id, row.text) in present:
                result.already_present += 1
            else:
                present.add((image_id, row.text))
                position = next_position.get(image_id, -1) + 1
                next_position[image_id] = position
                new.append(Caption(image_id=image_id, lang=lang, text=row.text, position=position))
        Caption.objects.bulk_create(new, batch_size=2000)
    result.added = len(new)
    return result


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

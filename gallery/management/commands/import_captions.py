"""manage.py import_captions --lang vi FILE (CSV or JSONL: image id or file name, caption)"""

from __future__ import annotations

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

    Only Flickr30k images are matched (by id, or by the file name they were imported from),
    never people's uploads. A caption the image already has in ``lang`` is not added again, so
    a rerun adds nothing; new ones are numbered after the image's existing ``lang`` captions.
    """
    result = CaptionsImportResult()
    dataset = Image.objects.filter(source=Image.Source.FLICKR30K)
    ids = {row.image for row in rows if isinstance(row.image, int)}
    names = {row.image for row in rows if isinstance(row.image, str)}
    known_ids = set(dataset.filter(pk__in=ids).values_list("pk", flat=True))
    by_name = dict(
        dataset.filter(original_filename__in=names).values_list("original_filename", "pk")
    )

    def image_of(row: CaptionRow) -> int | None:
        if isinstance(row.image, int):
            return row.image if row.image in known_ids else None
        return by_name.get(row.image)

    with transaction.atomic():
        resolved = [(row, image_of(row)) for row in rows]
        image_ids = {image_id for _, image_id in resolved if image_id is not None}
        present = set(
            Caption.objects.filter(image_id__in=image_ids, lang=lang).values_list(
                "image_id", "text"
            )
        )
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
        "FILE is CSV (image id or file name, caption; a header row is optional) or JSONL "
        '({"filename": "1000092795.jpg", "caption": "..."} or "image_id"). Rows whose image is '
        "not imported are listed and skipped; a rerun adds nothing."
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

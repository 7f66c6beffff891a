"""Reading the Flickr30k annotations: pure parsing, no database.

Two formats give the same entries (one image, its Flickr30k id, split and 5 captions):

- ``flickr_annotations_30k.csv``, the file of the ``nlphuji/flickr30k`` data set the original
  project used: columns ``raw`` (a JSON list of the captions), ``sentids``, ``split``,
  ``filename`` and ``img_id``;
- Karpathy's ``dataset_flickr30k.json``: ``{"images": [{"filename", "imgid", "split",
  "sentences": [{"raw": ...}, ...]}, ...]}``.

Both carry Karpathy's train/val/test split, whose 1,000 test images (5,000 captions) are the
zero-shot retrieval protocol of the CLIP and ALIGN papers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from encoders import ImageDecodeError, open_image
from gallery.exif import NO_FACTS, PhotoFacts, photo_facts_read

SPLITS = ("train", "val", "test")
# Karpathy's split, the one the CLIP and ALIGN papers' 1K test figures use.
KARPATHY_SPLIT_SIZES = {"train": 29_000, "val": 1_014, "test": 1_000}
# Karpathy's COCO file calls part of the validation images "restval" and trains on them; the
# Flickr30k file has none, but accept the name rather than fail on a variant of the file.
_SPLIT_ALIASES = {"restval": "train", "validation": "val"}
CSV_COLUMNS = ("raw", "split", "filename", "img_id")


class Flickr30kFormatError(ValueError):
    """An annotations file that is not in either supported format; says where and why."""


@dataclass(frozen=True)
class Flickr30kEntry:
    flickr30k_id: int
    filename: str
    split: str
    captions: tuple[str, ...]


def flickr30k_annotations_read(
    *, path: str | Path, split: str = "all", limit: int | None = None
) -> list[Flickr30kEntry]:
    """Entries of ``split`` ("train", "val", "test" or "all"), in file order, at most ``limit``.

    The format follows the file: ``.json`` is Karpathy's, anything else the CSV. An id that
    appears twice keeps its first entry. A file name under two different ids is refused
    (``Flickr30kFormatError``): one file must never become two images, and which id and
    captions belong to it cannot be told.
    """
    if split != "all" and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or 'all', not {split!r}")
    path = Path(path)
    reader = _karpathy_entries if path.suffix.lower() == ".json" else _csv_entries
    entries: list[Flickr30kEntry] = []
    seen: set[int] = set()
    id_of_file: dict[str, int] = {}
    for entry in reader(path):
        first_id = id_of_file.setdefault(entry.filename, entry.flickr30k_id)
        if first_id != entry.flickr30k_id:
            raise Flickr30kFormatError(
                f"{path.name}: images {first_id} and {entry.flickr30k_id} both name the file "
                f"{entry.filename}; one file cannot be two images (fix the annotations)"
            )
        if entry.flickr30k_id in seen or split not in ("all", entry.split):
            continue
        seen.add(entry.flickr30k_id)
        entries.append(entry)
        if limit is not None and len(entries) >= limit:
            break
    return entries


def _csv_entries(path: Path) -> Iterator[Flickr30kEntry]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise Flickr30kFormatError(
                f"{path.name}: not a Flickr30k annotations CSV (no column "
                f"{', '.join(missing)}; expected {', '.join(CSV_COLUMNS)})"
            )
        for row in reader:
            where = f"{path.name} line {reader.line_num}"
            try:
                captions = json.loads(row["raw"])
            except (json.JSONDecodeError, TypeError) as exc:
                raise Flickr30kFormatError(f"{where}: 'raw' is not a JSON list: {exc}") from exc
            yield _entry(where, row["img_id"], row["filename"], row["split"], captions)


def _karpathy_entries(path: Path) -> Iterator[Flickr30kEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise Flickr30kFormatError(
            f"{path.name}: not Karpathy's dataset_flickr30k.json (an object with 'images'): {exc}"
        ) from exc
    for index, image in enumerate(images):
        where = f"{path.name} images[{index}]"
        try:
            captions = [sentence["raw"] for sentence in image["sentences"]]
            yield _entry(where, image["imgid"], image["filename"], image["split"], captions)
        except (KeyError, TypeError) as exc:
            raise Flickr30kFormatError(f"{where}: missing {exc}") from exc


def _entry(
    where: str, img_id: object, filename: object, split: object, captions: object
) -> Flickr30kEntry:
    try:
        flickr30k_id = int(str(img_id))
    except ValueError:
        raise Flickr30kFormatError(f"{where}: img_id {img_id!r} is not a number") from None
    split = str(split).strip().lower()
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise Flickr30kFormatError(f"{where}: unknown split {split!r}")
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise Flickr30kFormatError(f"{where}: captions must be a list of strings")
    # Kept verbatim apart from surrounding whitespace and Unicode composition (NFC, as every
    # caption is stored): the tokenizer does any other normalising, as in the papers'
    # evaluations.
    cleaned = tuple(text for text in map(_caption_text, captions) if text)
    if not cleaned:
        raise Flickr30kFormatError(f"{where}: no captions")
    name = Path(str(filename).strip()).name
    if not name:
        raise Flickr30kFormatError(f"{where}: empty filename")
    return Flickr30kEntry(flickr30k_id=flickr30k_id, filename=name, split=split, captions=cleaned)


@dataclass(frozen=True)
class Flickr30kFile:
    """One entry's image file, read and decode-checked; ``problem`` is "", "missing" or
    "corrupt" (then ``reason`` says why and there is no content)."""

    entry: Flickr30kEntry
    content: bytes = b""
    sha256: str = ""
    width: int = 0
    height: int = 0
    problem: str = ""
    reason: str = ""
    # Set by the importer once the bytes are in the media storage (and dropped from memory).
    stored_as: str = ""
    facts: PhotoFacts = NO_FACTS  # what its EXIF says (Flickr kept it in some photos)


def flickr30k_file_check(
    *, entry: Flickr30kEntry, images_dir: str | Path, max_pixels: int | None
) -> Flickr30kFile:
    """Read ``entry``'s file from ``images_dir`` and decode it completely.

    Decoding every byte is what finds truncated or corrupt files now, rather than in the
    embedding worker; PIL releases the GIL while decoding, so callers run this in threads.
    """
    path = Path(images_dir) / entry.filename
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return Flickr30kFile(entry, problem="missing", reason="no such file")
    except OSError as exc:
        return Flickr30kFile(entry, problem="corrupt", reason=f"unreadable: {exc.strerror or exc}")
    try:
        decoded = open_image(io.BytesIO(content), max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return Flickr30kFile(entry, problem="corrupt", reason=str(exc))
    return Flickr30kFile(
        entry,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        width=decoded.width,
        height=decoded.height,
        facts=photo_facts_read(io.BytesIO(content)),
    )


def karpathy_split_difference(counts: dict[str, int]) -> str | None:
    """A warning naming how ``counts`` (images per split) differ from Karpathy's, else None."""
    if all(counts.get(split, 0) == n for split, n in KARPATHY_SPLIT_SIZES.items()):
        return None
    ours = " / ".join(f"{counts.get(split, 0):,} {split}" for split in KARPATHY_SPLIT_SIZES)
    karpathy = " / ".join(f"{n:,}" for n in KARPATHY_SPLIT_SIZES.values())
    return (
        f"WARNING: the splits hold {ours} images, not Karpathy's {karpathy}: figures on this "
        f"test split are not the papers' 1K test"
    )


# --- Translated captions (manage.py import_captions) -------------------------------------------

LANG_PATTERN = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
# How a captions file may name an image: by the file name it was imported from, or by its
# Flickr30k id (the annotations' img_id). A bare "image_id" could be either that id or this
# site's own image number, which silently matched another image; it is refused.
_FILENAME_FIELDS = ("filename", "file_name", "image")
_FLICKR30K_ID_FIELDS = ("flickr30k_id", "img_id")
_AMBIGUOUS_FIELDS = ("image_id",)
_TEXT_FIELDS = ("caption", "text")
KEYS_HELP = (
    "name each image by its file name (column 'filename', e.g. 1000092795.jpg) or by its "
    "Flickr30k id (column 'flickr30k_id', the annotations' img_id)"
)


@dataclass(frozen=True)
class CaptionRow:
    """One caption of a captions file and the data-set image it belongs to: named by the file
    name it was imported from, or by its Flickr30k id (exactly one of the two is set)."""

    text: str
    where: str
    filename: str = ""
    flickr30k_id: int | None = None

    @property
    def image(self) -> str:
        """The image as the file named it, for messages."""
        return self.filename or f"flickr30k_id {self.flickr30k_id}"


def caption_rows_read(*, path: str | Path) -> list[CaptionRow]:
    """The rows of a captions file, in file order; texts in Unicode NFC.

    ``.jsonl``: one object per line with the image (``filename``, ``file_name`` or ``image``;
    or ``flickr30k_id`` / ``img_id``) and ``caption`` (or ``text``). Anything else is CSV: a
    header row naming the columns the same way, or no header and two columns, file name then
    caption. File names are compared without any folder part. A whole number where a file
    name belongs, or an ``image_id`` column, is refused (``Flickr30kFormatError``): it could be
    a Flickr30k id or this site's image number.
    """
    path = Path(path)
    reader = _caption_rows_jsonl if path.suffix.lower() == ".jsonl" else _caption_rows_csv
    return [row for row in reader(path) if row.text]


def _caption_text(value: str) -> str:
    # NFC once, here: the same caption typed in composed and decomposed form is one caption
    # (a rerun finds it present) and one text for the tokenizer.
    return unicodedata.normalize("NFC", value).strip()


def _key_field(where: str, fields: Iterable[str]) -> str:
    """Which of ``fields`` names the image: a file name column, else a Flickr30k id column."""
    present = {str(f).strip().lower(): str(f) for f in fields}
    for candidates in (_FILENAME_FIELDS, _FLICKR30K_ID_FIELDS):
        for name in candidates:
            if name in present:
                return present[name]
    ambiguous = [present[f] for f in _AMBIGUOUS_FIELDS if f in present]
    if ambiguous:
        raise Flickr30kFormatError(
            f"{where}: {ambiguous[0]!r} is ambiguous (a Flickr30k id, or this site's image "
            f"number?); {KEYS_HELP}"
        )
    raise Flickr30kFormatError(f"{where}: no image to match; {KEYS_HELP}")


def _caption_row(where: str, field: str, value: object, text: str) -> CaptionRow:
    raw = value if isinstance(value, int) and not isinstance(value, bool) else None
    string = "" if value is None else str(value).strip()
    if field.strip().lower() in _FLICKR30K_ID_FIELDS:
        if raw is None and not (string.isascii() and string.isdigit()):
            raise Flickr30kFormatError(f"{where}: {field} {string!r} is not a whole number")
        return CaptionRow(_caption_text(text), where, flickr30k_id=int(string))
    if raw is not None or (string.isascii() and string.isdigit()):
        raise Flickr30kFormatError(
            f"{where}: {string!r} is a number where a file name belongs (a Flickr30k id, or "
            f"this site's image number?); {KEYS_HELP}"
        )
    name = string.replace("\\", "/").rsplit("/", 1)[-1]
    if not name:
        raise Flickr30kFormatError(f"{where}: no file name")
    return CaptionRow(_caption_text(text), where, filename=name)


def _caption_rows_csv(path: Path) -> Iterator[CaptionRow]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header: list[str] | None = None
        key = "filename"  # without a header: file name, caption
        for line, cells in enumerate(csv.reader(handle), start=1):
            if not cells or not any(c.strip() for c in cells):
                continue
            where = f"{path.name} line {line}"
            if line == 1 and any(c.strip().lower() in _TEXT_FIELDS for c in cells):
                header = [c.strip().lower() for c in cells]
                key = _key_field(where, header)
                continue
            if header is None:
                if len(cells) != 2:
                    raise Flickr30kFormatError(
                        f"{where}: expected 2 columns (file name, caption), got {len(cells)}"
                    )
                yield _caption_row(where, key, cells[0], cells[1])
                continue
            if len(cells) != len(header):
                raise Flickr30kFormatError(
                    f"{where}: expected {len(header)} columns as in the header, got {len(cells)}"
                )
            record = dict(zip(header, cells, strict=True))
            text = next(record[f] for f in _TEXT_FIELDS if f in record)
            yield _caption_row(where, key, record[key], text)


def _caption_rows_jsonl(path: Path) -> Iterator[CaptionRow]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path.name} line {line}"
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise Flickr30kFormatError(f"{where}: not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise Flickr30kFormatError(f"{where}: expected a JSON object")
            text = next((record[f] for f in _TEXT_FIELDS if f in record), None)
            if not isinstance(text, str):
                raise Flickr30kFormatError(f"{where}: needs a caption string ('caption')")
            key = _key_field(where, record)
            yield _caption_row(where, key, record[key], text)

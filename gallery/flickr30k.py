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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from encoders import ImageDecodeError, open_image

SPLITS = ("train", "val", "test")
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
    appears twice keeps its first entry.
    """
    if split != "all" and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or 'all', not {split!r}")
    path = Path(path)
    reader = _karpathy_entries if path.suffix.lower() == ".json" else _csv_entries
    entries: list[Flickr30kEntry] = []
    seen: set[int] = set()
    for entry in reader(path):
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
    # Kept verbatim apart from surrounding whitespace: the tokenizer does any normalising, as
    # it did in the papers' evaluations.
    cleaned = tuple(c.strip() for c in captions if c.strip())
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
    )

"""Writes for the data set: importing Flickr30k's images with their captions and split, and
captions in other languages for them (the files are read by ``gallery.flickr30k``)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Max

from gallery.flickr30k import CaptionRow, Flickr30kEntry, Flickr30kFile, flickr30k_file_check
from gallery.models import Caption, Image, image_upload_path
from gallery.signals import images_added
from gallery.storage import image_storage


@dataclass
class Flickr30kImportResult:
    """What an import did: images and captions created, entries already present, and the
    files skipped (``missing``: names; ``corrupt``: name -> reason)."""

    created: int = 0
    captions: int = 0
    already_present: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)
    # Embedding batches queued per enabled model (jobs stay pending if the broker is down).
    queued: dict[str, int] = field(default_factory=dict)


def flickr30k_import(
    *,
    entries: Sequence[Flickr30kEntry],
    images_dir: str | Path,
    threads: int = 4,
    batch_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
    enqueue: bool = True,
) -> Flickr30kImportResult:
    """Create the public, ownerless images of ``entries`` with their captions and split.

    Each file is read from ``images_dir``, decoded completely (in ``threads`` threads) and
    copied into the media storage under its content-addressed name, so the site serves it like
    any other image. Entries whose Flickr30k id or file name is already imported are skipped,
    so a rerun adds nothing; a missing or corrupt file is listed in the result and skipped.
    Rows go in with bulk inserts, one transaction per ``batch_size`` entries, so an interrupted
    import keeps what it finished. Then embedding is queued for every enabled model.
    ``on_progress`` is told how many entries each step dealt with.
    """
    result = Flickr30kImportResult()
    progress = on_progress or (lambda n: None)
    todo = _flickr30k_not_imported(entries)
    result.already_present = len(entries) - len(todo)
    progress(result.already_present)
    with ThreadPoolExecutor(max(threads, 1), "flickr30k") as pool:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            files = list(pool.map(lambda entry: _flickr30k_file_store(entry, images_dir), batch))
            for checked in files:
                if checked.problem == "missing":
                    result.missing.append(checked.entry.filename)
                elif checked.problem:
                    result.corrupt[checked.entry.filename] = checked.reason
            good = [f for f in files if not f.problem]
            created, captions = _flickr30k_rows_create(good)
            result.created += created
            result.captions += captions
            result.already_present += len(good) - created
            progress(len(batch))
    if enqueue:
        # Queues on commit; with the broker down it logs and leaves the jobs pending for the
        # periodic sweep, so the import itself never fails on it.
        for _receiver, queued in images_added.send(sender=Image, image_ids=None):
            if isinstance(queued, dict):
                result.queued.update(queued)
    return result


def _flickr30k_not_imported(entries: Sequence[Flickr30kEntry]) -> list[Flickr30kEntry]:
    present = Image.objects.filter(source=Image.Source.FLICKR30K).values_list(
        "flickr30k_id", "original_filename"
    )
    ids, names = set(), set()
    for flickr30k_id, name in present:
        ids.add(flickr30k_id)
        names.add(name)
    # By file name too: the CSV and Karpathy's JSON number images the same way, but a file
    # must never become two images if some variant of the annotations does not. Within
    # ``entries`` as well (the reader refuses such a file; other callers may not): the first
    # entry of an id or a file name is kept.
    todo = []
    for entry in entries:
        if entry.flickr30k_id in ids or entry.filename in names:
            continue
        ids.add(entry.flickr30k_id)
        names.add(entry.filename)
        todo.append(entry)
    return todo


def _flickr30k_file_store(entry: Flickr30kEntry, images_dir: str | Path) -> Flickr30kFile:
    checked = flickr30k_file_check(
        entry=entry, images_dir=images_dir, max_pixels=settings.UPLOAD_MAX_PIXELS
    )
    if checked.problem:
        return checked
    name = image_upload_path(Image(sha256=checked.sha256), entry.filename)
    # Content-addressed: a file already there (an interrupted run, a duplicate photo) holds
    # exactly these bytes, so it is reused rather than stored again under another name.
    storage = image_storage()
    if not storage.exists(name):
        stored = storage.save(name, ContentFile(checked.content))
        if stored != name:  # written by a concurrent run between exists() and save()
            storage.delete(stored)
    return replace(checked, content=b"", stored_as=name)


def _flickr30k_rows_create(files: Sequence[Flickr30kFile]) -> tuple[int, int]:
    """Insert images and captions for checked files; returns (images, captions) created."""
    while files:
        images = [
            Image(
                source=Image.Source.FLICKR30K,
                owner=None,
                visibility=Image.Visibility.PUBLIC,
                file=checked.stored_as,
                width=checked.width,
                height=checked.height,
                sha256=checked.sha256,
                original_filename=checked.entry.filename[:255],
                flickr30k_id=checked.entry.flickr30k_id,
                split=checked.entry.split,
                **asdict(checked.facts),
            )
            for checked in files
        ]
        try:
            with transaction.atomic():
                Image.objects.bulk_create(images, batch_size=1000)
                captions = [
                    Caption(image=image, text=text, position=position)
                    for image, checked in zip(images, files, strict=True)
                    for position, text in enumerate(checked.entry.captions)
                ]
                Caption.objects.bulk_create(captions, batch_size=2000)
        except IntegrityError:
            # Another import stored some of these meanwhile: drop those and insert the rest.
            remaining = {e.flickr30k_id for e in _flickr30k_not_imported([f.entry for f in files])}
            if len(remaining) == len(files):
                raise
            files = [f for f in files if f.entry.flickr30k_id in remaining]
            continue
        return len(images), len(captions)
    return 0, 0


@dataclass
class CaptionsImportResult:
    added: int = 0
    already_present: int = 0
    # "where: image" for each row whose image is not an imported Flickr30k image.
    unknown: list[str] = field(default_factory=list)


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

"""Writes for images: uploads, thumbnails, the owner's edits and deletes, and staff actions over
many images (delete, visibility; re-embedding is the index's, in workers.services)."""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import connection, transaction
from django.db.models import QuerySet, Sum
from django.template.defaultfilters import filesizeformat

from encoders import open_image
from gallery.decoding import image_file_decode, image_file_size_check
from gallery.exif import PhotoFacts, photo_facts_read
from gallery.models import Image
from gallery.selectors import image_get_owned
from gallery.services._checks import selection_ids, text_bounded, visibility_check
from gallery.services.places import PLACE_FIELDS, image_place_fill
from gallery.signals import images_added
from gallery.storage import (
    StorageUnreachable,
    storage_error_is_unreachable,
    storage_unreachable_message,
    stored_file_delete,
    stored_file_open,
    thumbnail_storage,
)
from kernel.errors import NotFound, TooLarge

# 2048: the image page's picture of a file a browser cannot show as it is (HEIC, TIFF).
THUMBNAIL_SIZES = (128, 256, 512, 2048)
DISPLAY_SIZE = 2048


class QuotaExceeded(TooLarge):
    """An upload that would take its owner past UPLOAD_QUOTA_BYTES."""


def _thumbnail_name(*, sha256: str, size: int) -> str:
    """The thumbnail storage's name for the ``size`` px thumbnail of the image file with
    ``sha256``: named by content, so images with the same bytes share it."""
    return f"thumbs/{size}/{sha256}.jpg"


def image_thumbnail_name(*, image: Image, size: int) -> str:
    """The name, in the thumbnail storage, of a JPEG thumbnail no larger than ``size`` px,
    made once and kept. Raises ``StorageUnreachable`` when the storage is away."""
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"thumbnail size must be one of {THUMBNAIL_SIZES}")
    name = _thumbnail_name(sha256=image.sha256, size=size)
    storage = thumbnail_storage()
    try:
        if storage.exists(name):
            return name
    except Exception as exc:
        if storage_error_is_unreachable(exc):
            raise StorageUnreachable(storage_unreachable_message(exc)) from exc
        raise
    with stored_file_open(image.file.name or "") as source:
        # Decoded at reduced scale, so an 80-megapixel upload's thumbnail does not take a
        # full-size RGB copy (320 MB) and a rotated one besides.
        thumb = open_image(source, max_pixels=settings.UPLOAD_MAX_PIXELS, min_side=size)
    thumb.thumbnail((size, size))
    encoded = io.BytesIO()
    thumb.save(encoded, "JPEG", quality=85)
    try:
        # Made by two requests at once, both write the same bytes: the thumbnail storage
        # replaces (atomically in the local folder, one PUT in a bucket), never renames.
        storage.save(name, ContentFile(encoded.getvalue()))
    except Exception as exc:
        if storage_error_is_unreachable(exc):
            raise StorageUnreachable(storage_unreachable_message(exc)) from exc
        raise
    return name


def image_upload(
    *, owner: User, file: UploadedFile, visibility: str = Image.Visibility.PRIVATE
) -> Image:
    """Store an uploaded image for ``owner`` and queue its embedding once committed.

    Refuses files over UPLOAD_MAX_BYTES or UPLOAD_MAX_PIXELS and anything that does not decode
    completely, with a readable reason; nothing is stored then, and so is an upload past the
    owner's UPLOAD_QUOTA_BYTES (``QuotaExceeded``). Uploading the same bytes again, even
    several times at once, returns the image already stored and writes no second file. The
    returned image's ``duplicate`` attribute says which (True: it was already there), so the
    caller can say "already in your library".
    """
    visibility_check(visibility, choices=Image.Visibility)
    image_file_size_check(file=file, label=file.name or "the file")
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    sha256 = digest.hexdigest()
    existing = _upload_existing(owner=owner, sha256=sha256)
    if existing is not None:
        return existing

    checked = image_file_decode(file=file, label=file.name or "the file")
    image_format = checked.format
    # When, with what and where it was taken; odd or missing EXIF leaves these empty.
    facts = photo_facts_read(file)

    image = Image(
        source=Image.Source.UPLOAD,
        owner=owner,
        visibility=visibility,
        sha256=sha256,
        # PostgreSQL text cannot hold NUL; a name is only shown, so drop them rather than refuse.
        original_filename=Path((file.name or "upload").replace("\x00", "")).name[:255],
        width=checked.width,
        height=checked.height,
        file_size=file.size or 0,
        **asdict(facts),
    )
    image_place_fill(image)
    with transaction.atomic():
        # One upload of this person's at a time from here to the commit: the same bytes sent
        # six times at once then write one file (the others find the row), and the quota
        # counts every earlier upload. Decoding, the slow part, stays outside the lock.
        _uploads_lock(owner=owner)
        existing = _upload_existing(owner=owner, sha256=sha256)
        if existing is not None:
            return existing
        _upload_quota_check(owner=owner, size=image.file_size, label=image.original_filename)
        image.file.save(f"upload.{image_format.lower()}", file, save=False)
        stored = image.file.name or ""
        try:
            image.save()
            # The index (workers/) creates the image's jobs now and queues them on commit.
            images_added.send(sender=Image, image_ids=[image.pk])
        except BaseException:
            # The row did not make it: the file it would have named goes too.
            stored_file_delete(stored)
            raise
    image.duplicate = False
    return image


def _upload_existing(*, owner: User, sha256: str) -> Image | None:
    existing = Image.objects.filter(source=Image.Source.UPLOAD, owner=owner, sha256=sha256).first()
    if existing is not None:
        existing.duplicate = True
    return existing


# pg_advisory_xact_lock(key, user id): this number marks the upload lock among the site's locks.
_UPLOADS_LOCK_KEY = 0x5550_4C44  # "UPLD"


def _uploads_lock(*, owner: User) -> None:
    """Hold the owner's upload lock until the surrounding transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_UPLOADS_LOCK_KEY, owner.pk])


def _upload_quota_check(*, owner: User, size: int, label: str) -> None:
    """Refuse an upload that would take ``owner`` past UPLOAD_QUOTA_BYTES (0: no limit)."""
    quota = settings.UPLOAD_QUOTA_BYTES
    if not quota:
        return
    used = (
        Image.objects.filter(source=Image.Source.UPLOAD, owner=owner).aggregate(
            used=Sum("file_size")
        )["used"]
        or 0
    )
    if used + size > quota:
        raise QuotaExceeded(
            f"{label} was not stored: your uploads use {_size_text(used)} of your "
            f"{_size_text(quota)} storage, and this file needs {_size_text(size)} more. "
            "Delete images you no longer need to make room."
        )


def _size_text(size: int) -> str:
    return filesizeformat(size).replace("\xa0", " ")  # "9.8 KB", "10.0 GB"


def _image_owned(*, user: User, image_id: int) -> Image:
    """One of ``user``'s uploads. Anything else (another person's image, a data-set photo, no
    such id) is the same NotFound, so the answer never tells whether a private image exists."""
    image = image_get_owned(user=user, image_id=image_id)
    if image is None:
        raise NotFound("no such image among your uploads")
    return image


def image_visibility_set(*, user: User, image_id: int, visibility: str) -> Image:
    """Make one of ``user``'s uploads public or private."""
    visibility_check(visibility, choices=Image.Visibility)
    image = _image_owned(user=user, image_id=image_id)
    if image.visibility != visibility:
        image.visibility = visibility
        image.save(update_fields=["visibility"])
    return image


IMAGE_TITLE_MAX = Image._meta.get_field("title").max_length or 200
IMAGE_DESCRIPTION_MAX = Image._meta.get_field("description").max_length or 5000


def image_details_update(*, user: User, image_id: int, title: str, description: str) -> Image:
    """Set the title (the name and alt text shown everywhere) and description of one of
    ``user``'s uploads; empty strings clear them. Anyone else gets the NotFound a missing image
    gets, so the refusal never tells whether someone's private image exists."""
    image = _image_owned(user=user, image_id=image_id)
    title = text_bounded(title, label="title", limit=IMAGE_TITLE_MAX)
    description = text_bounded(description, label="description", limit=IMAGE_DESCRIPTION_MAX)
    if (image.title, image.description) != (title, description):
        image.title, image.description = title, description
        image.save(update_fields=["title", "description"])
    return image


def image_delete(*, user: User, image_id: int) -> None:
    """Delete one of ``user``'s uploads: the row with its captions, embeddings, jobs and
    collection items (cascades), then, once committed, its file and thumbnails.

    Files go after the commit so a rolled-back delete never leaves a row without its file. A
    file another row shares is kept (data-set imports reuse content-addressed names).
    """
    image = _image_owned(user=user, image_id=image_id)
    name, sha256 = image.file.name, image.sha256
    with transaction.atomic():
        image.delete()
        transaction.on_commit(lambda: _image_files_delete(name=name, sha256=sha256))


def images_delete(*, user: User, image_ids: Sequence[int]) -> list[int]:
    """Delete several of ``user``'s uploads at once (selection mode), all or none.

    Every id is checked before anything is deleted: one that is not the user's upload (another
    person's image, a data-set photo, no such id) refuses the whole request with the same
    NotFound as ``image_delete``, so nothing is deleted and nothing tells whether a private
    image exists. Rows go with their cascades; files and thumbnails after the commit.
    """
    ids = selection_ids(image_ids)
    with transaction.atomic():
        owned = Image.objects.none()
        if user.is_authenticated:
            owned = Image.objects.filter(pk__in=ids, owner_id=user.pk, source=Image.Source.UPLOAD)
        files = list(owned.select_for_update().values_list("file", "sha256"))
        if len(files) != len(ids):
            raise NotFound("no such image among your uploads")
        owned.delete()

        def files_delete() -> None:
            for name, sha256 in files:
                _image_files_delete(name=name, sha256=sha256)

        transaction.on_commit(files_delete)
    return ids


def _image_files_delete(*, name: str | None, sha256: str) -> None:
    if Image.objects.filter(file=name).exists():
        return
    stored_file_delete(name or "")
    if Image.objects.filter(sha256=sha256).exists():
        return  # thumbnails are named by content, and another image still has it
    _thumbnails_delete(sha256=sha256)


# --- Staff actions over many images (the admin's image list) --------------------------------

# Staff actions work through the images they are given this many at a time, one transaction
# each, so "select all" over 100,000 images never holds every row in memory or one long lock.
STAFF_BATCH_SIZE = 500


def image_id_chunks(images: QuerySet[Image]) -> Iterator[list[int]]:
    """The ids of ``images`` in ascending chunks of STAFF_BATCH_SIZE.

    Each chunk is read after the previous one was acted on, by keyset (ids above the last one
    seen), so an action that changes or deletes rows the filter matched neither skips nor
    revisits any: an OFFSET would shift under a delete.
    """
    ids = images.order_by("pk").values_list("pk", flat=True)
    last = 0
    while chunk := list(dict.fromkeys(ids.filter(pk__gt=last)[:STAFF_BATCH_SIZE])):
        yield chunk
        last = chunk[-1]


def images_staff_delete(*, images: QuerySet[Image]) -> int:
    """Staff: delete ``images``, whoever owns them (data-set photos too), with what the owner's
    own delete takes: captions, embeddings, jobs and collection items (cascades), then, as each
    chunk commits, files and thumbnails no other row uses. Returns how many were deleted."""
    deleted = 0
    for chunk in image_id_chunks(images):
        with transaction.atomic():
            rows = Image.objects.filter(pk__in=chunk)
            files = list(rows.select_for_update().values_list("file", "sha256"))
            rows.delete()
            transaction.on_commit(functools.partial(_images_files_delete, files=files))
        deleted += len(files)
    return deleted


def _images_files_delete(*, files: Sequence[tuple[str, str]]) -> None:
    """``_image_files_delete`` for many images, with two queries in all instead of two each."""
    names = {name for name, _ in files}
    digests = {sha256 for _, sha256 in files}
    names_used = set(Image.objects.filter(file__in=names).values_list("file", flat=True))
    digests_used = set(Image.objects.filter(sha256__in=digests).values_list("sha256", flat=True))
    for name in names - names_used:
        stored_file_delete(name or "")
    for sha256 in digests - digests_used:
        _thumbnails_delete(sha256=sha256)


def _thumbnails_delete(*, sha256: str) -> None:
    storage = thumbnail_storage()
    for size in THUMBNAIL_SIZES:
        storage.delete(_thumbnail_name(sha256=sha256, size=size))


@dataclass(frozen=True)
class ImagesVisibilityResult:
    changed: int
    unchanged: int  # uploads that already had the visibility
    dataset_skipped: int  # Flickr30k images, public whatever is asked


def images_staff_visibility_set(
    *, images: QuerySet[Image], visibility: str
) -> ImagesVisibilityResult:
    """Staff: make the uploads among ``images`` public or private, whoever owns them.

    Data-set images are skipped and counted: they are public by definition (the table's check
    constraint ``image_owner_matches_source``), so "make private" must not touch them.
    """
    visibility_check(visibility, choices=Image.Visibility)
    changed = unchanged = skipped = 0
    for chunk in image_id_chunks(images):
        with transaction.atomic():
            rows = Image.objects.filter(pk__in=chunk)
            dataset = rows.exclude(source=Image.Source.UPLOAD).count()
            updated = (
                rows.filter(source=Image.Source.UPLOAD)
                .exclude(visibility=visibility)
                .update(visibility=visibility)
            )
        skipped += dataset
        changed += updated
        unchanged += len(chunk) - dataset - updated
    return ImagesVisibilityResult(changed, unchanged, skipped)


# --- EXIF facts for images stored before they were read (manage.py backfill_photo_facts) ------

PHOTO_FACT_FIELDS = tuple(field.name for field in fields(PhotoFacts))


@dataclass(frozen=True)
class PhotoFactsBackfillResult:
    read: int  # image files read
    updated: int  # rows whose facts changed
    missing: int  # rows whose file is not in the storage (left as they are)


def _image_place_refill(image: Image) -> None:
    for name in PLACE_FIELDS:
        setattr(image, name, "")
    image_place_fill(image)


def images_photo_facts_backfill(
    *,
    redo: bool = False,
    batch_size: int = 200,
    progress: Callable[[PhotoFactsBackfillResult], None] | None = None,
) -> PhotoFactsBackfillResult:
    """Read the taken date, camera and GPS position (``PhotoFacts``) from the stored files of
    images that have none of them yet (every image with ``redo``), and store them.

    Files are read through the image storage (a local folder or a bucket), ``batch_size`` rows
    at a time by ascending id, each batch written in one transaction; a row is written only if
    its facts changed, so a second run (or one that overlaps an upload) writes nothing new and
    an interrupted run is simply run again. Place names are resolved again where the position
    changed (a corrected or removed GPS tag must not leave the old town on the photo).
    """
    images = Image.objects.all()
    if not redo:
        images = images.filter(
            taken_at__isnull=True, camera_make="", camera_model="", latitude__isnull=True
        )
    images = images.order_by("pk").only("pk", "file", *PHOTO_FACT_FIELDS, *PLACE_FIELDS)
    read = updated = missing = 0
    last = 0
    while batch := list(images.filter(pk__gt=last)[:batch_size]):
        last = batch[-1].pk
        changed = []
        for image in batch:
            try:
                with stored_file_open(image.file.name or "") as handle:
                    facts = photo_facts_read(handle)
            except FileNotFoundError:
                missing += 1
                continue
            read += 1
            values = asdict(facts)
            if any(getattr(image, name) != value for name, value in values.items()):
                moved = (image.latitude, image.longitude) != (facts.latitude, facts.longitude)
                for name, value in values.items():
                    setattr(image, name, value)
                if moved:
                    _image_place_refill(image)
                changed.append(image)
        if changed:
            with transaction.atomic():
                Image.objects.bulk_update(changed, (*PHOTO_FACT_FIELDS, *PLACE_FIELDS))
            updated += len(changed)
        if progress is not None:
            progress(PhotoFactsBackfillResult(read, updated, missing))
    return PhotoFactsBackfillResult(read, updated, missing)

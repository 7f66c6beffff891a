"""Writes for images: uploads and thumbnails."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import BaseUserManager
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet, Sum
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from encoders import open_image
from gallery.flickr30k import Flickr30kEntry, Flickr30kFile, flickr30k_file_check
from gallery.forms import (  # noqa: F401 - callers catch services.UploadRejected
    UploadRejected,
    image_file_decode,
    image_file_size_check,
)
from gallery.models import (
    ApiToken,
    Caption,
    Collection,
    CollectionItem,
    Image,
    image_upload_path,
    new_share_token,
)
from gallery.selectors import user_email_taken
from gallery.signals import images_added
from kernel.errors import Conflict, InvalidInput, NotFound, TooLarge

T = TypeVar("T")

THUMBNAIL_SIZES = (128, 256, 512)


class QuotaExceeded(TooLarge):
    """An upload that would take its owner past UPLOAD_QUOTA_BYTES."""


def image_thumbnail_path(*, image: Image, size: int) -> Path:
    """The path of a JPEG thumbnail no larger than ``size`` px, made once and kept on disk."""
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"thumbnail size must be one of {THUMBNAIL_SIZES}")
    path = Path(settings.MEDIA_ROOT) / "thumbs" / str(size) / f"{image.sha256}.jpg"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with image.file.open("rb") as source:
        # Decoded at reduced scale, so an 80-megapixel upload's thumbnail does not take a
        # full-size RGB copy (320 MB) and a rotated one besides.
        thumb = open_image(source, max_pixels=settings.UPLOAD_MAX_PIXELS, min_side=size)
        thumb.thumbnail((size, size))
        # Write to a temporary name and rename, so a concurrent reader never sees half a file.
        partial = path.with_suffix(f".{id(thumb)}.part")
        thumb.save(partial, "JPEG", quality=85)
        partial.replace(path)
    return path


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
    if visibility not in Image.Visibility.values:
        raise InvalidInput(f"visibility must be one of {', '.join(Image.Visibility.values)}")
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
    )
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
            default_storage.delete(stored)
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
    image = None
    if user.is_authenticated:
        image = Image.objects.filter(
            pk=image_id, owner_id=user.pk, source=Image.Source.UPLOAD
        ).first()
    if image is None:
        raise NotFound("no such image among your uploads")
    return image


def image_visibility_set(*, user: User, image_id: int, visibility: str) -> Image:
    """Make one of ``user``'s uploads public or private."""
    if visibility not in Image.Visibility.values:
        raise InvalidInput(f"visibility must be one of {', '.join(Image.Visibility.values)}")
    image = _image_owned(user=user, image_id=image_id)
    if image.visibility != visibility:
        image.visibility = visibility
        image.save(update_fields=["visibility"])
    return image


IMAGE_TITLE_MAX = Image._meta.get_field("title").max_length or 200
IMAGE_DESCRIPTION_MAX = Image._meta.get_field("description").max_length or 5000


def _text_bounded(value: str, *, label: str, limit: int) -> str:
    """``value`` without surrounding whitespace, refused (not cut) when over ``limit``: a cut
    would silently lose the end of what the person wrote."""
    value = value.strip()
    if "\x00" in value:
        raise InvalidInput(f"the {label} contains a NUL character")
    if len(value) > limit:
        raise InvalidInput(f"the {label} is {len(value)} characters; the limit is {limit}")
    return value


def image_details_update(*, user: User, image_id: int, title: str, description: str) -> Image:
    """Set the title (the name and alt text shown everywhere) and description of one of
    ``user``'s uploads; empty strings clear them. Anyone else gets the NotFound a missing image
    gets, so the refusal never tells whether someone's private image exists."""
    image = _image_owned(user=user, image_id=image_id)
    title = _text_bounded(title, label="title", limit=IMAGE_TITLE_MAX)
    description = _text_bounded(description, label="description", limit=IMAGE_DESCRIPTION_MAX)
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


# Selection mode acts on at most this many images per request: a few pages of results.
SELECTION_MAX = 500


def _selection_ids(image_ids: Sequence[int]) -> list[int]:
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        raise InvalidInput("select at least one image")
    if len(ids) > SELECTION_MAX:
        raise InvalidInput(f"{len(ids)} images are selected; at most {SELECTION_MAX} at once")
    return ids


def images_delete(*, user: User, image_ids: Sequence[int]) -> list[int]:
    """Delete several of ``user``'s uploads at once (selection mode), all or none.

    Every id is checked before anything is deleted: one that is not the user's upload (another
    person's image, a data-set photo, no such id) refuses the whole request with the same
    NotFound as ``image_delete``, so nothing is deleted and nothing tells whether a private
    image exists. Rows go with their cascades; files and thumbnails after the commit.
    """
    ids = _selection_ids(image_ids)
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
    if name and default_storage.exists(name):
        default_storage.delete(name)
    if Image.objects.filter(sha256=sha256).exists():
        return  # thumbnails are named by content, and another image still has it
    for size in THUMBNAIL_SIZES:
        (Path(settings.MEDIA_ROOT) / "thumbs" / str(size) / f"{sha256}.jpg").unlink(missing_ok=True)


# --- Staff actions over many images (the admin's image list) --------------------------------

# Staff actions work through the images they are given this many at a time, one transaction
# each, so "select all" over 100,000 images never holds every row in memory or one long lock.
STAFF_BATCH_SIZE = 500


def _image_id_chunks(images: QuerySet[Image]) -> Iterator[list[int]]:
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
    for chunk in _image_id_chunks(images):
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
        if name and default_storage.exists(name):
            default_storage.delete(name)
    for sha256 in digests - digests_used:
        for size in THUMBNAIL_SIZES:
            thumb = Path(settings.MEDIA_ROOT) / "thumbs" / str(size) / f"{sha256}.jpg"
            thumb.unlink(missing_ok=True)


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
    if visibility not in Image.Visibility.values:
        raise InvalidInput(f"visibility must be one of {', '.join(Image.Visibility.values)}")
    changed = unchanged = skipped = 0
    for chunk in _image_id_chunks(images):
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


def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the token, which is not kept."""
    raw = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name[:100], key_hash=ApiToken.hash(raw), prefix=raw[:8]
    )
    return token, raw


def api_token_mark_used(*, token: ApiToken) -> None:
    # At most one write per token every few minutes, not one per API request.
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=5):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


def api_token_revoke(*, user: User, token_id: int) -> bool:
    """Delete one of ``user``'s tokens; another user's token id does nothing."""
    deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    return bool(deleted)


EMAIL_MAX_LENGTH = 254  # the user table's column


def user_email_set(*, user: User, email: str) -> str:
    """Set ``user``'s e-mail address, where password-reset links go ("" removes it); returns
    the address as stored. Refuses one that is not an address, or that another account uses in
    any case: a reset would mail both accounts' links to it."""
    email = BaseUserManager.normalize_email(email.strip())
    if email:
        try:
            if len(email) > EMAIL_MAX_LENGTH:
                raise ValidationError("too long")
            validate_email(email)
        except ValidationError:
            raise InvalidInput(f"{email[:60]!r} is not an e-mail address") from None
        if user_email_taken(email=email, exclude_user=user):
            raise Conflict("Another account uses that e-mail address; give another one.")
    get_user_model().objects.filter(pk=user.pk).update(email=email)
    user.email = email
    return email


def collection_create(
    *,
    owner: User,
    name: str,
    description: str = "",
    visibility: str = Collection.Visibility.PRIVATE,
) -> Collection:
    """Create one of ``owner``'s collections; names are unique per owner.

    Raises ``InvalidInput`` for an empty name or an unknown visibility and ``Conflict`` when
    the owner already has a collection of that name.
    """
    name = name.strip()
    if not name:
        raise InvalidInput("give the collection a name")
    if len(name) > COLLECTION_NAME_MAX:
        raise InvalidInput(
            f"the name is {len(name)} characters; the limit is {COLLECTION_NAME_MAX}"
        )
    _visibility_check(visibility)
    duplicate = Conflict(f"you already have a collection called {name!r}")
    if Collection.objects.filter(owner=owner, name=name).exists():
        raise duplicate
    try:
        # A savepoint, so a name taken by a concurrent request leaves the caller's
        # transaction usable.
        with transaction.atomic():
            return Collection.objects.create(
                owner=owner, name=name, description=description, visibility=visibility
            )
    except IntegrityError as exc:
        raise duplicate from exc


COLLECTION_NAME_MAX = Collection._meta.get_field("name").max_length or 120


def _visibility_check(visibility: str) -> None:
    if visibility not in Collection.Visibility.values:
        raise InvalidInput(f"visibility must be one of {', '.join(Collection.Visibility.values)}")


def collection_save_into(
    *, user: User, collection_id: int | None, new_name: str, save: Callable[[int], T]
) -> T:
    """Run ``save(collection_id)`` into an existing collection of ``user``'s or into a new one
    named ``new_name``, in one transaction: a new collection is kept only if the save worked."""
    with transaction.atomic():
        if new_name:
            collection_id = collection_create(owner=user, name=new_name).pk
        if collection_id is None:
            raise NotFound("no such collection")
        return save(collection_id)


def collection_item_add(
    *, user: User, collection_id: int, image_id: int, query: str = "", note: str = ""
) -> CollectionItem:
    """Save an image the user can see into one of the user's collections (once)."""
    from gallery.selectors import image_get_visible

    collection = Collection.objects.filter(owner=user, pk=collection_id).first()
    if collection is None:
        raise NotFound("no such collection")
    image = image_get_visible(user=user, image_id=image_id)
    if image is None:
        raise NotFound("no such image")
    item, _ = CollectionItem.objects.get_or_create(
        collection=collection, image=image, defaults={"query": query[:1000], "note": note}
    )
    Collection.objects.filter(pk=collection.pk).update(updated_at=timezone.now())
    return item


def collection_items_add(
    *, user: User, collection_id: int, image_ids: Sequence[int], query: str = ""
) -> tuple[Collection, int]:
    """Save several images into one of ``user``'s collections (selection mode), all or none:
    every image must be one the user can see (public, or their own), else NotFound and
    nothing is saved. Images already in the collection stay as they are. Returns the collection
    and how many images were added."""
    from gallery.selectors import images_visible_to

    ids = _selection_ids(image_ids)
    collection = None
    if user.is_authenticated:
        collection = Collection.objects.filter(owner=user, pk=collection_id).first()
    if collection is None:
        raise NotFound("no such collection")
    visible = images_visible_to(user=user).filter(pk__in=ids)
    if visible.count() != len(ids):
        raise NotFound("no such image")
    present = set(collection.items.filter(image_id__in=ids).values_list("image_id", flat=True))
    new = [
        CollectionItem(collection=collection, image_id=image_id, query=query[:1000])
        for image_id in ids
        if image_id not in present
    ]
    # ignore_conflicts: an image saved by a concurrent request meanwhile is simply there.
    CollectionItem.objects.bulk_create(new, ignore_conflicts=True)
    Collection.objects.filter(pk=collection.pk).update(updated_at=timezone.now())
    return collection, len(new)


def collection_item_remove(*, user: User, collection_id: int, image_id: int) -> bool:
    deleted, _ = CollectionItem.objects.filter(
        collection__owner=user, collection_id=collection_id, image_id=image_id
    ).delete()
    return bool(deleted)


COLLECTION_DESCRIPTION_MAX = 5000  # the forms' bound; the column is unbounded text
COLLECTION_NOTE_MAX = CollectionItem._meta.get_field("note").max_length or 2000


def _collection_owned(*, user: User, collection_id: int) -> Collection:
    """One of ``user``'s collections; anyone else's is the NotFound of a missing one."""
    collection = None
    if user.is_authenticated:
        collection = Collection.objects.filter(owner=user, pk=collection_id).first()
    if collection is None:
        raise NotFound("no such collection")
    return collection


def collection_update(
    *,
    user: User,
    collection_id: int,
    visibility: str | None = None,
    name: str | None = None,
    description: str | None = None,
) -> Collection:
    """Change one of ``user``'s collections; an argument left None stays as it is. A name must
    be non-empty and not another of the owner's collections' (Conflict)."""
    collection = _collection_owned(user=user, collection_id=collection_id)
    if visibility is not None:
        _visibility_check(visibility)
        if collection.visibility == Collection.Visibility.PRIVATE != visibility:
            # Making a collection private revokes the links handed out; sharing it again must
            # not bring them back, so it gets a link no one has seen.
            collection.share_token = new_share_token()
        collection.visibility = visibility
    if description is not None:
        collection.description = _text_bounded(
            description, label="description", limit=COLLECTION_DESCRIPTION_MAX
        )
    if name is not None:
        name = _text_bounded(name, label="name", limit=COLLECTION_NAME_MAX)
        if not name:
            raise InvalidInput("give the collection a name")
        if Collection.objects.filter(owner=user, name=name).exclude(pk=collection.pk).exists():
            raise Conflict(f"you already have a collection called {name!r}")
        collection.name = name
    try:
        with transaction.atomic():
            collection.save()
    except IntegrityError as exc:  # the name, taken by a concurrent request meanwhile
        raise Conflict(f"you already have a collection called {collection.name!r}") from exc
    return collection


def collection_share_link_rotate(*, user: User, collection_id: int) -> Collection:
    """Give one of ``user``'s collections a new share link; the old one stops opening it at
    once (for everyone it was handed to). Anyone else's collection is NotFound."""
    collection = _collection_owned(user=user, collection_id=collection_id)
    collection.share_token = new_share_token()
    collection.save(update_fields=["share_token"])
    return collection


def _collection_item_owned(*, user: User, collection_id: int, image_id: int) -> CollectionItem:
    """An item of one of ``user``'s collections; anything else is NotFound, whoever asks."""
    item = None
    if user.is_authenticated:
        item = (
            CollectionItem.objects.select_related("collection", "image")
            .filter(collection__owner=user, collection_id=collection_id, image_id=image_id)
            .first()
        )
    if item is None:
        raise NotFound("no such image in your collection")
    return item


def collection_item_note_set(
    *, user: User, collection_id: int, image_id: int, note: str
) -> CollectionItem:
    """Set the owner's note on an item of their collection ("" clears it)."""
    note = _text_bounded(note, label="note", limit=COLLECTION_NOTE_MAX)
    item = _collection_item_owned(user=user, collection_id=collection_id, image_id=image_id)
    if item.note != note:
        item.note = note
        item.save(update_fields=["note"])
    return item


@dataclass(frozen=True)
class CollectionItemMove:
    image_id: int
    index: int  # 1-based place in the owner's order after the move
    total: int
    moved: bool  # False at either end, or when the page's order was out of date


MOVE_DIRECTIONS = ("earlier", "later")


def collection_item_move(
    *,
    user: User,
    collection_id: int,
    image_id: int,
    direction: str,
    expected_index: int | None = None,
) -> CollectionItemMove:
    """Move an item one place earlier or later in the owner's order, numbering every item of
    the collection 1..n (CollectionItem.position).

    The collection row is locked for the renumbering, so two moves at once run one after the
    other and never leave two items on one position. At either end the move does nothing.
    ``expected_index`` is the 1-based place the page showed: when the item is no longer there
    (a resent form, another tab's move) nothing moves, so repeating a request is harmless.
    """
    from gallery.selectors import images_visible_to

    if direction not in MOVE_DIRECTIONS:
        raise InvalidInput(f"direction must be one of {', '.join(MOVE_DIRECTIONS)}")
    with transaction.atomic():
        locked = None
        if user.is_authenticated:
            locked = (
                Collection.objects.select_for_update()
                .filter(owner=user, pk=collection_id)
                .values_list("pk", flat=True)
                .first()
            )
        if locked is None:
            raise NotFound("no such image in your collection")
        rows = list(
            CollectionItem.objects.filter(collection_id=collection_id)
            .order_by(*(CollectionItem._meta.ordering or ()))
            .values_list("pk", "image_id", "position")
        )
        # Places count among the items the owner sees: an image someone else made private
        # since it was saved is neither shown nor stepped over as a place of its own.
        seen = set(
            images_visible_to(user=user)
            .filter(collection_items__collection_id=collection_id)
            .values_list("pk", flat=True)
        )
        shown = [at for at, (_, image, _) in enumerate(rows) if image in seen]
        order = [rows[at][1] for at in shown]
        if image_id not in order:
            raise NotFound("no such image in your collection")
        index = order.index(image_id)
        target = index - 1 if direction == "earlier" else index + 1
        stale = expected_index is not None and expected_index != index + 1
        if stale or not 0 <= target < len(order):
            return CollectionItemMove(image_id, index + 1, len(order), moved=False)
        here, there = shown[index], shown[target]
        rows[here], rows[there] = rows[there], rows[here]
        changed = [
            CollectionItem(pk=pk, position=number)
            for number, (pk, _, position) in enumerate(rows, start=1)
            if position != number
        ]
        CollectionItem.objects.bulk_update(changed, ["position"], batch_size=500)
        Collection.objects.filter(pk=collection_id).update(updated_at=timezone.now())
    return CollectionItemMove(image_id, target + 1, len(order), moved=True)


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
    if not default_storage.exists(name):
        stored = default_storage.save(name, ContentFile(checked.content))
        if stored != name:  # written by a concurrent run between exists() and save()
            default_storage.delete(stored)
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


@dataclass(frozen=True)
class PasswordResetMail:
    """What a reset mail needs besides the user's row: where it goes and the site's address."""

    user_id: int
    email: str
    domain: str
    site_name: str
    use_https: bool


def user_password_reset_mail_send(*, mail: PasswordResetMail) -> bool:
    """Render and send one reset mail with a fresh token (the token never waits in the broker).

    False, and nothing sent, when the account changed meanwhile: gone, inactive, without a
    usable password, or with another address (the link must reach only whoever asked).
    """
    user = get_user_model().objects.filter(pk=mail.user_id, is_active=True).first()
    if user is None or not user.has_usable_password():
        return False
    if (getattr(user, user.get_email_field_name(), "") or "").lower() != mail.email.lower():
        return False
    context = {
        "email": mail.email,
        "domain": mail.domain,
        "site_name": mail.site_name,
        "uid": urlsafe_base64_encode(force_bytes(user.pk)),
        "user": user,
        "token": default_token_generator.make_token(user),
        "protocol": "https" if mail.use_https else "http",
    }
    # Django's own rendering and sending, with the templates PasswordResetView uses; it logs
    # a failed send ("Failed to send password reset email to <id>") rather than raising.
    PasswordResetForm().send_mail(
        "registration/password_reset_subject.txt",
        "registration/password_reset_email.html",
        context,
        None,
        mail.email,
    )
    return True

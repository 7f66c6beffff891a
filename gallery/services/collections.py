"""Writes for collections: creating, editing and sharing them, and saving, annotating,
ordering and removing the images in them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from gallery.models import Collection, CollectionItem, new_share_token
from gallery.selectors import image_get_visible, images_visible_to
from gallery.services._checks import selection_ids, text_bounded, visibility_check
from kernel.errors import Conflict, InvalidInput, NotFound

T = TypeVar("T")

COLLECTION_NAME_MAX = Collection._meta.get_field("name").max_length or 120
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
    visibility_check(visibility, choices=Collection.Visibility)
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
    collection = _collection_owned(user=user, collection_id=collection_id)
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
    ids = selection_ids(image_ids)
    collection = _collection_owned(user=user, collection_id=collection_id)
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
        visibility_check(visibility, choices=Collection.Visibility)
        if collection.visibility == Collection.Visibility.PRIVATE != visibility:
            # Making a collection private revokes the links handed out; sharing it again must
            # not bring them back, so it gets a link no one has seen.
            collection.share_token = new_share_token()
        collection.visibility = visibility
    if description is not None:
        collection.description = text_bounded(
            description, label="description", limit=COLLECTION_DESCRIPTION_MAX
        )
    if name is not None:
        name = text_bounded(name, label="name", limit=COLLECTION_NAME_MAX)
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
    note = text_bounded(note, label="note", limit=COLLECTION_NOTE_MAX)
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


SMART_SOURCES = ("dataset", "mine")


def collection_smart_create(
    *,
    owner: User,
    name: str,
    query: str,
    model_id: str = "",
    source: str = "",
    hybrid: bool = False,
    min_score: float | None = None,
    visibility: str = Collection.Visibility.PRIVATE,
) -> Collection:
    """Save a search as one of ``owner``'s collections (``search.smart`` lists its matches).
    ``source`` "mine" means the owner's uploads, whoever views it."""
    query = query.strip()
    if not query:
        raise InvalidInput("a saved search needs words to search for")
    text_bounded(query, limit=1000, label="query")
    if source and source not in SMART_SOURCES:
        raise InvalidInput("source must be 'dataset' or 'mine'")
    if min_score is not None and not -1 <= min_score <= 1:
        raise InvalidInput("the cut-off is a cosine similarity, between -1 and 1")
    with transaction.atomic():
        collection = collection_create(owner=owner, name=name, visibility=visibility)
        collection.smart_query, collection.smart_model = query, model_id[:64]
        collection.smart_filters = {"source": source or None, "hybrid": bool(hybrid)}
        collection.smart_min_score = min_score
        collection.save(
            update_fields=["smart_query", "smart_model", "smart_filters", "smart_min_score"]
        )
    return collection


def collection_smart_hide(*, user: User, collection_id: int, image_id: int, hidden: bool) -> None:
    """Hide an image from (or show it again in) the matches of one of ``user``'s saved
    searches; hiding also takes it out of the pinned items."""
    with transaction.atomic():
        collection = _collection_owned(user=user, collection_id=collection_id)
        collection = Collection.objects.select_for_update().get(pk=collection.pk)
        if not collection.smart_query:
            raise InvalidInput("only a saved search has matches to hide")
        ids = [i for i in collection.smart_hidden if i != image_id]
        if hidden:
            ids.append(image_id)
            collection.items.filter(image_id=image_id).delete()
        collection.smart_hidden = ids
        collection.save(update_fields=["smart_hidden", "updated_at"])


def collection_smart_pin(*, user: User, collection_id: int, image_id: int, pinned: bool) -> None:
    """Pin an image to the top of one of ``user``'s saved searches (it becomes one of the
    collection's own items, listed first) or unpin it. Pinning shows a hidden image again:
    the owner asked to see it first, so it cannot stay hidden."""
    with transaction.atomic():
        collection = _collection_owned(user=user, collection_id=collection_id)
        collection = Collection.objects.select_for_update().get(pk=collection.pk)
        if not collection.smart_query:
            raise InvalidInput("only a saved search has matches to pin")
        if not pinned:
            collection_item_remove(user=user, collection_id=collection.pk, image_id=image_id)
            Collection.objects.filter(pk=collection.pk).update(updated_at=timezone.now())
            return
        collection_item_add(user=user, collection_id=collection.pk, image_id=image_id)
        if image_id in collection.smart_hidden:
            collection.smart_hidden = [i for i in collection.smart_hidden if i != image_id]
            collection.save(update_fields=["smart_hidden", "updated_at"])

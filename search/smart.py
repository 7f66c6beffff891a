"""Smart collections: a saved search (query, filters, model, cut-off) listed as a collection
whose matches are found again every time it is opened, so images indexed later join it.

What a viewer sees: the owner's own items first (pinned: the ordinary items of the collection,
in the owner's order), then the search's matches, minus the images the owner hid, each only if
the viewer may see it. The search runs as the viewer (``images_search_by_text``), so sharing a
saved search never shares the owner's private uploads. At most SMART_MATCHES_MAX matches are
listed (one page of the deepest search).
"""

from __future__ import annotations

import dataclasses

from django.contrib.auth.models import AnonymousUser, User

from gallery.models import Collection, Image
from gallery.selectors import collection_items_visible, images_visible_to
from kernel.errors import InvalidInput
from search.ranking import (
    MAX_K,
    SearchFilters,
    SearchHit,
    SearchPage,
    SearchRequest,
    images_with_captions,
    search_validate_page,
)
from search.selectors import images_search_by_text

SMART_MATCHES_MAX = MAX_K


@dataclasses.dataclass(frozen=True)
class SmartOwnerControls:
    """What the owner's pin and hide buttons need: which listed images are pinned, and the
    hidden ones (most recently hidden first) for the "Hidden" list that shows them again."""

    collection: Collection
    pinned_ids: frozenset[int]
    hidden: list[Image]


def smart_owner_controls(
    *, user: User | AnonymousUser, collection: Collection
) -> SmartOwnerControls | None:
    """The controls for ``user`` on a saved search's page: None unless ``user`` owns it, so
    a viewer (signed in or holding the share link) never gets them."""
    if not user.is_authenticated or collection.owner_id != user.pk:
        return None
    hidden_ids = list(reversed(collection.smart_hidden or []))
    found = {image.pk: image for image in images_visible_to(user=user).filter(pk__in=hidden_ids)}
    pinned = collection.items.values_list("image_id", flat=True)
    return SmartOwnerControls(
        collection=collection,
        pinned_ids=frozenset(pinned),
        hidden=[found[pk] for pk in hidden_ids if pk in found],
    )


def smart_search_request(
    collection: Collection, *, depth: int = SMART_MATCHES_MAX
) -> SearchRequest:
    """The saved search's filters: "mine" is the owner's uploads, whoever looks. ``depth``:
    how many of its matches to read (at most SMART_MATCHES_MAX)."""
    saved = collection.smart_filters or {}
    source = saved.get("source")
    filters = SearchFilters(
        source="dataset" if source == "dataset" else None,
        owner=collection.owner.get_username() if source == "mine" else None,
    )
    hybrid = bool(saved.get("hybrid"))
    return SearchRequest(
        k=min(depth, SMART_MATCHES_MAX), filters=filters, hybrid=hybrid,
        min_score=None if hybrid else collection.smart_min_score,
    )  # fmt: skip


def smart_collection_page(
    *, user: User | AnonymousUser, collection: Collection, k: int = 20, offset: int = 0
) -> SearchPage:
    """A page of what ``collection`` (a saved search the caller checked ``user`` may open)
    lists for ``user`` now: pinned items, then live matches (see the module)."""
    search_validate_page(k, offset)
    if not collection.smart_query:
        raise InvalidInput("this collection is not a saved search")
    hidden = set(collection.smart_hidden or [])
    pinned = [
        item.image
        for item in collection_items_visible(collection=collection, user=user)
        if item.image_id not in hidden
    ]
    # Only as deep as this page needs, as a search's own pages are read: the matches before
    # it, the page, one more (is there a next page?), and as many again as may be dropped
    # (hidden, or listed first as pinned). A page of 20 then no longer ranks and reads 100
    # matches with their captions (bench/README.md).
    depth = offset + k + 1 + len(hidden) + len(pinned)
    found = images_search_by_text(
        user=user,
        text=collection.smart_query,
        model_id=collection.smart_model or None,
        search=smart_search_request(collection, depth=depth),
    )
    # Pinned items show a full bar: the owner put them first, whatever their score.
    best = found.hits[0].score if found.hits else 1.0
    pinned_ids = {image.pk for image in pinned}
    with_captions = images_with_captions(list(pinned_ids))
    listed = [
        SearchHit(image=image, score=best, captions=tuple(with_captions[image.pk].caption_texts))
        for image in pinned
        if image.pk in with_captions
    ] + [hit for hit in found.hits if hit.image.pk not in hidden and hit.image.pk not in pinned_ids]
    return dataclasses.replace(
        found,
        hits=listed[offset : offset + k],
        k=k,
        offset=offset,
        has_more=len(listed) > offset + k,
    )

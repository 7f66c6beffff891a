"""Reads for images and collections, always scoped to what a user may see."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, User
from django.db import router
from django.db.models import Count, Q, QuerySet

from gallery.hooks import image_index
from gallery.models import SORTED_AT, ApiToken, Collection, CollectionItem, Image
from kernel.kept import KeptAWhile


def images_visible_to(*, user: User | AnonymousUser) -> QuerySet[Image]:
    """Public images, plus the user's own private uploads when signed in."""
    visible = Q(visibility=Image.Visibility.PUBLIC)
    if user.is_authenticated:
        visible |= Q(owner_id=user.pk)
    return Image.objects.filter(visible)


# How long a process keeps the place names it has read (``place_names_known``).
PLACE_NAMES_MAX_AGE = 60.0
_place_names: KeptAWhile[frozenset[str]] = KeptAWhile()


def place_names_known() -> frozenset[str]:
    """Every place name (city, region, country) of any image, whoever may see it: what a
    search's words could name as a place, to be checked with ``place_names_visible`` before
    it is used. One DISTINCT over the placed images per process every PLACE_NAMES_MAX_AGE
    seconds, not per search: it was 3 ms of every text search at 10,594 placed images and
    grows with them (bench/README.md). A name first stored since may go unrecognised until
    then."""
    alias = router.db_for_read(Image)

    def read() -> frozenset[str]:
        rows = (
            Image.objects.using(alias)
            .exclude(place_country="")
            .values_list("place_city", "place_region", "place_country")
            # No ordering: the model's (created_at, id) would make every image its own row.
            .order_by()
            .distinct()
        )
        return frozenset(name for row in rows for name in row if name)

    return _place_names.get(alias, max_age=PLACE_NAMES_MAX_AGE, read=read)


def place_names_forget() -> None:
    """Drop the names ``place_names_known`` keeps (tests, between databases)."""
    _place_names.forget()


def place_names_visible(*, user: User | AnonymousUser, names: Iterable[str]) -> set[str]:
    """Which of ``names`` some image ``user`` may see carries as its city, region or country:
    so a query never learns where someone else's private photos were taken. One query, read
    from the index of the placed images."""
    names = list(names)
    if not names:
        return set()
    rows = (
        images_visible_to(user=user)
        .exclude(place_country="")
        .filter(Q(place_city__in=names) | Q(place_region__in=names) | Q(place_country__in=names))
        .values_list("place_city", "place_region", "place_country")
        .order_by()
        .distinct()
    )
    return {name for row in rows for name in row if name} & set(names)


def image_get_visible(*, user: User | AnonymousUser, image_id: int) -> Image | None:
    return images_visible_to(user=user).filter(pk=image_id).first()


def image_get_owned(*, user: User | AnonymousUser, image_id: int) -> Image | None:
    """One of ``user``'s uploads, the images whose details they may edit; None for anything
    else, so callers answer a missing image and someone else's alike."""
    if not user.is_authenticated:
        return None
    return Image.objects.filter(pk=image_id, owner_id=user.pk, source=Image.Source.UPLOAD).first()


def image_viewable_by(*, image: Image, user: User | AnonymousUser) -> bool:
    """Whether ``user`` may see ``image`` on the site: a public one, or their own.

    Staff are no exception here, as the upload form promises; they moderate uploads through the
    admin, whose own file URLs (``gallery.admin.ImageAdmin``) require staff rights.
    """
    if image.visibility == Image.Visibility.PUBLIC:
        return True
    return bool(user.is_authenticated and image.owner_id == user.pk)


def collections_visible_to(*, user: User | AnonymousUser) -> QuerySet[Collection]:
    visible = Q(visibility=Collection.Visibility.PUBLIC)
    if user.is_authenticated:
        visible |= Q(owner_id=user.pk)
    return Collection.objects.filter(visible)


def api_token_find(*, raw: str) -> ApiToken | None:
    """The token row for a raw API token whose user is active, or None."""
    token = ApiToken.objects.select_related("user").filter(key_hash=ApiToken.hash(raw)).first()
    if token is None or not token.user.is_active:
        return None
    return token


def api_tokens_of(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user)


def collections_of(*, user: User) -> QuerySet[Collection]:
    return Collection.objects.filter(owner=user).annotate(item_total=Count("items"))


# What gallery.models.new_share_token makes: URL-safe base64, within the column's length.
SHARE_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def collection_get_viewable(
    *,
    user: User | AnonymousUser,
    collection_id: int | None = None,
    share_token: str | None = None,
) -> Collection | None:
    """A collection the user may open: their own, a public one, or any shared by its link."""
    if share_token is not None:
        if not SHARE_TOKEN_PATTERN.fullmatch(share_token):
            # Never a valid token (a NUL, for one, is more than PostgreSQL text can hold).
            return None
        return (
            Collection.objects.filter(share_token=share_token)
            .exclude(visibility=Collection.Visibility.PRIVATE)
            .first()
        )
    if collection_id is None:
        return None
    return collections_visible_to(user=user).filter(pk=collection_id).first()


def collection_items_visible(
    *, collection: Collection, user: User | AnonymousUser
) -> QuerySet[CollectionItem]:
    """The items whose images ``user`` may see: sharing a collection never shares its owner's
    private uploads."""
    return (
        collection.items.filter(image__in=images_visible_to(user=user))
        .select_related("image")
        .prefetch_related("image__captions")
    )


# What the browse page's filter tabs show.
BROWSE_FILTERS = ("all", "mine", "dataset", "public")


def images_browse(*, user: User | AnonymousUser, show: str = "all") -> QuerySet[Image]:
    """Images for the browse page, newest first by when they were taken (else uploaded), then
    by id: everything ``user`` may see ("all"), their own uploads ("mine"), the data set's
    photos ("dataset") or anyone's public images. The order is total (id breaks ties), so pages
    neither repeat nor skip an image, and it is the index ``image_sorted_at_id``'s."""
    images = images_visible_to(user=user)
    if show == "mine":
        images = images.filter(owner_id=user.pk) if user.is_authenticated else images.none()
    elif show == "dataset":
        images = images.filter(source=Image.Source.FLICKR30K)
    elif show == "public":
        images = images.filter(visibility=Image.Visibility.PUBLIC)
    return images.order_by(SORTED_AT.desc(), "-id").prefetch_related("captions")


@dataclass(frozen=True)
class BrowseNeighbours:
    newer: int | None  # the id of the image just before in browse order
    older: int | None  # just after


def image_browse_neighbours(*, user: User | AnonymousUser, image: Image) -> BrowseNeighbours:
    """The images next to ``image`` in the browse order of everything ``user`` may see (the
    image page's arrow keys); images taken at the same instant are ordered by id."""
    visible = images_visible_to(user=user).alias(sorted_at=SORTED_AT)
    at = image.taken_at or image.created_at
    newer = visible.filter(Q(sorted_at__gt=at) | Q(sorted_at=at, pk__gt=image.pk))
    older = visible.filter(Q(sorted_at__lt=at) | Q(sorted_at=at, pk__lt=image.pk))
    return BrowseNeighbours(
        newer=newer.order_by("sorted_at", "pk").values_list("pk", flat=True).first(),
        older=older.order_by("-sorted_at", "-pk").values_list("pk", flat=True).first(),
    )


def image_collections_visible(*, image: Image, user: User | AnonymousUser) -> QuerySet[Collection]:
    """The collections holding ``image`` that ``user`` may open (their own and public ones)."""
    return collections_visible_to(user=user).filter(items__image=image).distinct()


def collection_covers(
    *, collections: list[Collection], per_collection: int = 4, public_only: bool = False
) -> dict[int, list]:
    """Up to ``per_collection`` image ids per collection, in the collection's own order, for
    cover mosaics. The owner's list shows every image; ``public_only`` (lists other people see)
    leaves out the owners' private uploads."""
    covers: dict[int, list] = {collection.pk: [] for collection in collections}
    items = CollectionItem.objects.filter(collection__in=collections)
    if public_only:
        items = items.filter(image__visibility=Image.Visibility.PUBLIC)
    for collection_id, image_id in items.values_list("collection_id", "image_id").iterator():
        if len(covers[collection_id]) < per_collection:
            covers[collection_id].append(image_id)
    return covers


def collections_public() -> QuerySet[Collection]:
    """Everyone's public collections that show at least one image to anybody, most recently
    changed first, each with its owner and its count of public images (what others see)."""
    public_items = Count("items", filter=Q(items__image__visibility=Image.Visibility.PUBLIC))
    return (
        Collection.objects.filter(visibility=Collection.Visibility.PUBLIC)
        .select_related("owner")
        .annotate(item_total=public_items)
        .filter(item_total__gt=0)
        .order_by("-updated_at", "-id")
    )


def collection_items_hidden(*, collection: Collection) -> QuerySet[CollectionItem]:
    """Items that people other than the owner cannot see (the owner's private uploads): the
    owner is told, since a shared link shows everyone else the collection without them."""
    return collection.items.exclude(image__visibility=Image.Visibility.PUBLIC).select_related(
        "image"
    )


# --- The account page ------------------------------------------------------------------------


def user_email_taken(*, email: str, exclude_user: User | None = None) -> bool:
    """Whether an account (other than ``exclude_user``) uses ``email``, ignoring case: password
    reset mails every account with the address, so two accounts must not share one."""
    users = get_user_model().objects.filter(email__iexact=email)
    if exclude_user is not None:
        users = users.exclude(pk=exclude_user.pk)
    return users.exists()


@dataclass(frozen=True)
class AccountOverview:
    """What the account page shows of one user's things; every count is theirs alone."""

    uploads: int
    public_uploads: int
    newest: list[Image]
    collection_total: int
    collections: list[Collection]  # the most recently changed, with ``item_total``
    token_total: int
    # Uploads by index state over the enabled models: indexed by all of them, still waiting for
    # one (queued, running, or its model cannot load yet), or failed for one (with a reason on
    # the image's page).
    indexed: int
    pending: int
    failed: int


ACCOUNT_NEWEST_UPLOADS = 6
ACCOUNT_RECENT_COLLECTIONS = 5


def account_overview(*, user: User) -> AccountOverview:
    """The signed-in user's uploads, collections, tokens and index summary in a fixed number
    of queries, however many images they have."""
    uploads = Image.objects.filter(owner_id=user.pk)
    # Index state over the enabled models, from the index (workers/), in the same query.
    index = image_index().images_conditions()
    counts = uploads.aggregate(
        total=Count("pk"),
        public=Count("pk", filter=Q(visibility=Image.Visibility.PUBLIC)),
        failed=Count("pk", filter=index.failed),
        indexed=Count("pk", filter=index.complete & ~index.failed),
    )
    collections = collections_of(user=user)
    return AccountOverview(
        uploads=counts["total"],
        public_uploads=counts["public"],
        newest=list(uploads.order_by("-created_at", "-id")[:ACCOUNT_NEWEST_UPLOADS]),
        collection_total=Collection.objects.filter(owner_id=user.pk).count(),
        collections=list(collections.order_by("-updated_at", "-id")[:ACCOUNT_RECENT_COLLECTIONS]),
        token_total=api_tokens_of(user=user).count(),
        indexed=counts["indexed"],
        pending=counts["total"] - counts["indexed"] - counts["failed"],
        failed=counts["failed"],
    )

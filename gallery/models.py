"""Images (data-set photos and people's uploads), their captions, and collections."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, date, datetime, timedelta, timezone

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone as django_timezone


def image_upload_path(instance: Image, filename: str) -> str:
    # Content-addressed names: no clashes, and a file name never leaks the uploader's name.
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else "jpg"
    return f"images/{instance.sha256[:2]}/{instance.sha256}.{ext}"


# What browsing and "newest" sort by: when the photo was taken, else when it was uploaded.
SORTED_AT = Coalesce("taken_at", "created_at")


# The words keyword search matches (search.hybrid). The "simple" configuration (no stemming, no
# stop words) because captions and titles come in any language, Vietnamese included.
TEXT_SEARCH_CONFIG = "simple"
IMAGE_WORDS = SearchVector("title", "description", "original_filename", config=TEXT_SEARCH_CONFIG)
CAPTION_WORDS = SearchVector("text", config=TEXT_SEARCH_CONFIG)


def search_words_field(words: SearchVector) -> models.GeneratedField:
    """``words`` stored in the row: the keyword side ranks every match with ts_rank, which
    read as an expression parses each matching row's text again (half of that side's time at
    600 matches, and it grows with them; bench/README.md). Not editable, never written by
    Django: PostgreSQL keeps it in step with the text."""
    return models.GeneratedField(
        expression=words, output_field=SearchVectorField(), db_persist=True
    )


class Image(models.Model):
    class Source(models.TextChoices):
        FLICKR30K = "flickr30k", "Flickr30k"
        UPLOAD = "upload", "Upload"

    class Visibility(models.TextChoices):
        PRIVATE = "private", "Private"
        PUBLIC = "public", "Public"

    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        VAL = "val", "Validation"
        TEST = "test", "Test"

    source = models.CharField(max_length=16, choices=Source.choices)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="images",
        help_text="Empty for data-set images.",
    )
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    # width/height are set by the services that decode the file; ImageField's width_field
    # would reopen the file every time a row is loaded.
    file = models.ImageField(upload_to=image_upload_path, max_length=255)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    sha256 = models.CharField(max_length=64, db_index=True)
    # Bytes of the stored file: what an upload counts against its owner's UPLOAD_QUOTA_BYTES.
    file_size = models.PositiveBigIntegerField(default=0, db_default=0)
    original_filename = models.CharField(max_length=255, blank=True)
    # Set by the owner on the image page; the title is the alt text and the name shown.
    # Database defaults too, so bulk COPY loads (imports, benches) need not name them.
    title = models.CharField(max_length=200, blank=True, default="", db_default="")
    description = models.TextField(blank=True, max_length=5000, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # When the photo was taken, from its EXIF DateTimeOriginal (read at upload and import).
    # With OffsetTimeOriginal it is the true instant and taken_offset holds the offset in
    # minutes east of UTC; without one, the camera's wall-clock time is stored as if it were
    # UTC and taken_offset is null, so the day and hour shown are the ones the camera showed.
    taken_at = models.DateTimeField(null=True, blank=True)
    taken_offset = models.SmallIntegerField(null=True, blank=True)
    camera_make = models.CharField(max_length=100, blank=True, default="", db_default="")
    camera_model = models.CharField(max_length=100, blank=True, default="", db_default="")
    # EXIF GPS position in degrees, and the place names resolved offline from it.
    latitude = models.FloatField(null=True, blank=True)
    longitude = models.FloatField(null=True, blank=True)
    place_city = models.CharField(max_length=100, blank=True, default="", db_default="")
    place_region = models.CharField(max_length=100, blank=True, default="", db_default="")
    place_country = models.CharField(max_length=100, blank=True, default="", db_default="")
    place_country_code = models.CharField(max_length=2, blank=True, default="", db_default="")
    search_words = search_words_field(IMAGE_WORDS)
    flickr30k_id = models.BigIntegerField(null=True, blank=True, help_text="Flickr30k img_id.")
    split = models.CharField(max_length=8, choices=Split.choices, blank=True)
    # Not a column, only a type: gallery.services.images.image_upload sets it on the image it
    # returns (True: those bytes were already stored) and nothing else does.
    duplicate: bool

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["flickr30k_id"],
                condition=Q(source="flickr30k"),
                name="image_unique_flickr30k_id",
            ),
            # The same person uploading the same bytes twice gets the image they already have.
            models.UniqueConstraint(
                fields=["owner", "sha256"],
                condition=Q(source="upload"),
                name="image_unique_upload_per_owner",
            ),
            models.CheckConstraint(
                condition=(Q(source="upload") & Q(owner__isnull=False))
                | (Q(source="flickr30k") & Q(owner__isnull=True) & Q(visibility="public")),
                name="image_owner_matches_source",
            ),
        ]
        indexes = [
            models.Index(fields=["source", "visibility"]),
            # Browsing and "newest" order by SORTED_AT then id; an expression index rather than a
            # generated column, so adding it never rewrites a large table.
            models.Index(SORTED_AT, "id", name="image_sorted_at_id"),
            # A search's taken-date range ("beach July 2023"): only photos with a taken date.
            models.Index(
                fields=["taken_at"], condition=Q(taken_at__isnull=False), name="image_taken_at"
            ),
            # Keyword search (search.hybrid): the stored words of the title, description and
            # file name (and below, the file name's trigrams).
            GinIndex(fields=["search_words"], name="image_words"),
            # The place names a search's words may name (gallery.selectors
            # .place_names_known and .place_names_visible), read by index-only scans of the
            # images with a place rather than scans of every image.
            models.Index(
                fields=["place_country", "place_region", "place_city", "visibility", "owner"],
                condition=~Q(place_country=""),
                name="image_places",
            ),
            GinIndex(
                fields=["original_filename"], opclasses=["gin_trgm_ops"], name="image_name_trgm"
            ),
        ]

    def __str__(self) -> str:
        return self.title or self.original_filename or f"image {self.pk}"

    @property
    def taken_local(self) -> datetime | None:
        """When the photo was taken as the camera's clock showed it (naive: shown as it is,
        never converted to the viewer's zone), or None when its EXIF did not say."""
        if self.taken_at is None:
            return None
        zone = UTC if self.taken_offset is None else timezone(timedelta(minutes=self.taken_offset))
        return self.taken_at.astimezone(zone).replace(tzinfo=None)

    @property
    def when(self) -> datetime:
        """When a photo is shown as being from (naive, as shown): its taken time, else its
        upload time in the site's zone. Cards, day headers and the image page use it."""
        taken = self.taken_local
        if taken is not None:
            return taken
        return django_timezone.localtime(self.created_at).replace(tzinfo=None)

    @property
    def day(self) -> date:
        """The day of ``when``: what browse and date-sorted results group by."""
        return self.when.date()


class Caption(models.Model):
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="captions")
    text = models.TextField()
    # A BCP 47 tag ("en", "vi", "de"): translations sit beside the original captions, each
    # language numbered from 0, and `evaluate --lang` picks one language's as queries.
    lang = models.CharField(max_length=16, default="en")
    position = models.PositiveSmallIntegerField(default=0)
    search_words = search_words_field(CAPTION_WORDS)

    class Meta:
        ordering = ["image_id", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["image", "lang", "position"], name="caption_unique_lang_position"
            )
        ]
        indexes = [GinIndex(fields=["search_words"], name="caption_words")]

    def __str__(self) -> str:
        return self.text[:80]


def new_share_token() -> str:
    return secrets.token_urlsafe(24)


class Collection(models.Model):
    class Visibility(models.TextChoices):
        PRIVATE = "private", "Private"
        UNLISTED = "unlisted", "Unlisted (anyone with the link)"
        PUBLIC = "public", "Public"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections"
    )
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    share_token = models.CharField(max_length=64, unique=True, default=new_share_token)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    images = models.ManyToManyField(Image, through="CollectionItem", related_name="collections")
    # A smart collection (search.smart): a saved search whose matches are listed live, as the
    # viewer may see them, after the owner's own items (pinned), minus the images the owner
    # hid. Empty smart_query: an ordinary collection.
    smart_query = models.CharField(max_length=1000, blank=True, default="", db_default="")
    smart_model = models.CharField(max_length=64, blank=True, default="", db_default="")
    # {"source": "dataset" | "mine" (the owner's uploads), "hybrid": bool}
    smart_filters = models.JSONField(default=dict, blank=True)
    smart_min_score = models.FloatField(null=True, blank=True, help_text="Cosine cut-off.")
    smart_hidden = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="collection_unique_name")
        ]

    def __str__(self) -> str:
        return self.name


class CollectionItem(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="items")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="collection_items")
    added_at = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True, max_length=2000)
    query = models.CharField(max_length=1000, blank=True, help_text="The search that found it.")
    # The owner's order. New items get 0 and so come first, newest on top, until the owner
    # reorders; a reorder numbers every item from 1.
    position = models.IntegerField(default=0, db_default=0)

    class Meta:
        ordering = ["position", "-added_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "image"], name="collection_item_unique")
        ]

    def __str__(self) -> str:
        return f"{self.collection} / {self.image}"


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 is stored; the token is shown once at creation."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to tell tokens apart.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

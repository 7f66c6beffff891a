"""Place names for images with a GPS position (``gallery.places``)."""

from __future__ import annotations

from django.db.models import QuerySet

from gallery.models import Image
from gallery.places import place_of

PLACE_FIELDS = ("place_city", "place_region", "place_country", "place_country_code")


def image_place_fill(image: Image) -> bool:
    """Set ``image``'s place names from its position (not saved); False when it has none."""
    place = place_of(image.latitude, image.longitude)
    if place is None:
        return False
    image.place_city, image.place_region = place.city, place.region
    image.place_country, image.place_country_code = place.country, place.country_code
    return True


def images_missing_place() -> QuerySet[Image]:
    return Image.objects.filter(
        latitude__isnull=False, longitude__isnull=False, place_country_code=""
    )


def images_place_fill(*, batch_size: int = 1000) -> int:
    """Fill the place names of every image with a position and none yet; returns how many.
    Safe to run again: an image whose position resolves to no place keeps its empty names and
    is tried again (a cheap lookup), and one with names is never touched."""
    filled = 0
    last_pk = 0
    while True:
        chunk = list(images_missing_place().filter(pk__gt=last_pk).order_by("pk")[:batch_size])
        if not chunk:
            return filled
        last_pk = chunk[-1].pk
        changed = [image for image in chunk if image_place_fill(image)]
        Image.objects.bulk_update(changed, PLACE_FIELDS)
        filled += len(changed)

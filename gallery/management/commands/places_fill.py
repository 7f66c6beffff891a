"""Fill place names (city, region, country) for images with a GPS position and none yet."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from gallery.services.places import images_missing_place, images_place_fill


class Command(BaseCommand):
    help = (
        "Resolve place names offline (GeoNames, bundled) for images with a GPS position and "
        "no place yet. Safe to run again."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        waiting = images_missing_place().count()
        filled = images_place_fill()
        self.stdout.write(f"{filled} of {waiting} images with a position got place names")

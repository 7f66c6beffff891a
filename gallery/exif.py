"""What a photo's EXIF says about it: when it was taken, with which camera, and where.

EXIF is written by cameras, phones and editors of every quality, and by anyone crafting a file:
every value here is checked and anything odd (a zero date, a year 3000, a NaN latitude, bytes
where text belongs, a 60 KB "camera model") is dropped, never an error, so an upload is never
refused for its EXIF. ``photo_facts_read`` reads them from an image file,
``photo_facts_from_tags`` from tag values already at hand.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import IO, Any

from PIL import Image as PILImage

# EXIF tag numbers (EXIF 2.32 / TIFF 6.0).
_MAKE, _MODEL, _DATE_TIME = 0x010F, 0x0110, 0x0132
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_TIME_ORIGINAL, _DATE_TIME_DIGITIZED = 0x9003, 0x9004
_OFFSET_TIME, _OFFSET_TIME_ORIGINAL, _OFFSET_TIME_DIGITIZED = 0x9010, 0x9011, 0x9012
_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE = 1, 2, 3, 4

# The first photograph is from 1826: an earlier date is a clock that was never set, not a photo.
TAKEN_EARLIEST = datetime(1826, 1, 1, tzinfo=UTC)
# A wall-clock time stored as if UTC can be up to 14 hours ahead of the real instant.
TAKEN_FUTURE_SLACK = timedelta(days=2)
# Real offsets run from -12:00 to +14:00.
OFFSET_LIMIT_MINUTES = 14 * 60
TEXT_MAX = 100  # the camera columns' length
_VALUE_MAX = 64  # longer than any well-formed date or offset: not parsed at all

_DATE_PATTERN = re.compile(
    r"(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?"
)
_OFFSET_PATTERN = re.compile(r"([+-])(\d{2}):(\d{2})")


@dataclass(frozen=True)
class PhotoFacts:
    """When, with what and where a photo was taken, as far as its EXIF says.

    ``taken_at`` is aware: the true instant when the file gave its UTC offset (``taken_offset``,
    minutes east of UTC), else the camera's wall-clock time labelled UTC with ``taken_offset``
    None (what gallery.models.Image stores). Unknown values are None or "".
    """

    taken_at: datetime | None = None
    taken_offset: int | None = None
    camera_make: str = ""
    camera_model: str = ""
    latitude: float | None = None
    longitude: float | None = None


NO_FACTS = PhotoFacts()


def photo_facts_read(file: IO[bytes]) -> PhotoFacts:
    """The facts in an image file's EXIF (JPEG, HEIC, PNG, WebP, TIFF...); NO_FACTS when it has
    none or they cannot be read. Reads the header only; the file is left at its start."""
    try:
        file.seek(0)
        with warnings.catch_warnings():
            # A very large image is the decoder's business (and its refusal), not this one's;
            # "Corrupt EXIF data" warnings are what this function answers with NO_FACTS.
            warnings.simplefilter("ignore")
            with PILImage.open(file) as image:
                exif = image.getexif()
                return photo_facts_from_tags(exif, exif.get_ifd(_EXIF_IFD), exif.get_ifd(_GPS_IFD))
    except Exception:  # noqa: BLE001 - hostile EXIF can raise anything from inside Pillow
        return NO_FACTS
    finally:
        with contextlib.suppress(OSError, ValueError):
            file.seek(0)


def photo_facts_from_tags(
    main: Mapping[int, Any],
    exif: Mapping[int, Any],
    gps: Mapping[int, Any],
    *,
    now: datetime | None = None,
) -> PhotoFacts:
    """The facts from tag values: ``main`` the first IFD (Make, Model, DateTime), ``exif`` the
    EXIF IFD (DateTimeOriginal and its offsets), ``gps`` the GPS IFD. ``now`` bounds dates in
    the future (default: now)."""
    taken_at, taken_offset = _taken(main, exif, now=now or datetime.now(UTC))
    latitude = _coordinate(gps.get(_GPS_LATITUDE), gps.get(_GPS_LATITUDE_REF), "N", "S", 90)
    longitude = _coordinate(gps.get(_GPS_LONGITUDE), gps.get(_GPS_LONGITUDE_REF), "E", "W", 180)
    if latitude is None or longitude is None or (latitude == 0 and longitude == 0):
        # Half a position is no position, and 0,0 is what receivers write without a fix.
        latitude = longitude = None
    return PhotoFacts(
        taken_at=taken_at,
        taken_offset=taken_offset,
        camera_make=_text(main.get(_MAKE)),
        camera_model=_text(main.get(_MODEL)),
        latitude=latitude,
        longitude=longitude,
    )


def _taken(
    main: Mapping[int, Any], exif: Mapping[int, Any], *, now: datetime
) -> tuple[datetime | None, int | None]:
    """The first good date of DateTimeOriginal, DateTimeDigitized and DateTime, each with its
    own offset tag."""
    for date_value, offset_value in (
        (exif.get(_DATE_TIME_ORIGINAL), exif.get(_OFFSET_TIME_ORIGINAL)),
        (exif.get(_DATE_TIME_DIGITIZED), exif.get(_OFFSET_TIME_DIGITIZED)),
        (main.get(_DATE_TIME), exif.get(_OFFSET_TIME)),
    ):
        wall = _wall_clock(date_value)
        if wall is None:
            continue
        offset = _offset_minutes(offset_value)
        zone = UTC if offset is None else timezone(timedelta(minutes=offset))
        taken = wall.replace(tzinfo=zone).astimezone(UTC)
        if TAKEN_EARLIEST <= taken <= now + TAKEN_FUTURE_SLACK:
            return taken, offset
    return None, None


def _string(value: Any) -> str | None:
    """An ASCII tag's text: Pillow gives str, some writers leave bytes; anything else, None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    return value.replace("\x00", " ").strip()


def _wall_clock(value: Any) -> datetime | None:
    text = _string(value)
    if text is None or len(text) > _VALUE_MAX:
        return None
    match = _DATE_PATTERN.fullmatch(text)
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second)  # naive: _taken labels it
    except ValueError:  # month 13, 31 February, 0000:00:00...
        return None


def _offset_minutes(value: Any) -> int | None:
    text = _string(value)
    if text is None or len(text) > _VALUE_MAX:
        return None
    if text in ("Z", "+00:00", "-00:00"):
        return 0
    match = _OFFSET_PATTERN.fullmatch(text)
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    if int(minutes) >= 60:
        return None
    total = int(hours) * 60 + int(minutes)
    if total > OFFSET_LIMIT_MINUTES:
        return None
    return -total if sign == "-" else total


def _coordinate(
    value: Any, reference: Any, positive: str, negative: str, limit: float
) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals and an N/S or E/W reference."""
    if not isinstance(value, tuple | list) or not 1 <= len(value) <= 3:
        return None
    try:
        parts = [float(part) for part in value]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if not all(math.isfinite(part) and part >= 0 for part in parts):
        return None
    if any(part >= 60 for part in parts[1:]):
        return None
    degrees = sum(part / 60**index for index, part in enumerate(parts))
    ref = (_string(reference) or positive).upper()[:1]
    if ref not in (positive, negative):
        return None
    if degrees > limit:
        return None
    return -degrees if ref == negative else degrees


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _text(value: Any) -> str:
    """A camera make or model: printable, single-spaced, at most TEXT_MAX characters."""
    text = _string(value)
    if not text:
        return ""
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text[:TEXT_MAX]


def camera_name(*, make: str, model: str) -> str:
    """How a camera is called: "Canon EOS R6" from make "Canon" and model "Canon EOS R6" or
    "EOS R6"; a model alone when the make is unknown; "" when both are."""
    if make and model and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(part for part in (make, model) if part)

"""A page of search results as the API's JSON (the ``Results`` schema)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import reverse

from gallery.decoding import file_shown_by_browsers
from gallery.exif import camera_name
from gallery.models import Image
from gallery.services.images import DISPLAY_SIZE
from search.query_parser import ParsedQuery
from search.ranking import SearchPage


def _url_maker(name: str, *args: int) -> Callable[[int], str]:
    """``reverse(name, args=[image_id, *args])`` for many ids at the cost of one ``reverse``: a
    page of hits would otherwise resolve each of its URLs once per hit."""
    marker = 2**31 - 1  # an image id no route refuses, replaced by each hit's
    prefix, _, suffix = reverse(name, args=[marker, *args]).partition(str(marker))
    return lambda image_id: f"{prefix}{int(image_id)}{suffix}"


def results_json(page: SearchPage) -> dict[str, Any]:
    """A page of results as the ``Results`` schema's JSON, built here rather than validated
    by ninja: its validation reads every field of every hit through ORM-compatible getters,
    about 1 ms of a cached search's 8, to check a dict built field by field from that schema
    (the tests check the answers against the OpenAPI schema)."""
    thumbnail_url = _url_maker("image-thumb")
    image_url = _url_maker("image-file")
    display_copy_url = _url_maker("image-thumb-size", DISPLAY_SIZE)
    similar_url = _url_maker("api:image_similar")
    results = {
        "model": page.model_id,
        "k": page.k,
        "offset": page.offset,
        "next_offset": page.next_offset,
        "exact": page.exact,
        "indexed": page.coverage.indexed if page.coverage else None,
        "total": page.coverage.total if page.coverage else None,
        "sort": page.sort,
        "cutoff": None if page.cutoff is None else round(page.cutoff, 5),
        "fusion": page.fusion or None,
        "parsed": parsed_json(page.parsed),
        "results": [
            {
                "id": hit.image.pk,
                "score": round(hit.score, 5),
                "thumbnail_url": thumbnail_url(hit.image.pk),
                "image_url": image_url(hit.image.pk),
                "display_url": (
                    image_url
                    if file_shown_by_browsers(hit.image.file.name or "")
                    else display_copy_url
                )(hit.image.pk),
                "similar_url": similar_url(hit.image.pk),
                "title": hit.image.title,
                "description": hit.image.description,
                "captions": list(hit.captions),
                "source": hit.image.source,
                "width": hit.image.width,
                "height": hit.image.height,
                "taken_at": taken_at_json(hit.image),
                "camera": camera_name(make=hit.image.camera_make, model=hit.image.camera_model),
            }
            for hit in page.hits
        ],
    }
    return results


def parsed_json(parsed: ParsedQuery | None) -> dict[str, Any] | None:
    """How a text query was read (the ``ParsedOut`` schema); None for other searches."""
    if parsed is None:
        return None
    return {
        "text": parsed.search_text,
        "chips": [{"kind": c.kind, "text": c.text, "value": c.value} for c in parsed.chips],
        "taken_after": parsed.taken_after.isoformat() if parsed.taken_after else None,
        "taken_before": parsed.taken_before.isoformat() if parsed.taken_before else None,
        "places": list(parsed.places),
        "exclude": list(parsed.exclude),
        "must": list(parsed.must),
        "problems": list(parsed.problems),
    }


def taken_at_json(image: Image) -> str | None:
    """``Hit.taken_at``: the taken time as the camera showed it, with its offset when known."""
    taken = image.taken_local
    if taken is None:
        return None
    text = taken.isoformat(timespec="seconds")
    if image.taken_offset is not None:
        sign = "-" if image.taken_offset < 0 else "+"
        hours, minutes = divmod(abs(image.taken_offset), 60)
        text += f"{sign}{hours:02d}:{minutes:02d}"
    return text

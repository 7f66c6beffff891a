"""The API's schemas: what each endpoint takes and answers, as the OpenAPI document shows them.

The bounds declared here are for the schema; the searches enforce them, with the messages the
pages share.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime
from typing import Annotated

from ninja import Field, Schema
from pydantic import StringConstraints, field_validator

from search.query_parser import day_start
from search.ranking import MAX_K, MAX_OFFSET, SEARCH_SORTS, SearchFilters, SearchRequest
from search.selectors import MAX_QUERY_CHARS


class Hit(Schema):
    id: int
    score: float
    thumbnail_url: str
    image_url: str = Field(description="The uploaded file as it was stored (HEIC and TIFF too).")
    display_url: str = Field(
        description="A file every browser shows: image_url for JPEG, PNG, GIF and WebP; a JPEG "
        "of at most 2048 px for HEIC and TIFF."
    )
    similar_url: str
    title: str = Field(description="The owner's title; empty when none is set.")
    description: str = Field(description="The owner's description; empty when none is set.")
    captions: list[str]
    source: str
    width: int
    height: int
    taken_at: str | None = Field(
        description="When the photo was taken (its EXIF), as the camera's clock showed it: "
        'ISO 8601 with the UTC offset where the photo recorded one ("2025-06-14T10:30:00+02:00"), '
        'without one where it did not ("2025-06-14T10:30:00"). Null when unknown.'
    )
    camera: str = Field(description='The camera that took it ("Canon EOS R6"); empty if unknown.')


class Results(Schema):
    model: str
    k: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last one.")
    exact: bool
    indexed: int | None = Field(
        description="While the model is still embedding images: how many of those you can "
        "see it has embedded (results come from these only). Null when all are."
    )
    total: int | None = Field(description="Images you can see; null when all are indexed.")
    sort: str = Field(
        "relevance",
        description='"relevance" (best first) or "date" (newest first among the relevant).',
    )
    cutoff: float | None = Field(
        None,
        description="With sort=date: the lowest score listed, 80% of the best hit's "
        "(best - 0.2 * |best|, and at least min_score); the relevant images are those at or "
        "above it among the best 500 by relevance. Null with sort=relevance.",
    )
    fusion: str | None = Field(
        None,
        description='For a fused model ("A+B"): how the models\' rankings were fused '
        '("rrf", reciprocal rank fusion); each score is then the fused score, 1 = ranked '
        "first by every model, not a cosine similarity. Null for one model.",
    )
    parsed: ParsedOut | None = Field(
        None,
        description="For a text search: how the query was read. Null for other searches.",
    )
    results: list[Hit]


class ChipOut(Schema):
    kind: str = Field(
        description="date (a taken-date range), place, exclude (a concept pushed away) or "
        "must (exact words that must appear in the title, description, file name or a caption)",
        json_schema_extra={"enum": ["date", "place", "exclude", "must"]},
    )
    text: str = Field(description="The words as typed.")
    value: str = Field(
        description='As understood: a date range "2023-07-01..2023-08-01" (end exclusive, '
        "either side may be empty), the stored place name, the concept, the exact words."
    )


class ParsedOut(Schema):
    text: str = Field(description="The words searched by meaning.")
    chips: list[ChipOut]
    taken_after: date | None = Field(description="Taken on or after this day (UTC).")
    taken_before: date | None = Field(description="Taken before this day (UTC).")
    places: list[str]
    exclude: list[str]
    must: list[str]
    problems: list[str] = Field(description="Parts that were recognised but filter nothing.")


class ErrorOut(Schema):
    error: str


class ModelOut(Schema):
    id: str
    default: bool


# The bounds below are declared for the schema and enforced by the selectors, whose messages
# the pages share ("k must be between 1 and 100").
_K = Field(20, json_schema_extra={"minimum": 1, "maximum": MAX_K})
_OFFSET = Field(0, json_schema_extra={"minimum": 0, "maximum": MAX_OFFSET})


class PageQuery(Schema):
    model: str | None = Field(
        None,
        description='A model id from /api/models; default: the default. "A+B" (also listed '
        "there once both models have embedded every image) fuses two models' rankings.",
    )
    k: int = _K
    offset: int = _OFFSET
    source: str | None = Field(
        None,
        description="dataset: the Flickr30k images; mine: your uploads (needs credentials).",
        json_schema_extra={"enum": ["dataset", "mine"]},
    )
    collection: int | None = Field(None, ge=1, le=2**31 - 1, description="A collection id.")
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Cosine similarity cut.")
    sort: str = Field(
        "relevance",
        description="relevance: best match first. date: newest first among the relevant "
        "results, those scoring at least 80% of the best hit's score (see `cutoff`).",
        json_schema_extra={"enum": list(SEARCH_SORTS)},
    )

    @field_validator("uploaded_after", "uploaded_before", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # Pydantic also reads a number ("+0.0") as Unix time; the schema promises RFC 3339.
        if isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value.strip()):
            raise ValueError("expected an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
        return value

    @field_validator("uploaded_after", "uploaded_before")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        # Any RFC 3339 offset is valid, but PostgreSQL refuses offsets beyond 15:59: compare in
        # UTC. A bound beyond what UTC can represent (year 1 at +01:00) is the same bound
        # clamped to the earliest or latest moment.
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            edge = datetime.min if value.year == datetime.min.year else datetime.max
            return edge.replace(tzinfo=UTC)

    def filters(self) -> SearchFilters:
        return SearchFilters(
            source=self.source,
            collection_id=self.collection,
            uploaded_after=self.uploaded_after,
            uploaded_before=self.uploaded_before,
        )

    def search_request(self) -> SearchRequest:
        return SearchRequest(
            k=self.k,
            offset=self.offset,
            filters=self.filters(),
            min_score=self.min_score,
            sort=self.sort,
        )


def _regex_class(chars: str) -> str:
    """``chars`` as the inside of a regex character class, as \\uXXXX escapes and ranges that
    ECMA-262 (JSON Schema's dialect) and Python's ``re`` read alike."""
    codes = sorted(map(ord, chars))
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(
        f"\\u{low:04x}" + (f"-\\u{high:04x}" if high > low else "") for low, high in runs
    )


# The characters the selectors trim from a query's ends (Python's ``str.strip``): a query of
# these alone is empty. Spelled out rather than ``\s``, whose meaning differs between regex
# dialects: Python's counts the separator controls U+001C-U+001F and U+0085, ECMA-262's does
# not (and counts U+FEFF, which Python does not trim).
QUERY_WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
QUERY_PATTERN = f"^[^\\u0000]*[^\\u0000{_regex_class(QUERY_WHITESPACE)}][^\\u0000]*$"


# PostgreSQL text cannot hold a NUL character: a word list or name with one is refused (400)
# before it reaches a statement, as a query is.
NO_NUL_PATTERN = "^[^\\u0000]*$"
Words = Annotated[str, StringConstraints(max_length=MAX_QUERY_CHARS, pattern=NO_NUL_PATTERN)]


class TextQuery(PageQuery):
    taken_after: date | None = Field(None, description="Taken on or after this day (UTC).")
    taken_before: date | None = Field(None, description="Taken before this day (UTC).")
    place: str | None = Field(
        None,
        description="A city, region or country as resolved from the images' GPS positions.",
        max_length=100,
        pattern=NO_NUL_PATTERN,
    )
    camera: str | None = Field(
        None, description="Camera make or model.", max_length=100, pattern=NO_NUL_PATTERN
    )
    owner: str | None = Field(
        None, description="The uploader's username.", max_length=150, pattern=NO_NUL_PATTERN
    )
    exclude: list[Words] = Field(
        [],
        description="Concepts to push away (as -word in q); repeat the parameter for more.",
        max_length=10,
    )
    must: list[Words] = Field(
        [],
        description="Exact words that must appear (as quoted words in q); repeatable.",
        max_length=10,
    )
    hybrid: bool = Field(
        False,
        description="Rank by meaning and by the words at once: the vector ranking fused with "
        "full-text search over title, description, file name and captions (reciprocal rank "
        "fusion; scores are then fused, 1 = first on both, not cosines; min_score refused).",
    )
    q: str = Field(
        description=(
            "What to look for, in words. Whitespace at either end is ignored, including the "
            "separator control characters U+001C-U+001F and U+0085; a query of nothing else "
            "is empty (400), as is one with a NUL character. Other control characters are "
            "kept as part of the query."
        ),
        json_schema_extra={
            "minLength": 1,
            "maxLength": MAX_QUERY_CHARS,
            # Something besides the whitespace the API trims, and no NUL character.
            "pattern": QUERY_PATTERN,
        },
    )


class CombinedQuery(PageQuery):
    q: str | None = Field(
        None,
        description='Words to search with the picture ("like this, but at night"); read '
        "for dates, places, exact words and negatives as in /api/search.",
        max_length=MAX_QUERY_CHARS,
        pattern=NO_NUL_PATTERN,
    )
    text_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="With q: the words' share of the one query vector, "
        "normalize(text_weight * words + (1 - text_weight) * picture).",
    )
    exclude: list[Words] = Field(
        [], description="Concepts to push away; repeatable.", max_length=10
    )


class RegionQuery(CombinedQuery):
    left: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the image's width.")
    top: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the image's height.")
    right: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the image's width.")
    bottom: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the image's height.")


class SavedSearchQuery(Schema):
    k: int = _K
    offset: int = _OFFSET
    token: str | None = Field(
        None, max_length=64, description="The share token of a collection shared by link."
    )


def text_query_filters(params: TextQuery) -> SearchFilters:
    """A text search's structured filters: the page's filters plus taken dates, place,
    camera, owner and exact words (the words of ``q`` add theirs in the selector)."""
    return dataclasses.replace(
        params.filters(),
        taken_after=day_start(params.taken_after),
        taken_before=day_start(params.taken_before),
        places=(params.place,) if params.place else (),
        camera=params.camera or None,
        owner=params.owner or None,
        must=tuple(words for words in params.must if words.strip()),
    )


def text_search_request(params: TextQuery) -> SearchRequest:
    """A text search's page, filters (``text_query_filters``) and ranking."""
    return dataclasses.replace(
        params.search_request(), filters=text_query_filters(params), hybrid=params.hybrid
    )


ERRORS = {status: ErrorOut for status in (400, 401, 403, 404, 409, 413, 429, 500, 503)}

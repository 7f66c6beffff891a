"""The API's schemas: what each endpoint takes and answers, as the OpenAPI document shows them.

The bounds declared here are for the schema; the searches enforce them, with the messages the
pages share.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ninja import Field, Schema
from pydantic import field_validator

from search.ranking import MAX_K, MAX_OFFSET, SEARCH_SORTS, SearchFilters, SearchRequest
from search.selectors import MAX_QUERY_CHARS


class Hit(Schema):
    id: int
    score: float
    thumbnail_url: str
    image_url: str
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
    results: list[Hit]


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


class TextQuery(PageQuery):
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


ERRORS = {status: ErrorOut for status in (400, 401, 403, 404, 409, 413, 429, 500, 503)}

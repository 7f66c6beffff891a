"""Reads for search: the public searches (by text, by image, similar images) that the pages and
the API run, the query checks they share, and the evaluation runs the admin lists.

A search chooses its model (``search.model_choice``), turns its query into vectors
(``search.query_encoder``) and ranks with one model (``search.ranking``) or several
(``search.fusion``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.files.uploadedfile import UploadedFile
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from PIL.Image import Image as PILImage

from encoders import EncoderError, ImageDecodeError, WeightsUnavailableError, open_image
from gallery.decoding import DECODE_MIN_SIDE, image_query_decode
from gallery.selectors import image_get_visible, place_names_known, place_names_visible
from gallery.storage import stored_file_open
from kernel.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from search import query_encoder
from search.fusion import images_search_fused
from search.hybrid import images_search_hybrid
from search.model_choice import ModelChoice, model_choose, model_unavailable_message, models_choose
from search.models import EvaluationRun
from search.query_parser import (
    ParsedQuery,
    PlaceLookup,
    day_start,
    fold,
    places_by_key,
    query_parse,
)
from search.query_vectors import vector_combined, vector_without
from search.ranking import (
    QueryVector,
    SearchFilters,
    SearchPage,
    SearchRequest,
    images_search_by_vector,
    search_validate_page,
)
from workers.selectors import embedding_model_unavailable, image_embedding_stored

logger = logging.getLogger(__name__)


def evaluation_runs_latest(
    *, model_ids: Sequence[str], per_model: int = 3
) -> dict[str, list[EvaluationRun]]:
    """The ``per_model`` newest single-model evaluation runs of each of ``model_ids``, newest
    first, in one query (a window numbering each model's runs); models without runs are absent.
    """
    numbered = EvaluationRun.objects.filter(fusion="", models__in=list(model_ids)).annotate(
        newness=Window(
            RowNumber(),
            partition_by=[F("models")],
            order_by=[F("created_at").desc(), F("id").desc()],
        )
    )
    runs: dict[str, list[EvaluationRun]] = {}
    for run in numbered.filter(newness__lte=per_model).order_by("models", "newness"):
        runs.setdefault(run.models, []).append(run)
    return runs


# --- Search -------------------------------------------------------------------------------

MAX_QUERY_CHARS = 1000
# Decoding and embedding a query image takes memory and CPU in the web process; a few at once
# per process, and a request that cannot get a slot soon is told to come back (429).
IMAGE_QUERY_CONCURRENCY = 2
IMAGE_QUERY_WAIT_SECONDS = 10.0
_image_query_slots = threading.BoundedSemaphore(IMAGE_QUERY_CONCURRENCY)


def search_validate_text(text: str | None) -> str:
    """The query as searched: in Unicode NFC (as captions are stored, so composed and
    decomposed forms of one query are one query and one cached vector), stripped and checked.
    The page and the API both take their query text through here."""
    text = unicodedata.normalize("NFC", text or "").strip()
    if not text:
        raise InvalidInput("the query is empty; type what you are looking for")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"the query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    if "\x00" in text:
        raise InvalidInput("the query contains a NUL character")
    return text


def _query_vector(model_id: str, embed: Callable[[], np.ndarray]) -> np.ndarray:
    """Run the query encoder; a model it cannot load is a plain 'unavailable', not a 500."""
    try:
        return embed()
    except WeightsUnavailableError as exc:
        logger.warning("search with %s refused: %s", model_id, exc)
        raise Unavailable(model_unavailable_message(model_id)) from exc
    except EncoderError as exc:
        logger.error("search with %s refused: %s", model_id, exc)
        raise Unavailable(f"The model {model_id} cannot run on this server: {exc}") from exc


@contextlib.contextmanager
def image_query_slot() -> Iterator[None]:
    """Hold one of the process's IMAGE_QUERY_CONCURRENCY slots for decoding and embedding a
    query image; ``TooManyRequests`` (429) when none frees up within IMAGE_QUERY_WAIT_SECONDS."""
    if not _image_query_slots.acquire(timeout=IMAGE_QUERY_WAIT_SECONDS):
        raise TooManyRequests("too many image searches at once; try again in a moment")
    try:
        yield
    finally:
        _image_query_slots.release()


def images_search_by_text(
    *,
    user: User | AnonymousUser,
    text: str | None,
    model_id: str | None = None,
    search: SearchRequest | None = None,
    exclude: Sequence[str] = (),
    now: datetime | None = None,
) -> SearchPage:
    """Images visible to ``user`` that best match a natural-language ``text``.

    The text is read by ``search.query_parser``: dates, places, exact words and negatives
    become filters and excluded concepts (the page's ``parsed`` says how it was read), and
    the words left are searched by meaning. ``exclude`` adds excluded concepts (the API's
    structured form); the query vector excludes them all by the rule of
    ``search.query_vectors``. ``now`` is what relative dates count from (default: now).

    ``model_id`` None means the default model; "A+B" fuses two (``search.model_choice``).
    ``search`` is the page, filters and order (the first 20 by relevance if None). Raises an
    ``ApplicationError`` for input that cannot be searched (``InvalidInput``), a model without
    embeddings (``Conflict``) or a model whose weights cannot be loaded (``Unavailable``).
    """
    search = search or SearchRequest()
    text = search_validate_text(text)
    search_validate_page(search.k, search.offset)
    negatives_extra = [search_validate_text(term) for term in exclude if term.strip()]
    parsed, search = _query_read(user=user, text=text, search=search, now=now)
    negatives = list(dict.fromkeys([*parsed.exclude, *negatives_extra]))
    choice = models_choose(model_id)
    vectors = [
        _without_negatives(m, _text_vector(m, parsed.search_text), negatives)
        for m in choice.model_ids
    ]
    page = _images_search(
        user=user, choice=choice, vectors=vectors, search=search, words=parsed.text
    )
    return dataclasses.replace(page, parsed=parsed)


def _query_read(
    *, user: User | AnonymousUser, text: str, search: SearchRequest, now: datetime | None
) -> tuple[ParsedQuery, SearchRequest]:
    """``text`` read for dates, places, exact words and negatives (places among those
    ``user`` may see), and ``search`` with its filters narrowed by what was read."""
    lookup = _place_lookup(user)
    parsed = query_parse(text, now=now or timezone.now(), place_lookup=lookup)
    filters = filters_with_parsed(search.filters, parsed, place_lookup=lookup)
    return parsed, dataclasses.replace(search, filters=filters)


def _place_lookup(user: User | AnonymousUser) -> PlaceLookup:
    """What the query parser may read as a place for ``user``: a known name (compared by
    ``fold``, as ``places_lookup_from`` does) that an image ``user`` may see carries. The
    names come from ``place_names_known`` (kept per process); a phrase that matches one is
    checked against what ``user`` may see, so a query naming no place costs no query."""
    spellings = _places_by_key(place_names_known())
    checked: dict[str, str | None] = {}

    def lookup(phrase: str) -> str | None:
        key = fold(phrase)
        if key not in spellings:
            return None
        if key not in checked:
            visible = place_names_visible(user=user, names=spellings[key])
            checked[key] = next((name for name in spellings[key] if name in visible), None)
        return checked[key]

    return lookup


@functools.lru_cache(maxsize=2)
def _places_by_key(names: frozenset[str]) -> dict[str, tuple[str, ...]]:
    # Folded once per set of names read (a frozenset keeps its hash), not per search; sorted,
    # so which spelling is checked first does not depend on the set's order.
    return places_by_key(sorted(names))


def _text_vector(model_id: str, text: str) -> np.ndarray:
    return _query_vector(
        model_id, functools.partial(query_encoder.text_embedding, model_id=model_id, text=text)
    )


def _without_negatives(model_id: str, vector: np.ndarray, negatives: Sequence[str]) -> np.ndarray:
    """``vector`` excluding the concepts ``negatives`` by the rule of ``search.query_vectors``."""
    if not negatives:
        return vector
    return vector_without(
        vector,
        [_text_vector(model_id, term) for term in negatives],
        weight=settings.SEARCH_NEGATIVE_WEIGHT,
    )


def filters_with_parsed(
    filters: SearchFilters | None, parsed: ParsedQuery, *, place_lookup: PlaceLookup
) -> SearchFilters:
    """``filters`` (the structured form) narrowed by what the query's words said: taken
    dates intersect, places and exact words add up. A structured place is read like a typed
    one ("hanoi" is the stored "Hanoi"), else used as given."""
    filters = filters or SearchFilters()
    after = [d for d in (filters.taken_after, day_start(parsed.taken_after)) if d is not None]
    before = [d for d in (filters.taken_before, day_start(parsed.taken_before)) if d is not None]
    places = [place_lookup(p) or p for p in filters.places]
    return dataclasses.replace(
        filters,
        taken_after=max(after, default=None),
        taken_before=min(before, default=None),
        places=tuple(dict.fromkeys([*places, *parsed.places])),
        must=tuple(dict.fromkeys([*filters.must, *parsed.must])),
    )


def images_search_by_image(
    *,
    user: User | AnonymousUser,
    file: UploadedFile,
    model_id: str | None = None,
    search: SearchRequest | None = None,
) -> SearchPage:
    """Images visible to ``user`` nearest to a query image, which is embedded and not stored.

    The query image is held to the upload limits (bytes, format, and pixels read from the
    header before decoding), and only IMAGE_QUERY_CONCURRENCY decode at once per process.
    """
    search = search or SearchRequest()
    search_validate_page(search.k, search.offset)
    choice = models_choose(model_id)
    vectors, _ = _image_query_vectors(file=file, model_ids=choice.model_ids)
    return _images_search(user=user, choice=choice, vectors=vectors, search=search)


def image_query_embed(
    *, file: UploadedFile, model_id: str | None = None
) -> tuple[str, np.ndarray, PILImage]:
    """Decode and embed a query image: (the model used, its vector, the decoded picture).

    Held to the upload limits, IMAGE_QUERY_CONCURRENCY at once per process (``TooManyRequests``
    past that); the picture is returned for a preview and is never stored.
    """
    model_id = model_choose(model_id)
    vectors, picture = _image_query_vectors(file=file, model_ids=(model_id,))
    return model_id, vectors[0], picture


def _image_query_vectors(
    *, file: UploadedFile, model_ids: Sequence[str]
) -> tuple[list[np.ndarray], PILImage]:
    """Decode a query image once and embed it with each model, in one image query slot."""
    with image_query_slot():
        picture = image_query_decode(file=file, label="the query image")
        vectors = [
            _query_vector(
                m, functools.partial(query_encoder.image_embedding, model_id=m, image=picture)
            )
            for m in model_ids
        ]
    return vectors, picture


# A region of an image as the query: each side at least this fraction of the image's, and the
# image decoded at up to this many pixels on its shorter side, so a small region still reaches
# the model at its own resolution.
REGION_MIN_FRACTION = 0.02
REGION_MAX_DECODE_SIDE = 4096


@dataclasses.dataclass(frozen=True)
class Region:
    """A rectangle of image ``image_id``, in fractions of its width and height (0..1)."""

    image_id: int
    left: float = 0.0
    top: float = 0.0
    right: float = 1.0
    bottom: float = 1.0

    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) as used: edges given the wrong way round are swapped,
        and a side under REGION_MIN_FRACTION is widened to it around its middle, within the
        image (so any four fractions name a region; the schema cannot say left < right)."""
        edges = []
        for low, high in ((self.left, self.right), (self.top, self.bottom)):
            if not (0 <= low <= 1 and 0 <= high <= 1):
                raise InvalidInput("the region's edges are fractions of the image, 0 to 1")
            low, high = min(low, high), max(low, high)
            if high - low < REGION_MIN_FRACTION:
                middle = min(
                    max((low + high) / 2, REGION_MIN_FRACTION / 2), 1 - REGION_MIN_FRACTION / 2
                )
                low, high = middle - REGION_MIN_FRACTION / 2, middle + REGION_MIN_FRACTION / 2
            edges.append((low, high))
        (left, right), (top, bottom) = edges
        return left, top, right, bottom


def _region_picture(*, user: User | AnonymousUser, region: Region) -> PILImage:
    """The pixels of ``region`` of an image ``user`` may see (``NotFound`` otherwise)."""
    left, top, right, bottom = region.box()
    image = image_get_visible(user=user, image_id=region.image_id)
    if image is None:
        raise NotFound("no such image")
    shorter = min(right - left, bottom - top)
    min_side = min(REGION_MAX_DECODE_SIDE, math.ceil(DECODE_MIN_SIDE / shorter))
    try:
        with stored_file_open(image.file.name or "") as handle:
            picture = open_image(handle, max_pixels=settings.UPLOAD_MAX_PIXELS, min_side=min_side)
    except (ImageDecodeError, OSError) as exc:
        raise Conflict(f"image {image.pk}'s file cannot be read: {exc}") from exc
    width, height = picture.size
    box = (
        min(round(left * width), width - 1), min(round(top * height), height - 1),
        max(round(right * width), round(left * width) + 1),
        max(round(bottom * height), round(top * height) + 1),
    )  # fmt: skip
    return picture.crop(box)


def images_search_combined(
    *,
    user: User | AnonymousUser,
    text: str | None = None,
    file: UploadedFile | None = None,
    region: Region | None = None,
    text_weight: float = 0.5,
    model_id: str | None = None,
    search: SearchRequest | None = None,
    exclude: Sequence[str] = (),
    now: datetime | None = None,
) -> SearchPage:
    """Images nearest to words and a picture at once ("like this photo, but at night"): the
    picture is a query image (``file``) or a region of an image ``user`` may see
    (``region``); the query vector is normalize(text_weight * words + (1 - text_weight) *
    picture), each a unit vector (``search.query_vectors.vector_combined``), minus the
    excluded concepts. The words are read for dates, places and the rest as in a text search.
    """
    search = search or SearchRequest()
    search_validate_page(search.k, search.offset)
    if (file is None) == (region is None):
        raise InvalidInput("give either a query image or a region of an image, not both")
    if not 0 <= text_weight <= 1:
        raise InvalidInput("text_weight must be between 0 and 1")
    parsed = None
    negatives = [search_validate_text(term) for term in exclude if term.strip()]
    if text is not None and text.strip():
        text = search_validate_text(text)
        parsed, search = _query_read(user=user, text=text, search=search, now=now)
        negatives = list(dict.fromkeys([*parsed.exclude, *negatives]))
    choice = models_choose(model_id)
    with image_query_slot():
        if file is not None:
            picture = image_query_decode(file=file, label="the query image")
        else:
            assert region is not None
            picture = _region_picture(user=user, region=region)
        pictures = [
            _query_vector(
                m, functools.partial(query_encoder.image_embedding, model_id=m, image=picture)
            )
            for m in choice.model_ids
        ]
    vectors = []
    for m, picture_vector in zip(choice.model_ids, pictures, strict=True):
        parts = [(picture_vector, 1.0 - text_weight)]
        if parsed is not None and text_weight > 0:
            parts.append((_text_vector(m, parsed.search_text), text_weight))
        vector = vector_combined([(v, w) for v, w in parts if w > 0])
        vector = _without_negatives(m, vector, negatives)
        vectors.append(vector)
    exclude_image_id = region.image_id if region is not None else None
    page = _images_search(
        user=user, choice=choice, vectors=vectors, search=search, exclude_image_id=exclude_image_id
    )
    return dataclasses.replace(page, parsed=parsed)


def images_similar(
    *,
    user: User | AnonymousUser,
    image_id: int,
    model_id: str | None = None,
    search: SearchRequest | None = None,
) -> SearchPage:
    """Images visible to ``user`` most like image ``image_id`` (which ``user`` must see).

    An image the user may not see is ``NotFound`` exactly like one that does not exist.
    """
    search = search or SearchRequest()
    search_validate_page(search.k, search.offset)
    if image_get_visible(user=user, image_id=image_id) is None:
        raise NotFound("no such image")
    choice = models_choose(model_id)
    vectors = []
    for model_id in choice.model_ids:
        vector = image_embedding_stored(image_id=image_id, model_id=model_id)
        if vector is None:
            if embedding_model_unavailable(model_id=model_id):
                raise Unavailable(model_unavailable_message(model_id))
            raise Conflict(f"image {image_id} is not indexed for {model_id} yet; try again later")
        vectors.append(vector)
    return _images_search(
        user=user, choice=choice, vectors=vectors, search=search, exclude_image_id=image_id
    )


def _images_search(
    *,
    user: User | AnonymousUser,
    choice: ModelChoice,
    vectors: Sequence[QueryVector],
    search: SearchRequest,
    exclude_image_id: int | None = None,
    words: str = "",
) -> SearchPage:
    """Rank with the chosen model, or fuse the chosen models' rankings: ``vectors[i]`` is
    ``choice.model_ids[i]``'s query vector. ``search.hybrid`` fuses the one model's ranking
    with the keyword ranking of ``words`` instead (``search.hybrid``)."""
    if search.hybrid:
        if choice.fused:
            raise InvalidInput("hybrid search ranks with one model; choose one, not A+B")
        return images_search_hybrid(
            user=user, model_id=choice.model_ids[0], vector=vectors[0], words=words,
            search=search, exclude_image_id=exclude_image_id,
        )  # fmt: skip
    if choice.fused:
        return images_search_fused(
            user=user, model_ids=choice.model_ids, vectors=vectors, search=search,
            exclude_image_id=exclude_image_id,
        )  # fmt: skip
    return images_search_by_vector(
        user=user, model_id=choice.model_ids[0], vector=vectors[0], search=search,
        exclude_image_id=exclude_image_id, pending=choice.pending,
    )  # fmt: skip

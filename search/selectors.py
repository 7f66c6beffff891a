"""Reads for search: the public searches (by text, by image, similar images) that the pages and
the API run, the query checks they share, and the evaluation runs the admin lists.

A search chooses its model (``search.model_choice``), turns its query into vectors
(``search.query_encoder``) and ranks with one model (``search.ranking``) or several
(``search.fusion``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta

import numpy as np
from django.contrib.auth.models import AnonymousUser, User
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Exists, F, OuterRef, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from PIL.Image import Image as PILImage

from encoders import EncoderError, WeightsUnavailableError
from gallery.decoding import image_query_decode
from gallery.models import Image
from gallery.selectors import image_get_visible
from kernel.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TooManyRequests,
    Unavailable,
)
from search import query_encoder
from search.fusion import images_search_fused
from search.model_choice import ModelChoice, model_choose, model_unavailable_message, models_choose
from search.models import EmbeddingJob, EmbeddingModel, EvaluationRun, ImageEmbedding
from search.ranking import (
    QueryVector,
    SearchPage,
    SearchRequest,
    images_search_by_vector,
    search_validate_page,
)

logger = logging.getLogger(__name__)


# Backfill speed is measured over this window: long enough to smooth batches, short enough to
# show a stall.
PROGRESS_RATE_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True)
class EmbeddingProgress:
    model_id: str
    total: int
    done: int
    failed: int
    # Images still to embed, queued or not yet seen (no embedding, not failed, not blocked).
    pending: int
    # Waiting on a cause that is not the image: the model cannot load, or the batch failed and
    # waits for its next attempt. ``reason`` says why (the model's, else the newest job's).
    blocked: int = 0
    reason: str = ""
    # Embeddings stored per minute over the last PROGRESS_RATE_WINDOW.
    rate_per_minute: float = 0.0
    # Why workers cannot load the model now ("" when nothing is known against it): then no
    # time left can be promised, whatever the rate was a minute ago.
    unavailable: str = ""

    @property
    def remaining(self) -> int:
        return self.pending + self.blocked

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    @property
    def seconds_left(self) -> float | None:
        """At the current rate; None when nothing is moving, nothing is left, or the model
        cannot load."""
        if not self.remaining or not self.rate_per_minute or self.unavailable:
            return None
        return 60.0 * self.remaining / self.rate_per_minute

    def as_dict(self) -> dict[str, object]:
        seconds_left = self.seconds_left
        return {
            **asdict(self),
            "percent": round(self.percent, 1),
            "rate_per_minute": round(self.rate_per_minute, 1),
            "seconds_left": None if seconds_left is None else round(seconds_left),
        }


def embedding_progress(*, model_id: str) -> EmbeddingProgress:
    """Where a model's embeddings stand: done, pending, failed, blocked (with why), and speed."""
    total = Image.objects.count()
    embeddings = ImageEmbedding.objects.filter(model_id=model_id)
    jobs = EmbeddingJob.objects.filter(model_id=model_id)
    # An image whose re-embed waits is not done yet, though its older vector still serves.
    done = images_with_embedding_status(
        images=Image.objects.all(), model_id=model_id, status="done"
    ).count()
    failed = jobs.filter(status=EmbeddingJob.Status.FAILED).count()
    waiting = jobs.filter(status=EmbeddingJob.Status.PENDING).exclude(error="")
    blocked = waiting.count()
    unavailable = embedding_model_unavailable_reason(model_id=model_id)
    reason = unavailable or (
        waiting.order_by("-updated_at").values_list("error", flat=True).first() or ""
    )
    recent = embeddings.filter(created_at__gte=timezone.now() - PROGRESS_RATE_WINDOW).count()
    rate = recent / (PROGRESS_RATE_WINDOW.total_seconds() / 60)
    pending = max(total - done - failed - blocked, 0)
    return EmbeddingProgress(
        model_id, total, done, failed, pending, blocked, reason, rate, unavailable
    )


def embedding_model_unavailable_reason(*, model_id: str) -> str:
    """Why workers cannot load ``model_id`` now, or "" when nothing is known against it."""
    reason = (
        EmbeddingModel.objects.filter(model_id=model_id)
        .values_list("unavailable_reason", flat=True)
        .first()
    )
    return reason or ""


def embedding_models_enabled() -> list[str]:
    return list(EmbeddingModel.objects.filter(enabled=True).values_list("model_id", flat=True))


def embedding_model_enable_hint(*, model_id: str) -> str:
    """How to enable ``model_id`` now, for messages that must name steps that work: settings
    only create a model's row, so one disabled in the admin is enabled there or not at all."""
    if EmbeddingModel.objects.filter(model_id=model_id).exists():
        return "enable it in the admin (Embedding models: select it, action Enable)"
    return (
        "enable it in the admin (Embedding models: Add) or add it to EMBEDDING_MODELS and run "
        "`manage.py migrate`"
    )


def embedding_model_default() -> str | None:
    return EmbeddingModel.objects.filter(is_default=True).values_list("model_id", flat=True).first()


def embedding_jobs_failed(*, model_id: str, limit: int = 20) -> list[tuple[int, str]]:
    return list(
        EmbeddingJob.objects.filter(model_id=model_id, status=EmbeddingJob.Status.FAILED)
        .order_by("-updated_at")
        .values_list("image_id", "error")[:limit]
    )


# Where an image stands with one model, as the admin's image list filters it.
EMBEDDING_STATUSES = ("done", "pending", "failed", "missing")


def images_with_embedding_status(
    *, images: QuerySet[Image], model_id: str, status: str
) -> QuerySet[Image]:
    """The images of ``images`` whose embedding with ``model_id`` is in ``status``:

    - done: it has an embedding and no job waiting to make it anew;
    - pending: its job waits for a worker (new, queued, blocked, or a re-embed of a done one);
    - failed: its job failed (an image being re-embedded may keep an older vector);
    - missing: no embedding, and no job waiting or failed (e.g. the model was just enabled).

    EXISTS subqueries on the outer rows, so any filter or "select all" stays one query.
    """
    if status not in EMBEDDING_STATUSES:
        raise InvalidInput(f"embedding status must be one of {', '.join(EMBEDDING_STATUSES)}")
    embedded = Exists(ImageEmbedding.objects.filter(image_id=OuterRef("pk"), model_id=model_id))
    jobs = EmbeddingJob.objects.filter(image_id=OuterRef("pk"), model_id=model_id)
    if status == "done":
        return images.filter(embedded, ~Exists(jobs.filter(status=EmbeddingJob.Status.PENDING)))
    if status in ("pending", "failed"):
        return images.filter(Exists(jobs.filter(status=status)))
    waiting = jobs.filter(status__in=[EmbeddingJob.Status.PENDING, EmbeddingJob.Status.FAILED])
    return images.filter(~embedded, ~Exists(waiting))


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


def embedding_model_unavailable(*, model_id: str) -> bool:
    """Whether a worker recorded that it could not load ``model_id`` (missing weights...)."""
    return EmbeddingModel.objects.filter(model_id=model_id).exclude(unavailable_reason="").exists()


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
) -> SearchPage:
    """Images visible to ``user`` that best match a natural-language ``text``.

    ``model_id`` None means the default model; "A+B" fuses two (``search.model_choice``).
    ``search`` is the page, filters and order (the first 20 by relevance if None). Raises an
    ``ApplicationError`` for input that cannot be searched (``InvalidInput``), a model without
    embeddings (``Conflict``) or a model whose weights cannot be loaded (``Unavailable``).
    """
    search = search or SearchRequest()
    text = search_validate_text(text)
    search_validate_page(search.k, search.offset)
    choice = models_choose(model_id)
    vectors = [
        _query_vector(m, functools.partial(query_encoder.text_embedding, model_id=m, text=text))
        for m in choice.model_ids
    ]
    return _images_search(user=user, choice=choice, vectors=vectors, search=search)


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
) -> SearchPage:
    """Rank with the chosen model, or fuse the chosen models' rankings: ``vectors[i]`` is
    ``choice.model_ids[i]``'s query vector."""
    if choice.fused:
        return images_search_fused(
            user=user, model_ids=choice.model_ids, vectors=vectors, search=search,
            exclude_image_id=exclude_image_id,
        )  # fmt: skip
    return images_search_by_vector(
        user=user, model_id=choice.model_ids[0], vector=vectors[0], search=search,
        exclude_image_id=exclude_image_id, pending=choice.pending,
    )  # fmt: skip


def image_embedding_stored(*, image_id: int, model_id: str) -> list[float] | None:
    row = ImageEmbedding.objects.filter(image_id=image_id, model_id=model_id).first()
    return None if row is None else list(row.vector)


@dataclass(frozen=True)
class ImageIndexState:
    """Where one image stands with one enabled model, for its page and the upload list."""

    model_id: str
    state: str  # "ready" | "pending" | "failed" | "blocked"
    reason: str = ""

    @property
    def label(self) -> str:
        return {
            "ready": "indexed",
            "pending": "indexing…",
            "failed": "failed",
            "blocked": "waiting for the model",
        }[self.state]


def image_index_status(*, image_id: int) -> list[ImageIndexState]:
    """Per enabled model (default first): indexed, pending, failed (with the reason) or
    blocked (the model cannot load on this server, with why)."""
    done = set(ImageEmbedding.objects.filter(image_id=image_id).values_list("model_id", flat=True))
    jobs = {
        job.model_id: job for job in EmbeddingJob.objects.filter(image_id=image_id).only(
            "model_id", "status", "error"
        )
    }  # fmt: skip
    states = []
    for model in EmbeddingModel.objects.filter(enabled=True).order_by("-is_default", "model_id"):
        job = jobs.get(model.model_id)
        if model.model_id in done:
            states.append(ImageIndexState(model.model_id, "ready"))
        elif job is not None and job.status == EmbeddingJob.Status.FAILED:
            states.append(ImageIndexState(model.model_id, "failed", job.error))
        elif model.unavailable_reason:
            states.append(ImageIndexState(model.model_id, "blocked", model.unavailable_reason))
        else:
            states.append(ImageIndexState(model.model_id, "pending"))
    return states

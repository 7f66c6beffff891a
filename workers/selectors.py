"""Reads of the embedding index: each model's progress and state, and where each image stands
with each enabled model (its page, the upload list, the admin's filters)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import DateTimeField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from gallery.hooks import ImagesIndexConditions
from gallery.models import Image
from kernel.errors import InvalidInput
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding, Worker

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


def embedding_model_unavailable(*, model_id: str) -> bool:
    """Whether a worker recorded that it could not load ``model_id`` (missing weights...)."""
    return EmbeddingModel.objects.filter(model_id=model_id).exclude(unavailable_reason="").exists()


def default_model_if_unavailable() -> str | None:
    """The default model's id if workers cannot load it (uploads then wait for it), else None."""
    return (
        EmbeddingModel.objects.filter(is_default=True)
        .exclude(unavailable_reason="")
        .values_list("model_id", flat=True)
        .first()
    )


def images_index_conditions() -> ImagesIndexConditions:
    """Failed with an enabled model, or embedded by all of them (the account page's counts)."""
    enabled = embedding_models_enabled()
    failed = Exists(
        EmbeddingJob.objects.filter(
            image_id=OuterRef("pk"), model_id__in=enabled, status=EmbeddingJob.Status.FAILED
        )
    )
    complete = Q()
    for model_id in enabled:
        complete &= Q(
            Exists(ImageEmbedding.objects.filter(image_id=OuterRef("pk"), model_id=model_id))
        )
    return ImagesIndexConditions(failed=Q(failed), complete=complete)


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


def workers_live() -> QuerySet[Worker]:
    """Workers seen within WORKER_STALE_SECONDS, by the database's clock (heartbeats are
    written with it)."""
    stale = timedelta(seconds=settings.WORKER_STALE_SECONDS)
    return Worker.objects.filter(
        last_seen__gte=ExpressionWrapper(Now() - stale, output_field=DateTimeField())
    )


def embedding_model_loaded_elsewhere(*, model_id: str, hostname: str, pid: int) -> bool:
    """Whether a live worker other than (``hostname``, ``pid``) loads ``model_id``."""
    return (
        workers_live()
        .filter(models_loaded__contains=[model_id])
        .exclude(hostname=hostname, pid=pid)
        .exists()
    )


def embedding_model_batch_size_live(*, model_id: str) -> int | None:
    """The largest batch size among live workers that load ``model_id`` (what the sweep sizes
    its batches for, so a GPU worker gets whole batches), or None when none is live."""
    sizes = workers_live().filter(models_loaded__contains=[model_id]).values_list("batch_size")
    return max((size for (size,) in sizes), default=None)

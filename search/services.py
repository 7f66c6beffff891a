"""Writes for embeddings: storing vectors and keeping one HNSW index per registered model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from encoders.registry import MODELS, model_spec
from gallery.models import Image
from search.models import EmbeddingJob, EmbeddingModel, EvaluationRun, ImageEmbedding

if TYPE_CHECKING:
    # search.evaluation imports this module; the report type is only needed for annotations.
    from search.evaluation import EvaluationReport


HNSW_BUILD_MEMORY = "1GB"
# Loading at least this many rows into a model that has none drops its index first and builds
# it once at the end: one build is several times faster than this many graph insertions.
INDEX_REBUILD_MIN_ROWS = 5000


class EmbeddingDimensionError(ValueError):
    """A vector's length does not match the dimension of the model it is stored for."""


def hnsw_index_name(model_id: str) -> str:
    return "search_emb_hnsw_" + model_id.replace("-", "_").replace(".", "_")


def embedding_indexes_ensure(
    *, using: str = "default", model_ids: Iterable[str] | None = None, concurrently: bool = False
) -> None:
    """Create the partial HNSW index of each registered model that lacks one.

    ``concurrently`` builds without blocking reads and writes of the table (other models keep
    being searched and embedded); it cannot run inside a transaction.
    """
    table = ImageEmbedding._meta.db_table
    mode = "CONCURRENTLY " if concurrently else ""
    with connections[using].cursor() as cursor:
        # HNSW builds many times faster when the whole graph fits in maintenance_work_mem
        # (PostgreSQL's 64 MB default holds ~20k 512-d vectors); it is a cap, not a reservation.
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [HNSW_BUILD_MEMORY])
        for model_id in model_ids or MODELS:
            spec = model_spec(model_id)
            cursor.execute(
                f'CREATE INDEX {mode}IF NOT EXISTS "{hnsw_index_name(model_id)}" ON "{table}" '
                f"USING hnsw ((vector::vector({spec.dim})) vector_cosine_ops) "
                f"WHERE model_id = %s",
                [model_id],
            )
        cursor.execute("RESET maintenance_work_mem")


def embedding_index_drop(*, model_id: str, using: str = "default") -> None:
    """Drop a model's HNSW index without blocking the table (for a bulk load, then rebuild)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{hnsw_index_name(model_id)}"')


def _normalised_rows(model_id: str, vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    dim = model_spec(model_id).dim
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        got = matrix.shape[1] if matrix.ndim == 2 else matrix.shape
        raise EmbeddingDimensionError(
            f"model {model_id!r} stores {dim}-dimensional vectors; got {got}"
        )
    if not np.isfinite(matrix).all():
        raise EmbeddingDimensionError(f"vectors for model {model_id!r} contain NaN or infinity")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbeddingDimensionError(f"vectors for model {model_id!r} include an all-zero row")
    return matrix / norms


def embeddings_store(
    *,
    model_id: str,
    image_ids: Sequence[int],
    vectors: Sequence[Sequence[float]] | np.ndarray,
    replace: bool = False,
) -> int:
    """Store one L2-normalised vector per image for ``model_id``, in one bulk statement.

    Images that already have an embedding for the model keep it (safe to run twice) unless
    ``replace`` is set (re-embedding after the weights changed). Their jobs are marked done.
    Returns how many embeddings were newly stored or replaced.
    """
    if len(image_ids) != len(vectors):
        raise ValueError(f"{len(image_ids)} image ids but {len(vectors)} vectors")
    if not image_ids:
        return 0
    matrix = _normalised_rows(model_id, vectors)
    rows = [
        ImageEmbedding(image_id=image_id, model_id=model_id, vector=vector)
        for image_id, vector in zip(image_ids, matrix, strict=True)
    ]
    with transaction.atomic():
        before = ImageEmbedding.objects.filter(model_id=model_id, image_id__in=image_ids).count()
        if replace:
            ImageEmbedding.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["image", "model_id"],
                update_fields=["vector", "created_at"],
                batch_size=1000,
            )
        else:
            ImageEmbedding.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
        after = ImageEmbedding.objects.filter(model_id=model_id, image_id__in=image_ids).count()
        jobs = [
            EmbeddingJob(image_id=image_id, model_id=model_id, status=EmbeddingJob.Status.DONE)
            for image_id in image_ids
        ]
        EmbeddingJob.objects.bulk_create(
            jobs,
            update_conflicts=True,
            unique_fields=["image", "model_id"],
            update_fields=["status", "error", "updated_at"],
        )
    return len(rows) if replace else after - before


class EmbeddingModelStateError(ValueError):
    """A model switch that cannot be done now (unknown, disabled, or backfill incomplete)."""


def embedding_models_sync_from_settings() -> None:
    """Create state rows for the models the settings enable; never re-enable a disabled one.

    The first run also makes EMBEDDING_DEFAULT_MODEL the default when no model is.
    """
    for model_id in settings.EMBEDDING_MODELS:
        model_spec(model_id)  # an unknown id in settings fails migrate with the list of ids
        EmbeddingModel.objects.get_or_create(model_id=model_id, defaults={"enabled": True})
    default = settings.EMBEDDING_DEFAULT_MODEL
    if default and not EmbeddingModel.objects.filter(is_default=True).exists():
        EmbeddingModel.objects.filter(model_id=default, enabled=True).update(is_default=True)


def embedding_model_enable(*, model_id: str) -> EmbeddingModel:
    """Enable a model; its backfill is queued once the transaction commits."""
    model_spec(model_id)
    state, _ = EmbeddingModel.objects.update_or_create(
        model_id=model_id, defaults={"enabled": True}
    )
    from workers.tasks import embeddings_sweep

    transaction.on_commit(lambda: embeddings_sweep.delay(model_id=model_id))
    return state


def embedding_model_disable(*, model_id: str, delete_embeddings: bool = False) -> int:
    """Stop new work for a model; optionally delete its embeddings. Returns rows deleted.

    The default model cannot be disabled: make another model the default first, so search
    never loses its model.
    """
    with transaction.atomic():
        state = EmbeddingModel.objects.select_for_update().filter(model_id=model_id).first()
        if state is None:
            raise EmbeddingModelStateError(f"model {model_id!r} is not enabled")
        if state.is_default:
            raise EmbeddingModelStateError(
                f"{model_id!r} is the default search model; make another model the default first"
            )
        state.enabled = False
        state.save(update_fields=["enabled", "updated_at"])
        EmbeddingJob.objects.filter(model_id=model_id, status=EmbeddingJob.Status.PENDING).delete()
        if not delete_embeddings:
            return 0
        EmbeddingJob.objects.filter(model_id=model_id).delete()
        deleted, _ = ImageEmbedding.objects.filter(model_id=model_id).delete()
    return deleted


def embedding_model_make_default(*, model_id: str) -> EmbeddingModel:
    """Make ``model_id`` the one search uses; only once every image has its embedding."""
    from search.selectors import embedding_progress

    with transaction.atomic():
        state = EmbeddingModel.objects.select_for_update().filter(model_id=model_id).first()
        if state is None or not state.enabled:
            raise EmbeddingModelStateError(f"enable {model_id!r} before making it the default")
        progress = embedding_progress(model_id=model_id)
        if progress.pending:
            raise EmbeddingModelStateError(
                f"{model_id!r} still has {progress.pending} of {progress.total} images to "
                f"embed; make it the default once its backfill is complete"
            )
        EmbeddingModel.objects.filter(is_default=True).update(is_default=False)
        state.is_default = True
        state.save(update_fields=["is_default", "updated_at"])
    return state


def embedding_jobs_create_missing(*, model_id: str, image_ids: Sequence[int] | None = None) -> int:
    """Add a pending job for every image (or each of ``image_ids``) with none for the model."""
    jobs = EmbeddingJob._meta.db_table
    images = Image._meta.db_table
    only = "AND i.id = ANY(%s)" if image_ids is not None else ""
    params: list[object] = [model_id, model_id]
    if image_ids is not None:
        params.append(list(image_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {jobs} (image_id, model_id, status, error, attempts, created_at, updated_at)
            SELECT i.id, %s, 'pending', '', 0, now(), now() FROM {images} i
            WHERE NOT EXISTS (SELECT 1 FROM {jobs} j WHERE j.image_id = i.id AND j.model_id = %s)
            {only}
            ON CONFLICT (image_id, model_id) DO NOTHING
            """,
            params,
        )
        return cursor.rowcount


def embedding_jobs_claim(
    *, model_id: str, stale_after: timedelta, include_failed: bool = False
) -> list[int]:
    """Mark pending jobs not queued within ``stale_after`` as queued now; return their images.

    One UPDATE ... RETURNING, so two sweeps running at once never queue the same image twice.
    """
    statuses = [EmbeddingJob.Status.PENDING]
    if include_failed:
        statuses.append(EmbeddingJob.Status.FAILED)
    cutoff = timezone.now() - stale_after
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {EmbeddingJob._meta.db_table} SET enqueued_at = now()
            WHERE model_id = %s AND status = ANY(%s)
              AND (enqueued_at IS NULL OR enqueued_at < %s)
            RETURNING image_id
            """,
            [model_id, statuses, cutoff],
        )
        return sorted(row[0] for row in cursor.fetchall())


def embedding_jobs_record_attempt(*, model_id: str, image_ids: Sequence[int]) -> None:
    EmbeddingJob.objects.filter(model_id=model_id, image_id__in=image_ids).update(
        attempts=F("attempts") + 1, updated_at=timezone.now()
    )


def embedding_jobs_mark_failed(*, model_id: str, failures: dict[int, str]) -> None:
    """Record permanent failures (e.g. an undecodable file) with their readable reasons."""
    if not failures:
        return
    jobs = [
        EmbeddingJob(image_id=image_id, model_id=model_id, status=EmbeddingJob.Status.FAILED,
                     error=reason[:2000])
        for image_id, reason in failures.items()
    ]  # fmt: skip
    EmbeddingJob.objects.bulk_create(
        jobs,
        update_conflicts=True,
        unique_fields=["image", "model_id"],
        update_fields=["status", "error", "updated_at"],
    )


def embedding_jobs_note_blocked(*, model_id: str, image_ids: Sequence[int], reason: str) -> None:
    """Keep jobs pending but say why they cannot run now (e.g. the weights are missing)."""
    EmbeddingJob.objects.filter(
        model_id=model_id, image_id__in=image_ids, status=EmbeddingJob.Status.PENDING
    ).update(error=reason[:2000], updated_at=timezone.now())


class EmbeddingsImportError(ValueError):
    """Precomputed embeddings that cannot be imported as they are; nothing was stored."""


@dataclass(frozen=True)
class EmbeddingsImportResult:
    rows: int
    stored: int  # newly stored
    already_present: int  # matched images that had an embedding for the model (kept)
    unmatched: list[str]  # file names with no Flickr30k image


def embeddings_import(
    *,
    model_id: str,
    vectors: np.ndarray,
    filenames: Sequence[str | bytes],
    chunk_size: int = 5000,
) -> EmbeddingsImportResult:
    """Store precomputed image embeddings, row i being the image whose file is ``filenames[i]``.

    Everything is checked before anything is stored (row counts, the model's dimension, finite
    non-zero rows, unique names) and the rows go in one transaction, so a bad file stores
    nothing. Rows are L2-normalised on the way in. Names are matched to Flickr30k images by
    their original file name; names with no image are reported, not an error. Images that
    already have an embedding for the model keep it, so importing twice adds nothing.
    """
    dim = model_spec(model_id).dim
    names = [_file_name(name) for name in filenames]
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise EmbeddingsImportError(
            f"embeddings must be a 2-D array (one row per image); got shape {matrix.shape}"
        )
    if matrix.shape[0] != len(names):
        raise EmbeddingsImportError(
            f"row count mismatch: {matrix.shape[0]} rows of embeddings but {len(names)} file names"
        )
    if matrix.shape[1] != dim:
        raise EmbeddingsImportError(
            f"dimension mismatch: {model_id} stores {dim}-dimensional vectors but the rows have "
            f"{matrix.shape[1]} (embeddings of another model?)"
        )
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise EmbeddingsImportError(f"embeddings must be numbers; got dtype {matrix.dtype}")
    # Checked after the cast: a float64 beyond float32's range would become infinity.
    matrix = matrix.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        raise EmbeddingsImportError(
            f"{len(bad)} rows contain NaN or infinity (the first: row {bad[0]}, {names[bad[0]]})"
        )
    zero = np.flatnonzero(~matrix.any(axis=1))
    if len(zero):
        raise EmbeddingsImportError(
            f"{len(zero)} rows are all zeros and have no direction (the first: row {zero[0]}, "
            f"{names[zero[0]]})"
        )
    if len(set(names)) != len(names):
        seen: set[str] = set()
        twice = next(n for n in names if n in seen or seen.add(n))
        raise EmbeddingsImportError(f"file name {twice!r} appears more than once")

    image_of: dict[str, int] = {}
    flickr30k = Image.objects.filter(source=Image.Source.FLICKR30K)
    for start in range(0, len(names), chunk_size):
        image_of.update(
            flickr30k.filter(original_filename__in=names[start : start + chunk_size]).values_list(
                "original_filename", "id"
            )
        )
    rows = [row for row, name in enumerate(names) if name in image_of]
    unmatched = [name for name in names if name not in image_of]
    stored = 0
    rebuild = (
        len(rows) >= INDEX_REBUILD_MIN_ROWS
        and not transaction.get_connection().in_atomic_block
        and not ImageEmbedding.objects.filter(model_id=model_id).exists()
    )
    if rebuild:
        embedding_index_drop(model_id=model_id)
    try:
        with transaction.atomic():
            for start in range(0, len(rows), chunk_size):
                part = rows[start : start + chunk_size]
                stored += embeddings_store(
                    model_id=model_id,
                    image_ids=[image_of[names[row]] for row in part],
                    vectors=matrix[part],
                )
    finally:
        if rebuild:  # also after a failed load: the model must never be left without its index
            embedding_indexes_ensure(model_ids=[model_id], concurrently=True)
    return EmbeddingsImportResult(
        rows=len(names), stored=stored, already_present=len(rows) - stored, unmatched=unmatched
    )


def _file_name(name: str | bytes) -> str:
    # Arrays saved from Python 2 or with dtype "S" hold bytes; some hold paths, not bare names.
    text = name.decode() if isinstance(name, bytes) else str(name)
    return text.strip().replace("\\", "/").rsplit("/", 1)[-1]


def evaluation_runs_record(*, report: EvaluationReport) -> list[EvaluationRun]:
    """Save one ``EvaluationRun`` per system of ``report`` (the admin lists them)."""
    runs = [
        EvaluationRun(
            models=",".join(result.model_ids),
            fusion=result.fusion,
            split=report.split,
            gallery=report.gallery,
            mode=result.mode,
            prompt=report.prompt,
            n_images=report.n_images,
            n_queries=report.n_queries,
            t2i_r1=result.text_to_image.r1,
            t2i_r5=result.text_to_image.r5,
            t2i_r10=result.text_to_image.r10,
            t2i_median_rank=result.text_to_image.median_rank,
            t2i_mean_rank=result.text_to_image.mean_rank,
            i2t_r1=result.image_to_text.r1,
            i2t_r5=result.image_to_text.r5,
            i2t_r10=result.image_to_text.r10,
            i2t_median_rank=result.image_to_text.median_rank,
            i2t_mean_rank=result.image_to_text.mean_rank,
            duration_seconds=result.duration_seconds,
        )
        for result in report.results
    ]
    return EvaluationRun.objects.bulk_create(runs)

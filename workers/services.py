"""Writes of the embedding index: storing and importing vectors, the job state machine, and the
models' state (enable, disable, default, availability)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, Exists, ExpressionWrapper, F, Q, QuerySet, Value
from django.db.models.functions import Coalesce, Greatest, Now
from django.utils import timezone

from encoders.registry import model_spec
from gallery.models import Image
from gallery.services.images import image_id_chunks
from kernel.errors import InvalidInput
from workers.broker import SWEEP_TASK, task_send
from workers.indexes import embedding_index_build, embedding_index_drop
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding, Worker
from workers.partitions import partition_truncate, partitions_ensure
from workers.selectors import embedding_models_enabled, embedding_progress, workers_live
from workers.signals import embedding_model_deleting

# Loading at least this many rows into a model that has none drops its index first and builds
# it once at the end: one build is several times faster than this many graph insertions.
INDEX_REBUILD_MIN_ROWS = 5000
logger = logging.getLogger(__name__)


class EmbeddingVectorsError(ValueError):
    """Vectors that cannot be stored as they are; nothing was stored. The message names the
    first bad row."""


class EmbeddingDimensionError(EmbeddingVectorsError):
    """A vector's length does not match the dimension of the model it is stored for."""


# A row further than this from unit length after normalising had a length float64 could not
# compute: its squares overflowed, or underflowed to zero or to imprecise subnormals.
_UNIT_TOLERANCE = 1e-6


def embedding_rows_normalised(
    *,
    model_id: str,
    vectors: Sequence[Sequence[float]] | np.ndarray,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """``vectors`` as float32 rows of unit length for ``model_id``, or ``EmbeddingVectorsError``.

    The one check every stored vector passes: a 2-D array of numbers with the model's
    dimension, at least one row, every value finite and every row with a direction. Rows are
    normalised in float64: in float32 the squares of values near 1e20 overflow (the row became
    all zeros) and those of values near 1e-20 underflow. A row whose length float64 cannot
    represent either is refused. ``names`` label rows in messages (row i is ``names[i]``), and
    must then be one per row and unique (an import matches rows to images by them).
    """
    dim = model_spec(model_id).dim
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise EmbeddingVectorsError(
            f"embeddings must be a 2-D array (one row per image); got shape {matrix.shape}"
        )
    if names is not None and matrix.shape[0] != len(names):
        raise EmbeddingVectorsError(
            f"row count mismatch: {matrix.shape[0]} rows of embeddings but {len(names)} file names"
        )
    if matrix.shape[1] != dim:
        raise EmbeddingDimensionError(
            f"dimension mismatch: {model_id} stores {dim}-dimensional vectors; got "
            f"{matrix.shape[1]} values per row (embeddings of another model?)"
        )
    if matrix.shape[0] == 0:
        raise EmbeddingVectorsError(f"the embeddings array has no rows (shape {matrix.shape})")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise EmbeddingVectorsError(f"embeddings must be numbers; got dtype {matrix.dtype}")

    def row(index: int) -> str:
        return f"row {index}, {names[index]}" if names is not None else f"row {index}"

    rows = matrix.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        raise EmbeddingVectorsError(
            f"{len(bad)} rows contain NaN or infinity (the first: {row(bad[0])})"
        )
    zero = np.flatnonzero(~rows.any(axis=1))
    if len(zero):
        raise EmbeddingVectorsError(
            f"{len(zero)} rows are all zeros and have no direction (the first: {row(zero[0])})"
        )
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        # einsum: the squared lengths without np.linalg.norm's temporary array of squares.
        unit = rows / np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
        # NaN compares False: a length that overflowed or underflowed fails this too.
        exact = np.abs(np.sqrt(np.einsum("ij,ij->i", unit, unit)) - 1.0) <= _UNIT_TOLERANCE
    off = np.flatnonzero(~exact)
    if len(off):
        largest = float(np.abs(rows[off[0]]).max())
        size = "large" if largest > 1 else "small"
        raise EmbeddingVectorsError(
            f"{len(off)} rows have values too {size} to normalise in float64 (the first: "
            f"{row(off[0])}, largest value {largest:.3g})"
        )
    if names is not None and len(set(names)) != len(names):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise EmbeddingVectorsError(f"file name {name!r} appears more than once")
            seen.add(name)
    return unit.astype(np.float32)


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
    matrix = embedding_rows_normalised(model_id=model_id, vectors=vectors)
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

    The first run also makes EMBEDDING_DEFAULT_MODEL the default when no model is. Each model
    gets its partition of the embedding table, if it has none yet.
    """
    for model_id in settings.EMBEDDING_MODELS:
        model_spec(model_id)  # an unknown id in settings fails migrate with the list of ids
    partitions_ensure(model_ids=settings.EMBEDDING_MODELS)
    for model_id in settings.EMBEDDING_MODELS:
        EmbeddingModel.objects.get_or_create(model_id=model_id, defaults={"enabled": True})
    default = settings.EMBEDDING_DEFAULT_MODEL
    if default and not EmbeddingModel.objects.filter(is_default=True).exists():
        EmbeddingModel.objects.filter(model_id=default, enabled=True).update(is_default=True)


def embedding_model_enable(*, model_id: str) -> EmbeddingModel:
    """Enable a model; its backfill is queued once the transaction commits.

    The sweep task is sent by name: the task layer imports these services, not the reverse.
    With the broker down the periodic sweep starts the backfill instead (the model is enabled).
    """
    model_spec(model_id)
    partitions_ensure(model_ids=[model_id])  # its embeddings need somewhere to go
    state, _ = EmbeddingModel.objects.update_or_create(
        model_id=model_id, defaults={"enabled": True}
    )
    embedding_completeness_forget(model_id=model_id)
    embeddings_sweep_send(model_id=model_id)
    return state


def embedding_completeness_forget(*, model_id: str) -> None:
    """Void ``model_id``'s recorded completeness (``EmbeddingModel.embeddings_complete``): for
    changes its O(1) check cannot see (no newer image, no pending job), such as embeddings
    deleted with the model disabled, or a model enabled again."""
    EmbeddingModel.objects.filter(model_id=model_id).update(
        embeddings_complete=False, completeness_version=F("completeness_version") + 1
    )


def embedding_completeness_record(*, model_id: str, version: int, through_image_id: int) -> bool:
    """Record that ``model_id`` has embedded every image up to ``through_image_id`` (nothing
    remaining, as ``embedding_progress`` counted it), unless its completeness was voided since
    ``version`` was read (a change made while it was counted). Returns whether it was kept."""
    return bool(
        EmbeddingModel.objects.filter(model_id=model_id, completeness_version=version).update(
            embeddings_complete=True, complete_through_image_id=through_image_id
        )
    )


def embeddings_sweep_send(*, model_id: str) -> None:
    """Have a worker run the sweep for ``model_id`` once the transaction commits, so the jobs
    it finds due are queued now rather than at the next periodic sweep.

    Sent by name (``workers.broker``): with the broker down the periodic sweep does the same
    work later.
    """

    def send_sweep() -> None:
        error = task_send(
            SWEEP_TASK, kwargs={"model_id": model_id}, queue=settings.CELERY_TASK_DEFAULT_QUEUE
        )
        if error is not None:
            logger.warning("broker unavailable (%s): the next sweep queues %s", error, model_id)

    transaction.on_commit(send_sweep)


def _model_state_locked_not_default(model_id: str, *, missing: str) -> EmbeddingModel:
    """The model's state row, locked for this transaction; the default model is refused:
    search must never lose its model."""
    state = EmbeddingModel.objects.select_for_update().filter(model_id=model_id).first()
    if state is None:
        raise EmbeddingModelStateError(f"model {model_id!r} {missing}")
    if state.is_default:
        raise EmbeddingModelStateError(
            f"{model_id!r} is the default search model; make another model the default first"
        )
    return state


def embedding_model_disable(*, model_id: str, delete_embeddings: bool = False) -> int:
    """Stop new work for a model; optionally delete its embeddings. Returns rows deleted.

    The default model cannot be disabled: make another model the default first, so search
    never loses its model.
    """
    with transaction.atomic():
        state = _model_state_locked_not_default(model_id, missing="is not enabled")
        state.enabled = False
        state.save(update_fields=["enabled", "updated_at"])
        EmbeddingJob.objects.filter(model_id=model_id, status=EmbeddingJob.Status.PENDING).delete()
        # Images lost their jobs: the next enable's sweep must look at every image again.
        EmbeddingModel.objects.filter(model_id=model_id).update(jobs_cursor=0)
        embedding_completeness_forget(model_id=model_id)
        if not delete_embeddings:
            return 0
        EmbeddingJob.objects.filter(model_id=model_id).delete()
        # Its partition emptied at once, rather than a DELETE (and VACUUM) of every row.
        deleted = partition_truncate(model_id=model_id)
    return deleted


def embedding_model_delete(*, model_id: str) -> int:
    """Forget a model: its state row, embeddings, jobs and stored caption vectors, in one
    transaction. Returns the image embeddings deleted.

    The default model is refused, as with disabling: search must never lose its model. Apps
    that keep vectors of their own under the model id (search's caption vectors) delete them on
    ``workers.signals.embedding_model_deleting``, inside the same transaction. The
    model's embeddings go by emptying its partition (TRUNCATE: no per-row delete, no VACUUM, the
    disk given back); the partition and its HNSW index stay, empty, ready if the model is
    enabled again. A model still listed in
    EMBEDDING_MODELS gets its state row back (enabled) on the next migrate.
    """
    with transaction.atomic():
        state = _model_state_locked_not_default(model_id, missing="is not known")
        EmbeddingJob.objects.filter(model_id=model_id).delete()
        deleted = partition_truncate(model_id=model_id)
        embedding_model_deleting.send(sender=EmbeddingModel, model_id=model_id)
        state.delete()
    return deleted


def embedding_model_make_default(*, model_id: str) -> EmbeddingModel:
    """Make ``model_id`` the one search uses; only once every image has its embedding."""
    with transaction.atomic():
        state = EmbeddingModel.objects.select_for_update().filter(model_id=model_id).first()
        if state is None or not state.enabled:
            raise EmbeddingModelStateError(f"enable {model_id!r} before making it the default")
        progress = embedding_progress(model_id=model_id)
        if progress.remaining:
            raise EmbeddingModelStateError(
                f"{model_id!r} still has {progress.remaining} of {progress.total} images to "
                f"embed; make it the default once its backfill is complete"
            )
        EmbeddingModel.objects.filter(is_default=True).update(is_default=False)
        state.is_default = True
        state.save(update_fields=["is_default", "updated_at"])
    return state


def embedding_jobs_missing_statement(
    *, model_id: str, image_ids: Sequence[int] | None = None
) -> tuple[str, dict[str, str | int | list[int]]]:
    """The INSERT that gives every image (or each of ``image_ids``) with no job for the model a
    pending one, and its parameters (the tests EXPLAIN it).

    The model's cursor goes in as a value, not a subquery: the planner then knows how few
    images lie above it and anti-joins them through the jobs' unique index, where for an
    unknown bound it guesses a third of the table and hashes every job of the model.
    """
    jobs = EmbeddingJob._meta.db_table
    images = Image._meta.db_table
    params: dict[str, str | int | list[int]] = {"model": model_id}
    if image_ids is not None:
        only, params["ids"] = "AND i.id = ANY(%(ids)s)", list(image_ids)
    else:
        only = "AND i.id > %(above)s"
        params["above"] = (
            EmbeddingModel.objects.filter(model_id=model_id)
            .values_list("jobs_cursor", flat=True)
            .first()
            or 0
        )
    sql = f"""
        INSERT INTO {jobs} (image_id, model_id, status, error, attempts, lease_owner,
                            created_at, updated_at)
        SELECT i.id, %(model)s, 'pending', '', 0, '', now(), now() FROM {images} i
        WHERE NOT EXISTS (
            SELECT 1 FROM {jobs} j WHERE j.image_id = i.id AND j.model_id = %(model)s)
        {only}
        ON CONFLICT (image_id, model_id) DO NOTHING
        """
    return sql, params


def embedding_jobs_create_missing(*, model_id: str, image_ids: Sequence[int] | None = None) -> int:
    """Add a pending job for every image (or each of ``image_ids``) with none for the model.

    Without ``image_ids`` (the sweep) only images above the model's ``jobs_cursor`` are looked
    at, by the images' primary key, so a sweep every minute costs what the newest images cost,
    not an anti-join of the whole image table. The cursor then moves up to the newest image
    older than EMBEDDING_SWEEP_SETTLE_SECONDS: an image whose transaction was still open (ids
    are handed out before commit) is not passed over.
    """
    images = Image._meta.db_table
    models = EmbeddingModel._meta.db_table
    sql, params = embedding_jobs_missing_statement(model_id=model_id, image_ids=image_ids)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        created = cursor.rowcount
        if image_ids is None:
            cursor.execute(
                f"""
                UPDATE {models} m SET jobs_cursor = settled.id
                FROM (SELECT max(i.id) AS id FROM {images} i
                      WHERE i.id > (SELECT jobs_cursor FROM {models} WHERE model_id = %(model)s)
                        AND i.created_at < now() - make_interval(secs => %(settle)s)) settled
                WHERE m.model_id = %(model)s AND settled.id > m.jobs_cursor
                """,
                {"model": model_id, "settle": settings.EMBEDDING_SWEEP_SETTLE_SECONDS},
            )
        return created


# A job due at the next sweep, as if new (see embedding_jobs_claim).
_UNSENT_PENDING = {
    "status": EmbeddingJob.Status.PENDING,
    "error": "",
    "attempts": 0,
    "enqueued_at": None,
    "started_at": None,
    "lease_until": None,
    "lease_owner": "",
}


_UNSENT_PENDING_KEEP_ATTEMPTS = {k: v for k, v in _UNSENT_PENDING.items() if k != "attempts"}


def embedding_jobs_request(*, model_id: str, image_ids: Sequence[int]) -> int:
    """Ask for ``image_ids`` to be embedded (again) with ``model_id``: each gets a pending job,
    unsent, so the next sweep queues it. Returns how many jobs were created or set pending.

    An image that has an embedding keeps it, and stays in search, until the new vector replaces
    it: the pipeline reads a pending job beside an embedding as "embed this anew". Jobs already
    pending (queued, running or blocked) are left as they are, so asking twice queues nothing
    twice; failed ones start again with fresh attempts.
    """
    with transaction.atomic():
        created = embedding_jobs_create_missing(model_id=model_id, image_ids=image_ids)
        reset = (
            EmbeddingJob.objects.filter(model_id=model_id, image_id__in=image_ids)
            .exclude(status=EmbeddingJob.Status.PENDING)
            .update(**_UNSENT_PENDING, updated_at=timezone.now())
        )
    return created + reset


def embedding_jobs_retry_failed(
    *, image_ids: Sequence[int], model_ids: Sequence[str]
) -> dict[str, int]:
    """Set the failed jobs of ``image_ids`` with ``model_ids`` pending again, unsent and with
    fresh attempts, for the next sweep; other jobs are left alone. Returns jobs per model."""
    now = timezone.now()
    with transaction.atomic():
        return {
            model_id: EmbeddingJob.objects.filter(
                model_id=model_id, image_id__in=image_ids, status=EmbeddingJob.Status.FAILED
            ).update(**_UNSENT_PENDING, updated_at=now)
            for model_id in model_ids
        }


def embedding_jobs_claim(
    *,
    model_id: str,
    unstarted_after: timedelta | None,
    include_failed: bool = False,
    limit: int,
) -> list[int]:
    """Mark at most ``limit`` due pending jobs of ``model_id`` as sent now; return their images.

    Due: never sent; taken by a worker whose lease ran out; or sent more than
    ``unstarted_after`` ago and never taken (None: never, as when its message may still be
    queued; ``workers.queueing`` explains the choice). ``include_failed`` also claims failed
    jobs, with fresh attempts. Every time is the database's (``now()``), the clock the leases
    are written with. One UPDATE ... RETURNING over rows locked with SKIP LOCKED, so two sweeps
    at once never queue an image twice. The rows are chosen in a MATERIALIZED CTE: as ``WHERE
    id IN (subquery LIMIT n)`` the planner may rescan the subquery, which then skips the rows
    just updated and picks the next n, so a one-batch probe could claim the whole backlog.
    """
    table = EmbeddingJob._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH due AS MATERIALIZED (
                SELECT id FROM {table}
                WHERE model_id = %(model)s AND (
                    (status = 'failed' AND %(failed)s)
                    OR (status = 'pending' AND (
                        enqueued_at IS NULL
                        OR (started_at IS NOT NULL AND lease_until < now())
                        OR (started_at IS NULL AND %(unstarted)s::float8 IS NOT NULL
                            AND enqueued_at < now() - make_interval(secs => %(unstarted)s)))))
                ORDER BY image_id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED)
            UPDATE {table} AS job SET enqueued_at = now(), started_at = NULL, lease_until = NULL,
                   lease_owner = '',
                   attempts = CASE WHEN job.status = 'failed' THEN 0 ELSE job.attempts END,
                   status = 'pending'
            FROM due WHERE job.id = due.id
            RETURNING job.image_id
            """,
            {
                "model": model_id,
                "failed": include_failed,
                "unstarted": None if unstarted_after is None else unstarted_after.total_seconds(),
                "limit": limit,
            },
        )
        return sorted(row[0] for row in cursor.fetchall())


def embedding_jobs_mark_sent(*, model_id: str, image_ids: Sequence[int]) -> None:
    """Record that a batch holding these images was queued now (uploads, not the sweep)."""
    EmbeddingJob.objects.filter(
        model_id=model_id, image_id__in=image_ids, status=EmbeddingJob.Status.PENDING
    ).update(enqueued_at=Now(), started_at=None, lease_until=None, lease_owner="")


def embedding_jobs_mark_unsent(*, model_id: str, image_ids: Sequence[int]) -> None:
    """The broker refused the batch: the jobs wait for the next sweep."""
    EmbeddingJob.objects.filter(
        model_id=model_id, image_id__in=image_ids, status=EmbeddingJob.Status.PENDING
    ).update(enqueued_at=None)


def _lease_end(lease: timedelta) -> ExpressionWrapper:
    # The database's clock, as the sweep compares with it: a worker's clock may be off.
    return ExpressionWrapper(Now() + lease, output_field=DateTimeField())


def embedding_jobs_start(
    *, model_id: str, image_ids: Sequence[int], lease: timedelta, owner: str
) -> list[int]:
    """Take the pending jobs of ``image_ids`` that no other run holds, for ``lease`` (renewed
    while the batch runs); return the images taken.

    A job held by another run (another message with the same image, or a second delivery of
    this one) is skipped until that lease runs out: the owner check is in the UPDATE, so two
    runs at once never both take a job. Rows locked by a run taking them right now are skipped
    too (SKIP LOCKED), not waited for.
    """
    table = EmbeddingJob._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH free AS MATERIALIZED (
                SELECT id FROM {table}
                WHERE model_id = %(model)s AND image_id = ANY(%(ids)s) AND status = 'pending'
                  AND (lease_until IS NULL OR lease_until < now() OR lease_owner = %(owner)s)
                FOR UPDATE SKIP LOCKED)
            UPDATE {table} AS job SET started_at = now(),
                   lease_until = now() + make_interval(secs => %(lease)s),
                   lease_owner = %(owner)s, updated_at = now()
            FROM free WHERE job.id = free.id
            RETURNING job.image_id
            """,
            {
                "model": model_id,
                "ids": list(image_ids),
                "owner": owner,
                "lease": lease.total_seconds(),
            },
        )
        return sorted(row[0] for row in cursor.fetchall())


def embedding_jobs_renew_lease(
    *, model_id: str, image_ids: Sequence[int], lease: timedelta, owner: str
) -> list[int]:
    """Extend this run's hold on the pending jobs of ``image_ids`` it still holds; return
    their images. A job missing from the answer was taken by another run once this run's lease
    ran out (or was finished by one): this run must leave it alone."""
    table = EmbeddingJob._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} SET lease_until = now() + make_interval(secs => %(lease)s)
            WHERE model_id = %(model)s AND image_id = ANY(%(ids)s) AND status = 'pending'
              AND lease_owner = %(owner)s
            RETURNING image_id
            """,
            {
                "model": model_id,
                "ids": list(image_ids),
                "owner": owner,
                "lease": lease.total_seconds(),
            },
        )
        return [row[0] for row in cursor.fetchall()]


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


def _jobs_held(
    model_id: str, image_ids: Sequence[int], owner: str | None
) -> QuerySet[EmbeddingJob]:
    """The pending jobs of ``image_ids``; with ``owner``, only those held by that run or by
    none (another run's are left to it)."""
    jobs = EmbeddingJob.objects.filter(
        model_id=model_id, image_id__in=image_ids, status=EmbeddingJob.Status.PENDING
    )
    if owner is not None:
        jobs = jobs.filter(Q(lease_owner=owner) | Q(lease_owner=""))
    return jobs


def embedding_jobs_note_blocked(
    *,
    model_id: str,
    image_ids: Sequence[int],
    reason: str,
    owner: str | None = None,
    attempt_returned: bool = False,
) -> None:
    """Keep jobs pending, say why they cannot run now (e.g. the weights are missing, the image
    storage is unreachable), and put them back among the unsent, for the sweep's probe batch or
    the backlog after recovery. ``attempt_returned``: the run had counted an attempt, which
    is given back, so waiting never brings a job closer to "failed"."""
    attempts = Greatest(F("attempts") - 1, Value(0)) if attempt_returned else F("attempts")
    _jobs_held(model_id, image_ids, owner).update(
        error=reason[:2000],
        attempts=attempts,
        enqueued_at=None,
        started_at=None,
        lease_until=None,
        lease_owner="",
        updated_at=timezone.now(),
    )


def embedding_jobs_release(*, model_id: str, image_ids: Sequence[int], owner: str) -> None:
    """This worker cannot load the model but another live one can: hand the jobs back,
    unsent and with no reason against them, for the next sweep to queue for the others."""
    _jobs_held(model_id, image_ids, owner).update(
        **_UNSENT_PENDING_KEEP_ATTEMPTS, updated_at=timezone.now()
    )


def embedding_jobs_note_error(
    *, model_id: str, image_ids: Sequence[int], reason: str, max_attempts: int
) -> None:
    """A batch failed as a whole: record the reason; jobs that used every attempt fail, the
    rest are due again at the next sweep (their lease ends now)."""
    now = timezone.now()
    pending = EmbeddingJob.objects.filter(
        model_id=model_id, image_id__in=image_ids, status=EmbeddingJob.Status.PENDING
    )
    with transaction.atomic():
        pending.filter(attempts__gte=max_attempts).update(
            status=EmbeddingJob.Status.FAILED,
            error=f"gave up after {max_attempts} attempts: {reason}"[:2000],
            lease_until=None,
            lease_owner="",
            updated_at=now,
        )
        # Ends now by the database's clock, the one the sweep compares with.
        pending.update(error=reason[:2000], lease_until=Now(), updated_at=now)


def embedding_model_mark_unavailable(*, model_id: str, reason: str) -> bool:
    """Record that workers cannot load ``model_id`` (kept since the first failure), unless a
    live worker can: one broken worker (say, told to use a GPU it lacks) must not take a model
    away from the site while another serves it. True when the model is marked.

    The condition is in the UPDATE, against heartbeats on the database's clock.
    """
    now = timezone.now()
    return bool(
        EmbeddingModel.objects.filter(model_id=model_id)
        .filter(~Exists(workers_live().filter(models_loaded__contains=[model_id])))
        .update(
            unavailable_reason=reason[:2000],
            unavailable_since=Coalesce(F("unavailable_since"), Value(now)),
            updated_at=now,
        )
    )


def embedding_model_mark_available(*, model_id: str) -> bool:
    """Clear a model's unavailability; True when it had been marked unavailable."""
    return bool(
        EmbeddingModel.objects.filter(model_id=model_id)
        .exclude(unavailable_reason="")
        .update(unavailable_reason="", unavailable_since=None, updated_at=timezone.now())
    )


@dataclass(frozen=True)
class WorkerReport:
    """What one worker process says of itself at start and at every heartbeat."""

    name: str
    hostname: str
    pid: int
    device: str
    batch_size: int
    models_loaded: list[str]
    models_failed: dict[str, str]
    embedded: int = 0
    batches: int = 0
    rate_per_minute: float = 0.0
    storage_error: str = ""
    queues: list[str] = field(default_factory=list)


def worker_heartbeat_record(*, report: WorkerReport) -> Worker:
    """Record that a worker is alive and what it can do; prune workers gone silent; bring each
    model's site-wide availability in line with the live workers.

    A model this worker loads is available again (its waiting backlog is swept at once); one it
    cannot load is marked unavailable only if no live worker loads it (e.g. the one that did
    has died). ``last_seen`` is the database's ``now()``.
    """
    # One transaction: whoever reads sees the worker and its verdict on each model together.
    with transaction.atomic():
        reported = {
            "name": report.name,
            "device": report.device,
            "batch_size": report.batch_size,
            "models_loaded": report.models_loaded,
            "models_failed": report.models_failed,
            "embedded": report.embedded,
            "batches": report.batches,
            "rate_per_minute": report.rate_per_minute,
            "storage_error": report.storage_error[:2000],
            "queues": report.queues,
            "last_seen": Now(),
        }
        worker, _ = Worker.objects.update_or_create(
            hostname=report.hostname,
            pid=report.pid,
            defaults=reported,
            create_defaults={**reported, "started_at": Now()},
        )
        workers_prune_stale()
        for model_id in report.models_loaded:
            if embedding_model_mark_available(model_id=model_id):
                logger.info("%s loads on %s: queueing the images that waited for it", model_id,
                            report.name)  # fmt: skip
                embeddings_sweep_send(model_id=model_id)
        for model_id, reason in report.models_failed.items():
            embedding_model_mark_unavailable(model_id=model_id, reason=reason)
        return worker


def workers_prune_stale() -> int:
    """Delete the rows of workers not seen within WORKER_STALE_SECONDS (dead or cut off)."""
    deleted, _ = Worker.objects.exclude(pk__in=workers_live().values("pk")).delete()
    return deleted


def worker_forget(*, hostname: str, pid: int) -> None:
    """A worker shutting down cleanly leaves the list at once."""
    Worker.objects.filter(hostname=hostname, pid=pid).delete()


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
    rebuild_index_min_rows: int = INDEX_REBUILD_MIN_ROWS,
) -> EmbeddingsImportResult:
    """Store precomputed image embeddings, row i being the image whose file is ``filenames[i]``.

    Everything is checked before anything is stored (row counts, the model's dimension, finite
    non-zero rows, unique names) and the rows go in one transaction, so a bad file stores
    nothing. Rows are L2-normalised on the way in. Names are matched to Flickr30k images by
    their original file name; names with no image are reported, not an error. Images that
    already have an embedding for the model keep it, so importing twice adds nothing.
    """
    names = [_file_name(name) for name in filenames]
    matrix = embedding_rows_normalised(model_id=model_id, vectors=vectors, names=names)

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
        len(rows) >= rebuild_index_min_rows
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
            embedding_index_build(model_id=model_id)
    return EmbeddingsImportResult(
        rows=len(names), stored=stored, already_present=len(rows) - stored, unmatched=unmatched
    )


def _file_name(name: str | bytes) -> str:
    # Arrays saved from Python 2 or with dtype "S" hold bytes; some hold paths, not bare names.
    text = name.decode() if isinstance(name, bytes) else str(name)
    return text.strip().replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ImagesReembedResult:
    images: int
    queued: int  # jobs created or set pending; the rest were already waiting for a worker


def images_reembed(*, images: QuerySet[Image], model_id: str) -> ImagesReembedResult:
    """Staff: embed ``images`` again with ``model_id``, one of the enabled models.

    Through the job rows and the sweep, like every embedding: each image gets a pending job
    (``embedding_jobs_request``), and the sweep queues them, now and again later if a worker
    dies on them. An image keeps its current vector, and its place in search, until the new one
    replaces it. Asking twice queues nothing twice.
    """
    if model_id not in embedding_models_enabled():
        raise InvalidInput(
            f"{model_id!r} is not an enabled model; enable it on the Embedding models page first"
        )
    seen = queued = 0
    for chunk in image_id_chunks(images):
        seen += len(chunk)
        queued += embedding_jobs_request(model_id=model_id, image_ids=chunk)
    if queued:
        embeddings_sweep_send(model_id=model_id)
    return ImagesReembedResult(seen, queued)


def images_embeddings_retry_failed(*, images: QuerySet[Image]) -> dict[str, int]:
    """Staff: try the failed embeddings of ``images`` again, for every enabled model, with
    fresh attempts; their other jobs are left alone. Returns jobs retried per model (only
    models with some)."""
    models = embedding_models_enabled()
    retried = dict.fromkeys(models, 0)
    for chunk in image_id_chunks(images):
        for model_id, count in embedding_jobs_retry_failed(
            image_ids=chunk, model_ids=models
        ).items():
            retried[model_id] += count
    for model_id, count in retried.items():
        if count:
            embeddings_sweep_send(model_id=model_id)
    return {model_id: count for model_id, count in retried.items() if count}

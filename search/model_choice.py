"""Which model a search runs with: the enabled models' state (read fresh, one query a search),
the default, the choices one may search with (one model, or "A+B" fused), and the checks that
refuse a choice with a message a person can act on."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from django.db import connections, router
from django.db.models import Max

from encoders import UnknownModelError
from encoders.registry import model_spec
from gallery.models import Image
from kernel.errors import Conflict, InvalidInput, Unavailable
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.selectors import EmbeddingProgress, embedding_progress
from workers.services import embedding_completeness_record

# A fused search ("A+B") ranks with two models at once (``search.fusion``). In a query string
# "+" reads as a space, so "A B" is the same choice (a link typed by hand), and "B+A" is "A+B".
FUSED_SEPARATOR = "+"
_FUSED_EXAMPLE = "clip-vit-base-patch32+align-base"


@dataclass(frozen=True)
class _EnabledModel:
    model_id: str
    is_default: bool
    unavailable_reason: str
    has_embeddings: bool
    has_pending: bool  # embedding jobs waiting: a search then reports its coverage
    # Every image embedded, as last recorded (EmbeddingModel.embeddings_complete) and still
    # true: no image newer than the record; with has_pending False, nothing remains.
    recorded_complete: bool = False
    completeness_version: int = 0

    @property
    def known_complete(self) -> bool:
        return self.recorded_complete and not self.has_pending


def _models_enabled_state() -> dict[str, _EnabledModel]:
    """Every enabled model with what a search asks of it, in one query: whether it is the
    default (the default is always enabled), why workers cannot load it, whether it has
    embeddings and whether it has embedding work pending. Read fresh on each call, so a model
    staff enable or disable is seen at once.

    The statement is written out because every search runs it: built by the ORM it cost
    0.53 ms of CPU per call, against 0.07 ms for the database to answer (31,783 images). Raw
    SQL bypasses the database router, so the alias is asked of it: inside a page that reads
    from a replica this runs there too, instead of sending every search to the primary.
    """
    models = EmbeddingModel._meta.db_table
    embeddings = ImageEmbedding._meta.db_table
    jobs = EmbeddingJob._meta.db_table
    images = Image._meta.db_table
    with connections[router.db_for_read(EmbeddingModel)].cursor() as cursor:
        # Every EXISTS is one index probe (the model's first embedding, its first pending job,
        # the images' primary key past the recorded one), whatever the number of rows.
        cursor.execute(
            f"""
            SELECT m.model_id, m.is_default, m.unavailable_reason,
                   EXISTS (SELECT 1 FROM "{embeddings}" e WHERE e.model_id = m.model_id),
                   EXISTS (SELECT 1 FROM "{jobs}" j
                           WHERE j.model_id = m.model_id AND j.status = %s),
                   m.embeddings_complete AND NOT EXISTS (
                       SELECT 1 FROM "{images}" i WHERE i.id > m.complete_through_image_id),
                   m.completeness_version
            FROM "{models}" m
            WHERE m.enabled
            """,
            [EmbeddingJob.Status.PENDING],
        )
        rows = cursor.fetchall()
    return {row[0]: _EnabledModel(*row) for row in rows}


def _default_of(models: dict[str, _EnabledModel]) -> str | None:
    return next((m for m in sorted(models) if models[m].is_default), None)


def search_models_available() -> list[str]:
    """Enabled models that have at least one embedding, default first."""
    return _available(_models_enabled_state())


def _available(models: dict[str, _EnabledModel]) -> list[str]:
    default = _default_of(models)
    with_rows = [m for m, state in models.items() if state.has_embeddings]
    return sorted(with_rows, key=lambda m: (m != default, m))


def model_unavailable_message(model_id: str) -> str:
    """What search and uploads tell users when a model's weights cannot be loaded."""
    return (
        f"The model {model_id} is not available on this server: its weights could not be "
        f'loaded. An admin can set EMBEDDING_MODEL_SOURCES="{model_id}=/path/to/weights" '
        "(a folder written by save_pretrained) or give the server access to the Hugging Face "
        "hub, then restart the site."
    )


@dataclass(frozen=True)
class ModelChoice:
    """The models a search runs with: one, or for a fused choice two, the default first."""

    model_ids: tuple[str, ...]
    # Whether any of them has embedding jobs pending (a one-model search then reports its
    # coverage), read with the choice so that a search need not ask again.
    pending: bool = False

    @property
    def fused(self) -> bool:
        return len(self.model_ids) > 1


def model_choose(model_id: str | None) -> str:
    """The one model a search should use: ``model_id`` if usable, else (None) the default.

    Anything else is refused with a message a person can act on: ``InvalidInput`` (400) for a
    model that is unknown, not enabled or a fused choice; ``Conflict`` (409) for one still
    making its first embeddings; ``Unavailable`` (503) for one whose weights cannot load.
    """
    return _choose(model_id, _models_enabled_state(), fusable=False).model_ids[0]


def models_choose(spec: str | None) -> ModelChoice:
    """The model, or for a fused choice ("A+B") the two models, that a search should use.

    One model is ``model_choose``'s. A fused choice needs two different models, each usable
    alone, whose embeddings are complete (nothing pending or blocked, as
    ``embedding_progress`` counts): fusing a model that has not yet seen every image would
    rank the unseen ones by one model alone. Anything else is ``InvalidInput`` (400).
    """
    return _choose(spec, _models_enabled_state(), fusable=True)


def _choose(spec: str | None, models: dict[str, _EnabledModel], *, fusable: bool) -> ModelChoice:
    # Every check below reads the one snapshot of ``models`` (one query per search).
    parts = _model_choice_split(spec or "")
    if not fusable or len(parts) <= 1:
        model_id = _one_model(spec if not fusable else (parts[0] if parts else None), models)
        return ModelChoice((model_id,), pending=models[model_id].has_pending)
    if len(parts) > 2 or len(set(parts)) < 2:
        raise InvalidInput(
            f"model {spec!r}: a fused search combines two different models, as in "
            f"'{_FUSED_EXAMPLE}'; see /api/models for the choices"
        )
    default = _default_of(models)
    model_ids = sorted(
        (_one_model(part, models) for part in parts), key=lambda m: (m != default, m)
    )
    for model_id in model_ids:
        progress = _incomplete_progress(models[model_id])
        if progress is not None:
            raise InvalidInput(
                f"fused search with {model_id} is not available yet: it still has "
                f"{progress.remaining} of {progress.total} images to embed. Search with one "
                "model until it is done."
            )
    pending = any(models[m].has_pending for m in model_ids)
    return ModelChoice(tuple(model_ids), pending=pending)


def _incomplete_progress(state: _EnabledModel) -> EmbeddingProgress | None:
    """None when ``state``'s model has embedded every image (fused search may use it), else
    its progress. Answered from the models' state (no query) once recorded; counted
    (``embedding_progress``) only when not, and the count recorded when it is complete."""
    if state.known_complete:
        return None
    newest = Image.objects.aggregate(newest=Max("pk"))["newest"] or 0  # before counting
    progress = embedding_progress(model_id=state.model_id)
    if progress.remaining:
        return progress
    embedding_completeness_record(
        model_id=state.model_id, version=state.completeness_version, through_image_id=newest
    )
    return None


def _one_model(model_id: str | None, models: dict[str, _EnabledModel]) -> str:
    if not model_id:
        model_id = _default_of(models)
        if model_id is None:
            raise Unavailable("no search model is configured; ask an admin to enable one")
    if len(_model_choice_split(model_id)) > 1:
        raise InvalidInput(
            f"{model_id!r} is a fused search of several models, which this search does not "
            "offer; choose one model"
        )
    try:
        model_spec(model_id)
    except UnknownModelError as exc:
        raise InvalidInput(str(exc)) from exc
    state = models.get(model_id)
    if state is None:
        raise InvalidInput(f"model {model_id!r} is not enabled on this site")
    if not state.has_embeddings:
        # Waiting helps a backfill that is running, never one whose weights are missing.
        if state.unavailable_reason:
            raise Unavailable(model_unavailable_message(model_id))
        if not Image.objects.exists():
            # A new site: "try again later" would never come true.
            raise Conflict(
                "There are no images to search yet: upload some, or import the Flickr30k set "
                "(./run manage import_flickr30k --help)."
            )
        raise Conflict(
            f"The model {model_id} is still indexing this site's images; the first results "
            "appear as soon as its first batch is stored (the admin's Embedding models page "
            "shows the progress)."
        )
    return model_id


def _model_choice_split(model: str) -> list[str]:
    return [part for part in re.split(r"[+\s]+", model.strip()) if part]


def search_model_choices() -> list[str]:
    """What one may search with, default first: each model of ``search_models_available``,
    then "A+B" for each pair of them whose embeddings are both complete."""
    states = _models_enabled_state()
    models = _available(states)
    if len(models) < 2:
        return models
    complete = [m for m in models if _incomplete_progress(states[m]) is None]
    return models + [FUSED_SEPARATOR.join(pair) for pair in itertools.combinations(complete, 2)]

"""Search's admin: the evaluation runs, and on the embedding models page (workers'), each
model's latest evaluation runs beside the published figure for the same weights, and the
precision its query encoder runs in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from search.models import EvaluationRun
from search.query_encoder import query_precision
from search.selectors import evaluation_runs_latest
from workers.admin import EmbeddingModelAdmin
from workers.models import EmbeddingModel

if TYPE_CHECKING:
    from search.evaluation.references import PublishedResult


@dataclass(frozen=True)
class ModelEvaluations:
    """A model's published figure (when one was measured with its weights) and its latest runs,
    each with its R@1 minus the published R@1."""

    model_id: str
    published: PublishedResult | None
    runs: list[tuple[EvaluationRun, float | None]]
    runs_url: str


# Runs shown per model on the models page; the evaluation-run list has them all.
EVALUATION_RUNS_SHOWN = 3


class EmbeddingModelEvaluationsAdmin(EmbeddingModelAdmin):
    """The embedding models page with, under the list, each model's latest evaluation runs
    beside the published figure for the same weights."""

    change_list_template = "admin/search/embeddingmodel/change_list.html"

    def get_list_display(self, request: HttpRequest) -> tuple[Any, ...]:
        return (*super().get_list_display(request), "query_encoder")

    @admin.display(description="Query encoder (this web process)")
    def query_encoder(self, obj: EmbeddingModel) -> str:
        """The precision searches encode queries in, and why: int8 where its check against
        float32 passed for these weights (SEARCH_QUERY_DTYPE "auto"), float32 otherwise."""
        precision = query_precision(obj.model_id)
        if precision is None:
            return "not loaded in this process yet (loads on its first search)"
        return f"{precision.dtype} ({precision.backend}): {precision.reason}"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            context["evaluations"] = self._evaluations(
                [state.model_id for state in context["cl"].result_list]
            )
        return response

    def _evaluations(self, model_ids: list[str]) -> list[ModelEvaluations]:
        # Imported on use: the evaluation package brings its ranking and run modules along,
        # which nothing else in the admin needs at start-up.
        from search.evaluation.references import published_for

        # One query for every model's runs; the published figures are constants.
        runs = evaluation_runs_latest(model_ids=model_ids, per_model=EVALUATION_RUNS_SHOWN)
        changelist = reverse("admin:search_evaluationrun_changelist")
        evaluations = []
        for model_id in model_ids:
            published = published_for(model_id)
            evaluations.append(
                ModelEvaluations(
                    model_id=model_id,
                    published=published,
                    runs=[
                        (run, None if published is None else run.t2i_r1 - published.r1)
                        for run in runs.get(model_id, [])
                    ],
                    runs_url=f"{changelist}?{urlencode({'models': model_id})}",
                )
            )
        return evaluations


admin.site.unregister(EmbeddingModel)
admin.site.register(EmbeddingModel, EmbeddingModelEvaluationsAdmin)


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    """The table of `manage.py evaluate` runs: read-only, since they are measurements."""

    list_display = (
        "created_at",
        "models",
        "fusion",
        "split",
        "gallery",
        "mode",
        "lang",
        "n_images",
        "n_queries",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "published_t2i",
        "t2i_median_rank",
        "t2i_mean_rank",
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "i2t_median_rank",
        "i2t_mean_rank",
        "duration_seconds",
    )
    list_filter = ("models", "fusion", "split", "gallery", "mode", "lang", "created_at")
    date_hierarchy = "created_at"

    @admin.display(description="Published T2I R@1/5/10 (same model)")
    def published_t2i(self, obj: EvaluationRun) -> str:
        from search.evaluation.references import published_for

        published = None if obj.fusion else published_for(obj.models)
        if published is None:
            return "-"
        return f"{published.figures()} ({published.source})"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: EvaluationRun | None = None) -> bool:
        return False

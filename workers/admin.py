"""The embedding index in the admin: models (enable, watch the backfill, make default,
disable, delete), embeddings and jobs; and on gallery's image list, the embedding-status
filter and the re-embed and retry actions (a subclass of gallery's image admin registered in
its place: gallery knows nothing of the index)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from encoders.registry import MODELS
from gallery.admin import ImageAdmin, OwnerFilter, count_text
from gallery.models import Image
from kernel.errors import ApplicationError
from workers.broker import INDEX_BUILD_TASK, task_send
from workers.indexes import IndexState, embedding_index_states
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding, Worker
from workers.selectors import (
    EMBEDDING_STATUSES,
    EmbeddingProgress,
    embedding_models_enabled,
    embedding_progress,
    images_with_embedding_status,
    workers_live,
)
from workers.services import (
    EmbeddingModelStateError,
    embedding_model_delete,
    embedding_model_disable,
    embedding_model_enable,
    embedding_model_make_default,
    images_embeddings_retry_failed,
    images_reembed,
)


class EmbeddingModelForm(forms.ModelForm):
    model_id = forms.ChoiceField(choices=[(m, m) for m in sorted(MODELS)])

    class Meta:
        model = EmbeddingModel
        fields = ["model_id"]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _images_with_status(model_id: str, status: str, count: int) -> str:
    """``count`` as a link to the images list filtered by this model and status."""
    url = reverse("admin:gallery_image_changelist")
    query = urlencode({"embedding": f"{model_id}:{status}"})
    return format_html('<a href="{}?{}">{}</a>', url, query, count)


_INDEX_LABELS = {
    "ready": "ready",
    "missing": "missing: build needed (searches scan every embedding)",
    "old": "older parameters: build needed (the old index serves meanwhile)",
    "invalid": "invalid (a build failed): build again",
}


def index_state_text(state: IndexState) -> str:
    """The Search index column's words for a model's index: its state, or a build's
    pg_stat_progress_create_index phase and counts."""
    if state.status == "building" and state.progress is not None:
        return f"building: {state.progress}"
    return _INDEX_LABELS.get(state.status, state.status)


def index_state_json(state: IndexState) -> dict[str, object]:
    """What the index-progress endpoint tells the models page about one model's index."""
    progress = state.progress
    return {
        "model_id": state.model_id,
        "status": state.status,
        "text": index_state_text(state),
        "phase": progress.phase if progress else None,
        "blocks_done": progress.blocks_done if progress else None,
        "blocks_total": progress.blocks_total if progress else None,
        "tuples_done": progress.tuples_done if progress else None,
        "tuples_total": progress.tuples_total if progress else None,
        "percent": progress.percent if progress else None,
    }


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    """Switch models without downtime: enable (starts a backfill), watch it, then make default.

    An operations view: per model what is done, waiting, failed and blocked (each count of
    images linking to the image list filtered by it, where re-embed and retry act), the
    backfill's rate and time left, and under the list each model's latest evaluation runs
    beside the published figure for the same weights.
    """

    form = EmbeddingModelForm
    list_display = (
        "model_id", "enabled", "is_default", "done", "pending", "failed", "blocked", "progress",
        "search_index",
    )  # fmt: skip
    actions = [
        "enable", "make_default", "disable", "disable_and_delete", "delete_models",
        "build_index", "rebuild_index",
    ]  # fmt: skip
    readonly_fields = ("enabled", "is_default", "created_at", "updated_at")

    class Media:
        # Follows a running index build in the Search index column (the CSP allows no inline
        # script); without it the column says where the build was, with a reload link.
        js = ("admin_index_progress.js",)

    def get_readonly_fields(
        self, request: HttpRequest, obj: EmbeddingModel | None = None
    ) -> tuple[str, ...]:
        return ("model_id", *self.readonly_fields) if obj else ()

    # Deleting goes through workers.services.embedding_model_delete, which refuses the default
    # model and takes the model's embeddings and jobs along: Django's own bulk delete would do
    # neither, so it is replaced by the delete_models action, and the delete button and page
    # are not offered for the default model.
    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(
        self, request: HttpRequest, obj: EmbeddingModel | None = None
    ) -> bool:
        if obj is not None and obj.is_default:
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: EmbeddingModel) -> None:
        self._each(request, [obj], embedding_model_delete, "deleted with its embeddings")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        self._each(request, queryset, embedding_model_delete, "deleted with its embeddings")

    def save_model(
        self, request: HttpRequest, obj: EmbeddingModel, form: forms.ModelForm, change: bool
    ) -> None:
        if not change:
            embedding_model_enable(model_id=obj.model_id)
            self.message_user(request, f"{obj.model_id} enabled; its backfill is queued.")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The reason a model cannot load goes at the top of the page, where staff look first.
        for state in EmbeddingModel.objects.exclude(unavailable_reason=""):
            since = f" (since {state.unavailable_since:%Y-%m-%d %H:%M} UTC)"
            self.message_user(
                request,
                f"{state.model_id} is not available: {state.unavailable_reason}"
                f"{since if state.unavailable_since else ''}. Workers retry it every "
                f"{settings.EMBEDDING_SWEEP_SECONDS} s; its waiting images are embedded as soon "
                "as it loads.",
                messages.WARNING,
            )
        # A big model's index is not built by migrate (it would block uploads): say so, with
        # the way to build it online.
        for index in embedding_index_states(
            model_ids=EmbeddingModel.objects.values_list("model_id", flat=True)
        ):
            if index.advice:
                self.message_user(
                    request,
                    f'{index.advice}, or with the "Build search index online" action here.',
                    messages.WARNING,
                )
        return super().changelist_view(request, extra_context)

    def _index(self, obj: EmbeddingModel) -> IndexState:
        if not hasattr(obj, "_index_cache"):
            (obj._index_cache,) = embedding_index_states(model_ids=[obj.model_id])  # type: ignore[attr-defined]
        state: IndexState = obj._index_cache  # type: ignore[attr-defined]
        return state

    @admin.display(description="Search index")
    def search_index(self, obj: EmbeddingModel) -> SafeString:
        """Ready, missing, old, invalid, or building with pg_stat_progress_create_index's
        phase and counts, which admin_index_progress.js keeps current from
        ``index_progress_view`` while a build runs (a reload link does without script)."""
        index = self._index(obj)
        state = format_html(
            '<span class="index-state" data-index-model="{}" data-index-status="{}" '
            'data-index-progress-url="{}">{}</span>',
            obj.model_id,
            index.status,
            reverse("admin:workers_embeddingmodel_index_progress"),
            index_state_text(index),
        )
        if index.status != "building":
            return state
        return format_html('{} <a class="index-reload" href="">Reload</a>', state)

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "index-progress/",
                self.admin_site.admin_view(self.index_progress_view),
                name="workers_embeddingmodel_index_progress",
            ),
        ]
        return own + super().get_urls()

    def index_progress_view(self, request: HttpRequest) -> JsonResponse:
        """Each listed model's index state and, while one builds,
        pg_stat_progress_create_index's phase, counts and percent: what the models page polls
        every 2 s during a build. Staff with view permission only (admin_view sends others to
        the sign-in page)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        states = embedding_index_states(
            model_ids=EmbeddingModel.objects.order_by("model_id").values_list("model_id", flat=True)
        )
        return JsonResponse(
            {
                "building": any(state.status == "building" for state in states),
                "models": [index_state_json(state) for state in states],
            },
            headers={"Cache-Control": "no-store"},
        )

    def _progress(self, obj: EmbeddingModel) -> EmbeddingProgress:
        # A handful of models per page: one progress read each, remembered for the row.
        if hasattr(obj, "_progress_cache"):
            cached: EmbeddingProgress = obj._progress_cache
            return cached
        progress = embedding_progress(model_id=obj.model_id)
        # Kept on the row's instance so it lives exactly as long as this page's rows; the stubs
        # know no such attribute on a model.
        obj._progress_cache = progress  # type: ignore[attr-defined]
        return progress

    @admin.display(description="Done")
    def done(self, obj: EmbeddingModel) -> str:
        return _images_with_status(obj.model_id, "done", self._progress(obj).done)

    @admin.display(description="Pending")
    def pending(self, obj: EmbeddingModel) -> int | str:
        # A disabled model gets no new work: its missing images are not "pending".
        return self._progress(obj).pending if obj.enabled else "disabled"

    @admin.display(description="Failed")
    def failed(self, obj: EmbeddingModel) -> str:
        return _images_with_status(obj.model_id, "failed", self._progress(obj).failed)

    @admin.display(description="Blocked")
    def blocked(self, obj: EmbeddingModel) -> str:
        progress = self._progress(obj)
        if not obj.enabled:
            return "-"
        return f"{progress.blocked}: {progress.reason}" if progress.blocked else "0"

    @admin.display(description="Backfill")
    def progress(self, obj: EmbeddingModel) -> str:
        progress = self._progress(obj)
        if not obj.enabled:
            return "disabled"
        text = f"{progress.percent:.1f}%"
        if progress.unavailable and progress.remaining:
            # No rate or time left: nothing moves until the model loads.
            return f"{text}, model unavailable: {progress.unavailable}"
        if progress.rate_per_minute:
            rate = progress.rate_per_minute
            # A slow start (a CPU worker, a probe batch) is still movement, not "0 images/min".
            text += f", {rate:.1f} images/min" if rate < 10 else f", {rate:.0f} images/min"
        if progress.seconds_left is not None:
            text += f", about {_duration(progress.seconds_left)} left"
        return text

    def _each(
        self,
        request: HttpRequest,
        queryset: Iterable[EmbeddingModel],
        action: Callable[..., object],
        done: str,
    ) -> None:
        for state in queryset:
            try:
                action(model_id=state.model_id)
            except EmbeddingModelStateError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"{state.model_id}: {done}")

    @admin.action(description="Enable and backfill embeddings")
    def enable(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        self._each(request, queryset, embedding_model_enable, "enabled; backfill queued")

    @admin.action(description="Make the default search model (backfill must be complete)")
    def make_default(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        self._each(request, queryset, embedding_model_make_default, "now the default")

    @admin.action(description="Disable (stop new work, keep embeddings)")
    def disable(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        self._each(request, queryset, embedding_model_disable, "disabled")

    @admin.action(description="Disable and delete its embeddings")
    def disable_and_delete(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        def disable_delete(*, model_id: str) -> int:
            return embedding_model_disable(model_id=model_id, delete_embeddings=True)

        self._each(request, queryset, disable_delete, "disabled, embeddings deleted")

    @admin.action(
        description="Delete with its embeddings and jobs (never the default)",
        permissions=["delete"],
    )
    def delete_models(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        self._each(request, queryset, embedding_model_delete, "deleted with its embeddings")

    def _build_index(
        self, request: HttpRequest, models: QuerySet[EmbeddingModel], rebuild: bool
    ) -> None:
        # On a worker, never in the request: a build takes minutes to hours, and a concurrent
        # build waits for every open transaction (this request's too) before it finishes.
        for model_id in models.values_list("model_id", flat=True):
            error = task_send(
                INDEX_BUILD_TASK,
                queue=settings.CELERY_TASK_DEFAULT_QUEUE,
                kwargs={"model_id": model_id, "rebuild": rebuild},
            )
            if error is not None:
                self.message_user(
                    request,
                    f"{model_id}: the task queue cannot be reached ({error}); build the index "
                    f"with `python manage.py embedding_index_build --model {model_id}` on a "
                    "host whose DATABASE_URL reaches PostgreSQL directly (a worker's).",
                    messages.ERROR,
                )
                continue
            self.message_user(
                request,
                f"{model_id}: online index build queued; its progress shows in the Search index "
                "column once a worker starts it. Searches and uploads go on meanwhile.",
            )

    @admin.action(description="Build search index online (if missing or old)")
    def build_index(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        self._build_index(request, queryset, rebuild=False)

    @admin.action(description="Rebuild search index online")
    def rebuild_index(self, request: HttpRequest, queryset: QuerySet[EmbeddingModel]) -> None:
        self._build_index(request, queryset, rebuild=True)


@admin.register(ImageEmbedding)
class ImageEmbeddingAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "model_id", "dimensions", "created_at")
    list_filter = ("model_id", "created_at")
    search_fields = ("image__original_filename", "image__id")
    raw_id_fields = ("image",)
    # Vectors are hundreds of floats: show their size, not an editable blob.
    exclude = ("vector",)
    readonly_fields = ("dimensions", "created_at")
    list_select_related = ("image",)

    @admin.display(description="Dim")
    def dimensions(self, obj: ImageEmbedding) -> int:
        return len(obj.vector) if obj.vector is not None else 0


@admin.register(EmbeddingJob)
class EmbeddingJobAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "model_id", "status", "attempts", "error", "updated_at")
    list_filter = ("model_id", "status", "updated_at")
    search_fields = ("error", "image__original_filename", "image__id")
    raw_id_fields = ("image",)
    readonly_fields = ("created_at", "updated_at")
    list_select_related = ("image",)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """The live embedding workers and what each can do, from their own heartbeats. Read only:
    workers write these rows; one that stops beating leaves the list (and is pruned)."""

    list_display = (
        "name", "hostname", "pid", "device", "batch_size", "storage", "loads", "cannot_load",
        "takes", "rate", "embedded", "batches", "started_at", "last_seen",
    )  # fmt: skip
    list_filter = ("device",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        return workers_live()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return False

    @admin.display(description="Loads")
    def loads(self, obj: Worker) -> str:
        return ", ".join(obj.models_loaded) or "-"

    @admin.display(description="Cannot load")
    def cannot_load(self, obj: Worker) -> str:
        return "; ".join(f"{m}: {why}" for m, why in sorted(obj.models_failed.items())) or "-"

    @admin.display(description="Image storage")
    def storage(self, obj: Worker) -> str:
        # A worker that cannot reach the storage takes no batches: say so, with why.
        return f"unreachable, takes no batches: {obj.storage_error}" if obj.storage_error else "ok"

    @admin.display(description="Queues taken")
    def takes(self, obj: Worker) -> str:
        return ", ".join(obj.queues) or "none"

    @admin.display(description="Images/min")
    def rate(self, obj: Worker) -> str:
        return f"{obj.rate_per_minute:.1f}"


class EmbeddingStatusFilter(admin.SimpleListFilter):
    """Where each image stands with one enabled model: done, pending, failed or missing
    (workers.selectors.images_with_embedding_status says what each means)."""

    title = "embedding status"
    parameter_name = "embedding"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [
            (f"{model_id}:{status}", f"{model_id}: {status}")
            for model_id in embedding_models_enabled()
            for status in EMBEDDING_STATUSES
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        value = self.value()
        if not value:
            return queryset
        model_id, _, status = value.rpartition(":")
        if not model_id or status not in EMBEDDING_STATUSES:
            raise IncorrectLookupParameters(
                f"embedding must be <model>:<{'|'.join(EMBEDDING_STATUSES)}>"
            )
        return images_with_embedding_status(images=queryset, model_id=model_id, status=status)


class ReembedForm(forms.Form):
    model_id = forms.ChoiceField(
        label="Model", help_text="Enabled models only; enable others on the Embedding models page."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_field = cast(forms.ChoiceField, self.fields["model_id"])
        model_field.choices = [(m, m) for m in embedding_models_enabled()]


class IndexedImageAdmin(ImageAdmin):
    """Gallery's image list, with where each image stands in the index and what staff do about
    it (through the job rows and the sweep, in chunks, like every embedding)."""

    # After the owner's filter, as it stood when gallery's admin held it.
    list_filter = tuple(  # type: ignore[assignment]  # one filter more than the base tuple
        item
        for entry in ImageAdmin.list_filter
        for item in ((entry, EmbeddingStatusFilter) if entry is OwnerFilter else (entry,))
    )
    actions = ["reembed", "retry_failed", *ImageAdmin.actions]

    @admin.action(description="Re-embed with model…", permissions=["change"])
    def reembed(self, request: HttpRequest, queryset: QuerySet[Image]) -> TemplateResponse | None:
        form = ReembedForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return self.action_confirm(
                request, queryset, action="reembed", title="Re-embed images",
                submit="Queue re-embedding", form=form,
            )  # fmt: skip
        model_id = form.cleaned_data["model_id"]
        try:
            result = images_reembed(images=queryset, model_id=model_id)
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return None
        waiting = result.images - result.queued
        self.message_user(
            request,
            f"Re-embedding with {model_id}: {result.queued} of "
            f"{count_text(result.images, 'image')} queued"
            + (f"; {waiting} were already waiting for a worker" if waiting else "")
            + ". Each keeps its current vector in search until the new one is stored.",
        )
        return None

    @admin.action(description="Retry failed embeddings", permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        retried = images_embeddings_retry_failed(images=queryset)
        if not retried:
            self.message_user(
                request,
                "None of the selected images has a failed embedding with an enabled model.",
                messages.WARNING,
            )
            return
        each = ", ".join(f"{model_id}: {count}" for model_id, count in sorted(retried.items()))
        self.message_user(request, f"Retrying failed embeddings ({each}); queued for a worker.")


admin.site.unregister(Image)
admin.site.register(Image, IndexedImageAdmin)

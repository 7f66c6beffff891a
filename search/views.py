from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, JsonResponse

from search.models import EmbeddingModel
from search.selectors import embedding_progress


@staff_member_required
def embedding_progress_json(request: HttpRequest) -> JsonResponse:
    """Per-model backfill progress for the admin and scripts (staff only: counts all uploads)."""
    models = [
        {
            **embedding_progress(model_id=state.model_id).as_dict(),
            "enabled": state.enabled,
            "default": state.is_default,
        }
        for state in EmbeddingModel.objects.all()
    ]
    return JsonResponse({"models": models})

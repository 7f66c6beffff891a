"""The admin cannot break search: the default model can be neither deleted nor disabled by any
route (bulk action, delete button, delete page, service), and deleting another model takes its
embeddings and jobs along instead of leaving them behind without a model row."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from search.models import CaptionEmbedding
from tests.factories import CaptionFactory, ImageFactory, UserFactory
from workers.models import EmbeddingJob, EmbeddingModel, ImageEmbedding
from workers.selectors import embedding_model_default
from workers.services import (
    EmbeddingModelStateError,
    embedding_model_delete,
    embedding_model_enable,
    embeddings_store,
)

pytestmark = pytest.mark.django_db
CLIP, ALIGN = "clip-vit-base-patch32", "align-base"
CHANGELIST = reverse("admin:workers_embeddingmodel_changelist")


@pytest.fixture
def two_models() -> list[int]:
    """CLIP (the default) and ALIGN, each with embeddings and jobs for three images."""
    images = ImageFactory.create_batch(3, dataset=True)
    ids = [i.pk for i in images]
    embedding_model_enable(model_id=ALIGN)
    embeddings_store(model_id=CLIP, image_ids=ids, vectors=np.ones((3, 512)))
    embeddings_store(model_id=ALIGN, image_ids=ids[:2], vectors=np.ones((2, 640)))
    EmbeddingJob.objects.create(image=images[2], model_id=ALIGN)
    CaptionEmbedding.objects.create(
        caption=CaptionFactory(image=images[0]), model_id=ALIGN, encoder="float32",
        text_sha256="0" * 64, vector=np.ones(640),
    )  # fmt: skip
    return ids


@pytest.fixture
def admin(client: Client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def counts(model_id: str) -> tuple[int, int]:
    return (
        ImageEmbedding.objects.filter(model_id=model_id).count(),
        EmbeddingJob.objects.filter(model_id=model_id).count(),
    )


def action(admin: Client, name: str, *model_ids: str):
    return admin.post(
        CHANGELIST, {"action": name, "_selected_action": list(model_ids)}, follow=True
    )


def assert_clip_intact() -> None:
    assert embedding_model_default() == CLIP
    assert EmbeddingModel.objects.get(model_id=CLIP).enabled
    assert counts(CLIP) == (3, 3)


def test_django_bulk_delete_is_not_offered(admin: Client, two_models) -> None:
    page = admin.get(CHANGELIST).content.decode()
    assert 'value="delete_selected"' not in page
    assert 'value="delete_models"' in page
    action(admin, "delete_selected", CLIP, ALIGN)
    assert_clip_intact()
    assert EmbeddingModel.objects.filter(model_id=ALIGN).exists()


def test_the_delete_action_refuses_the_default_and_deletes_the_rest(
    admin: Client, two_models
) -> None:
    response = action(admin, "delete_models", CLIP, ALIGN)
    text = response.content.decode()
    assert "default search model" in text
    assert_clip_intact()
    assert not EmbeddingModel.objects.filter(model_id=ALIGN).exists()
    assert counts(ALIGN) == (0, 0)
    assert not CaptionEmbedding.objects.filter(model_id=ALIGN).exists()


def test_the_default_has_no_delete_button_or_page(admin: Client, two_models) -> None:
    change = admin.get(reverse("admin:workers_embeddingmodel_change", args=[CLIP]))
    assert change.status_code == 200
    assert (
        reverse("admin:workers_embeddingmodel_delete", args=[CLIP]) not in change.content.decode()
    )
    delete_url = reverse("admin:workers_embeddingmodel_delete", args=[CLIP])
    assert admin.get(delete_url).status_code == 403
    assert admin.post(delete_url, {"post": "yes"}).status_code == 403
    assert_clip_intact()


def test_the_delete_page_of_another_model_takes_its_embeddings(admin: Client, two_models) -> None:
    change = admin.get(reverse("admin:workers_embeddingmodel_change", args=[ALIGN]))
    delete_url = reverse("admin:workers_embeddingmodel_delete", args=[ALIGN])
    assert delete_url in change.content.decode()
    assert admin.post(delete_url, {"post": "yes"}).status_code == 302
    assert not EmbeddingModel.objects.filter(model_id=ALIGN).exists()
    assert counts(ALIGN) == (0, 0)
    assert_clip_intact()


def test_disabling_the_default_is_refused_in_the_admin(admin: Client, two_models) -> None:
    for name in ("disable", "disable_and_delete"):
        assert "default search model" in action(admin, name, CLIP).content.decode()
        assert_clip_intact()


def test_the_service_refuses_to_delete_the_default(two_models) -> None:
    with pytest.raises(EmbeddingModelStateError, match="default"):
        embedding_model_delete(model_id=CLIP)
    assert_clip_intact()
    assert embedding_model_delete(model_id=ALIGN) == 2
    with pytest.raises(EmbeddingModelStateError, match="not known"):
        embedding_model_delete(model_id=ALIGN)

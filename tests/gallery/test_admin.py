"""The admin manages every model, with list pages that render and image thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import CaptionFactory, CollectionItemFactory, ImageFactory, UserFactory
from workers.models import EmbeddingJob
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db

MODELS = [
    "gallery_image",
    "gallery_caption",
    "gallery_collection",
    "gallery_collectionitem",
    "workers_imageembedding",
    "workers_embeddingjob",
    "auth_user",
]


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_every_model_has_a_working_changelist_and_change_page(admin_client: Client) -> None:
    image = ImageFactory(dataset=True)
    CaptionFactory(image=image, text="two dogs on a beach")
    CollectionItemFactory(image=image)
    vector = np.ones((1, 512), dtype=np.float32)
    embeddings_store(model_id="clip-vit-base-patch32", image_ids=[image.pk], vectors=vector)
    EmbeddingJob.objects.create(
        image=ImageFactory(),
        model_id="align-base",
        status="failed",
        error="cannot identify image file",
    )
    for name in MODELS:
        changelist = admin_client.get(reverse(f"admin:{name}_changelist"))
        assert changelist.status_code == 200, name
        obj = changelist.context["cl"].result_list[0]
        change = admin_client.get(reverse(f"admin:{name}_change", args=[obj.pk]))
        assert change.status_code == 200, name


def test_image_list_shows_thumbnails_and_searches_captions(admin_client: Client) -> None:
    dog = ImageFactory(dataset=True)
    CaptionFactory(image=dog, text="two dogs running on a beach")
    cat = ImageFactory(dataset=True)
    CaptionFactory(image=cat, text="a cat asleep on a sofa")
    response = admin_client.get(reverse("admin:gallery_image_changelist"), {"q": "dogs"})
    content = response.content.decode()
    assert reverse("admin:gallery_image_thumb", args=[dog.pk, 128]) in content
    assert list(response.context["cl"].result_list) == [dog]


def test_job_list_filters_by_status(admin_client: Client) -> None:
    failed = EmbeddingJob.objects.create(
        image=ImageFactory(), model_id="clip-vit-base-patch32", status="failed", error="truncated"
    )
    EmbeddingJob.objects.create(image=ImageFactory(), model_id="clip-vit-base-patch32")
    response = admin_client.get(
        reverse("admin:workers_embeddingjob_changelist"), {"status": "failed"}
    )
    assert list(response.context["cl"].result_list) == [failed]


def test_admin_is_closed_to_non_staff(client: Client) -> None:
    client.force_login(UserFactory())
    response = client.get(reverse("admin:gallery_image_changelist"))
    assert response.status_code == 302

"""Words and a picture as one query vector: a query image plus words, and a region of an image
the person may see (search.selectors.images_search_combined, the API's two forms)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from gallery.models import Image
from search import query_encoder
from search.query_vectors import vector_combined
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
RED, BLUE = (220, 20, 20), (20, 20, 220)


def colour_vector(color: tuple[int, int, int]) -> np.ndarray:
    picture = PILImage.new("RGB", (256, 256), color)
    return np.asarray(query_encoder.image_embedding(model_id=CLIP, image=picture))


def two_halves() -> bytes:
    picture = PILImage.new("RGB", (256, 128), RED)
    picture.paste(BLUE, (128, 0, 256, 128))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def halves(tiny_models) -> dict[str, Image]:
    """A private upload, red on the left and blue on the right; public images planted at the
    embeddings of plain red and plain blue."""
    owner = UserFactory()
    source = ImageFactory(owner=owner, content=two_halves(), original_filename="halves.png")
    red, blue = Image.objects.bulk_create(ImageFactory.build_batch(2, dataset=True, file="x.jpg"))
    others = Image.objects.bulk_create(ImageFactory.build_batch(6, dataset=True, file="x.jpg"))
    rng = np.random.default_rng(2)
    vectors = np.vstack([colour_vector(RED), colour_vector(BLUE), rng.normal(size=(6, 512))])
    embeddings_store(
        model_id=CLIP, image_ids=[i.pk for i in [red, blue, *others]],
        vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
    )  # fmt: skip
    return {"source": source, "red": red, "blue": blue}


def region(client: Client, image: Image, **params) -> dict:
    response = client.get(f"/api/images/{image.pk}/region", {"k": 3, **params})
    assert response.status_code == 200, response.content
    return response.json()


def test_a_region_of_an_image_is_the_query(client: Client, halves) -> None:
    client.force_login(halves["source"].owner)
    left = region(client, halves["source"], right=0.5)
    right = region(client, halves["source"], left=0.5)
    assert left["results"][0]["id"] == halves["red"].pk
    assert right["results"][0]["id"] == halves["blue"].pk
    assert left["results"][0]["score"] == pytest.approx(1.0, abs=0.02)
    assert halves["source"].pk not in {hit["id"] for hit in left["results"]}


def test_a_region_of_an_image_one_may_not_see_is_404(client: Client, halves) -> None:
    for who in (None, UserFactory()):
        client.logout()
        if who:
            client.force_login(who)
        response = client.get(f"/api/images/{halves['source'].pk}/region", {"right": 0.5})
        assert response.status_code == 404


def test_any_four_fractions_name_a_region(client: Client, halves) -> None:
    client.force_login(halves["source"].owner)
    # Edges the wrong way round are swapped; a sliver is widened to 2% of the side.
    swapped = region(client, halves["source"], left=0.5, right=0.0)
    assert swapped["results"][0]["id"] == halves["red"].pk
    sliver = region(client, halves["source"], left=0.9, right=0.9, top=1.0, bottom=1.0)
    assert sliver["results"][0]["id"] == halves["blue"].pk
    outside = client.get(f"/api/images/{halves['source'].pk}/region", {"right": 1.5})
    assert outside.status_code == 400 and "error" in outside.json()


def test_words_and_a_picture_make_one_weighted_vector(client: Client, halves) -> None:
    words = np.asarray(query_encoder.text_embedding(model_id=CLIP, text="a dog"))
    picture = colour_vector(RED)
    upload = SimpleUploadedFile("q.jpg", jpeg_bytes(color=RED, size=(256, 256)), "image/jpeg")
    found = client.post("/api/search/image?q=a+dog&text_weight=0.3&k=8", {"image": upload}).json()
    expected = vector_combined([(picture, 0.7), (words, 0.3)])
    stored = {halves["red"].pk: picture / np.linalg.norm(picture)}
    score = {hit["id"]: hit["score"] for hit in found["results"]}[halves["red"].pk]
    assert score == pytest.approx(float(stored[halves["red"].pk] @ expected), abs=0.02)
    assert found["parsed"]["text"] == "a dog"
    # All weight on the picture: the red image is the query's own vector.
    only_picture = client.post(
        "/api/search/image?q=a+dog&text_weight=0&k=1",
        {"image": SimpleUploadedFile("q.jpg", jpeg_bytes(color=RED, size=(256, 256)))},
    ).json()
    assert only_picture["results"][0]["id"] == halves["red"].pk

"""A model whose weights cannot be loaded: search says so plainly (503) on pages and in the API,
and the web process does not retry the load on every request."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.test import Client
from PIL import Image as PILImage

from gallery.models import Image
from search import query_encoder
from tests.factories import ImageFactory
from workers.models import EmbeddingModel
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
NOT_AVAILABLE = f"The model {CLIP} is not available on this server: its weights could not be loaded"


def public_images(n: int) -> list[Image]:
    images = Image.objects.bulk_create(ImageFactory.build_batch(n, dataset=True, file="x.jpg"))
    rows = np.random.default_rng(3).normal(size=(n, 512))
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=rows)
    return images


def query_png() -> io.BytesIO:
    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 32), (10, 200, 10)).save(buffer, "PNG")
    buffer.seek(0)
    buffer.name = "query.png"
    return buffer


@pytest.fixture
def weights_missing(settings, tmp_path) -> None:
    """The default model points at a folder that does not exist (as a fresh offline server)."""
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "no-weights-here")}
    settings.EMBEDDING_DEVICE = "cpu"


def assert_says_unavailable(response, *, json: bool) -> None:
    assert response.status_code == 503
    text = response.json()["error"] if json else response.content.decode().replace("&quot;", '"')
    assert NOT_AVAILABLE in text
    assert f'EMBEDDING_MODEL_SOURCES="{CLIP}=' in text
    assert "still indexing" not in text and "no images to search yet" not in text


def test_text_and_image_search_say_the_weights_are_missing(client: Client, weights_missing) -> None:
    public_images(3)
    assert_says_unavailable(client.get("/api/search", {"q": "dogs"}), json=True)
    assert_says_unavailable(client.get("/search/", {"q": "dogs"}), json=False)
    assert_says_unavailable(client.post("/api/search/image", {"image": query_png()}), json=True)
    assert_says_unavailable(client.post("/search/image/", {"image": query_png()}), json=False)


def test_similar_images_still_work_from_stored_vectors(client: Client, weights_missing) -> None:
    images = public_images(3)
    response = client.get(f"/api/images/{images[0].pk}/similar")
    assert response.status_code == 200 and len(response.json()["results"]) == 2


def test_a_model_workers_cannot_load_is_unavailable_not_pending(
    client: Client, tiny_models
) -> None:
    # No embeddings yet because the workers cannot load the model: waiting will not help.
    EmbeddingModel.objects.filter(model_id=CLIP).update(
        unavailable_reason="weights for embedding model ... are not available"
    )
    assert_says_unavailable(client.get("/api/search", {"q": "dogs"}), json=True)
    assert_says_unavailable(client.get("/search/", {"q": "dogs"}), json=False)
    image = ImageFactory(dataset=True)
    assert_says_unavailable(client.get(f"/api/images/{image.pk}/similar"), json=True)
    # Once the workers load it again, an empty index is the ordinary "not yet".
    EmbeddingModel.objects.filter(model_id=CLIP).update(unavailable_reason="")
    pending = client.get("/api/search", {"q": "dogs"})
    assert pending.status_code == 409 and "still indexing" in pending.json()["error"]


def test_a_failed_load_is_remembered_for_a_minute(
    client: Client, weights_missing, monkeypatch
) -> None:
    public_images(3)
    attempts = []
    load = query_encoder.encoder_for

    def counting_encoder_for(model_id, **kwargs):
        attempts.append(model_id)
        return load(model_id, **kwargs)

    now = [1000.0]
    monkeypatch.setattr(query_encoder, "encoder_for", counting_encoder_for)
    monkeypatch.setattr(query_encoder.time, "monotonic", lambda: now[0])
    for query in ("dogs", "cats", "birds"):  # new texts: the query cache cannot answer them
        assert client.get("/api/search", {"q": query}).status_code == 503
    assert client.post("/api/search/image", {"image": query_png()}).status_code == 503
    assert attempts == [CLIP]
    now[0] += query_encoder.LOAD_FAILURE_TTL_SECONDS + 1
    assert client.get("/api/search", {"q": "fish"}).status_code == 503
    assert attempts == [CLIP, CLIP]


def test_weights_put_in_place_are_used_once_the_source_changes(
    client: Client, weights_missing, settings, tiny_model_dirs
) -> None:
    public_images(3)
    assert client.get("/api/search", {"q": "dogs"}).status_code == 503
    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tiny_model_dirs[CLIP])}
    assert client.get("/api/search", {"q": "dogs"}).status_code == 200

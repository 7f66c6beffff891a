"""A search costs the same few queries whatever the page size: the hits (with the visibility
filter) and their captions in one query, never a query per hit."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from gallery.models import Caption, Image
from tests.factories import ImageFactory, UserFactory
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
# What a text search may cost on top of the hits with their captions: the models' state, with
# whether each has embedding work pending (one query). The place names the query's words may
# name are kept per process (gallery.selectors.place_names_known, read by the warm-up search)
# and checked only for a phrase that names one (none here).
API_SEARCH_QUERIES = 2
# The page's header lists the models one may search with (one more query).
PAGE_SEARCH_QUERIES = API_SEARCH_QUERIES + 1
# Each ranking query's transaction first sets the HNSW scan settings (SET LOCAL, see
# workers.index_scans): a statement that reads nothing, checked and counted apart.
SCAN_SETTINGS = "SELECT set_config('hnsw.iterative_scan'"


@pytest.fixture
def gallery(tiny_models) -> list[Image]:
    """60 public images with two captions each and a signed-in user's private one: pages of 5
    and 50 hits are both full."""
    rng = np.random.default_rng(7)
    owner = UserFactory()
    images = Image.objects.bulk_create(
        [
            *ImageFactory.build_batch(60, dataset=True, file="x.jpg"),
            ImageFactory.build(owner=owner, file="x.jpg", sha256="f" * 64),
        ]
    )
    vectors = rng.normal(size=(len(images), 512))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    # Stored last position first, so only an ORDER BY position lists them in order.
    Caption.objects.bulk_create(
        Caption(image=image, text=f"photo {image.pk}, take {n}", position=n)
        for image in images
        for n in reversed(range(2))
    )
    return images


def queries_of(client: Client, path: str, **params: object) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, {"q": "a dog on a beach", **params})
    assert response.status_code == 200, response.content[:500]
    statements = [query["sql"] for query in captured.captured_queries]
    for settings, following in zip(statements, [*statements[1:], ""], strict=True):
        if settings.startswith(SCAN_SETTINGS):
            assert "<=>" in following, "the scan settings come right before a ranking query"
    return [sql for sql in statements if not sql.startswith(SCAN_SETTINGS)]


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_api_search_queries_do_not_grow_with_k(client: Client, gallery, signed_in) -> None:
    if signed_in:
        client.force_login(UserFactory())
    queries_of(client, "/api/search", k=1)  # the query encoder's first load
    small = queries_of(client, "/api/search", k=5)
    large = queries_of(client, "/api/search", k=50)
    response = client.get("/api/search", {"q": "a dog on a beach", "k": 50}).json()
    assert len(response["results"]) == 50
    assert all(
        hit["captions"] == [f"photo {hit['id']}, take 0", f"photo {hit['id']}, take 1"]
        for hit in response["results"]
    )
    # A signed-in session adds its session and user rows, whatever k is.
    session = 2 if signed_in else 0
    assert len(small) == len(large) <= API_SEARCH_QUERIES + session, "\n".join(large)
    # The ranking statement (search/ranking_sql.py), its vector a parameter, not a literal.
    ranking = [sql for sql in large if "vector <=>" in sql]
    assert len(ranking) == 1 and "gallery_caption" in ranking[0] and "'[" not in ranking[0]
    assert sum("gallery_caption" in sql for sql in large) == 1


def test_search_page_queries_do_not_grow_with_k(client: Client, gallery) -> None:
    queries_of(client, "/search/", k=1)
    small = queries_of(client, "/search/", k=5)
    large = queries_of(client, "/search/", k=50)
    assert len(small) == len(large) <= PAGE_SEARCH_QUERIES, "\n".join(large)
    html = client.get("/search/", {"q": "a dog on a beach", "k": 50}).content.decode()
    assert html.count('class="result"') == 50
    # Each card is named by its first caption, fetched with the hits.
    assert html.count(", take 0</span>") == 50  # each card named by its first caption


def test_similar_images_queries_do_not_grow_with_k(client: Client, gallery) -> None:
    path = f"/api/images/{gallery[0].pk}/similar"
    small = queries_of(client, path, k=5)
    large = queries_of(client, path, k=50)
    assert len(small) == len(large), "\n".join(large)

"""The query images behind search-by-image URLs live in their own bounded store (a PostgreSQL
table with eviction), never in the broker's Redis: Redis down, or the store full or broken,
never makes a search by image a 500."""

from __future__ import annotations

import io

import pytest
from django.core.cache import caches
from django.db import connection
from django.test import Client
from PIL import Image as PILImage

from search.query_images import query_image_recall, query_image_remember
from tests.factories import UserFactory
from tests.search.test_search import dataset

pytestmark = pytest.mark.django_db

DEAD_REDIS = {
    "BACKEND": "kernel.cache.FailOpenRedisCache",
    "LOCATION": "redis://127.0.0.1:1/1",  # nothing listens on port 1
    "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
}


def stored() -> int:
    with connection.cursor() as cursor:
        cursor.execute('SELECT count(*) FROM "search_query_image_cache"')
        return cursor.fetchone()[0]


def query_png() -> io.BytesIO:
    buffer = io.BytesIO()
    PILImage.new("RGB", (50, 50), (200, 10, 10)).save(buffer, "PNG")
    buffer.seek(0)
    buffer.name = "red.png"
    return buffer


def test_the_store_is_a_table_made_by_the_migrations() -> None:
    assert caches["query_images"]._table == "search_query_image_cache"  # type: ignore[attr-defined]
    assert "search_query_image_cache" in connection.introspection.table_names()


def test_the_store_stays_within_its_bound(settings) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "query_images": {
            **settings.CACHES["query_images"],
            "OPTIONS": {"MAX_ENTRIES": 10, "CULL_FREQUENCY": 2},
        },
    }
    picture = PILImage.new("RGB", (300, 200), (10, 200, 10))
    kept = [
        query_image_remember(model_id="m", vector=[0.5] * 8, picture=picture) for _ in range(60)
    ]
    assert all(query is not None for query in kept)
    # DatabaseCache culls before a write that finds the table over its bound: at most one over.
    assert stored() <= 11
    last = kept[-1]
    assert last is not None and query_image_recall(key=last.key) == last


def test_search_by_image_page_works_while_redis_is_down(client: Client, settings, tiny_models):
    settings.CACHES = {**settings.CACHES, "default": DEAD_REDIS}
    dataset(3)
    # Transactional tests before this one may have left entries (the table is not a model's, so
    # their flush keeps it): count the new ones.
    before = stored()
    for signed_in in (False, True):
        if signed_in:
            client.force_login(UserFactory())
        response = client.post("/search/image/", {"image": query_png()})
        assert response.status_code == 302, response.content.decode()[:500]
        page = client.get(response["Location"])
        assert page.status_code == 200 and page.content.decode().count('class="result"') == 3
    assert stored() == before + 2


def test_a_broken_store_shows_the_results_without_a_shareable_url(
    client: Client, settings, tiny_models
) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "query_images": {**settings.CACHES["query_images"], "LOCATION": "no_such_table"},
    }
    dataset(2)
    response = client.post("/search/image/", {"image": query_png()})
    assert response.status_code == 200
    assert response.content.decode().count('class="result"') == 2
    assert client.get("/search/image/", {"key": "abc"}).status_code == 404


@pytest.mark.parametrize("key", ["", "a\x00b", "x" * 65, "①"])
def test_odd_keys_are_an_expired_search(client: Client, key: str) -> None:
    response = client.get("/search/image/", {"key": key})
    assert response.status_code == 404 and "expired" in response.content.decode()

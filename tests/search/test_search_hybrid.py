"""Hybrid search (search/hybrid.py): meaning and words in one ranking, fused by the
evaluation's RRF; a keyword-only hit the vector ranking misses comes up, filters and privacy
hold, and the keyword side is served by the GIN indexes."""

from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.contrib.postgres.search import SearchQuery
from django.test import Client

from gallery.models import Caption, Image
from search import query_encoder
from search.fusion import RRF_K
from search.hybrid import keyword_candidates
from tests.factories import ImageFactory, UserFactory
from tests.search.test_search import unit
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


@pytest.fixture
def tower(tiny_models) -> dict[str, Image]:
    """40 public images near the query "eiffel tower", one titled "Eiffel" whose vector
    points away from it, one whose caption says it, and one named eiffel.jpg."""
    query = np.asarray(query_encoder.text_embedding(model_id=CLIP, text="eiffel tower"))
    rng = np.random.default_rng(4)
    near = Image.objects.bulk_create(ImageFactory.build_batch(40, dataset=True, file="x.jpg"))
    titled, captioned, named = Image.objects.bulk_create(
        ImageFactory.build_batch(3, dataset=True, file="x.jpg")
    )
    Image.objects.filter(pk=titled.pk).update(title="Eiffel at dawn")
    Caption.objects.create(image=captioned, text="the Eiffel tower lit at night")
    Image.objects.filter(pk=named.pk).update(original_filename="eiffel.jpg")
    vectors = np.vstack([query + 0.6 * unit(rng.normal(size=(40, 512))), -np.tile(query, (3, 1))])
    embeddings_store(
        model_id=CLIP, image_ids=[i.pk for i in [*near, titled, captioned, named]],
        vectors=unit(vectors + 0.01 * rng.normal(size=vectors.shape)),
    )  # fmt: skip
    return {"titled": titled, "captioned": captioned, "named": named}


def found(client: Client, **params) -> list[int]:
    response = client.get("/api/search", {"q": "eiffel tower", "k": 5, **params})
    assert response.status_code == 200, response.content
    return [hit["id"] for hit in response.json()["results"]]


def test_a_title_only_match_appears_with_hybrid(client: Client, tower) -> None:
    keyword_only = {tower["titled"].pk, tower["captioned"].pk}
    assert not keyword_only & set(found(client)), "the vector ranking alone misses them"
    hybrid = found(client, hybrid="true")
    assert keyword_only <= set(hybrid)
    answer = client.get("/api/search", {"q": "eiffel tower", "k": 5, "hybrid": "true"}).json()
    assert answer["fusion"] == "rrf"
    # A keyword match scores 1/(k+1) on its side plus its meaning rank's term, over 2/(k+1).
    scores = {hit["id"]: hit["score"] for hit in answer["results"]}
    assert scores[hybrid[0]] <= 1.0 and min(scores.values()) > 0.5 * (1 / (RRF_K + 1)) / (
        2 / (RRF_K + 1)
    )


def test_a_file_name_is_found_by_its_trigrams(tower) -> None:
    matches = keyword_candidates(user=AnonymousUser(), filters=None, words="eifel.jpg", depth=10)
    assert tower["named"].pk in matches


def test_hybrid_keeps_filters_and_privacy(client: Client, tower) -> None:
    owner = UserFactory()
    secret = ImageFactory(owner=owner, title="Eiffel from my window")
    embeddings_store(model_id=CLIP, image_ids=[secret.pk], vectors=unit(np.ones((1, 512))))
    for who in (None, UserFactory()):
        client.logout()
        if who:
            client.force_login(who)
        assert secret.pk not in found(client, hybrid="true", k=50)
    client.force_login(owner)
    assert secret.pk in found(client, hybrid="true", k=50)
    assert found(client, hybrid="true", source="mine") == [secret.pk]


def test_min_score_stays_a_cosine_floor(client: Client, tower) -> None:
    answer = client.get(
        "/api/search", {"q": "eiffel tower", "hybrid": "true", "min_score": 0.0, "k": 50}
    )
    ids = {hit["id"] for hit in answer.json()["results"]}
    # The keyword matches were planted opposite the query (cosine about -1): below the floor.
    assert ids and not ids & {tower["titled"].pk, tower["captioned"].pk, tower["named"].pk}


def test_the_page_switches_hybrid_on(client: Client, tower) -> None:
    response = client.get("/search/", {"q": "eiffel tower", "k": 5, "hybrid": "1"})
    shown = {hit.image.pk for hit in response.context["page"].hits}
    assert tower["titled"].pk in shown
    url, on = response.context["words_link"]
    assert on and "hybrid" not in url


def test_keyword_queries_can_use_the_gin_indexes(tower) -> None:
    from django.db import connection

    query = SearchQuery("eiffel", config="simple", search_type="websearch")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    images = Image.objects.filter(search_words=query).order_by()
    captions = Caption.objects.filter(search_words=query).order_by()
    assert "image_words" in images.explain()
    assert "caption_words" in captions.explain()
    # The stored words are the text's: an edit is searchable at once, with no code to keep
    # them in step.
    titled = tower["titled"].pk
    Image.objects.filter(pk=titled).update(title="Tour Montparnasse")
    assert not Image.objects.filter(pk=titled, search_words=query).exists()
    again = SearchQuery("montparnasse", config="simple")
    assert Image.objects.filter(pk=titled, search_words=again).exists()
    names = Image.objects.filter(original_filename__trigram_similar="eiffel.jpg").order_by()
    assert "image_name_trgm" in names.explain()


def test_words_too_common_to_tell_images_apart_are_left_out(tower, monkeypatch) -> None:
    from django.db import connection

    from search import hybrid

    monkeypatch.setattr(hybrid, "COMMON_WORDS_MAX_AGE", 0.0)
    for image in Image.objects.exclude(pk__in=[i.pk for i in tower.values()]):
        Caption.objects.create(image=image, text="a photo of the city")

    def analysed() -> frozenset[str]:
        with connection.cursor() as cursor:
            cursor.execute('ANALYZE "gallery_image", "gallery_caption"')
        return hybrid.common_words()

    # A small gallery keeps every word: ranking a few dozen matches costs nothing.
    assert analysed() == frozenset()
    monkeypatch.setattr(hybrid, "HYBRID_COMMON_WORD_ROWS", 10)
    common = analysed()
    assert {"a", "photo", "of", "the", "city"} <= common and "eiffel" not in common
    # The common words match nothing on the keyword side; the rare one still does.
    everyone = keyword_candidates(user=AnonymousUser(), filters=None, words="a photo", depth=50)
    assert everyone == {}
    mixed = keyword_candidates(
        user=AnonymousUser(), filters=None, words="a photo of the eiffel", depth=50
    )
    assert set(mixed) == {tower["titled"].pk, tower["captioned"].pk}

"""Searches read the way people ask (search.query_parser in the search path): the negative
term demotes, date and place chips filter exactly, the structured API form does the same,
every filter combination still fills k, and the index serves filtered queries."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.db.models import Q
from django.test import Client

from gallery.models import Caption, Image
from search import query_encoder
from search.query_vectors import vector_without
from search.ranking import SearchFilters, images_search_queryset
from search.selectors import images_search_by_text
from tests.factories import ImageFactory, UserFactory
from tests.search.test_search import clustered, unit
from workers.index_scans import hnsw_scan_transaction
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def embed(text: str) -> np.ndarray:
    return np.asarray(query_encoder.text_embedding(model_id=CLIP, text=text), dtype=np.float64)


def store(images: list[Image], vectors: np.ndarray) -> None:
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=unit(vectors))


def public(n: int, **fields) -> list[Image]:
    return Image.objects.bulk_create(
        ImageFactory.build_batch(n, dataset=True, file="x.jpg", **fields)
    )


def ids(page) -> list[int]:
    return [hit.image.pk for hit in page.hits]


def test_a_negative_term_demotes_what_matches_it(client: Client, tiny_models) -> None:
    beach, people = embed("beach"), embed("people")
    # The part of "people" that "beach" lacks, and a direction away from both: a crowded beach
    # and an empty one. The crowded one is planted nearer to "beach" alone.
    with_people = unit(people - (people @ beach) * beach).astype(np.float64)
    rng = np.random.default_rng(3)
    other = rng.normal(size=512)
    other -= (other @ beach) * beach + (other @ with_people) * with_people
    other = unit(other).astype(np.float64)
    crowded, empty = public(2)
    stored = {crowded.pk: unit(beach + 0.7 * with_people), empty.pk: unit(beach + 0.8 * other)}
    store([crowded, empty], np.stack(list(stored.values())))
    public(10)  # unrelated images around them
    store(list(Image.objects.exclude(pk__in=[crowded.pk, empty.pk])), clustered(10, seed=9))

    plain = client.get("/api/search", {"q": "beach", "k": 2}).json()
    assert [hit["id"] for hit in plain["results"]] == [crowded.pk, empty.pk], (
        "the planted images: the crowded beach is the nearer to 'beach' without a negative"
    )
    for params in (
        {"q": "beach -people"},
        {"q": "beach without people"},
        {"q": "beach", "exclude": "people"},
    ):
        found = client.get("/api/search", {**params, "k": 2}).json()
        assert [hit["id"] for hit in found["results"]] == [empty.pk, crowded.pk], params
    parsed = client.get("/api/search", {"q": "beach -people"}).json()["parsed"]
    assert parsed["exclude"] == ["people"] and parsed["text"] == "beach"
    # The one rule: the scores are the cosines to normalize(q - w * n).
    scores = {hit["id"]: hit["score"] for hit in found["results"]}
    rule = vector_without(beach, [people], weight=0.5)
    for image_id, vector in stored.items():
        assert scores[image_id] == pytest.approx(float(vector @ rule), abs=2e-4)


def test_negative_weight_is_the_setting(settings, tiny_models) -> None:
    beach, people = embed("beach"), embed("people")
    with_people = unit(people - (people @ beach) * beach).astype(np.float64)
    other = clustered(1)[0].astype(np.float64)
    other = unit(other - (other @ beach) * beach - (other @ with_people) * with_people)
    crowded, empty = public(2)
    store([crowded, empty], np.stack([beach + 0.7 * with_people, beach + 0.8 * other]))
    settings.SEARCH_NEGATIVE_WEIGHT = 0.0
    page = images_search_by_text(user=AnonymousUser(), text="beach -people", now=NOW)
    assert ids(page)[0] == crowded.pk
    settings.SEARCH_NEGATIVE_WEIGHT = 0.5
    page = images_search_by_text(user=AnonymousUser(), text="beach -people", now=NOW)
    assert ids(page)[0] == empty.pk


@pytest.fixture
def dated_and_placed(tiny_models) -> dict[str, list[Image]]:
    """Public images taken in July 2023, in 2019, with no taken date; some in Hanoi, some in
    Paris; a few with a title."""
    hanoi = {"place_city": "Hoàn Kiếm", "place_region": "Hanoi", "place_country": "Vietnam"}
    july = public(4, taken_at=datetime(2023, 7, 10, tzinfo=UTC), **hanoi)
    edge = public(1, taken_at=datetime(2023, 8, 1, tzinfo=UTC))  # the first moment after July
    paris = {"place_city": "Paris", "place_region": "Île-de-France", "place_country": "France"}
    old = public(3, taken_at=datetime(2019, 3, 1, tzinfo=UTC), **paris)
    undated = public(3)
    everything = july + edge + old + undated
    store(everything, clustered(len(everything), seed=11))
    return {"july": july, "edge": edge, "old": old, "undated": undated}


def test_date_chips_filter_exactly(client: Client, dated_and_placed) -> None:
    july = {i.pk for i in dated_and_placed["july"]}
    for q in ("beach July 2023", "biển tháng 7 năm 2023", "beach in July 2023"):
        found = client.get("/api/search", {"q": q}).json()
        assert {hit["id"] for hit in found["results"]} == july, q
        assert found["parsed"]["taken_after"] == "2023-07-01"
        assert found["parsed"]["taken_before"] == "2023-08-01"
    within_2019 = client.get("/api/search", {"q": "snow 2019"}).json()
    assert {hit["id"] for hit in within_2019["results"]} == {i.pk for i in dated_and_placed["old"]}
    structured = client.get(
        "/api/search", {"q": "beach", "taken_after": "2023-07-01", "taken_before": "2023-08-01"}
    ).json()
    assert {hit["id"] for hit in structured["results"]} == july


def test_place_chips_filter_exactly(client: Client, dated_and_placed) -> None:
    hanoi = {i.pk for i in dated_and_placed["july"]}
    for q in ("street in Hanoi", "phố ở Hà Nội", "street Vietnam", "Hoàn Kiếm"):
        found = client.get("/api/search", {"q": q}).json()
        assert {hit["id"] for hit in found["results"]} == hanoi, q
        assert [chip["kind"] for chip in found["parsed"]["chips"]] == ["place"]
    paris = client.get("/api/search", {"q": "street", "place": "paris"}).json()
    assert {hit["id"] for hit in paris["results"]} == {i.pk for i in dated_and_placed["old"]}
    # Places and dates together: nothing was taken in Paris in July 2023.
    assert client.get("/api/search", {"q": "Paris July 2023"}).json()["results"] == []


def test_a_private_images_place_is_no_place_for_others(client: Client, tiny_models) -> None:
    owner = UserFactory()
    secret = ImageFactory(owner=owner, place_city="Huế", place_country="Vietnam")
    store([secret], clustered(1))
    store(public(3), clustered(3, seed=2))
    for who in (None, UserFactory()):
        client.logout()
        if who:
            client.force_login(who)
        parsed = client.get("/api/search", {"q": "temple in Huế"}).json()["parsed"]
        assert parsed["chips"] == [], "the parser must not know where private photos were taken"
    client.force_login(owner)
    found = client.get("/api/search", {"q": "temple in Huế"}).json()
    assert [hit["id"] for hit in found["results"]] == [secret.pk]


def test_place_names_are_kept_a_minute_but_who_may_see_them_is_checked_live(
    client: Client, tiny_models, monkeypatch
) -> None:
    from gallery import selectors

    owner = UserFactory()
    paris = ImageFactory(owner=owner, visibility="public", place_city="Paris",
                         place_country="France")  # fmt: skip
    store([paris], clustered(1))
    store(public(3), clustered(3, seed=2))

    def chips(q: str) -> list[str]:
        parsed = client.get("/api/search", {"q": q}).json()["parsed"]
        return [chip["value"] for chip in parsed["chips"]]

    assert "Paris" in chips("temple in Paris")  # the names are read: one query, then kept
    lyon = ImageFactory(owner=owner, visibility="public", place_city="Lyon",
                        place_country="France")  # fmt: skip
    store([lyon], clustered(1, seed=3))
    assert chips("temple in Lyon") == [], "a name stored since is known once the minute is over"
    monkeypatch.setattr(selectors, "PLACE_NAMES_MAX_AGE", 0.0)
    assert "Lyon" in chips("temple in Lyon")
    monkeypatch.setattr(selectors, "PLACE_NAMES_MAX_AGE", 60.0)
    # Made private: a kept name is never used for anyone who may no longer see it.
    Image.objects.filter(pk=paris.pk).update(visibility="private")
    assert chips("temple in Paris") == []
    client.force_login(owner)
    assert "Paris" in chips("temple in Paris")


def test_exact_words_must_appear(client: Client, tiny_models) -> None:
    titled, captioned, named, plain = public(4)
    Image.objects.filter(pk=titled.pk).update(title="Old Red Car")
    Caption.objects.create(image=captioned, text="a red car parked")
    Image.objects.filter(pk=named.pk).update(original_filename="red car.jpg")
    store([titled, captioned, named, plain], clustered(4))
    found = client.get("/api/search", {"q": '"red car" street'}).json()
    assert {hit["id"] for hit in found["results"]} == {titled.pk, captioned.pk, named.pk}
    assert found["parsed"]["must"] == ["red car"]
    assert client.get("/api/search", {"q": "street", "must": "red car"}).json()["results"]


def test_k_results_under_every_filter_combination(tiny_models) -> None:
    owner = UserFactory()
    rng = np.random.default_rng(5)
    images = Image.objects.bulk_create(
        ImageFactory.build(
            owner=owner if n % 3 == 0 else None,
            source="upload" if n % 3 == 0 else "flickr30k",
            visibility="private" if n % 3 == 0 and n % 2 else "public",
            file="x.jpg",
            sha256=f"{n:064x}",
            taken_at=datetime(2020 + n % 4, 1 + n % 12, 5, tzinfo=UTC) if n % 5 else None,
            place_city=["Paris", "Hanoi", ""][n % 3],
            place_country=["France", "Vietnam", ""][n % 3],
            camera_make=["Canon", "Nikon"][n % 2],
        )  # fmt: skip
        for n in range(240)
    )
    store(images, rng.normal(size=(len(images), 512)))
    filters = {
        "taken": {
            "taken_after": datetime(2021, 1, 1, tzinfo=UTC),
            "taken_before": datetime(2023, 1, 1, tzinfo=UTC),
        },
        "place": {"places": ("Paris",)},
        "camera": {"camera": "nikon"},
        "source": {"source": "mine"},
        "owner": {"owner": owner.username},
    }  # fmt: skip
    query = unit(rng.normal(size=512))
    for size in range(len(filters) + 1):
        for names in itertools.combinations(filters, size):
            chosen = SearchFilters(**{k: v for n in names for k, v in filters[n].items()})
            for exact in (False, True):
                ranked, _ = images_search_queryset(
                    user=owner, model_id=CLIP, vector=query, filters=chosen, exact=exact, depth=10
                )
                with hnsw_scan_transaction():
                    found = [row.image for row in ranked[:10]]
                matching = _matching(owner, chosen)
                if exact or len(found) == 10:
                    assert len(found) == min(10, matching.count()), (names, exact)
                assert {i.pk for i in found} <= set(matching.values_list("pk", flat=True))


def _matching(owner, filters: SearchFilters):
    images = Image.objects.filter(Q(visibility="public") | Q(owner=owner))
    if filters.taken_after:
        images = images.filter(taken_at__gte=filters.taken_after, taken_at__lt=filters.taken_before)
    if filters.places:
        images = images.filter(place_city__in=filters.places)
    if filters.camera:
        images = images.filter(camera_make__iexact=filters.camera)
    if filters.source == "mine":
        images = images.filter(owner=owner)
    if filters.owner:
        images = images.filter(owner__username=filters.owner)
    return images


def test_search_pages_fill_k_whatever_the_filters(tiny_models) -> None:
    """Through the public selector (index, then exact fallback): always min(k, matches)."""
    images = public(60, camera_make="Canon")
    dated = public(7, camera_make="Canon", taken_at=datetime(2022, 6, 1, tzinfo=UTC))
    store(images + dated, clustered(67, seed=1))
    page = images_search_by_text(user=AnonymousUser(), text="dog 2022", now=NOW)
    assert sorted(ids(page)) == sorted(i.pk for i in dated)


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_filtered_queries_are_served_by_the_index_with_iterative_scans() -> None:
    images = public(3000, taken_at=datetime(2023, 7, 10, tzinfo=UTC), place_city="Hanoi")
    store(images, clustered(3000, seed=4))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_image; ANALYZE search_imageembedding")
    broad = SearchFilters(
        taken_after=datetime(2023, 1, 1, tzinfo=UTC), taken_before=datetime(2024, 1, 1, tzinfo=UTC),
        places=("Hanoi",),
    )  # fmt: skip
    ranked, exact = images_search_queryset(
        user=AnonymousUser(), model_id=CLIP, vector=clustered(1, seed=8)[0], filters=broad,
        exact=False, depth=21,
    )  # fmt: skip
    with hnsw_scan_transaction():
        plan = json.loads(ranked[:21].explain(format="json"))[0]["Plan"]
    assert "hnsw" in json.dumps(plan), "the filtered query takes its candidates from the index"

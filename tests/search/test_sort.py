"""Sort by relevance or by date within the relevant results: order, the relative cut-off,
paging, and privacy in both orders, through the selector, the API and the page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from django.utils import timezone

from gallery.models import Image
from search.ranking import DATE_SORT_CUTOFF, SearchRequest, images_search_by_vector
from tests.factories import ImageFactory, UserFactory
from workers.models import EmbeddingModel
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
ANON = AnonymousUser()
DIM = 512
QUERY = np.eye(DIM, dtype=np.float32)[0]


def scored(cosine: float, axis: int) -> np.ndarray:
    """A unit vector whose cosine with QUERY is exactly ``cosine``."""
    vector = np.zeros(DIM, dtype=np.float32)
    vector[0], vector[axis] = cosine, np.sqrt(1 - cosine**2)
    return vector


def planted(specs: list[tuple[float, int, dict]]) -> list[Image]:
    """One image per (cosine, age in days, factory fields), embedded with that cosine."""
    images = [ImageFactory(**fields) for _, _, fields in specs]
    now = timezone.now()
    for image, (_, days, _) in zip(images, specs, strict=True):
        Image.objects.filter(pk=image.pk).update(created_at=now - timedelta(days=days))
    vectors = np.stack([scored(c, 1 + i) for i, (c, _, _) in enumerate(specs)])
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    return images


@pytest.fixture
def world(tiny_models) -> dict:
    """Public data-set images: the best (0.5) is old, good ones (>= 80% of it) of various ages,
    weak ones (< 80%) newest of all; and another user's private image, the newest strong one."""
    owner = UserFactory()
    public = {"dataset": True}
    best, good_new, good_mid, good_edge, weak_new, weak_newest, private = planted(
        [
            (0.50, 30, public),
            (0.45, 2, public),
            (0.42, 10, public),
            (0.40, 5, public),  # exactly at the cut-off: 0.8 * 0.5
            (0.30, 1, public),
            (0.35, 0, public),
            (0.48, 0, {"owner": owner}),  # private
        ]
    )
    return {
        "owner": owner,
        "best": best,
        "good": [good_new, good_edge, good_mid],  # newest first
        "weak": [weak_new, weak_newest],
        "private": private,
    }


def ids(page) -> list[int]:
    return [hit.image.pk for hit in page.hits]


def test_relevance_is_best_first_and_date_is_newest_first_above_the_cut_off(world) -> None:
    relevance = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=QUERY, search=SearchRequest(k=20)
    )
    assert relevance.sort == "relevance" and relevance.cutoff is None
    scores = [hit.score for hit in relevance.hits]
    assert scores == sorted(scores, reverse=True) and len(scores) == 6

    by_date = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=QUERY, search=SearchRequest(k=20, sort="date")
    )
    good = [image.pk for image in world["good"]]
    assert ids(by_date) == [*good, world["best"].pk]
    assert by_date.sort == "date"
    assert by_date.best == pytest.approx(0.5, abs=1e-5)
    assert by_date.cutoff == pytest.approx(DATE_SORT_CUTOFF * 0.5, abs=1e-5)
    # The weak ones are newer than all of these, and still left out.
    assert not {image.pk for image in world["weak"]} & set(ids(by_date))


def test_date_order_pages_and_min_score_raises_the_cut_off(world) -> None:
    first = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=QUERY, search=SearchRequest(k=2, sort="date")
    )
    rest = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=QUERY, search=SearchRequest(k=2, offset=2, sort="date")
    )
    assert first.next_offset == 2 and rest.next_offset is None
    assert ids(first) + ids(rest) == [*(i.pk for i in world["good"]), world["best"].pk]
    strict = images_search_by_vector(
        user=ANON,
        model_id=CLIP,
        vector=QUERY,
        search=SearchRequest(k=20, sort="date", min_score=0.44),
    )
    assert ids(strict) == [world["good"][0].pk, world["best"].pk]


def test_private_images_only_for_their_owner_in_either_order(world) -> None:
    private = world["private"].pk
    for sort in ("relevance", "date"):
        for viewer in (ANON, UserFactory()):
            page = images_search_by_vector(
                user=viewer, model_id=CLIP, vector=QUERY, search=SearchRequest(k=100, sort=sort)
            )
            assert private not in ids(page), (sort, viewer)
        mine = images_search_by_vector(
            user=world["owner"], model_id=CLIP, vector=QUERY, search=SearchRequest(k=100, sort=sort)
        )
        assert private in ids(mine)
    # Newest of the relevant ones for its owner.
    mine = images_search_by_vector(
        user=world["owner"], model_id=CLIP, vector=QUERY, search=SearchRequest(k=100, sort="date")
    )
    assert ids(mine)[0] == private


def test_api_sorts_and_reports_the_cut_off(client: Client, world, monkeypatch) -> None:
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kwargs: QUERY)
    good = [image.pk for image in world["good"]]
    data = client.get("/api/search", {"q": "a dog", "sort": "date"}).json()
    assert [hit["id"] for hit in data["results"]] == [*good, world["best"].pk]
    assert data["sort"] == "date" and data["cutoff"] == pytest.approx(0.4, abs=1e-4)
    paged = client.get("/api/search", {"q": "a dog", "sort": "date", "k": 3}).json()
    assert paged["next_offset"] == 3
    relevance = client.get("/api/search", {"q": "a dog"}).json()
    assert relevance["sort"] == "relevance" and relevance["cutoff"] is None
    assert relevance["results"][0]["id"] == world["best"].pk
    for sort in ("relevance", "date"):
        found = client.get("/api/search", {"q": "a dog", "sort": sort, "k": 100}).json()
        assert world["private"].pk not in [hit["id"] for hit in found["results"]]
    bad = client.get("/api/search", {"q": "a dog", "sort": "oldest"})
    assert bad.status_code == 400 and "sort" in bad.json()["error"]
    schema = client.get("/api/openapi.json").json()
    parameters = schema["paths"]["/api/search"]["get"]["parameters"]
    sort = next(p for p in parameters if p["name"] == "sort")
    assert sort["schema"]["enum"] == ["relevance", "date"]


def test_page_offers_the_sort_control_and_keeps_it_in_more_links(
    client: Client, world, monkeypatch
) -> None:
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kwargs: QUERY)
    html = client.get("/search/", {"q": "a dog"}).content.decode()
    assert 'aria-label="Sort"' in html and "sort=date" in html and ">newest</a>" in html
    page = client.get("/search/", {"q": "a dog", "sort": "date", "k": 2}).content.decode()
    order = [f'data-image-id="{image.pk}"' for image in world["good"][:2]]
    assert order[0] in page and page.index(order[0]) < page.index(order[1])
    assert "sort=date" in page.split("More results")[0].rsplit('href="', 1)[1]
    assert "newest first among the matches" in page
    assert f'data-image-id="{world["private"].pk}"' not in page
    owner = Client()
    owner.force_login(world["owner"])
    mine = owner.get("/search/", {"q": "a dog", "sort": "date"}).content.decode()
    assert mine.index(f'data-image-id="{world["private"].pk}"') < mine.index(order[0])
    bad = client.get("/search/", {"q": "a dog", "sort": "oldest"})
    assert bad.status_code == 400 and "sort must be one of" in bad.content.decode()


def test_fused_search_sorts_by_date_within_its_relevant_ranks(
    client: Client, tiny_models, monkeypatch
) -> None:
    """Fused scores are fused ranks (1 = first for both models): 80% of the best keeps the
    top 16 when the models agree (2/(60+r) >= 0.8 * 2/61), newest first, privacy as ever."""
    align = "align-base"
    EmbeddingModel.objects.update_or_create(model_id=align, defaults={"enabled": True})
    cosines = [0.9 - 0.02 * i for i in range(20)]
    images = planted([(c, (7 * i) % 20, {"dataset": True}) for i, c in enumerate(cosines)])
    secret = ImageFactory(owner=UserFactory())  # private, the query itself for both models
    clip_rows = np.stack([*(scored(c, 1 + i) for i, c in enumerate(cosines)), QUERY])
    align_rows = np.pad(clip_rows, ((0, 0), (0, 640 - DIM)))
    everything = [i.pk for i in [*images, secret]]
    embeddings_store(model_id=CLIP, image_ids=everything[-1:], vectors=clip_rows[-1:])
    embeddings_store(model_id=align, image_ids=everything, vectors=align_rows)
    query = {CLIP: QUERY, align: align_rows[-1]}
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kw: query[kw["model_id"]])
    params = {"q": "kite", "model": f"{CLIP}+{align}", "sort": "date", "k": 100}
    data = client.get("/api/search", params).json()
    created = dict(Image.objects.values_list("pk", "created_at"))
    newest = sorted(images[:16], key=lambda i: (created[i.pk], i.pk), reverse=True)
    assert [hit["id"] for hit in data["results"]] == [i.pk for i in newest]
    assert data["sort"] == "date" and data["fusion"] == "rrf"


def test_date_order_goes_by_when_photos_were_taken_and_the_api_says_when_and_with_what(
    client: Client, world, monkeypatch
) -> None:
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kwargs: QUERY)
    good_new, good_edge, good_mid = world["good"]
    # Uploaded two days ago, taken in 2001 (at 10:30 in UTC-05:00): now the oldest.
    Image.objects.filter(pk=good_new.pk).update(
        taken_at=datetime(2001, 5, 6, 15, 30, tzinfo=UTC), taken_offset=-300,
        camera_make="FUJIFILM", camera_model="FinePix S2Pro",
    )  # fmt: skip
    # Uploaded 30 days ago, its camera's clock (no offset recorded) said yesterday.
    yesterday = (timezone.now() - timedelta(days=1)).replace(microsecond=0)
    Image.objects.filter(pk=world["best"].pk).update(taken_at=yesterday)
    page = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=QUERY, search=SearchRequest(k=10, sort="date")
    )
    expected = [world["best"].pk, good_edge.pk, good_mid.pk, good_new.pk]
    assert ids(page) == expected
    data = client.get("/api/search", {"q": "a dog", "sort": "date"}).json()
    assert [hit["id"] for hit in data["results"]] == expected
    hits = {hit["id"]: hit for hit in data["results"]}
    assert hits[good_new.pk]["taken_at"] == "2001-05-06T10:30:00-05:00"
    assert hits[good_new.pk]["camera"] == "FUJIFILM FinePix S2Pro"
    assert hits[world["best"].pk]["taken_at"] == yesterday.replace(tzinfo=None).isoformat()
    assert (hits[good_mid.pk]["taken_at"], hits[good_mid.pk]["camera"]) == (None, "")
    hit_schema = client.get("/api/openapi.json").json()["components"]["schemas"]["Hit"]
    assert {"taken_at", "camera"} <= set(hit_schema["properties"])

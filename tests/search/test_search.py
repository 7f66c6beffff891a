"""Search: ranking on pgvector (exact equals numpy, HNSW recall), filters, privacy, the API."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import Client
from django.utils import timezone
from PIL import Image as PILImage

from gallery.models import Image
from gallery.services.accounts import api_token_create
from search import query_encoder
from search.ranking import (
    DATE_SORT_CANDIDATES,
    RERANK_CANDIDATES,
    SearchFilters,
    SearchRequest,
    candidates_nearest,
    embeddings_ranked,
    images_search_by_vector,
    images_search_queryset,
)
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from tests.search.test_schema import assert_reranked_from_index
from workers.index_scans import hnsw_scan_transaction
from workers.models import ImageEmbedding
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
ANON = AnonymousUser()


def clustered(n: int, dim: int = 512, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres, as real embeddings are (unlike uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    rows = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def dataset(n: int, vectors: np.ndarray | None = None, **fields) -> tuple[list[Image], np.ndarray]:
    images = Image.objects.bulk_create(
        ImageFactory.build_batch(n, dataset=True, file="x.jpg", **fields)
    )
    vectors = clustered(n) if vectors is None else vectors
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    return images, vectors


def uploads(owner, n: int, vectors: np.ndarray, visibility: str = "private") -> list[Image]:
    images = Image.objects.bulk_create(
        [
            ImageFactory.build(owner=owner, visibility=visibility, file="x.jpg", sha256=f"{i:064x}")
            for i in range(n)
        ]
    )
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    return images


def plan_of(queryset) -> str:
    return re.sub(r"'\[[^\]]*\]'", "'[...]'", queryset.explain())


def test_exact_ranking_equals_numpy_brute_force() -> None:
    images, vectors = dataset(400)
    query = clustered(1, seed=7)[0]
    got = [e.image_id for e in embeddings_ranked(model_id=CLIP, vector=query, exact=True)[:50]]
    expected = [images[i].pk for i in np.argsort(-(vectors @ query), kind="stable")[:50]]
    assert got == expected


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_hnsw_recall_at_10_against_exact_on_clustered_vectors(fresh_embedding_files) -> None:
    # Queries come from the same clusters as the data, as text queries land near the images
    # they describe.
    both = clustered(3040, seed=4242)
    dataset(3000, vectors=both[:3000])
    queries = both[3000:]
    recalls = []
    for query in queries:
        exact = {
            e.image_id for e in embeddings_ranked(model_id=CLIP, vector=query, exact=True)[:10]
        }
        page = images_search_by_vector(
            user=ANON, model_id=CLIP, vector=query, search=SearchRequest(k=10)
        )
        assert page.exact is False
        recalls.append(len(exact & {hit.image.pk for hit in page.hits}) / 10)
    assert np.mean(recalls) >= 0.95


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_unfiltered_search_uses_the_models_hnsw_index() -> None:
    dataset(3000)
    user = UserFactory()
    with connection.cursor() as cursor:  # as autovacuum would have done by now
        cursor.execute("ANALYZE gallery_image; ANALYZE search_imageembedding")
    for who in (ANON, user):
        queryset, exact = images_search_queryset(user=who, model_id=CLIP, vector=clustered(1)[0])
        assert not exact
        assert_reranked_from_index(plan_of(queryset[:20]), CLIP)


def stored_vectors(image_ids: list[int]) -> dict[int, np.ndarray]:
    rows = ImageEmbedding.objects.filter(model_id=CLIP, image_id__in=image_ids)
    return {row.image_id: np.asarray(row.vector, dtype=np.float64) for row in rows}


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_scores_are_the_exact_cosine_of_the_full_vectors() -> None:
    """The index ranks half-precision copies; the scores a search returns are still the cosine
    of the stored float32 vectors, not of their halfvec roundings."""
    dataset(3000)
    query = clustered(1, seed=11)[0]
    page = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=query, search=SearchRequest(k=50)
    )
    assert not page.exact and len(page.hits) == 50
    stored = stored_vectors([hit.image.pk for hit in page.hits])
    q = query.astype(np.float64)
    exact = np.array(
        [stored[h.image.pk] @ q / np.linalg.norm(stored[h.image.pk]) for h in page.hits]
    )
    q16 = query.astype(np.float16).astype(np.float64)
    rounded = np.array(
        [
            (v16 := stored[h.image.pk].astype(np.float16).astype(np.float64))
            @ q16
            / (np.linalg.norm(v16) * np.linalg.norm(q16))
            for h in page.hits
        ]
    )
    scores = np.array([hit.score for hit in page.hits])
    assert np.max(np.abs(scores - exact)) < 2e-6
    assert np.max(np.abs(scores - rounded)) > 1e-5  # the test tells the two apart
    # Ranked by those exact scores.
    assert list(scores) == sorted(scores, reverse=True)


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_private_images_nearest_to_the_query_do_not_empty_the_index_page() -> None:
    """More of another user's private images lie nearest to the query than the index hands the
    rerank: visibility is applied inside the candidate query (the iterative scan skips them),
    so the index path itself fills the page with the nearest visible images."""
    rng = np.random.default_rng(31337)
    query = clustered(1, seed=12)[0]
    block = 5 * RERANK_CANDIDATES
    private = uploads(UserFactory(), block, unit(query + 0.02 * rng.normal(size=(block, 512))))
    public, vectors = dataset(3000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_image; ANALYZE search_imageembedding")
    ranked, exact = images_search_queryset(user=ANON, model_id=CLIP, vector=query, depth=21)
    assert not exact
    assert_reranked_from_index(plan_of(ranked[:21]), CLIP)
    page = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=query, search=SearchRequest(k=20)
    )
    assert not page.exact and len(page.hits) == 20 and page.has_more
    got = [hit.image.pk for hit in page.hits]
    assert not set(got) & {i.pk for i in private}
    best = [public[i].pk for i in np.argsort(-(vectors @ query), kind="stable")[:20]]
    assert len(set(got) & set(best)) >= 18  # approximate, but the nearest visible ones


def spaced(n: int, query: np.ndarray, seed: int) -> np.ndarray:
    """``n`` unit vectors whose cosines to ``query`` fall evenly from 0.99 to -0.5: row i is
    the query's (i + 1)-th nearest, each 1.4e-3 apart (far more than halfvec rounding)."""
    rng = np.random.default_rng(seed)
    cosines = np.linspace(0.99, -0.5, n)
    noise = rng.normal(size=(n, len(query)))
    noise -= np.outer(noise @ query, query)  # orthogonal to the query
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    rows = cosines[:, None] * query[None, :] + np.sqrt(1 - cosines**2)[:, None] * noise
    return unit(rows)


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_a_deep_page_comes_from_the_index_with_the_right_rows() -> None:
    """offset 1000: the index hands the rerank offset + k + 1 candidates, not only
    RERANK_CANDIDATES, so the page is served by the index path and holds ranks 1001-1020."""
    query = unit(np.random.default_rng(5).normal(size=512))
    images, vectors = dataset(1100, vectors=spaced(1100, query, seed=6))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_image; ANALYZE search_imageembedding")
    page = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=query, search=SearchRequest(k=20, offset=1000)
    )
    assert not page.exact
    assert [hit.image.pk for hit in page.hits] == [i.pk for i in images[1000:1020]]
    assert page.has_more
    scores = np.array([hit.score for hit in page.hits])
    assert np.max(np.abs(scores - vectors[1000:1020] @ query)) < 2e-6
    # The date sort's DATE_SORT_CANDIDATES (500) come from the index too.
    found, exact = candidates_nearest(
        model_id=CLIP, vector=query, depth=DATE_SORT_CANDIDATES, user=ANON, filters=None,
        exclude_image_id=None,
    )  # fmt: skip
    assert not exact and set(found) == {i.pk for i in images[:DATE_SORT_CANDIDATES]}


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_a_filter_matching_one_percent_still_returns_k_results() -> None:
    owner = UserFactory()
    dataset(2970)
    mine = uploads(owner, 30, clustered(30, seed=5))
    query = clustered(1, seed=3)[0]
    page = images_search_by_vector(
        user=owner,
        model_id=CLIP,
        vector=query,
        search=SearchRequest(k=20, filters=SearchFilters(source="mine")),
    )
    assert len(page.hits) == 20 and page.exact
    assert {h.image.pk for h in page.hits} <= {i.pk for i in mine}
    scores = [h.score for h in page.hits]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_index_path_with_iterative_scan_also_fills_a_selective_filter(
    settings, monkeypatch
) -> None:
    # Force the HNSW path for the 1% filter: pgvector's iterative scan must keep going past
    # the 99% of rows the filter drops instead of returning a short page.
    monkeypatch.setattr("search.ranking.EXACT_SEARCH_MAX_ROWS", 0)
    owner = UserFactory()
    dataset(2970)
    uploads(owner, 30, clustered(30, seed=5))
    page = images_search_by_vector(
        user=owner,
        model_id=CLIP,
        vector=clustered(1, seed=3)[0],
        search=SearchRequest(k=20, filters=SearchFilters(source="mine")),
    )
    assert not page.exact and len(page.hits) == 20


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_the_candidate_index_scan_runs_once_whatever_join_the_planner_picks() -> None:
    # Planner settings under which `pk IN (candidates)` became a nested-loop semi join that
    # re-ran the HNSW scan for every embedding row (seen as a 20-minute statement in a full test
    # run): the candidates must still be read once, by one index scan.
    owner = UserFactory()
    dataset(270)
    uploads(owner, 30, clustered(30, seed=5))
    # The search's own scan settings (SET LOCAL, as search.ranking.ranked_rows gives them); they
    # hold to the end of the test's transaction, like the planner settings below.
    with hnsw_scan_transaction(), connection.cursor() as cursor:
        cursor.execute("ANALYZE search_imageembedding; ANALYZE gallery_image")
        for setting in ("hashjoin", "material", "hashagg", "sort", "seqscan"):
            cursor.execute(f"SET LOCAL enable_{setting} = off")
    ranked, exact = images_search_queryset(
        user=owner, model_id=CLIP, vector=clustered(1, seed=3)[0],
        filters=SearchFilters(source="mine"), exact=False, depth=21,
    )  # fmt: skip
    plan = json.loads(ranked[:21].explain(format="json", analyze=True))[0]["Plan"]
    scans = [node for node in _nodes(plan) if "hnsw" in node.get("Index Name", "")]
    assert scans, "the candidates come from the HNSW index"
    assert [node["Actual Loops"] for node in scans] == [1]
    # Approximate, so possibly short (the search then asks the exact path), but only visible rows.
    mine = set(Image.objects.filter(owner=owner).values_list("pk", flat=True))
    found = {row.image_id for row in ranked[:40]}
    assert found and found <= mine


def test_date_and_source_filters() -> None:
    owner = UserFactory()
    old_images, _ = dataset(5)
    Image.objects.filter(pk__in=[i.pk for i in old_images]).update(
        created_at=timezone.now() - timezone.timedelta(days=30)
    )
    dataset(5, vectors=clustered(5, seed=2))
    recent = SearchFilters(uploaded_after=timezone.now() - timezone.timedelta(days=1))
    page = images_search_by_vector(
        user=owner, model_id=CLIP, vector=clustered(1)[0], search=SearchRequest(filters=recent)
    )
    assert len(page.hits) == 5 and not {h.image.pk for h in page.hits} & {i.pk for i in old_images}
    data = images_search_by_vector(
        user=owner,
        model_id=CLIP,
        vector=clustered(1)[0],
        search=SearchRequest(filters=SearchFilters(source="dataset")),
    )
    assert len(data.hits) == 10


@pytest.mark.slow  # an HNSW index over thousands of vectors
def test_paging_continues_without_overlap_and_min_score_cuts() -> None:
    dataset(300)
    query = clustered(1, seed=11)[0]
    first = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=query, search=SearchRequest(k=10)
    )
    second = images_search_by_vector(
        user=ANON, model_id=CLIP, vector=query, search=SearchRequest(k=10, offset=10)
    )
    assert first.next_offset == 10
    assert not {h.image.pk for h in first.hits} & {h.image.pk for h in second.hits}
    assert first.hits[-1].score >= second.hits[0].score - 1e-6
    cut = images_search_by_vector(
        user=ANON,
        model_id=CLIP,
        vector=query,
        search=SearchRequest(k=10, min_score=first.hits[4].score),
    )
    assert [h.image.pk for h in cut.hits] == [h.image.pk for h in first.hits[:5]]


# --- Privacy --------------------------------------------------------------------------------


@pytest.fixture
def planted(tiny_models):
    """Another user's private upload planted as the exact nearest vector to the query."""
    owner = UserFactory()
    dataset(50)
    query = query_encoder.text_embedding(model_id=CLIP, text="two dogs on a beach")
    secret = uploads(owner, 1, query[None, :])[0]
    return owner, secret


def test_private_upload_is_absent_from_everyone_elses_results(client: Client, planted) -> None:
    owner, secret = planted
    stranger = UserFactory()
    for who in (None, stranger):
        if who:
            client.force_login(who)
        data = client.get("/api/search", {"q": "two dogs on a beach", "k": 100}).json()
        assert secret.pk not in [r["id"] for r in data["results"]]
        assert len(data["results"]) == 50
        page = client.get("/search/", {"q": "two dogs on a beach"}).content.decode()
        assert f'data-image-id="{secret.pk}"' not in page
    client.force_login(owner)
    data = client.get("/api/search", {"q": "two dogs on a beach"}).json()
    assert data["results"][0]["id"] == secret.pk
    assert data["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_private_upload_is_absent_from_similar_images(client: Client, planted) -> None:
    owner, secret = planted
    public = Image.objects.filter(source="flickr30k").first()
    client.force_login(UserFactory())
    ids = [r["id"] for r in client.get(f"/api/images/{public.pk}/similar?k=100").json()["results"]]
    assert secret.pk not in ids and public.pk not in ids and len(ids) == 49
    assert client.get(f"/api/images/{secret.pk}/similar").status_code == 404
    assert client.get(f"/search/similar/{secret.pk}/").status_code == 404


def test_private_upload_is_absent_from_image_query_results(client: Client, planted) -> None:
    _, secret = planted
    picture = io.BytesIO(jpeg_bytes(size=(64, 64)))
    picture.name = "query.jpg"
    data = client.post("/api/search/image?k=100", {"image": picture}).json()
    assert secret.pk not in [r["id"] for r in data["results"]] and len(data["results"]) == 50


def test_api_token_sees_its_owners_private_images(client: Client, planted) -> None:
    owner, secret = planted
    _, raw = api_token_create(user=owner, name="laptop")
    for headers in ({"Authorization": f"Bearer {raw}"}, {"X-API-Token": raw}):
        data = client.get("/api/search", {"q": "two dogs on a beach"}, headers=headers).json()
        assert data["results"][0]["id"] == secret.pk
    bad = client.get("/api/search", {"q": "dogs"}, headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and "error" in bad.json()


# --- API contract ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"q": ""}, 400, "empty"),
        ({"q": "   "}, 400, "empty"),
        ({"q": "x" * 1001}, 400, "limit is 1000"),
        ({"q": "dogs", "model": "clip-vit-huge"}, 400, "unknown"),
        ({"q": "dogs", "model": "clip-vit-large-patch14"}, 400, "not enabled"),
        ({"q": "dogs", "k": 0}, 400, "k must be"),
        ({"q": "dogs", "k": 101}, 400, "k must be"),
        ({"q": "dogs", "k": "many"}, 400, "k"),
        ({"q": "dogs", "offset": -1}, 400, "offset"),
        ({"q": "dogs", "source": "elsewhere"}, 400, "source must be"),
        ({"q": "dogs", "source": "mine"}, 401, "sign in"),
        ({"q": "dogs", "collection": 999999}, 404, "no such collection"),
    ],
)
def test_bad_search_requests_get_json_errors(
    client: Client, tiny_models, params, status, message
) -> None:
    dataset(5)
    response = client.get("/api/search", params)
    assert response.status_code == status, response.content
    assert message in response.json()["error"].lower()


def test_model_without_embeddings_is_a_409(client: Client, tiny_models) -> None:
    # A new site: nothing to index, so the message says how to add images, not "wait".
    response = client.get("/api/search", {"q": "dogs"})
    assert response.status_code == 409
    assert "no images to search yet" in response.json()["error"]
    assert "import_flickr30k" in response.json()["error"]
    # Images waiting for their first embeddings: the model is indexing them.
    ImageFactory(dataset=True)
    response = client.get("/api/search", {"q": "dogs"})
    assert response.status_code == 409
    assert "still indexing" in response.json()["error"]


def test_unreadable_query_image_is_a_400(client: Client, tiny_models) -> None:
    dataset(3)
    junk = io.BytesIO(b"not an image")
    junk.name = "junk.jpg"
    response = client.post("/api/search/image", {"image": junk})
    assert response.status_code == 400 and "query image" in response.json()["error"]


def test_results_carry_scores_thumbnails_and_captions(client: Client, tiny_models) -> None:
    images, _ = dataset(3)
    images[0].captions.create(text="a dog on a beach", position=0)
    data = client.get("/api/search", {"q": "dog", "k": 3}).json()
    assert data["model"] == CLIP and len(data["results"]) == 3
    first = next(r for r in data["results"] if r["id"] == images[0].pk)
    assert first["captions"] == ["a dog on a beach"]
    assert first["thumbnail_url"] == f"/images/{images[0].pk}/thumb"
    assert first["image_url"] == first["display_url"] == f"/images/{images[0].pk}/file"
    assert -1.0 <= first["score"] <= 1.0
    assert client.get("/api/models").json() == [{"id": CLIP, "default": True}]


def test_a_heic_or_tiff_hit_is_displayed_through_a_jpeg_copy(client: Client, tiny_models) -> None:
    # Browsers other than Safari show no HEIC, none shows TIFF: a client that puts display_url
    # in an <img> must get a picture, and image_url must still be the file as uploaded.
    heic, tiff, jpeg = dataset(3)[0]
    for image, name in (
        (heic, "uploads/a.heif"),
        (tiff, "uploads/b.tiff"),
        (jpeg, "uploads/c.jpg"),
    ):
        Image.objects.filter(pk=image.pk).update(file=name)
    hits = {r["id"]: r for r in client.get("/api/search", {"q": "dog", "k": 3}).json()["results"]}
    for image in (heic, tiff):
        assert hits[image.pk]["image_url"] == f"/images/{image.pk}/file"
        assert hits[image.pk]["display_url"] == f"/images/{image.pk}/thumb/2048"
    assert hits[jpeg.pk]["display_url"] == f"/images/{jpeg.pk}/file"


def test_openapi_schema_is_served(client: Client) -> None:
    schema = client.get("/api/openapi.json").json()
    assert {"/api/search", "/api/images/{image_id}/similar", "/api/search/image"} <= set(
        schema["paths"]
    )


def test_query_embeddings_are_cached(tiny_models) -> None:
    first = query_encoder.text_embedding(model_id=CLIP, text="a red bicycle")
    assert query_encoder.text_embedding(model_id=CLIP, text=" a red bicycle ") is first
    with pytest.raises(ValueError):
        first[0] = 0.0  # shared between requests: read-only


# --- The page -------------------------------------------------------------------------------


def test_search_page_shows_results_and_errors(client: Client, tiny_models) -> None:
    images, _ = dataset(3)
    images[0].captions.create(text="a dog on a beach", position=0)
    page = client.get("/search/", {"q": "dog"})
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="result"') == 3 and "a dog on a beach" in html
    assert f"/search/similar/{images[0].pk}/" in html
    empty = client.get("/search/", {"q": "  "})
    assert empty.status_code == 400 and "the query is empty" in empty.content.decode()
    unknown = client.get("/search/", {"q": "dog", "model": "nope"})
    assert unknown.status_code == 400 and "unknown" in unknown.content.decode().lower()
    assert client.get("/search/").status_code == 200


def test_search_by_image_page(client: Client, tiny_models) -> None:
    dataset(4)
    picture = PILImage.new("RGB", (50, 50), (200, 10, 10))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    buffer.seek(0)
    buffer.name = "red.png"
    response = client.post("/search/image/", {"image": buffer})
    # The results live at a GET URL that can be reloaded and shared (no 405 after a redirect).
    assert response.status_code == 302 and response["Location"].startswith("/search/image/?key=")
    html = client.get(response["Location"]).content.decode()
    assert html.count('class="result"') == 4
    assert "data:image/jpeg;base64," in html  # the query image's preview
    again = Client().get(response["Location"] + "&k=2&offset=2")
    assert again.content.decode().count('class="result"') == 2
    expired = client.get("/search/image/", {"key": "gone"})
    assert expired.status_code == 404 and "expired" in expired.content.decode()


def test_quantised_query_encoder_serves_the_same_api(client: Client, settings, tiny_models) -> None:
    settings.SEARCH_QUERY_DTYPE = "int8"
    images, _ = dataset(4)
    assert query_encoder.query_encoder_for(CLIP).quantization == "int8-dynamic"
    fp32 = query_encoder.encoder_for(CLIP).embed_texts(["a quantised query"])[0]
    int8 = query_encoder.text_embedding(model_id=CLIP, text="a quantised query")
    assert float(fp32 @ int8) > 0.99
    data = client.get("/api/search", {"q": "a quantised query", "k": 4}).json()
    assert {r["id"] for r in data["results"]} == {i.pk for i in images}

"""One search path for pages and API: exact-k under visibility, paging, backfill coverage, query
image limits, and the same answers (and errors) from both interfaces."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import Client
from PIL import Image as PILImage

from gallery.models import Image
from search.ranking import (
    SearchRequest,
    images_search_by_vector,
    images_search_queryset,
    ranked_rows,
)
from search.selectors import IMAGE_QUERY_CONCURRENCY, image_query_slot
from tests.factories import ImageFactory, UserFactory
from workers.indexes import hnsw_index_name
from workers.models import EmbeddingJob
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
ANON = AnonymousUser()


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def public_images(n: int, vectors: np.ndarray) -> list[Image]:
    images = Image.objects.bulk_create(ImageFactory.build_batch(n, dataset=True, file="x.jpg"))
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    return images


def private_images(owner, vectors: np.ndarray) -> list[Image]:
    images = Image.objects.bulk_create(
        [
            ImageFactory.build(owner=owner, file="x.jpg", sha256=f"{i:064x}")
            for i in range(len(vectors))
        ]
    )
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)
    return images


def png_file(size: tuple[int, int], mode: str = "RGB", name: str = "query.png") -> io.BytesIO:
    buffer = io.BytesIO()
    PILImage.new(mode, size).save(buffer, "PNG")
    buffer.seek(0)
    buffer.name = name
    return buffer


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# --- Exact k under visibility ----------------------------------------------------------------


@pytest.fixture
def private_block_nearest():
    """A block of another user's private vectors nearest to the query, larger than the HNSW
    scan may read (hnsw.max_scan_tuples, lowered for this test's transaction), and 60 public
    images further away."""
    rng = np.random.default_rng(90210)
    query = unit(rng.normal(size=512))
    owner = UserFactory()
    block = private_images(owner, unit(query + 0.02 * rng.normal(size=(2000, 512))))
    public = public_images(60, unit(rng.normal(size=(60, 512))))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.max_scan_tuples = 100")
        # Tables this small would be sorted in full; make the planner take the HNSW index, as
        # it does at the sizes where the block hides everything (30,000 rows in the report).
        cursor.execute("ANALYZE gallery_image; ANALYZE search_imageembedding")
        cursor.execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;"
            "SET LOCAL enable_sort = off"
        )
    return query, owner, block, public


@pytest.mark.slow  # thousands of private vectors nearest the query
def test_the_index_alone_comes_back_short_behind_a_private_block(private_block_nearest) -> None:
    # The trap the search must not fall into: this is what the HNSW path alone returns.
    query, *_ = private_block_nearest
    ranked, exact = images_search_queryset(user=ANON, model_id=CLIP, vector=query)
    assert not exact and f"Index Scan using {hnsw_index_name(CLIP)}" in ranked[:20].explain()
    assert len(ranked_rows(ranked[:20])) < 20  # with the search's own scan settings


@pytest.mark.slow  # thousands of private vectors nearest the query
def test_every_viewer_gets_min_k_visible_results(private_block_nearest) -> None:
    query, owner, block, public = private_block_nearest
    stranger = UserFactory()
    for viewer in (ANON, stranger):
        for k in (1, 2, 3, 10, 20, 59, 60, 61, 100):
            page = images_search_by_vector(
                user=viewer, model_id=CLIP, vector=query, search=SearchRequest(k=k)
            )
            assert len(page.hits) == min(k, 60), (viewer, k)
            assert {h.image.pk for h in page.hits} <= {i.pk for i in public}
            assert (page.next_offset is not None) == (k < 60)
        tail = images_search_by_vector(
            user=viewer, model_id=CLIP, vector=query, search=SearchRequest(k=20, offset=50)
        )
        assert len(tail.hits) == 10 and tail.next_offset is None
    mine = images_search_by_vector(
        user=owner, model_id=CLIP, vector=query, search=SearchRequest(k=100)
    )
    assert len(mine.hits) == 100 and {h.image.pk for h in mine.hits} <= {i.pk for i in block}


@pytest.mark.slow  # thousands of private vectors nearest the query
def test_api_and_page_return_the_visible_matches_behind_a_private_block(
    client: Client, private_block_nearest, monkeypatch
) -> None:
    query, *_ = private_block_nearest
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kwargs: query)
    data = client.get("/api/search", {"q": "red car", "k": 3}).json()
    assert len(data["results"]) == 3
    html = client.get("/search/", {"q": "red car", "k": 3}).content.decode()
    assert html.count('class="result"') == 3


# --- Paging and coverage ----------------------------------------------------------------------


def test_no_next_offset_when_exactly_k_match(client: Client, monkeypatch) -> None:
    vectors = unit(np.random.default_rng(5).normal(size=(10, 512)))
    public_images(10, vectors)
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kwargs: vectors[0])
    assert client.get("/api/search", {"q": "dogs", "k": 10}).json()["next_offset"] is None
    assert client.get("/api/search", {"q": "dogs", "k": 5}).json()["next_offset"] == 5
    last = client.get("/api/search", {"q": "dogs", "k": 5, "offset": 5}).json()
    assert len(last["results"]) == 5 and last["next_offset"] is None
    assert "More results" not in client.get("/search/", {"q": "dogs", "k": 10}).content.decode()
    assert "More results" in client.get("/search/", {"q": "dogs", "k": 5}).content.decode()


def test_coverage_is_reported_while_a_model_backfills(client: Client, monkeypatch) -> None:
    vectors = unit(np.random.default_rng(6).normal(size=(5, 512)))
    public_images(5, vectors)
    monkeypatch.setattr("search.query_encoder.text_embedding", lambda **kwargs: vectors[0])
    complete = client.get("/api/search", {"q": "dogs"}).json()
    assert complete["indexed"] is None and complete["total"] is None
    waiting = ImageFactory.create_batch(3, dataset=True)
    someones_private = ImageFactory()
    for image in [*waiting, someones_private]:
        EmbeddingJob.objects.create(image=image, model_id=CLIP)
    data = client.get("/api/search", {"q": "dogs"}).json()
    assert (data["indexed"], data["total"]) == (5, 8)  # the private upload is not counted
    assert (
        "still indexing: 5 of 8 searchable"
        in client.get("/search/", {"q": "dogs"}).content.decode()
    )
    client.force_login(someones_private.owner)
    assert client.get("/api/search", {"q": "dogs"}).json()["total"] == 9


# --- Query images -----------------------------------------------------------------------------


@pytest.fixture
def searchable(tiny_models) -> None:
    public_images(4, unit(np.random.default_rng(7).normal(size=(4, 512))))


def test_query_image_over_the_pixel_limit_is_refused_before_decoding(
    client: Client, settings, searchable, monkeypatch
) -> None:
    settings.UPLOAD_MAX_PIXELS = 1_000_000

    def no_decode(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr("gallery.decoding.open_image", no_decode)
    response = client.post("/api/search/image", {"image": png_file((2000, 2000), mode="1")})
    assert response.status_code == 400
    assert response.json() == {
        "error": "the query image: image too large: 2000x2000 is 4.0 megapixels "
        "and the limit is 1.0"
    }
    page = client.post("/search/image/", {"image": png_file((2000, 2000), mode="1")})
    assert page.status_code == 400 and "image too large: 2000x2000" in page.content.decode()


def test_decompression_bomb_query_is_a_400(client: Client, searchable) -> None:
    bomb = io.BytesIO(png_header_only(30000, 30000))
    bomb.name = "bomb.png"
    response = client.post("/api/search/image", {"image": bomb})
    assert response.status_code == 400 and "too large" in response.json()["error"]


def test_query_image_over_the_byte_limit_is_a_413(client: Client, settings, searchable) -> None:
    settings.UPLOAD_MAX_BYTES = 2000
    big = png_file((300, 300), mode="RGB")
    big = io.BytesIO(np.random.default_rng(1).bytes(100) + big.getvalue())
    picture = io.BytesIO()
    PILImage.effect_noise((200, 200), 80).convert("RGB").save(picture, "PNG")
    for url in ("/api/search/image", "/search/image/"):
        picture.seek(0)
        picture.name = "noise.png"
        response = client.post(url, {"image": picture})
        assert response.status_code == 413, url
        assert "the limit is" in response.content.decode()


def test_query_image_in_an_unaccepted_format_is_a_400(client: Client, searchable) -> None:
    buffer = io.BytesIO()
    PILImage.new("RGB", (20, 20)).save(buffer, "PPM")
    buffer.seek(0)
    buffer.name = "query.ppm"
    response = client.post("/api/search/image", {"image": buffer})
    assert response.status_code == 400 and "not supported" in response.json()["error"]


def test_image_queries_are_bounded_per_process(client: Client, searchable, monkeypatch) -> None:
    monkeypatch.setattr("search.selectors.IMAGE_QUERY_WAIT_SECONDS", 0)
    with contextlib.ExitStack() as held:
        for _ in range(IMAGE_QUERY_CONCURRENCY):  # every slot taken: the next one gives up
            held.enter_context(image_query_slot())
        response = client.post("/api/search/image", {"image": png_file((32, 32))})
    assert response.status_code == 429 and "try again" in response.json()["error"]


def test_page_and_api_give_the_same_message(client: Client, tiny_models) -> None:
    # No embeddings at all: both say the same, with the same status.
    api = client.get("/api/search", {"q": "dogs"})
    page = client.get("/search/", {"q": "dogs"})
    assert api.status_code == page.status_code == 409
    assert api.json()["error"] in page.content.decode().replace("&#x27;", "'")
    public_images(2, unit(np.random.default_rng(8).normal(size=(2, 512))))
    for params in ({"q": "dogs", "k": 0}, {"q": "dogs", "offset": 5000}, {"q": "x" * 1001}):
        api = client.get("/api/search", params)
        page = client.get("/search/", params)
        assert api.status_code == page.status_code == 400, params
        assert api.json()["error"] in page.content.decode(), params


# --- One 404 for private and missing images ---------------------------------------------------


def test_private_and_missing_images_get_one_identical_404(client: Client, settings) -> None:
    settings.DEBUG = True  # the debug 404 page shows the message; it must not differ either
    private = ImageFactory()
    missing = private.pk + 1000
    client.force_login(UserFactory())
    api = [client.get(f"/api/images/{i}/similar") for i in (private.pk, missing)]
    assert [r.status_code for r in api] == [404, 404]
    assert api[0].json() == api[1].json() == {"error": "no such image"}
    pages = [client.get(f"/search/similar/{i}/") for i in (private.pk, missing)]
    assert [r.status_code for r in pages] == [404, 404]
    assert all("no such image" in r.content.decode() for r in pages)
    for url in ("/images/{}/file", "/images/{}/thumb"):
        files = [client.get(url.format(i)) for i in (private.pk, missing)]
        assert [r.status_code for r in files] == [404, 404]
        for response in files:
            body = response.content.decode()
            assert "No such image." in body and "matches the given query" not in body


# --- The schema states the truth --------------------------------------------------------------


def test_openapi_schema_states_required_fields_bounds_and_anonymous_use(client: Client) -> None:
    schema = client.get("/api/openapi.json").json()
    search = schema["paths"]["/api/search"]["get"]
    params = {p["name"]: p for p in search["parameters"]}
    assert params["q"]["required"] is True
    assert params["q"]["schema"]["minLength"] == 1 and params["q"]["schema"]["maxLength"] == 1000
    assert (params["k"]["schema"]["minimum"], params["k"]["schema"]["maximum"]) == (1, 100)
    offset = params["offset"]["schema"]
    assert (offset["minimum"], offset["maximum"]) == (0, 1000)
    for path in ("/api/search", "/api/search/image", "/api/images/{image_id}/similar"):
        for operation in schema["paths"][path].values():
            assert {} in operation["security"], path  # no credentials is accepted too
            assert {"401", "403", "404", "500", "503"} <= set(operation["responses"])
    image = schema["paths"]["/api/search/image"]["post"]
    # Words are optional beside the image (one weighted query vector).
    image_params = {p["name"]: p for p in image.get("parameters", [])}
    assert image_params["q"].get("required", False) is False

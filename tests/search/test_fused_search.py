"""Fused search ("A+B"): each model's top candidates fused by reciprocal rank, through the API
and the page, with the same privacy as one model; offered only while both are complete."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from django.test import Client

from gallery.models import Image
from search import query_encoder
from search.fusion import fuse_rrf
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from workers.models import EmbeddingModel, ImageEmbedding
from workers.selectors import embedding_progress
from workers.services import embeddings_store

CLIP, ALIGN = "clip-vit-base-patch32", "align-base"
FUSED = f"{CLIP}+{ALIGN}"
QUERY = "a red kite over the dunes"
K = 5


def with_similarity(query: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine similarity to the unit vector ``query`` is ``similarity``."""
    other = rng.normal(size=query.shape)
    other -= (other @ query) * query
    other /= np.linalg.norm(other)
    return similarity * query + np.sqrt(1 - similarity**2) * other


def store(images: list[Image], query: np.ndarray, model_id: str, scores: list[float]) -> None:
    rng = np.random.default_rng(len(query) + len(images))
    vectors = np.stack([with_similarity(query, s, rng) for s in scores])
    embeddings_store(model_id=model_id, image_ids=[i.pk for i in images], vectors=vectors)


@pytest.fixture
def gallery(tiny_models, fresh_embedding_files) -> dict[str, object]:
    """Twenty-one public images where each model alone misses the target in its top 5 (on
    fresh index files, where a search of 22 rows is exhaustive):

    - CLIP ranks five "clip decoys" first, the target 6th, ten fillers next, and five
      "align decoys" last; ALIGN the other way round (its decoys first, CLIP's last).
    - RRF: the target's 1/66 + 1/66 beats a decoy's best, 1/61 + 1/77.

    Plus another user's private upload that is the query itself for both models.
    """
    EmbeddingModel.objects.update_or_create(model_id=ALIGN, defaults={"enabled": True})
    clip_query = query_encoder.text_embedding(model_id=CLIP, text=QUERY).astype(np.float64)
    align_query = query_encoder.text_embedding(model_id=ALIGN, text=QUERY).astype(np.float64)
    public = Image.objects.bulk_create(ImageFactory.build_batch(21, dataset=True, file="x.jpg"))
    clip_decoys, target, fillers, align_decoys = public[:5], public[5], public[6:16], public[16:]
    order = [*clip_decoys, target, *fillers, *align_decoys]
    store(order, clip_query, CLIP, [0.9 - 0.02 * i for i in range(21)])
    order = [*align_decoys, target, *fillers, *clip_decoys]
    store(order, align_query, ALIGN, [0.8 - 0.03 * i for i in range(21)])

    owner = UserFactory()
    secret = ImageFactory(owner=owner)  # private
    embeddings_store(model_id=CLIP, image_ids=[secret.pk], vectors=clip_query[None, :])
    embeddings_store(model_id=ALIGN, image_ids=[secret.pk], vectors=align_query[None, :])
    return {
        "target": target, "clip_decoys": clip_decoys, "align_decoys": align_decoys,
        "owner": owner, "secret": secret,
    }  # fmt: skip


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [hit["id"] for hit in response.json()["results"]]


@pytest.mark.django_db
def test_each_model_alone_misses_the_target_and_the_fusion_finds_it(
    client: Client, gallery
) -> None:
    target = gallery["target"].pk
    clip = ids(client.get("/api/search", {"q": QUERY, "model": CLIP, "k": K}))
    align = ids(client.get("/api/search", {"q": QUERY, "model": ALIGN, "k": K}))
    assert clip == [i.pk for i in gallery["clip_decoys"]] and target not in clip
    assert align == [i.pk for i in gallery["align_decoys"]] and target not in align

    response = client.get("/api/search", {"q": QUERY, "model": FUSED, "k": K})
    data = response.json()
    assert ids(response)[0] == target and len(data["results"]) == K
    assert data["model"] == FUSED and data["fusion"] == "rrf" and data["exact"] in (True, False)
    # The fused score: RRF scaled so that first for every model is 1 (the target is 6th twice).
    assert data["results"][0]["score"] == pytest.approx((2 / 66) / (2 / 61), abs=1e-5)
    # "B+A" and "A B" (a "+" typed into a query string arrives as a space) are the same choice.
    for spelling in (f"{ALIGN}+{CLIP}", f"{CLIP} {ALIGN}"):
        again = client.get("/api/search", {"q": QUERY, "model": spelling, "k": K})
        assert ids(again) == ids(response) and again.json()["model"] == FUSED
    # The search page offers and runs the same choice.
    page = client.get("/search/", {"q": QUERY, "model": FUSED, "k": K}).content.decode()
    assert f'data-image-id="{target}"' in page
    assert f'data-image-id="{gallery["clip_decoys"][0].pk}"' in page


@pytest.mark.django_db
def test_the_fused_order_is_the_evaluations_rrf_over_the_whole_gallery(
    client: Client, gallery
) -> None:
    # Every image is within each model's candidates here (22 < FUSION_CANDIDATES), so the
    # product's order must be search.fusion.fuse_rrf's over all images (ties by image id).
    public = list(
        Image.objects.filter(source="flickr30k").order_by("pk").values_list("pk", flat=True)
    )
    scores = []
    for model_id in (CLIP, ALIGN):
        query = query_encoder.text_embedding(model_id=model_id, text=QUERY)
        rows = dict(
            ImageEmbedding.objects.filter(model_id=model_id).values_list("image_id", "vector")
        )
        scores.append(np.array([[float(np.asarray(rows[i]) @ query) for i in public]]))
    fused = fuse_rrf(scores)[0]
    expected = [public[i] for i in np.lexsort((np.array(public), -fused))][:20]
    assert ids(client.get("/api/search", {"q": QUERY, "model": FUSED, "k": 20})) == expected
    # The next page continues where the first ended.
    following = ids(client.get("/api/search", {"q": QUERY, "model": FUSED, "k": 5, "offset": 5}))
    assert following == expected[5:10]


@pytest.mark.django_db
def test_fused_results_never_show_another_users_private_image(client: Client, gallery) -> None:
    secret, target = gallery["secret"].pk, gallery["target"].pk
    public = Image.objects.filter(source="flickr30k").first()
    picture = io.BytesIO(jpeg_bytes(size=(64, 64)))
    picture.name = "query.jpg"
    for who in (None, UserFactory()):
        if who is not None:
            client.force_login(who)
        found = ids(client.get("/api/search", {"q": QUERY, "model": FUSED, "k": 100}))
        assert secret not in found and len(found) == 21 and found[0] == target
        page = client.get("/search/", {"q": QUERY, "model": FUSED}).content.decode()
        assert f'data-image-id="{secret}"' not in page
        similar = ids(client.get(f"/api/images/{public.pk}/similar?model={FUSED}&k=100"))
        assert secret not in similar and public.pk not in similar and len(similar) == 20
        assert client.get(f"/api/images/{secret}/similar?model={FUSED}").status_code == 404
        picture.seek(0)
        by_image = client.post(f"/api/search/image?k=100&model={FUSED}", {"image": picture})
        assert secret not in ids(by_image) and len(ids(by_image)) == 21
    client.force_login(gallery["owner"])
    data = client.get("/api/search", {"q": QUERY, "model": FUSED}).json()
    assert data["results"][0]["id"] == secret
    assert data["results"][0]["score"] == pytest.approx(1.0)  # first for both models


@pytest.mark.django_db
def test_fused_choice_is_refused_and_not_offered_while_a_model_is_incomplete(
    client: Client, gallery
) -> None:
    assert {"id": FUSED, "default": False} in client.get("/api/models").json()
    late = ImageFactory(dataset=True)
    embeddings_store(model_id=CLIP, image_ids=[late.pk], vectors=np.ones((1, 512)))
    assert embedding_progress(model_id=ALIGN).remaining == 1

    response = client.get("/api/search", {"q": QUERY, "model": FUSED})
    assert response.status_code == 400
    message = response.json()["error"]
    assert "align-base" in message and "1 of 23 images to embed" in message
    assert FUSED not in [m["id"] for m in client.get("/api/models").json()]
    schema = client.get("/api/openapi.json").json()
    enum = next(
        p["schema"]["enum"] for p in schema["paths"]["/api/search"]["get"]["parameters"]
        if p["name"] == "model"
    )  # fmt: skip
    assert enum == [CLIP, ALIGN]
    # One model alone still answers meanwhile.
    assert client.get("/api/search", {"q": QUERY, "model": CLIP}).status_code == 200

    embeddings_store(model_id=ALIGN, image_ids=[late.pk], vectors=np.ones((1, 640)))
    assert client.get("/api/search", {"q": QUERY, "model": FUSED}).status_code == 200
    assert FUSED in [m["id"] for m in client.get("/api/models").json()]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "message"),
    [
        (f"{CLIP}+clip-vit-huge", "unknown"),
        (f"{CLIP}+siglip-base-patch16-224", "not enabled"),
        (f"{CLIP}+{CLIP}", "two different models"),
        (f"{CLIP}+{ALIGN}+siglip-base-patch16-224", "two different models"),
    ],
)
def test_an_unknown_combination_is_a_400(client: Client, gallery, model, message) -> None:
    response = client.get("/api/search", {"q": QUERY, "model": model})
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]


@pytest.mark.django_db
def test_min_score_is_refused_for_fused_scores(client: Client, gallery) -> None:
    response = client.get("/api/search", {"q": QUERY, "model": FUSED, "min_score": 0.5})
    assert response.status_code == 400 and "cosine" in response.json()["error"]


def test_fused_search_over_a_live_server(live_server, transactional_db, gallery) -> None:
    target, secret = gallery["target"].pk, gallery["secret"].pk

    def get(model: str) -> tuple[int, dict]:
        query = urllib.parse.urlencode({"q": QUERY, "k": K}) + f"&model={model}"
        try:
            with urllib.request.urlopen(f"{live_server.url}/api/search?{query}", timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    # "%2B" is a "+"; a bare "+" in a query string is a space: both are the fused choice.
    for spelling in (f"{CLIP}%2B{ALIGN}", f"{CLIP}+{ALIGN}"):
        status, data = get(spelling)
        assert status == 200 and data["model"] == FUSED, data
        found = [hit["id"] for hit in data["results"]]
        assert found[0] == target and secret not in found and len(found) == K
    status, data = get(f"{CLIP}%2Bclip-vit-huge")
    assert status == 400 and "unknown" in data["error"]

"""Smart collections (search/smart.py): a saved search lists what matches now, images indexed
later included; pinned items first, hidden ones never; each viewer sees only what they may."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from gallery.models import Collection, CollectionItem, Image
from gallery.services.collections import collection_smart_create, collection_smart_hide
from search import query_encoder
from tests.factories import ImageFactory, UserFactory
from tests.search.test_search import clustered, unit
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


def near_query(text: str, n: int, seed: int) -> np.ndarray:
    query = np.asarray(query_encoder.text_embedding(model_id=CLIP, text=text))
    rng = np.random.default_rng(seed)
    return unit(query + 0.3 * unit(rng.normal(size=(n, 512))))


def matches(client: Client, collection: Collection, **params) -> list[int]:
    response = client.get(f"/api/collections/{collection.pk}/matches", {"k": 50, **params})
    assert response.status_code == 200, response.content
    return [hit["id"] for hit in response.json()["results"]]


@pytest.fixture
def saved(tiny_models):
    owner = UserFactory()
    dated = Image.objects.bulk_create(
        ImageFactory.build_batch(3, dataset=True, file="x.jpg",
                                 taken_at=datetime(2023, 7, 2, tzinfo=UTC))
    )  # fmt: skip
    undated = Image.objects.bulk_create(ImageFactory.build_batch(4, dataset=True, file="x.jpg"))
    embeddings_store(
        model_id=CLIP, image_ids=[i.pk for i in dated + undated],
        vectors=np.vstack([near_query("beach", 3, 1), clustered(4)]),
    )  # fmt: skip
    collection = collection_smart_create(
        owner=owner, name="beach 2023", query="beach July 2023", visibility="public"
    )
    return owner, collection, dated


def test_a_saved_search_lists_its_matches_and_later_images(client: Client, saved) -> None:
    owner, collection, dated = saved
    assert set(matches(client, collection)) == {i.pk for i in dated}
    # Uploaded (and indexed) after the search was saved: it joins the collection.
    later = ImageFactory(dataset=True, taken_at=datetime(2023, 7, 20, tzinfo=UTC))
    embeddings_store(model_id=CLIP, image_ids=[later.pk], vectors=near_query("beach", 1, 9))
    assert later.pk in matches(client, collection)


def test_pinned_first_and_hidden_never(client: Client, saved) -> None:
    owner, collection, dated = saved
    pinned = ImageFactory(dataset=True)  # no taken date: not a match, but pinned by the owner
    CollectionItem.objects.create(collection=collection, image=pinned)
    collection_smart_hide(
        user=owner, collection_id=collection.pk, image_id=dated[0].pk, hidden=True
    )
    found = matches(client, collection)
    assert found[0] == pinned.pk
    assert dated[0].pk not in found and set(found[1:]) == {dated[1].pk, dated[2].pk}
    collection_smart_hide(
        user=owner, collection_id=collection.pk, image_id=dated[0].pk, hidden=False
    )
    assert dated[0].pk in matches(client, collection)


def test_others_never_see_the_owners_private_images(client: Client, saved) -> None:
    owner, collection, dated = saved
    secret = ImageFactory(owner=owner, taken_at=datetime(2023, 7, 5, tzinfo=UTC))
    embeddings_store(model_id=CLIP, image_ids=[secret.pk], vectors=near_query("beach", 1, 3))
    for who in (None, UserFactory()):
        client.logout()
        if who:
            client.force_login(who)
        assert secret.pk not in matches(client, collection)
    client.force_login(owner)
    assert secret.pk in matches(client, collection)


def test_a_private_saved_search_is_for_its_owner_alone(client: Client, saved) -> None:
    owner, collection, _ = saved
    Collection.objects.filter(pk=collection.pk).update(visibility="private")
    page = reverse("search-saved", args=[collection.pk])
    for who in (None, UserFactory()):
        client.logout()
        if who:
            client.force_login(who)
        assert client.get(f"/api/collections/{collection.pk}/matches").status_code == 404
        assert client.get(page).status_code == 404
    client.force_login(owner)
    assert client.get(page).status_code == 200
    assert matches(client, collection)


def test_an_unlisted_saved_search_opens_with_its_token(client: Client, saved) -> None:
    _, collection, dated = saved
    Collection.objects.filter(pk=collection.pk).update(visibility="unlisted")
    assert client.get(f"/api/collections/{collection.pk}/matches").status_code == 404
    token = Collection.objects.get(pk=collection.pk).share_token
    assert set(matches(client, collection, token=token)) == {i.pk for i in dated}


def test_saving_from_the_search_page(client: Client, saved) -> None:
    owner, _, dated = saved
    client.force_login(owner)
    page = client.get("/search/", {"q": "beach July 2023"})
    assert b'action="/search/save/"' in page.content
    response = client.post("/search/save/", {"name": "my beaches", "q": "beach July 2023"})
    created = Collection.objects.get(owner=owner, name="my beaches")
    assert response.status_code == 302 and response["Location"].endswith(f"/saved/{created.pk}/")
    shown = client.get(response["Location"])
    assert {hit.image.pk for hit in shown.context["page"].hits} == {i.pk for i in dated}
    hide = reverse("search-saved-hide", args=[created.pk, dated[0].pk])
    assert client.post(hide).status_code == 302
    assert UserFactory() and Collection.objects.get(pk=created.pk).smart_hidden == [dated[0].pk]
    client.force_login(UserFactory())
    assert client.post(hide).status_code == 404, "only the owner hides"


def test_pages_read_only_as_deep_as_they_need_and_add_up_to_the_whole_list(
    client: Client, tiny_models
) -> None:
    # 30 matches of "beach", 3 hidden and 2 pinned (one of them also a match): a page reads
    # offset + k + 1 matches plus as many as hiding and pinning may drop, so every page is
    # full, none repeats or skips an image, and the last one says there is no more.
    owner = UserFactory()
    images = Image.objects.bulk_create(ImageFactory.build_batch(30, dataset=True, file="x.jpg"))
    embeddings_store(
        model_id=CLIP, image_ids=[i.pk for i in images], vectors=near_query("beach", 30, 4)
    )
    collection = collection_smart_create(owner=owner, name="b", query="beach", visibility="public")
    whole = matches(client, collection)
    for image in (images[0], images[7], images[21]):
        collection_smart_hide(
            user=owner, collection_id=collection.pk, image_id=image.pk, hidden=True
        )
    other = ImageFactory(dataset=True)
    for image in (other, images[3]):
        CollectionItem.objects.create(collection=collection, image=image)
    expected = matches(client, collection)  # one page of 50: everything, as before
    dropped = {images[0].pk, images[7].pk, images[21].pk, images[3].pk}
    assert set(expected[:2]) == {other.pk, images[3].pk}
    assert expected[2:] == [pk for pk in whole if pk not in dropped]
    paged, offset = [], 0
    while True:
        response = client.get(
            f"/api/collections/{collection.pk}/matches", {"k": 6, "offset": offset}
        )
        body = response.json()
        got = [hit["id"] for hit in body["results"]]
        paged += got
        offset += 6
        if offset >= 28:
            assert len(got) == 4 and body["next_offset"] is None
            break
        assert len(got) == 6 and body["next_offset"] == offset, offset
    assert paged == expected

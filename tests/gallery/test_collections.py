"""Collections: saving results, sharing by link, and never leaking private uploads."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from gallery.models import Collection, CollectionItem
from tests.factories import CollectionFactory, ImageFactory, UserFactory

pytestmark = pytest.mark.django_db


def add(client: Client, **data) -> None:
    client.post(reverse("collection-add"), data)


def test_save_a_result_into_a_new_then_an_existing_collection(client: Client) -> None:
    user = UserFactory()
    client.force_login(user)
    first, second = ImageFactory(dataset=True), ImageFactory(dataset=True)
    add(client, image_id=first.pk, new_name="Beaches", query="a dog on a beach")
    collection = Collection.objects.get(owner=user, name="Beaches")
    add(client, image_id=second.pk, collection_id=collection.pk, query="sand")
    add(client, image_id=second.pk, collection_id=collection.pk, query="again")  # no duplicate
    items = CollectionItem.objects.filter(collection=collection).order_by("id")
    assert [(i.image_id, i.query) for i in items] == [
        (first.pk, "a dog on a beach"),
        (second.pk, "sand"),
    ]
    page = client.get(reverse("collection", args=[collection.pk])).content.decode()
    assert f'data-image-id="{first.pk}"' in page and "a dog on a beach" in page


def test_cannot_save_into_someone_elses_collection_or_save_their_private_image(
    client: Client,
) -> None:
    alice, bob = UserFactory(), UserFactory()
    alices = CollectionFactory(owner=alice)
    bobs_private = ImageFactory(owner=bob)
    client.force_login(bob)
    add(client, image_id=ImageFactory(dataset=True).pk, collection_id=alices.pk)
    client.force_login(alice)
    add(client, image_id=bobs_private.pk, collection_id=alices.pk)
    assert not CollectionItem.objects.exists()


def test_private_collection_is_hidden_from_others(client: Client) -> None:
    collection = CollectionFactory(visibility="private")
    url = reverse("collection", args=[collection.pk])
    assert client.get(url).status_code == 404
    client.force_login(UserFactory())
    assert client.get(url).status_code == 404
    assert (
        client.get(reverse("collection-shared", args=[collection.share_token])).status_code == 404
    )
    client.force_login(collection.owner)
    assert client.get(url).status_code == 200


def test_unlisted_collection_opens_by_its_link_only(client: Client) -> None:
    collection = CollectionFactory(visibility="unlisted")
    assert client.get(reverse("collection", args=[collection.pk])).status_code == 404
    assert (
        client.get(reverse("collection-shared", args=[collection.share_token])).status_code == 200
    )


def test_sharing_a_collection_never_shares_the_owners_private_uploads(client: Client) -> None:
    owner = UserFactory()
    collection = CollectionFactory(owner=owner, visibility="public")
    private = ImageFactory(owner=owner, visibility="private")
    public = ImageFactory(dataset=True)
    CollectionItem.objects.create(collection=collection, image=private)
    CollectionItem.objects.create(collection=collection, image=public)
    page = client.get(reverse("collection", args=[collection.pk])).content.decode()
    assert f'data-image-id="{public.pk}"' in page
    assert f'data-image-id="{private.pk}"' not in page
    client.force_login(owner)
    page = client.get(reverse("collection", args=[collection.pk])).content.decode()
    assert f'data-image-id="{private.pk}"' in page


def test_owner_changes_visibility_and_removes_items(client: Client) -> None:
    collection = CollectionFactory()
    image = ImageFactory(dataset=True)
    CollectionItem.objects.create(collection=collection, image=image)
    edit = reverse("collection-edit", args=[collection.pk])
    client.force_login(UserFactory())
    assert client.post(edit, {"visibility": "public"}).status_code == 404
    client.force_login(collection.owner)
    client.post(edit, {"visibility": "public"})
    client.post(edit, {"remove": image.pk})
    collection.refresh_from_db()
    assert collection.visibility == "public" and not collection.items.exists()


def test_collections_page_lists_mine_and_creates(client: Client) -> None:
    user = UserFactory()
    CollectionFactory(owner=user, name="Mine")
    CollectionFactory(name="Someone else's")
    client.force_login(user)
    page = client.get(reverse("collections")).content.decode()
    assert "Mine" in page and "Someone else" not in page
    response = client.post(reverse("collections"), {"name": "Trips", "visibility": "unlisted"})
    assert response.status_code == 302
    assert Collection.objects.get(owner=user, name="Trips").visibility == "unlisted"
    duplicate = client.post(reverse("collections"), {"name": "Trips"}, follow=True)
    assert "already have a collection" in duplicate.content.decode()


def test_search_inside_a_collection_only_sees_its_images(client: Client, tiny_models) -> None:
    import numpy as np

    from workers.services import embeddings_store

    user = UserFactory()
    images = ImageFactory.create_batch(6, dataset=True)
    vectors = np.random.default_rng(0).normal(size=(6, 512))
    embeddings_store(
        model_id="clip-vit-base-patch32", image_ids=[i.pk for i in images], vectors=vectors
    )
    collection = CollectionFactory(owner=user)
    for image in images[:2]:
        CollectionItem.objects.create(collection=collection, image=image)
    client.force_login(user)
    data = client.get("/api/search", {"q": "anything", "collection": collection.pk}).json()
    assert {r["id"] for r in data["results"]} == {images[0].pk, images[1].pk}
    client.force_login(UserFactory())
    other = client.get("/api/search", {"q": "anything", "collection": collection.pk})
    assert other.status_code == 404

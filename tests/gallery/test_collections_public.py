"""The public collections page: everyone's public collections, never a private image."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from gallery.views.collections import PUBLIC_COLLECTIONS_PAGE_SIZE
from tests.clients import signed_in
from tests.factories import CollectionFactory, CollectionItemFactory, ImageFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/collections/public/"


def _thumb_ids(html: str) -> set[int]:
    return {int(i) for i in re.findall(r"/images/(\d+)/thumb", html)}


def test_lists_public_collections_with_only_their_public_images() -> None:
    owner = UserFactory(username="carol")
    private_photo = ImageFactory(owner=owner)  # private upload
    public_photo = ImageFactory(owner=owner, visibility="public")
    dataset_photo = ImageFactory(dataset=True)
    trips = CollectionFactory(owner=owner, name="Trips", visibility="public")
    for image in (private_photo, public_photo, dataset_photo):
        CollectionItemFactory(collection=trips, image=image)
    only_private = CollectionFactory(owner=owner, name="Secret stash", visibility="public")
    CollectionItemFactory(collection=only_private, image=ImageFactory(owner=owner))
    unlisted = CollectionFactory(owner=owner, name="By link only", visibility="unlisted")
    CollectionItemFactory(collection=unlisted, image=ImageFactory(dataset=True))
    mine = CollectionFactory(owner=owner, name="Just mine")
    CollectionItemFactory(collection=mine, image=ImageFactory(dataset=True))

    for client in (Client(), signed_in(UserFactory()), signed_in(owner)):
        response = client.get(URL)
        html = response.content.decode()
        assert response.status_code == 200
        assert "Trips" in html and "2 images · by carol" in html
        # Not listed: private, unlisted, and public ones that would show nobody anything.
        for absent in ("Secret stash", "By link only", "Just mine"):
            assert absent not in html
        # Covers never carry a private image, not even for its owner on this public page.
        assert _thumb_ids(html) == {public_photo.pk, dataset_photo.pk}
        assert reverse("collection", args=[trips.pk]) in html


def test_pages_and_empty_state() -> None:
    assert "No public collections yet" in Client().get(URL).content.decode()
    photo = ImageFactory(dataset=True)
    for n in range(PUBLIC_COLLECTIONS_PAGE_SIZE + 1):
        collection = CollectionFactory(name=f"public {n}", visibility="public")
        CollectionItemFactory(collection=collection, image=photo)
    first = Client().get(URL).content.decode()
    assert first.count('class="cover"') == PUBLIC_COLLECTIONS_PAGE_SIZE and "?page=2" in first
    second = Client().get(URL, {"page": 2}).content.decode()
    assert second.count('class="cover"') == 1
    assert Client().get(URL, {"page": "x"}).status_code == 200

"""Share links can be replaced, and a replaced link is dead: "New link" on the collection page,
and a private collection shared again, each give a link no one has seen."""

from __future__ import annotations

import pytest
from django.test import Client

from gallery.models import Collection
from gallery.services.collections import collection_share_link_rotate, collection_update
from kernel.errors import NotFound
from tests.clients import HttpSession
from tests.factories import PASSWORD, CollectionFactory, UserFactory


def link(collection: Collection) -> str:
    return f"/c/{collection.share_token}/"


@pytest.mark.django_db
def test_a_new_link_kills_the_old_one() -> None:
    collection = CollectionFactory(visibility="unlisted")
    old = link(collection)
    assert Client().get(old).status_code == 200
    rotated = collection_share_link_rotate(user=collection.owner, collection_id=collection.pk)
    assert Client().get(old).status_code == 404
    assert Client().get(link(rotated)).status_code == 200


@pytest.mark.django_db
def test_only_the_owner_can_make_a_new_link() -> None:
    collection = CollectionFactory(visibility="unlisted")
    with pytest.raises(NotFound):
        collection_share_link_rotate(user=UserFactory(), collection_id=collection.pk)
    intruder = Client()
    intruder.force_login(UserFactory())
    assert intruder.post(f"/collections/{collection.pk}/share-link").status_code == 404
    anonymous = Client().post(f"/collections/{collection.pk}/share-link")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    collection.refresh_from_db()
    assert Client().get(link(collection)).status_code == 200


@pytest.mark.django_db
def test_private_then_shared_again_gives_a_new_link() -> None:
    collection = CollectionFactory(visibility="unlisted")
    owner, old = collection.owner, link(collection)
    collection_update(user=owner, collection_id=collection.pk, visibility="private")
    assert Client().get(old).status_code == 404
    shared = collection_update(user=owner, collection_id=collection.pk, visibility="unlisted")
    assert Client().get(old).status_code == 404
    assert Client().get(link(shared)).status_code == 200
    # Between unlisted and public nothing was revoked: the link stays.
    public = collection_update(user=owner, collection_id=collection.pk, visibility="public")
    assert public.share_token == shared.share_token


@pytest.mark.django_db
def test_new_link_button_with_htmx_and_as_a_plain_form() -> None:
    collection = CollectionFactory(visibility="unlisted")
    owner = Client()
    owner.force_login(collection.owner)
    page = owner.get(f"/collections/{collection.pk}/").content.decode()
    assert f'action="/collections/{collection.pk}/share-link"' in page and "New link" in page

    swapped = owner.post(f"/collections/{collection.pk}/share-link", headers={"HX-Request": "1"})
    collection.refresh_from_db()
    html = swapped.content.decode()
    assert swapped.status_code == 200 and 'id="collection-share"' in html
    assert link(collection) in html and "the old one no longer opens" in html

    before = link(collection)
    plain = owner.post(f"/collections/{collection.pk}/share-link", follow=True)
    collection.refresh_from_db()
    assert plain.redirect_chain[-1][0] == f"/collections/{collection.pk}/"
    assert link(collection) != before and link(collection) in plain.content.decode()
    assert Client().get(before).status_code == 404


def test_new_link_over_http(live_server) -> None:
    collection = CollectionFactory(visibility="unlisted")
    old = link(collection)
    session = HttpSession(live_server.url)
    status, path, _ = session.post_form(
        "/accounts/login/", {"username": collection.owner.username, "password": PASSWORD}
    )
    assert status == 200 and path != "/accounts/login/"
    page = f"/collections/{collection.pk}/"
    token = session.csrf_token(page)
    status, path, body = session.open(
        f"/collections/{collection.pk}/share-link", {"csrfmiddlewaretoken": token}
    )
    assert (status, path) == (200, page) and "the old one no longer opens" in body
    assert HttpSession(live_server.url).open(old)[0] == 404
    collection.refresh_from_db()
    assert HttpSession(live_server.url).open(link(collection))[0] == 200

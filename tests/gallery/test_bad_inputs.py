"""Inputs that used to give a 500 in the gallery's pages: each is now a 400 with a message."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery.models import ApiToken, Collection, CollectionItem, Image
from gallery.services.accounts import api_token_create
from tests.factories import CollectionFactory, ImageFactory, UserFactory, jpeg_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(client: Client):
    user = UserFactory()
    client.force_login(user)
    return user


def test_token_page_refuses_bad_ids_and_names(client: Client, user) -> None:
    api_token_create(user=user, name="kept")
    for data in ({"revoke": "abc"}, {"revoke": "99999999999999"}, {"name": "lap\x00top"}):
        response = client.post(reverse("api-tokens"), data)
        assert response.status_code == 400, data
        assert 'class="error"' in response.content.decode()
    assert client.post(reverse("api-tokens"), {"name": "x" * 101}).status_code == 400
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["kept"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "trip\x00s"}, "Null characters"),
        ({"name": "trips", "description": "sun\x00"}, "Null characters"),
        ({"name": "trips", "visibility": "bogus"}, "valid choice"),
        ({"name": "trips", "visibility": "v" * 40}, "valid choice"),
        ({"name": "x" * 121}, "at most 120"),
        ({"name": "   "}, "required"),
    ],
)
def test_collection_create_refuses_bad_input(client: Client, user, data, message) -> None:
    response = client.post(reverse("collections"), data)
    assert response.status_code == 400 and message in response.content.decode()
    assert not Collection.objects.exists()


def test_duplicate_collection_names_are_a_conflict_not_a_500(client: Client, user) -> None:
    name = "n" * 120
    assert client.post(reverse("collections"), {"name": name}).status_code == 302
    again = client.post(reverse("collections"), {"name": name})
    assert again.status_code == 409 and "already have a collection" in again.content.decode()
    assert Collection.objects.count() == 1


def test_collection_edit_refuses_bad_input(client: Client, user) -> None:
    collection = CollectionFactory(owner=user, visibility="private")
    edit = reverse("collection-edit", args=[collection.pk])
    for data in ({"remove": "abc"}, {"visibility": "bogus"}, {"visibility": "p" * 40}):
        assert client.post(edit, data).status_code == 400, data
    collection.refresh_from_db()
    assert collection.visibility == "private"


def test_save_to_collection_refuses_bad_input_and_keeps_no_empty_collection(
    client: Client, user
) -> None:
    image = ImageFactory(dataset=True)
    add = reverse("collection-add")
    for data in (
        {"image_id": "abc", "new_name": "Trips"},
        {"image_id": image.pk, "new_name": "Tr\x00ips"},
        {"image_id": image.pk, "new_name": "Trips", "query": "dog\x00"},
        {"image_id": image.pk},  # neither a collection nor a new name
    ):
        assert client.post(add, data).status_code == 400, data
    someone_elses = ImageFactory()  # private, not the user's: cannot be saved
    response = client.post(add, {"image_id": someone_elses.pk, "new_name": "Trips"})
    assert response.status_code == 404 and "no such image" in response.content.decode()
    assert not Collection.objects.exists() and not CollectionItem.objects.exists()


def test_upload_refuses_a_bogus_visibility_and_drops_nul_from_names(client: Client, user) -> None:
    bad = client.post(
        reverse("upload"),
        {"file": SimpleUploadedFile("a.jpg", jpeg_bytes()), "visibility": "bogus"},
    )
    assert bad.status_code == 400 and not Image.objects.exists()
    client.post(
        reverse("upload"),
        {"file": SimpleUploadedFile("ho\x00liday.jpg", jpeg_bytes()), "visibility": "private"},
    )
    assert "\x00" not in Image.objects.get().original_filename

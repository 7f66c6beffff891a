"""Image files and thumbnails are served only to people who may see them."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from gallery.models import Image
from tests.factories import ImageFactory, UserFactory

pytestmark = pytest.mark.django_db


def body(response: object) -> bytes:
    return b"".join(response.streaming_content)  # type: ignore[attr-defined]


def test_home_lists_public_images_to_anonymous_visitors(client: Client) -> None:
    public = ImageFactory(dataset=True, original_filename="beach.jpg")
    ImageFactory(original_filename="secret-diary.jpg")
    response = client.get("/")
    assert response.status_code == 200
    assert b"beach.jpg" in response.content
    assert b"secret-diary.jpg" not in response.content
    assert reverse("image-thumb", args=[public.pk]).encode() in response.content


def test_private_upload_is_served_to_its_owner_only(client: Client) -> None:
    owner, stranger = UserFactory(), UserFactory()
    private = ImageFactory(owner=owner)
    urls = [
        reverse("image-file", args=[private.pk]),
        reverse("image-thumb", args=[private.pk]),
        reverse("image-thumb-size", args=[private.pk, 512]),
    ]
    for url in urls:
        assert client.get(url).status_code == 404, url
    client.force_login(stranger)
    for url in urls:
        assert client.get(url).status_code == 404, url
    client.force_login(owner)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert len(body(response)) > 0


def test_thumbnail_is_a_jpeg_no_larger_than_asked(client: Client) -> None:
    image = ImageFactory(dataset=True, content=b"", file=None)
    buffer = io.BytesIO()
    PILImage.new("RGB", (1000, 500), (10, 200, 10)).save(buffer, "PNG")
    from django.core.files.base import ContentFile

    image.file.save("big.png", ContentFile(buffer.getvalue()))
    response = client.get(reverse("image-thumb-size", args=[image.pk, 128]))
    assert response.status_code == 200
    thumb = PILImage.open(io.BytesIO(body(response)))
    assert thumb.format == "JPEG"
    assert max(thumb.size) == 128
    assert client.get(reverse("image-thumb-size", args=[image.pk, 77])).status_code == 404


def test_staff_see_private_uploads_through_the_admin_only(client: Client) -> None:
    # The site serves private files to their owner alone; tests/gallery/test_private_files.py
    # has the admin's own file URLs.
    private = ImageFactory()
    client.force_login(UserFactory(is_staff=True))
    assert client.get(reverse("image-thumb", args=[private.pk])).status_code == 404


def test_signup_creates_an_account_and_logs_in(client: Client) -> None:
    response = client.post(
        reverse("signup"),
        {
            "username": "newperson",
            "password1": "a-long-passphrase-9",
            "password2": "a-long-passphrase-9",
        },
    )
    assert response.status_code == 302
    assert client.get("/").context["user"].username == "newperson"


def test_dataset_images_must_be_public_and_ownerless() -> None:
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        ImageFactory(dataset=True, visibility=Image.Visibility.PRIVATE)

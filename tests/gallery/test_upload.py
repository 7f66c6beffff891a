"""Uploads: stored for their owner and queued for embedding; bad files refused, nothing kept."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from gallery.decoding import UploadRejected
from gallery.models import Image
from gallery.services.images import image_upload
from tests.factories import UserFactory, jpeg_bytes
from workers.models import EmbeddingJob

pytestmark = pytest.mark.django_db


def noisy_jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.effect_noise((300, 200), 60).convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def upload_file(content: bytes, name: str = "holiday.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="image/jpeg")


def stored_files(settings) -> list:
    root = settings.MEDIA_ROOT
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_is_stored_private_and_queued_for_every_enabled_model(
    django_capture_on_commit_callbacks,
) -> None:
    owner = UserFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        image = image_upload(owner=owner, file=upload_file(jpeg_bytes(size=(80, 60))))
    assert (image.owner, image.visibility, image.source) == (owner, "private", "upload")
    assert (image.width, image.height, image.original_filename) == (80, 60, "holiday.jpg")
    assert image.file.read()[:2] == b"\xff\xd8"
    assert list(EmbeddingJob.objects.values_list("model_id", "status")) == [
        ("clip-vit-base-patch32", "pending")
    ]
    assert len(callbacks) == 1  # the embedding task is sent only once the upload committed


def test_same_bytes_twice_give_the_same_image() -> None:
    owner = UserFactory()
    content = jpeg_bytes()
    first = image_upload(owner=owner, file=upload_file(content))
    again = image_upload(owner=owner, file=upload_file(content, "copy.jpg"))
    assert first.pk == again.pk and Image.objects.count() == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file", "not an image"),
        (noisy_jpeg()[:3000], "cannot decode"),  # a truncated upload
    ],
)
def test_corrupt_upload_is_refused_and_nothing_is_kept(settings, content, message) -> None:
    with pytest.raises(UploadRejected, match=message):
        image_upload(owner=UserFactory(), file=upload_file(content))
    assert not Image.objects.exists() and not EmbeddingJob.objects.exists()
    assert stored_files(settings) == []


def test_upload_over_the_size_limit_is_refused(settings) -> None:
    settings.UPLOAD_MAX_BYTES = 1000
    with pytest.raises(UploadRejected, match="limit is"):
        image_upload(owner=UserFactory(), file=upload_file(jpeg_bytes(size=(400, 300))))
    assert not Image.objects.exists()


def test_decompression_bomb_is_refused(settings) -> None:
    settings.UPLOAD_MAX_PIXELS = 10_000
    buffer = io.BytesIO()
    PILImage.new("L", (500, 500)).save(buffer, "PNG")  # tiny file, 250k pixels
    with pytest.raises(UploadRejected, match="too large: 500x500"):
        image_upload(owner=UserFactory(), file=upload_file(buffer.getvalue(), "bomb.png"))
    assert not Image.objects.exists()


def test_upload_page_shows_the_reason_for_a_bad_file(client: Client) -> None:
    client.force_login(UserFactory())
    response = client.post(
        reverse("upload"), {"file": upload_file(b"garbage"), "visibility": "private"}
    )
    assert response.status_code == 400
    assert "not an image we can read" in response.content.decode()


def test_upload_page_stores_and_redirects(client: Client) -> None:
    user = UserFactory()
    client.force_login(user)
    response = client.post(
        reverse("upload"), {"file": upload_file(jpeg_bytes()), "visibility": "public"}
    )
    assert response.status_code == 302
    assert Image.objects.get().visibility == "public"


def test_upload_needs_an_account(client: Client) -> None:
    response = client.post(reverse("upload"), {"file": upload_file(jpeg_bytes())})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert not Image.objects.exists()

"""What the upload page says after storing a file: indexing, or waiting for a model that the
workers cannot load; and a decompression bomb is a clear refusal, never a 500."""

from __future__ import annotations

import struct
import zlib

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery.models import Image
from tests.factories import UserFactory, jpeg_bytes
from workers.models import EmbeddingModel

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


def upload(client: Client, content: bytes, name: str = "holiday.jpg"):
    return client.post(
        reverse("upload"),
        {"file": SimpleUploadedFile(name, content), "visibility": "private"},
        follow=True,
    )


def test_upload_says_it_is_being_indexed(client: Client) -> None:
    client.force_login(UserFactory())
    html = upload(client, jpeg_bytes()).content.decode()
    assert "Uploaded holiday.jpg; it is being indexed." in html


def test_upload_says_it_waits_for_an_unavailable_default_model(client: Client) -> None:
    EmbeddingModel.objects.filter(model_id=CLIP).update(unavailable_reason="weights missing")
    client.force_login(UserFactory())
    html = upload(client, jpeg_bytes()).content.decode()
    assert f"Stored holiday.jpg; it will be searchable once model {CLIP} is available." in html
    assert "being indexed" not in html
    assert Image.objects.count() == 1


def test_decompression_bomb_upload_is_refused_with_a_reason(client: Client) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    # 30000 x 30000 pixels claimed in a few dozen bytes: PIL refuses it on open.
    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    client.force_login(UserFactory())
    response = upload(client, bomb, "bomb.png")
    assert response.status_code == 400
    # The site's limit in its own words, not Pillow's ("could be decompression bomb DOS attack").
    limit = settings.UPLOAD_MAX_PIXELS / 1e6
    assert f"bomb.png: image too large: 900.0 megapixels and the limit is {limit:.1f}" in (
        response.content.decode()
    )
    assert "attack" not in response.content.decode()
    assert not Image.objects.exists()

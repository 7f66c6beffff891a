"""Uploads at once and uploads past the quota: the same bytes sent six times at once by one
person leave one row and one file (none left behind once it is deleted), and an upload past
UPLOAD_QUOTA_BYTES is refused with how much is in use, nothing stored."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from gallery.models import Image
from gallery.services.images import QuotaExceeded, image_delete, image_upload
from tests.clients import HttpSession
from tests.factories import PASSWORD, UserFactory


def png_bytes(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    buffer = io.BytesIO()
    PILImage.effect_noise(size, 40 + seed).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def files_under(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()] if Path(root).exists() else []


def multipart(content: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="visibility"\r\n\r\nprivate\r\n'
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def upload_over_http(session: HttpSession, token: str, content: bytes, name: str) -> tuple:
    body, content_type = multipart(content, name)
    request = urllib.request.Request(
        session.base + "/upload/",
        data=body,
        headers={
            "Content-Type": content_type,
            "Accept": "application/json",
            "X-CSRFToken": token,
            "Referer": session.base + "/upload/",
        },
    )
    try:
        with session.opener.open(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def signed_in_session(live_server, user) -> tuple[HttpSession, str]:
    session = HttpSession(live_server.url)
    status, path, _ = session.post_form(
        "/accounts/login/", {"username": user.username, "password": PASSWORD}
    )
    assert status == 200 and path != "/accounts/login/"
    return session, session.csrf_token("/upload/")


def test_six_uploads_of_the_same_bytes_at_once_leave_one_file(live_server, settings) -> None:
    owner = UserFactory()
    session, token = signed_in_session(live_server, owner)
    content = png_bytes(0, size=(600, 400))
    start = threading.Barrier(6)
    answers: list[tuple] = []

    def send(n: int) -> None:
        start.wait()
        answers.append(upload_over_http(session, token, content, f"copy{n}.png"))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 200, 200, 200, 200, 201], answers
    assert len({data["id"] for _, data in answers}) == 1
    assert Image.objects.filter(owner=owner).count() == 1
    assert len(files_under(settings.MEDIA_ROOT)) == 1

    image_delete(user=owner, image_id=answers[0][1]["id"])
    assert files_under(settings.MEDIA_ROOT) == []


def upload_file(content: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="image/png")


@pytest.mark.django_db
def test_an_upload_past_the_quota_is_refused_and_nothing_is_kept(settings) -> None:
    owner, other = UserFactory(), UserFactory()
    first, second = png_bytes(1), png_bytes(2)
    settings.UPLOAD_QUOTA_BYTES = len(first) + len(second) - 1
    kept = image_upload(owner=owner, file=upload_file(first, "a.png"))
    assert kept.file_size == len(first)
    used = r"your uploads use \d+\.\d KB of your \d+\.\d KB"
    with pytest.raises(QuotaExceeded, match=rf"b.png was not stored: {used}"):
        image_upload(owner=owner, file=upload_file(second, "b.png"))
    assert list(Image.objects.values_list("pk", flat=True)) == [kept.pk]
    assert len(files_under(settings.MEDIA_ROOT)) == 1
    # The quota is per person, the same bytes again cost nothing, and deleting makes room.
    assert image_upload(owner=other, file=upload_file(second, "b.png")).duplicate is False
    assert image_upload(owner=owner, file=upload_file(first, "again.png")).duplicate is True
    image_delete(user=owner, image_id=kept.pk)
    assert image_upload(owner=owner, file=upload_file(second, "b.png")).duplicate is False


@pytest.mark.django_db
def test_no_quota_when_it_is_zero(settings) -> None:
    settings.UPLOAD_QUOTA_BYTES = 0
    owner = UserFactory()
    for seed in range(3):
        image_upload(owner=owner, file=upload_file(png_bytes(seed), f"{seed}.png"))
    assert Image.objects.filter(owner=owner).count() == 3


@pytest.mark.django_db
def test_the_upload_page_says_the_quota_is_used_up(client: Client, settings) -> None:
    owner = UserFactory()
    client.force_login(owner)
    settings.UPLOAD_QUOTA_BYTES = 1000
    content = png_bytes(3)
    answer = client.post(
        "/upload/",
        {"file": upload_file(content, "big.png"), "visibility": "private"},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 400
    assert "big.png was not stored" in answer.json()["error"]
    assert "your uploads use 0 bytes of your 1000 bytes" in answer.json()["error"]
    page = client.post(
        "/upload/", {"file": upload_file(content, "big.png"), "visibility": "private"}
    )
    assert "big.png was not stored: your uploads use 0 bytes of your 1000 bytes" in (
        page.content.decode()
    )
    assert not Image.objects.exists() and files_under(settings.MEDIA_ROOT) == []

"""Several files in one upload request, over real HTTP as browsers send them: without the page's
script the form posts every chosen file at once. A bad file is named and the others are
stored, whatever its place; more files than the site takes is a page that says so; the
script's JSON answer, which has room for one file, refuses several and stores none."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest
from django.conf import settings
from playwright.sync_api import Page, expect

from gallery.models import Image
from tests.clients import HttpSession, browser_sign_in
from tests.factories import UserFactory
from tests.gallery.test_upload_races_and_quota import png_bytes, signed_in_session

pytestmark = pytest.mark.django_db(transaction=True)


def multipart(files: list[tuple[str, bytes]], token: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (("csrfmiddlewaretoken", token), ("visibility", "private"))
    ]
    for filename, content in files:
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post_files(
    session: HttpSession, token: str, files: list[tuple[str, bytes]], *, accept: str
) -> tuple[int, str]:
    body, content_type = multipart(files, token)
    request = urllib.request.Request(
        session.base + "/upload/",
        data=body,
        headers={"Content-Type": content_type, "Accept": accept,
                 "Referer": session.base + "/upload/"},
    )  # fmt: skip
    # Not followed: a redirect is the answer to look at.
    cookies = next(
        h for h in session.opener.handlers if isinstance(h, urllib.request.HTTPCookieProcessor)
    )
    opener = urllib.request.build_opener(cookies, _NoRedirect())
    try:
        with opener.open(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.mark.parametrize("bad_place", [0, 2])
def test_an_empty_file_is_named_and_the_good_ones_are_stored(live_server, bad_place) -> None:
    owner = UserFactory()
    session, token = signed_in_session(live_server, owner)
    files = [("beach.png", png_bytes(1)), ("forest.png", png_bytes(2))]
    files.insert(bad_place, ("nothing-in-it.png", b""))

    status, page = post_files(session, token, files, accept="text/html")

    assert status == 400
    assert "nothing-in-it.png: The submitted file is empty." in page
    assert "Stored 2 of 3 files." in page
    names = Image.objects.filter(owner=owner).values_list("original_filename", flat=True)
    assert sorted(names) == ["beach.png", "forest.png"]


def test_good_files_only_are_stored_and_the_page_moves_on(live_server) -> None:
    owner = UserFactory()
    session, token = signed_in_session(live_server, owner)
    files = [(f"photo{n}.png", png_bytes(n)) for n in range(3)]

    status, _ = post_files(session, token, files, accept="text/html")

    assert status == 302
    assert Image.objects.filter(owner=owner).count() == 3


def test_more_files_than_the_limit_is_a_page_that_says_so(live_server) -> None:
    owner = UserFactory()
    session, token = signed_in_session(live_server, owner)
    limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
    files = [(f"photo{n}.png", png_bytes(n, size=(8, 8))) for n in range(limit + 1)]

    status, page = post_files(session, token, files, accept="text/html")
    json_status, answer = post_files(session, token, files, accept="application/json")

    assert status == 400
    assert f"At most {limit} files can be sent at once" in page
    assert 'href="/upload/"' in page
    assert json_status == 400
    assert json.loads(answer)["error"].startswith(f"At most {limit} files")
    assert not Image.objects.filter(owner=owner).exists()


def test_the_scripts_json_upload_takes_one_file_and_refuses_several(live_server) -> None:
    owner = UserFactory()
    session, token = signed_in_session(live_server, owner)
    files = [("one.png", png_bytes(1)), ("two.png", png_bytes(2))]

    status, answer = post_files(session, token, files, accept="application/json")

    assert status == 400
    assert json.loads(answer)["error"] == (
        "send one file per request here (2 were sent); nothing was stored"
    )
    assert not Image.objects.filter(owner=owner).exists()


def test_a_file_name_too_long_to_read_is_named_as_the_reason(live_server) -> None:
    owner = UserFactory()
    session, token = signed_in_session(live_server, owner)
    files = [("a" * 1200 + ".png", png_bytes(1))]

    status, page = post_files(session, token, files, accept="text/html")
    json_status, answer = post_files(session, token, files, accept="application/json")

    assert status == json_status == 400
    assert "name is too long to be sent" in page
    assert "name is too long to be sent" in json.loads(answer)["error"]
    assert not Image.objects.filter(owner=owner).exists()


def test_the_upload_page_shortens_a_name_too_long_to_send(live_server, page: Page) -> None:
    # 250 emoji are 1,000 bytes of UTF-8: past what the server reads of a part's headers.
    # (No disk takes such a name; some phones' share sheets and zip tools make them.)
    owner = UserFactory()
    browser_sign_in(page, live_server.url, owner.username)
    page.goto(f"{live_server.url}/upload/")
    name = "🌊" * 250 + ".png"

    page.set_input_files(
        "#id_file", files=[{"name": name, "mimeType": "image/png", "buffer": png_bytes(3)}]
    )

    expect(page.locator("#upload-rows li .badge")).to_have_count(1)
    stored = Image.objects.get(owner=owner)
    assert stored.original_filename == "🌊" * 146 + ".png"

"""The API over real HTTP against a live server: Django's test client skips the CSRF check and
builds requests its own way, so what token, anonymous and browser clients get is checked here
with plain urllib requests."""

from __future__ import annotations

import contextlib
import io
import json
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.test import Client
from PIL import Image as PILImage

from gallery.models import Image
from gallery.services.accounts import api_token_create
from search.selectors import IMAGE_QUERY_CONCURRENCY, image_query_slot
from tests.factories import ImageFactory, UserFactory
from workers.services import embeddings_store

CLIP = "clip-vit-base-patch32"


def call(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], dict]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        payload = error.read()
        assert error.headers.get("Content-Type", "").startswith("application/json"), payload
        return error.code, dict(error.headers), json.loads(payload)


def multipart_image(headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    picture = io.BytesIO()
    PILImage.new("RGB", (40, 40), (200, 20, 20)).save(picture, "PNG")
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="image"; filename="query.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + picture.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return body, {**content_type, **(headers or {})}


@pytest.fixture
def library(transactional_db, tiny_models):
    """Three public images and one private upload, all embedded; the owner has a token."""
    public = Image.objects.bulk_create(ImageFactory.build_batch(3, dataset=True, file="x.jpg"))
    owner = UserFactory()
    private = ImageFactory(owner=owner)
    ids = [i.pk for i in [*public, private]]
    embeddings_store(
        model_id=CLIP, image_ids=ids, vectors=np.random.default_rng(2).normal(size=(4, 512))
    )
    _, token = api_token_create(user=owner, name="script")
    return owner, private, token


def result_ids(data: dict) -> set[int]:
    return {r["id"] for r in data["results"]}


def test_anonymous_and_token_clients_can_search_by_image(live_server, library) -> None:
    owner, private, token = library
    url = f"{live_server.url}/api/search/image?k=10"
    body, headers = multipart_image()
    status, _, anonymous = call("POST", url, headers=headers, body=body)
    assert status == 200 and len(anonymous["results"]) == 3
    assert private.pk not in result_ids(anonymous)
    for credentials in ({"Authorization": f"Bearer {token}"}, {"X-API-Token": token}):
        body, headers = multipart_image(credentials)
        status, _, data = call("POST", url, headers=headers, body=body)
        assert status == 200 and private.pk in result_ids(data), credentials


def test_a_signed_in_browser_session_still_needs_the_csrf_token(live_server, library) -> None:
    owner, private, _ = library
    client = Client()
    client.force_login(owner)
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    url = f"{live_server.url}/api/search/image?k=10"
    body, headers = multipart_image({"Cookie": f"{django_settings.SESSION_COOKIE_NAME}={session}"})
    status, _, data = call("POST", url, headers=headers, body=body)
    assert status == 403 and "CSRF" in data["error"]
    secret = "a" * 32
    body, headers = multipart_image(
        {
            "Cookie": f"{django_settings.SESSION_COOKIE_NAME}={session}; csrftoken={secret}",
            "X-CSRFToken": secret,
        }
    )
    status, _, data = call("POST", url, headers=headers, body=body)
    assert status == 200 and private.pk in result_ids(data)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token abcdef"},
        {"Authorization": "garbage"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"X-API-Token": ""},
        {"X-API-Token": "not-a-token"},
    ],
)
def test_credentials_that_are_present_but_wrong_are_a_401(
    live_server, library, headers: dict[str, str]
) -> None:
    status, response_headers, data = call(
        "GET", f"{live_server.url}/api/search?q=dogs", headers=headers
    )
    assert status == 401 and data["error"]
    assert response_headers["WWW-Authenticate"].startswith("Bearer")
    body, post_headers = multipart_image(headers)
    status, _, _ = call(
        "POST", f"{live_server.url}/api/search/image", headers=post_headers, body=body
    )
    assert status == 401


def test_every_api_error_is_json_with_its_status(
    live_server, library, settings, monkeypatch, tmp_path
) -> None:
    _, private, _ = library
    api = f"{live_server.url}/api"
    missing = private.pk + 1000

    def error(method: str, url: str, **kwargs) -> tuple[int, str]:
        status, _, data = call(method, url, **kwargs)
        assert set(data) >= {"error"} and isinstance(data["error"], str), data
        return status, data["error"]

    assert error("GET", f"{api}/search")[0] == 400  # q is required
    assert error("GET", f"{api}/search?q=dogs&offset=113040091656")[0] == 400
    assert error("GET", f"{api}/search?q=dogs&source=mine")[0] == 401
    assert error("GET", f"{api}/no/such/endpoint")[0] == 404
    assert error("GET", f"{api}/images/{private.pk}/similar") == error(
        "GET", f"{api}/images/{missing}/similar"
    )
    assert error("GET", f"{api}/images/{missing}/similar")[0] == 404
    assert error("PUT", f"{api}/search?q=dogs", body=b"")[0] == 405
    assert error("DELETE", f"{api}/models")[0] == 405

    settings.UPLOAD_MAX_BYTES = 1000
    too_big = b"x" * 200_000
    status, message = error(
        "POST", f"{api}/search/image", body=too_big, headers={"Content-Type": "image/png"}
    )
    assert status == 413 and "limit" in message
    settings.UPLOAD_MAX_BYTES = 25 * 1024 * 1024

    monkeypatch.setattr("search.selectors.IMAGE_QUERY_WAIT_SECONDS", 0)
    with contextlib.ExitStack() as held:
        for _ in range(IMAGE_QUERY_CONCURRENCY):  # every slot taken: the next one gives up
            held.enter_context(image_query_slot())
        body, headers = multipart_image()
        assert error("POST", f"{api}/search/image", body=body, headers=headers)[0] == 429

    def broken() -> list[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr("search.api.endpoints.search_model_choices", broken)
    status, message = error("GET", f"{api}/models")
    assert status == 500 and "a bug" not in message and "Traceback" not in message

    settings.EMBEDDING_MODEL_SOURCES = {CLIP: str(tmp_path / "no-weights")}
    status, message = error("GET", f"{api}/search?q=weights")
    assert status == 503 and "EMBEDDING_MODEL_SOURCES" in message

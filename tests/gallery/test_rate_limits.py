"""Rate limits with kept libraries: django-axes locks sign-in per username and address, and
django-ratelimit limits sign-ups, new API tokens and anonymous image searches (429, JSON under
/api/). Configurable from the environment."""

from __future__ import annotations

import io
import runpy
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.utils import timezone

from gallery.models import ApiToken
from gallery.services.accounts import api_token_create
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def sign_in(client: Client, username: str, password: str, path: str = "/accounts/login/"):
    return client.post(path, {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_the_right_password_is_refused_after_too_many_wrong_ones(settings) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    user = UserFactory()
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(2):
        assert sign_in(client, user.username, "wrong").status_code == 200  # the form again
    assert sign_in(client, user.username, "wrong").status_code == 429

    response = sign_in(client, user.username, PASSWORD)
    assert response.status_code == 429
    assert "Too many wrong passwords" in response.content.decode()
    assert response["Retry-After"] == str(15 * 60)
    assert not signed_in(client)
    # The admin's sign-in is the same authentication, so it is locked too.
    assert sign_in(client, user.username, PASSWORD, "/admin/login/").status_code == 429

    # Per username and address: the owner signs in from elsewhere; another user is not locked.
    elsewhere = Client(REMOTE_ADDR="198.51.100.2")
    assert sign_in(elsewhere, user.username, PASSWORD).status_code == 302
    other = UserFactory()
    assert sign_in(client, other.username, PASSWORD).status_code == 302


def test_the_lock_ends_after_the_cool_off(settings) -> None:
    settings.AXES_FAILURE_LIMIT = 2
    user = UserFactory()
    client = Client(REMOTE_ADDR="203.0.113.8")
    for _ in range(2):
        sign_in(client, user.username, "wrong")
    assert sign_in(client, user.username, PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(hours=1))
    assert sign_in(client, user.username, PASSWORD).status_code == 302
    assert signed_in(client)


def test_sign_in_limits_come_from_the_environment(monkeypatch, settings) -> None:
    monkeypatch.setenv("AXES_FAILURE_LIMIT", "7")
    monkeypatch.setenv("AXES_COOLOFF_MINUTES", "45")
    monkeypatch.setenv("RATELIMIT_SIGNUP", "3/d")
    monkeypatch.setenv("RATELIMIT_ANONYMOUS_IMAGE_SEARCH", "5/m")
    values = runpy.run_path(str(settings.BASE_DIR / "config" / "settings" / "base.py"))
    assert values["AXES_FAILURE_LIMIT"] == 7
    assert values["AXES_COOLOFF_TIME"] == timedelta(minutes=45)
    assert values["AXES_LOCKOUT_PARAMETERS"] == [["username", "ip_address"]]
    assert values["RATELIMIT_SIGNUP"] == "3/d"
    assert values["RATELIMIT_ANONYMOUS_IMAGE_SEARCH"] == "5/m"


def test_sign_ups_are_limited_per_address(settings) -> None:
    settings.RATELIMIT_SIGNUP = "2/h"
    client = Client(REMOTE_ADDR="203.0.113.9")
    for n in range(2):
        form = {"username": f"new{n}", "password1": "pw-Long-enough-1", "password2": "no"}
        assert client.post("/accounts/signup/", form).status_code == 200  # form errors
    response = client.post("/accounts/signup/", {"username": "new3"})
    assert response.status_code == 429
    assert "Too many requests" in response.content.decode()
    assert client.get("/accounts/signup/").status_code == 200  # only POSTs count
    assert Client(REMOTE_ADDR="198.51.100.3").post("/accounts/signup/", {}).status_code == 200


def test_token_creation_is_limited_per_user_and_revoking_is_not(settings) -> None:
    settings.RATELIMIT_TOKEN_CREATE = "2/h"
    user = UserFactory()
    client = Client()
    client.force_login(user)
    for n in range(2):
        assert client.post("/accounts/tokens/", {"name": f"t{n}"}).status_code == 302
    assert client.post("/accounts/tokens/", {"name": "t3"}).status_code == 429
    assert ApiToken.objects.filter(user=user).count() == 2
    for token in ApiToken.objects.filter(user=user):
        assert client.post("/accounts/tokens/", {"revoke": token.pk}).status_code == 302


def query_image() -> io.BytesIO:
    file = io.BytesIO(b"not really an image")
    file.name = "query.png"
    return file


def test_anonymous_image_searches_are_limited_per_address(settings) -> None:
    settings.RATELIMIT_ANONYMOUS_IMAGE_SEARCH = "2/m"
    anonymous = Client(REMOTE_ADDR="203.0.113.10")
    first = anonymous.post("/api/search/image", {"image": query_image()})
    second = anonymous.post("/search/image/", {"image": query_image()})
    assert first.status_code != 429 and second.status_code != 429
    # One counter for the API and the page.
    response = anonymous.post("/api/search/image", {"image": query_image()})
    assert response.status_code == 429
    assert "try again" in response.json()["error"]
    assert response["Retry-After"] == "60"
    page = anonymous.post("/search/image/", {"image": query_image()})
    assert page.status_code == 429 and page["Content-Type"].startswith("text/html")

    # Token clients and signed-in users are not limited by address.
    _, token = api_token_create(user=UserFactory(), name="script")
    with_token = Client(REMOTE_ADDR="203.0.113.10", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert with_token.post("/api/search/image", {"image": query_image()}).status_code != 429
    signed = Client(REMOTE_ADDR="203.0.113.10")
    signed.force_login(UserFactory())
    assert signed.post("/search/image/", {"image": query_image()}).status_code != 429


def test_limits_lapse_rather_than_the_site_while_the_cache_is_down(settings, tmp_path) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "kernel.cache.FailOpenRedisCache",
            "LOCATION": f"unix://{tmp_path / 'no-redis-here.sock'}?db=1",
        }
    }
    settings.RATELIMIT_SIGNUP = "1/h"
    client = Client()
    for _ in range(3):
        assert client.post("/accounts/signup/", {"username": "x"}).status_code == 200

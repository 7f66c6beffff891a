"""Personal API tokens: created once-visible, stored hashed, revocable only by their owner."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from gallery.models import ApiToken
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_token_is_shown_once_and_stored_hashed(client: Client) -> None:
    user = UserFactory()
    client.force_login(user)
    response = client.post(reverse("api-tokens"), {"name": "laptop"}, follow=True)
    raw = response.context["new_token"]
    assert raw in response.content.decode()
    token = ApiToken.objects.get(user=user)
    assert token.key_hash == ApiToken.hash(raw) and raw not in token.key_hash
    assert raw not in client.get(reverse("api-tokens")).content.decode()

    client.logout()
    used = client.get("/api/models", headers={"Authorization": f"Bearer {raw}"})
    assert used.status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_only_the_owner_can_revoke(client: Client) -> None:
    owner, other = UserFactory(), UserFactory()
    token = ApiToken.objects.create(user=owner, name="x", key_hash="a" * 64, prefix="aaaa")
    client.force_login(other)
    client.post(reverse("api-tokens"), {"revoke": token.pk})
    assert ApiToken.objects.filter(pk=token.pk).exists()
    client.force_login(owner)
    client.post(reverse("api-tokens"), {"revoke": token.pk})
    assert not ApiToken.objects.filter(pk=token.pk).exists()


def test_token_page_needs_an_account(client: Client) -> None:
    assert client.get(reverse("api-tokens")).status_code == 302

"""The admin carries the site's name, its image list's preview links have text, and model ids
appear as written (Django's admin capitalised the first letter of every message)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import ImageFactory, UserFactory
from workers.services import embedding_model_enable, embedding_model_mark_unavailable

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_the_admin_is_branded_with_the_site_name(staff: Client) -> None:
    html = staff.get(reverse("admin:index")).content.decode()
    assert '<a href="/admin/">Image search administration</a>' in html
    assert "<title>Images, collections and models | Image search admin</title>" in html
    assert "Django" not in html and "{#" not in html
    login = Client().get(reverse("admin:login")).content.decode()
    assert "Image search administration" in login and "Django administration" not in login


def test_preview_links_in_the_image_list_are_named_by_their_image(staff: Client) -> None:
    ImageFactory(title="Red kite over the ridge", original_filename="kite.jpg")
    ImageFactory(title="", original_filename="IMG_0042.jpg")
    html = staff.get(reverse("admin:gallery_image_changelist")).content.decode()
    alts = re.findall(r'<img src="[^"]+" alt="([^"]*)" class="admin-thumb">', html)
    assert sorted(alts) == ["IMG_0042.jpg", "Red kite over the ridge"]


def test_model_ids_in_admin_messages_keep_their_case(staff: Client) -> None:
    embedding_model_enable(model_id="align-base")
    embedding_model_mark_unavailable(model_id="align-base", reason="no weights")
    html = staff.get(reverse("admin:workers_embeddingmodel_changelist")).content.decode()
    assert "align-base is not available: no weights" in html
    assert "Align-base" not in html


def test_the_api_docs_link_back_to_the_site(client: Client) -> None:
    html = client.get("/api/docs").content.decode()
    assert '<html lang="en">' in html
    assert re.search(r'<a class="docs-home" href="/">.*Back to the site</a>', html)
    assert "/static/api_docs.css" in html and "/static/api_docs.js" in html
    assert "{#" not in html and "{%" not in html
    # And the site links to the docs (the API tokens page, where a person gets a token).
    client.force_login(UserFactory())
    assert 'href="/api/docs"' in client.get(reverse("api-tokens")).content.decode()

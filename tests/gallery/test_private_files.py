"""Who opens a private upload's file: its owner on the site, and staff through the admin's own
file URLs, which need staff rights and the admin's view permission. The upload form says so."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from tests.factories import ImageFactory, UserFactory

pytestmark = pytest.mark.django_db


def site_urls(image_id: int) -> list[str]:
    return [
        reverse("image-file", args=[image_id]),
        reverse("image-thumb", args=[image_id]),
        reverse("image-thumb-size", args=[image_id, 128]),
    ]


def admin_urls(image_id: int) -> list[str]:
    return [
        reverse("admin:gallery_image_file", args=[image_id]),
        reverse("admin:gallery_image_thumb", args=[image_id, 128]),
    ]


def test_the_site_serves_a_private_file_to_its_owner_alone() -> None:
    private = ImageFactory()
    owner, other, staff = Client(), Client(), Client()
    owner.force_login(private.owner)
    other.force_login(UserFactory())
    staff.force_login(UserFactory(is_staff=True, is_superuser=True))
    for url in site_urls(private.pk):
        assert owner.get(url).status_code == 200, url
        assert other.get(url).status_code == 404, url
        assert staff.get(url).status_code == 404, url
        assert Client().get(url).status_code == 404, url


def test_staff_open_private_files_through_the_admin() -> None:
    private = ImageFactory()
    superuser = Client()
    superuser.force_login(UserFactory(is_staff=True, is_superuser=True))
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_image"))
    with_permission = Client()
    with_permission.force_login(viewer)
    without_permission = Client()
    without_permission.force_login(UserFactory(is_staff=True))
    owner = Client()
    owner.force_login(private.owner)

    for url in admin_urls(private.pk):
        assert superuser.get(url).status_code == 200, url
        assert with_permission.get(url).status_code == 200, url
        assert without_permission.get(url).status_code == 403, url
        # Not staff, even the owner: the admin's sign-in page.
        assert owner.get(url).status_code == 302, url
        assert Client().get(url).status_code == 302, url
    assert superuser.get(reverse("admin:gallery_image_file", args=[10**9])).status_code == 404

    change = superuser.get(reverse("admin:gallery_image_change", args=[private.pk]))
    page = change.content.decode()
    assert reverse("admin:gallery_image_thumb", args=[private.pk, 128]) in page
    assert reverse("admin:gallery_image_file", args=[private.pk]) in page
    assert reverse("image-thumb-size", args=[private.pk, 128]) not in page


def test_the_upload_form_says_who_sees_private_images(client: Client) -> None:
    client.force_login(UserFactory())
    page = client.get(reverse("upload")).content.decode()
    assert "Private photos are yours alone" in page
    assert (
        "(and the site&#x27;s administrators&#x27;)" in page
        or "(and the site's administrators')" in page
    )

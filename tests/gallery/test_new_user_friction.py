"""What a new person met first (issue 18's friction list): each fixed and kept so here."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client
from playwright.sync_api import Page, expect

from tests.factories import PASSWORD, ImageFactory, UserFactory, jpeg_bytes

pytestmark = pytest.mark.django_db


def test_empty_home_welcomes_visitors_and_shows_commands_only_to_staff(client: Client) -> None:
    page = client.get("/").content.decode()
    assert "Sign up" in page and "sign in" in page
    assert "./run manage" not in page
    client.force_login(UserFactory())
    assert "./run manage" not in client.get("/").content.decode()
    client.force_login(UserFactory(is_staff=True))
    assert "./run manage import_flickr30k" in client.get("/").content.decode()


def test_data_set_tab_says_the_data_set_is_missing_not_that_there_are_no_images(
    client: Client,
) -> None:
    ImageFactory(visibility="public", original_filename="someones-cat.jpg")
    everything = client.get("/").content.decode()
    assert "someones-cat.jpg" in everything
    dataset = client.get("/?show=dataset").content.decode()
    assert "No images yet" not in dataset
    assert "Flickr30k data set has not been imported" in dataset
    ImageFactory(dataset=True, original_filename="flickr-beach.jpg")
    assert "flickr-beach.jpg" in client.get("/?show=dataset").content.decode()


@pytest.mark.django_db(transaction=True)
def test_staff_empty_home_fits_a_phone(live_server, page: Page) -> None:
    UserFactory(username="root", is_staff=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator("pre")).to_contain_text("import_flickr30k")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


@pytest.mark.django_db(transaction=True)
def test_upload_over_the_limit_names_the_limit(
    live_server, page: Page, settings, tmp_path: Path
) -> None:
    settings.UPLOAD_MAX_BYTES = 2_000_000
    big = tmp_path / "huge.jpg"
    big.write_bytes(jpeg_bytes(size=(64, 64)) + b"\0" * 2_200_000)
    UserFactory(username="alice")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.goto(f"{live_server.url}/upload/")
    expect(page.locator("#drop-help")).to_contain_text("up to 2 MB each")
    rows = page.locator("#upload-rows li")
    # Refused in the page before the bytes travel.
    page.set_input_files("#id_file", str(big))
    expect(rows.nth(0)).to_contain_text("huge.jpg is 2.2 MB; the limit is 2 MB per image")
    # And when it does reach the server (an older page, no size on the zone), the 413's reason.
    page.evaluate("document.querySelector('[data-dropzone]').removeAttribute('data-max-bytes')")
    page.set_input_files("#id_file", str(big))
    expect(rows.nth(1)).to_contain_text("the limit is 2 MB per image")
    expect(rows.nth(1)).not_to_contain_text("the server answered")
    # Without JavaScript the form posts the files itself: the 413 page says the limit too.
    no_js = page.context.browser.new_context(java_script_enabled=False)
    try:
        other = no_js.new_page()
        other.goto(f"{live_server.url}/accounts/login/")
        other.fill("#id_username", "alice")
        other.fill("#id_password", PASSWORD)
        other.click("main button[type=submit]")
        other.goto(f"{live_server.url}/upload/")
        other.set_input_files("#id_file", str(big))
        other.click("main button[type=submit]")
        expect(other.locator("main")).to_contain_text("the limit is 2 MB per image")
    finally:
        no_js.close()


def test_pages_for_a_signed_in_person_are_not_stored(client: Client) -> None:
    owner = UserFactory()
    image = ImageFactory(owner=owner, visibility="public")
    anonymous = client.get(f"/images/{image.pk}/")
    assert "no-store" not in anonymous.get("Cache-Control", "")
    client.force_login(owner)
    for path in ["/", f"/images/{image.pk}/", "/collections/", "/accounts/"]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert "no-store" in response["Cache-Control"], path
        assert "private" in response["Cache-Control"], path
    # Files keep their own (private, cached) policy.
    thumb = client.get(f"/images/{image.pk}/thumb")
    assert thumb["Cache-Control"] == "private, max-age=86400"


@pytest.mark.django_db(transaction=True)
def test_back_after_deleting_an_image_does_not_show_it_again(live_server, page: Page) -> None:
    owner = UserFactory()
    image = ImageFactory(owner=owner, original_filename="cat.jpg")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", owner.username)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.goto(f"{live_server.url}/images/{image.pk}/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".messages")).to_contain_text("Deleted cat.jpg")
    response = page.go_back()
    # The browser asked the server again rather than showing its stored copy.
    assert response is not None and response.status == 404
    expect(page.get_by_role("button", name="Delete")).to_have_count(0)


@pytest.mark.django_db(transaction=True)
def test_a_very_long_query_keeps_its_heading_short_on_a_phone(live_server, page: Page) -> None:
    from search.selectors import MAX_QUERY_CHARS

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/")
    field = page.locator("#top-q")
    assert field.get_attribute("maxlength") == str(MAX_QUERY_CHARS)
    field.fill("a dog on a beach " * 80)  # 1,360 characters typed, the field keeps the limit
    assert len(field.input_value()) == MAX_QUERY_CHARS
    for query in ["a dog on a beach " * 70, "x" * 1199]:
        page.goto(f"{live_server.url}/search/?q={query}")
        heading = page.locator("h1")
        expect(heading).to_have_attribute("title", query.strip())
        line = float(heading.evaluate("h => parseFloat(getComputedStyle(h).lineHeight)"))
        assert heading.bounding_box()["height"] <= 2 * line + 1, query[:20]


@pytest.mark.django_db(transaction=True)
def test_upload_rows_never_say_indexing_beside_waiting_for_the_model(
    live_server, page: Page, tmp_path: Path
) -> None:
    from workers.models import EmbeddingModel

    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg_bytes(color=(30, 120, 200), size=(80, 60)))
    UserFactory(username="alice")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.goto(f"{live_server.url}/upload/")
    page.set_input_files("#id_file", str(photo))
    row = page.locator("#upload-rows li").first
    expect(row.locator(".badge")).to_have_text("indexing…")
    # The worker then finds it cannot load the model.
    models = EmbeddingModel.objects.filter(is_default=True)
    models.update(unavailable_reason="no weights in /models/clip")
    expect(row.locator(".badge")).to_have_text("waiting for the model")
    expect(row.locator(".badge")).to_have_attribute("title", "no weights in /models/clip")
    expect(row).to_contain_text("Uploaded dog.jpg")
    expect(row).not_to_contain_text("being indexed")

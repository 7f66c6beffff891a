"""Photos first, in headless Chromium at a desktop and a phone size: the results start in the
upper half of a phone's screen, cards say what they are without hovering, the grid reaches the
right edge, the save picker reads the longest collection name, the search bar takes an image
(picked, dropped or pasted), and the upload page asks for visibility first and counts the batch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from gallery.models import Image
from tests.factories import CollectionFactory, ImageFactory, jpeg_bytes
from tests.gallery.test_pages_layout import CLIP, SIZES, sign_in, site  # noqa: F401 (fixture)
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db(transaction=True)

LONGEST = "Summer holidays on the Outer Hebrides with the grandparents and the dogs, 2024"


def signed_in_page(browser: Browser, live_server, size: str) -> Page:
    width, height = SIZES[size]
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    sign_in(page, live_server.url)
    return page


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_results_come_first_fill_the_width_and_say_what_they_are(
    site: dict,  # noqa: F811
    live_server,
    browser: Browser,
    size: str,
) -> None:
    page = signed_in_page(browser, live_server, size)
    page.goto(f"{live_server.url}/search/?q=a+dog+on+the+beach")
    page.mouse.move(0, 0)  # nothing hovered
    cards = page.locator("figure.result")
    expect(cards).to_have_count(11)
    first = cards.first
    # Name, date and a match bar, visible without hovering.
    expect(first.locator(".card-name")).to_be_visible()
    expect(first.locator(".card-name")).not_to_have_text("")
    expect(first.locator("time")).to_have_text(re.compile(r"^\d{1,2} \w{3} \d{4}$"))
    bar = first.locator(".scorebar")
    expect(bar).to_be_visible()
    box = bar.bounding_box()
    assert box and box["width"] >= 24 and box["height"] >= 4, box
    expect(bar).to_have_attribute("title", re.compile(r"^100% of the best match · cosine"))
    expect(bar.locator("rect")).to_have_attribute("width", "100")
    # The card's actions stay hidden until hovered or focused.
    actions = first.locator(".card-actions")
    assert actions.evaluate("e => getComputedStyle(e).opacity") == "0"
    first.hover()
    expect(actions).to_have_css("opacity", "1")
    expect(first.get_by_role("link", name="Similar images")).to_be_visible()

    viewport = page.viewport_size
    assert viewport
    top = first.bounding_box()
    assert top is not None
    if size == "phone":
        assert top["y"] < viewport["height"] / 2, f"first result at {top['y']}px"
    # The first row's last card ends where the page's content does: no empty strip.
    edges = right_edges(page)
    assert edges["row"] >= 3 and abs(edges["cards"] - edges["content"]) <= 2, edges
    # Thumbnails load lazily into a square reserved before they arrive.
    image = first.locator("img")
    expect(image).to_have_attribute("loading", "lazy")
    thumb = first.locator(".thumb").bounding_box()
    assert thumb and abs(thumb["width"] - thumb["height"]) <= 1, thumb
    # No bare file input, no Find similar button: the image search is the bar's camera button.
    expect(page.locator("input[type=file]:visible")).to_have_count(0)
    expect(page.get_by_role("button", name="Find similar")).to_have_count(0)
    camera = page.locator("header").get_by_role("button", name="Search with an image")
    expect(camera).to_be_visible()
    if size == "desktop":
        # Fewer results than a row's worth (her five uploads) spread over the width too.
        more = [ImageFactory(owner=site["owner"]) for _ in range(4)]
        embeddings_store(model_id=CLIP, image_ids=[i.pk for i in more], vectors=[[1.0] * 512] * 4)
        page.goto(f"{live_server.url}/search/?q=a+dog+on+the+beach&source=mine")
        expect(cards).to_have_count(5)
        edges = right_edges(page)
        assert edges["row"] == 5 and abs(edges["cards"] - edges["content"]) <= 2, edges
    page.context.close()


def right_edges(page: Page) -> dict[str, float]:
    """How many results the first row holds, where its last one ends and where the page's
    content (main, less its padding) ends."""
    return page.evaluate(
        """() => {
            const cards = [...document.querySelectorAll('.grid.results > figure.result')];
            const rowTop = cards[0].getBoundingClientRect().top;
            const row = cards.filter(c => Math.abs(c.getBoundingClientRect().top - rowTop) < 2);
            const main = document.querySelector('main');
            const padding = parseFloat(getComputedStyle(main).paddingRight);
            return {
                row: row.length,
                cards: row[row.length - 1].getBoundingClientRect().right,
                content: main.getBoundingClientRect().right - padding,
            };
        }"""
    )


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_save_picker_reads_the_longest_collection_name(
    site: dict,  # noqa: F811
    live_server,
    browser: Browser,
    size: str,
) -> None:
    longest = CollectionFactory(owner=site["owner"], name=LONGEST)
    page = signed_in_page(browser, live_server, size)
    page.goto(f"{live_server.url}/search/?q=a+dog+on+the+beach")
    # The last card of the first row: the picker must not run off the right edge either.
    cards = page.locator("figure.result")
    card = cards.nth(2 if size == "phone" else 5)
    card.hover()
    card.get_by_role("button", name="Save").click()
    picker = card.locator(".picker")
    choice = picker.get_by_role("button", name=LONGEST)
    expect(choice).to_be_visible()
    fits = choice.evaluate(
        "b => ({scroll: b.scrollWidth, client: b.clientWidth, text: b.innerText})"
    )
    assert fits["scroll"] <= fits["client"] and LONGEST in fits["text"].replace("\n", " "), fits
    box, window = picker.bounding_box(), page.viewport_size
    assert box and window and box["x"] >= 0 and box["x"] + box["width"] <= window["width"], box
    assert box["width"] >= min(250, window["width"] - 16), box
    # The new-name field spans the pop-over (less its padding).
    field = picker.get_by_label("New collection").bounding_box()
    assert field and field["width"] >= box["width"] - 2 * 10, (field, box)
    # One click on a name saves there.
    choice.click()
    expect(card.locator(".picker")).to_contain_text(f"Saved to {LONGEST}")
    assert list(longest.items.values_list("image_id", flat=True)) == [
        int(card.get_attribute("data-image-id") or 0)
    ]
    page.context.close()


def image_file_js(name: str) -> str:
    """JS building a DataTransfer that holds one small PNG named ``name`` (a red square)."""
    return f"""async () => {{
        const canvas = document.createElement('canvas');
        canvas.width = canvas.height = 40;
        const context = canvas.getContext('2d');
        context.fillStyle = '#c81414';
        context.fillRect(0, 0, 40, 40);
        const blob = await new Promise(done => canvas.toBlob(done, 'image/png'));
        const transfer = new DataTransfer();
        transfer.items.add(new File([blob], '{name}', {{type: 'image/png'}}));
        window.__transfer = transfer;
    }}"""


@pytest.mark.parametrize("how", ["paste", "drop", "pick"])
def test_the_search_bar_takes_an_image(
    site: dict,  # noqa: F811
    live_server,
    browser: Browser,
    how: str,
    tmp_path: Path,
) -> None:
    page = signed_in_page(browser, live_server, "desktop")
    page.goto(f"{live_server.url}/search/?q=a+dog")
    if how == "pick":
        probe = tmp_path / "probe.jpg"
        probe.write_bytes(jpeg_bytes(color=(200, 60, 40), size=(80, 60)))
        with page.expect_file_chooser() as chooser:
            page.get_by_role("button", name="Search with an image").click()
        chooser.value.set_files(str(probe))
    else:
        page.evaluate(image_file_js("query.png"))
        event = (
            "new ClipboardEvent('paste', {clipboardData: window.__transfer, bubbles: true})"
            if how == "paste"
            else "new DragEvent('drop', {dataTransfer: window.__transfer, bubbles: true, "
            "cancelable: true})"
        )
        page.evaluate(f"document.getElementById('top-q').dispatchEvent({event})")
    expect(page).to_have_url(re.compile(r"/search/image/\?key=[\w-]+"))
    expect(page.locator("img.query-preview")).to_be_visible()
    expect(page.locator("figure.result")).to_have_count(11)
    page.context.close()


def test_upload_asks_visibility_first_remembers_it_and_counts_the_batch(
    site: dict,  # noqa: F811
    live_server,
    browser: Browser,
    tmp_path: Path,
) -> None:
    page = signed_in_page(browser, live_server, "desktop")
    page.goto(f"{live_server.url}/upload/")
    visibility, zone = page.get_by_label("Visibility"), page.locator("[data-dropzone]")
    # Visibility comes before the drop area, in the document and on the screen.
    assert page.evaluate(
        "() => !!(document.getElementById('id_visibility').compareDocumentPosition("
        "document.querySelector('[data-dropzone]')) & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    above, below = visibility.bounding_box(), zone.bounding_box()
    assert above and below and above["y"] + above["height"] <= below["y"]
    # One pick-or-drop area: no native file input, no Upload button that does nothing.
    expect(zone).to_have_text(re.compile(r"Drop photos here or choose"))
    expect(page.locator("input[type=file]:visible")).to_have_count(0)
    expect(page.get_by_role("button", name="Upload")).to_be_hidden()
    # Public, chosen once: still chosen on the next visit.
    visibility.select_option("public")
    page.reload()
    expect(visibility).to_have_value("public")

    names = [f"photo{index}.jpg" for index in range(4)]
    for index, name in enumerate(names):
        (tmp_path / name).write_bytes(jpeg_bytes(color=(40 * index, 90, 200), size=(64, 48)))
    (tmp_path / "notes.jpg").write_bytes(b"shopping list")
    page.set_input_files("#id_file", [str(tmp_path / n) for n in [*names, "notes.jpg"]])
    progress = page.locator("#upload-progress")
    expect(page.locator("#upload-rows li .badge.pending")).to_have_count(4)
    expect(progress).to_have_text("0 of 4 indexed · 1 refused")
    uploads = Image.objects.filter(original_filename__in=names)
    assert {image.visibility for image in uploads} == {"public"} and uploads.count() == 4
    # The index reaches them (stored as a worker would); the rows see it by polling.
    embeddings_store(
        model_id=CLIP, image_ids=[image.pk for image in uploads], vectors=[[1.0] * 512] * 4
    )
    expect(progress).to_have_text("4 of 4 indexed · 1 refused", timeout=20_000)
    expect(page.locator("#upload-rows li.done")).to_have_count(4)
    expect(page.locator("#upload-rows li.refused")).to_contain_text("notes.jpg")
    page.context.close()


def test_upload_says_choose_photos_on_a_touch_screen(
    site: dict,  # noqa: F811
    live_server,
    browser: Browser,
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True)
    page = context.new_page()
    sign_in(page, live_server.url)
    page.goto(f"{live_server.url}/upload/")
    zone = page.locator("[data-dropzone]")
    expect(zone.get_by_text("Choose photos")).to_be_visible()
    expect(zone.get_by_text("Drop photos here or choose")).to_be_hidden()
    context.close()


def test_without_javascript_the_plain_forms_upload_and_search_by_image(
    site: dict,  # noqa: F811
    live_server,
    browser: Browser,
    tmp_path: Path,
) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, live_server.url)
    photo = tmp_path / "plain.jpg"
    photo.write_bytes(jpeg_bytes(color=(10, 200, 90), size=(64, 48)))

    page.goto(f"{live_server.url}/upload/")
    expect(page.locator("[data-dropzone]")).to_be_hidden()  # it needs the script
    page.get_by_label("Visibility").select_option("public")
    page.get_by_label("Photos").set_input_files(str(photo))
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/\?show=mine$"))
    assert Image.objects.get(original_filename="plain.jpg").visibility == "public"

    # The search bar's camera button needs the script; the search page's plain form does not.
    page.goto(f"{live_server.url}/search/?q=a+dog")
    expect(page.locator("header").get_by_role("button", name="Search with an image")).to_be_hidden()
    page.locator("main").get_by_label("Search with an image").set_input_files(str(photo))
    page.get_by_role("button", name="Find similar").click()
    expect(page).to_have_url(re.compile(r"/search/image/\?key=[\w-]+"))
    expect(page.locator("img.query-preview")).to_be_visible()
    context.close()

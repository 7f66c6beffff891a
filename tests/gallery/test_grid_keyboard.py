"""The browse grid is usable from the keyboard: arrows move between thumbnails, by rows too."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.factories import ImageFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _focused_id(page: Page) -> int:
    return int(
        page.evaluate("document.activeElement.closest('figure').getAttribute('data-image-id')")
    )


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_arrow_keys_move_through_the_grid(live_server, page: Page, width: int, height: int) -> None:
    ImageFactory.create_batch(9, dataset=True)
    page.set_viewport_size({"width": width, "height": height})
    page.goto(live_server.url)
    order = [
        int(v) for v in page.eval_on_selector_all(
            ".grid figure", "figures => figures.map(f => f.getAttribute('data-image-id'))"
        )
    ]  # fmt: skip
    assert len(order) == 9
    columns = page.evaluate(
        """() => {
          const links = [...document.querySelectorAll('.grid a.thumb')];
          const top = links[0].getBoundingClientRect().top;
          return links.filter(l => Math.abs(l.getBoundingClientRect().top - top) < 2).length;
        }"""
    )
    assert 1 < columns < 9  # several per row at both sizes, and more than one row

    page.focus(".grid a.thumb")
    page.keyboard.press("ArrowRight")
    assert _focused_id(page) == order[1]
    page.keyboard.press("ArrowDown")
    assert _focused_id(page) == order[1 + columns]
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    assert _focused_id(page) == order[0]
    page.keyboard.press("ArrowLeft")  # at the start it stays put
    assert _focused_id(page) == order[0]
    page.keyboard.press("End")
    assert _focused_id(page) == order[-1]
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/images/{order[-1]}/")

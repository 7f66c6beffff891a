"""A new person's whole visit against ``./run`` itself: its own data dir, DEBUG off, its embedded
PostgreSQL and Redis (the cache over the socket URL ./run builds), a real worker and gunicorn,
all over plain HTTP with CSRF tokens as a browser sends them. Every POST form the site shows is
sent at least once, and no answer is a 5xx. (Django's test client and the tests' own settings
once hid a sign-up 500 that every ./run user met.)"""

from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.journey_client import JourneyClient, png_bytes, route_name
from tests.run_site import RunningSite

pytestmark = pytest.mark.slow  # a whole visit against ./run in subprocesses

CLIP = "clip-vit-base-patch32"
PASSWORD = "a long Passphrase 4 journeys"

# Every route the site's own pages post a form to (the admin's aside). A form added to a page
# without this journey sending it fails below, through forms_seen.
SITE_POST_ROUTES = {
    "signup", "login", "logout", "password_change", "password_reset", "password_reset_confirm",
    "account", "api-tokens", "upload", "search-image", "image-visibility", "image-details",
    "image-delete", "collection-add", "collections", "collection-edit", "collection-details",
    "collection-item-note", "collection-item-move", "collection-item-remove", "selection-save",
    "selection-delete", "collection-share-rotate", "search-save", "search-saved-pin",
    "search-saved-hide",
}  # fmt: skip

# Odd input that once answered 500 somewhere; each must be a 4xx (or a page) now.
ODD_REQUESTS = [
    ("GET", "/search/?q=red&shown=%E2%91%A0"),
    ("GET", "/search/?q=red&shown=%C2%B2"),
    ("GET", "/search/?q=red&shown=" + "9" * 5000),
    ("GET", "/c/%00/"),
    ("GET", "/search/?q=%1E"),
    ("GET", "/api/search?q=%1E"),
    ("GET", "/?pages=%E2%91%A0"),
    ("GET", "/images/99999999999999999999/"),
]


def wait_indexed(client: JourneyClient, image_id: int, log) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = client.get(f"/images/{image_id}/status").json()
        if status["state"] == "ready":
            return
        assert status["state"] in ("pending", "blocked"), status
        time.sleep(0.5)
    raise AssertionError(f"image {image_id} never indexed; ./run said:\n{log()[-4000:]}")


def test_a_new_person_uses_the_whole_site_under_run(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    answers: list[tuple[str, str, int]] = []
    with RunningSite(
        tmp_path,
        EMBEDDING_MODEL_SOURCES=f"{CLIP}={tiny_model_dirs[CLIP]}",
        EMBEDDING_SWEEP_SECONDS="5",
    ) as site:
        assert "DEBUG" not in site.env or site.env["DEBUG"].lower() in ("", "0", "false")
        person = JourneyClient(site.url, answers)
        anonymous = JourneyClient(site.url, answers)

        # Sign up (the 500 every ./run user met), sign out, sign in again.
        assert anonymous.get("/").status_code == 200
        signup = person.form("/accounts/signup/", "signup")
        answer = person.submit(
            signup, {"username": "newcomer", "password1": PASSWORD, "password2": PASSWORD}
        )
        assert answer.status_code == 200 and "newcomer" in answer.text, answer.text[:2000]
        person.submit(person.form("/", "logout"))
        assert "Sign in" in person.get("/").text or "Log in" in person.get("/").text
        login = person.form("/accounts/login/", "login")
        answer = person.submit(login, {"username": "newcomer", "password": PASSWORD})
        assert answer.status_code == 200 and "newcomer" in answer.text

        # An e-mail address (needs the password), then a token, and search with it.
        account = person.form("/accounts/", "account")
        answer = person.submit(account, {"email": "newcomer@example.com", "password": PASSWORD})
        assert answer.status_code == 200 and "newcomer@example.com" in answer.text
        tokens = person.form("/accounts/tokens/", "api-tokens")
        answer = person.submit(tokens, {"name": "laptop script"})
        assert answer.status_code == 200
        token = re.search(r'id="new-token">([^<]+)<', answer.text)
        assert token, answer.text[:3000]

        # Upload: one file as the page's script sends it (JSON), one as the plain form does.
        upload = person.form("/upload/", "upload")
        uploaded = person.submit(
            upload,
            {"visibility": "private"},
            files={"file": ("red.png", png_bytes((220, 30, 30)), "image/png")},
            headers={"Accept": "application/json"},
        )
        assert uploaded.status_code == 201, uploaded.text
        red = uploaded.json()["id"]
        answer = person.submit(
            upload,
            {"visibility": "public"},
            files={"file": ("blue.png", png_bytes((30, 30, 220)), "image/png")},
        )
        assert answer.status_code == 200 and "blue.png" in answer.text
        wait_indexed(person, red, site.log)
        search = person.get("/search/?q=a+red+square")
        assert search.status_code == 200 and f"/images/{red}/" in search.text
        api = person.request(
            "GET", "/api/search?q=red", headers={"Authorization": f"Bearer {token[1]}"}
        )
        assert api.status_code == 200 and red in [hit["id"] for hit in api.json()["results"]]

        # Search by image: signed in (page) and anonymous (page and API).
        query = ("query.png", png_bytes((200, 40, 40)), "image/png")
        by_image = person.form("/search/?q=red", "search-image")
        assert person.submit(by_image, files={"image": query}).status_code == 200
        anonymous_form = anonymous.form("/search/?q=red", "search-image")
        assert anonymous.submit(anonymous_form, files={"image": query}).status_code == 200
        answer = anonymous.request("POST", "/api/search/image", files={"image": query})
        assert answer.status_code == 200, answer.text

        # The image page: title, visibility, save into a new collection.
        details = person.form(f"/images/{red}/", "image-details")
        assert person.submit(details, {"title": "Red square"}).status_code == 200
        visibility = person.form(f"/images/{red}/", "image-visibility")
        assert person.submit(visibility, {"visibility": "public"}).status_code == 200
        picker = person.form(f"/images/{red}/save", "collection-add")
        answer = person.submit(picker, {"new_name": "Reds", "query": "red"})
        assert answer.status_code == 200 and "Reds" in answer.text
        collections = person.form("/collections/", "collections")
        assert person.submit(collections, {"name": "Blues"}).status_code == 200

        # Select both images on the home page and save them into the collection.
        home = person.get("/?show=mine")
        ids = sorted(set(map(int, re.findall(r'name="image_id" form="selection" value="(\d+)"',
                                             home.text))))  # fmt: skip
        assert red in ids and len(ids) == 2, home.text[:3000]
        selection = person.form("/?show=mine", "selection-save")
        answer = person.request(
            "POST",
            selection.action,
            data={**selection.fields, "image_id": ids, "new_name": "", "collection_id": ""},
            headers={"Referer": selection.page},
        )
        person.posted.add("selection-save")
        assert answer.status_code == 200

        # The collection's own page: share it, rename it, a note, order, remove.
        listing = person.get("/collections/").text
        reds = re.search(r'href="/collections/(\d+)/"[^>]*>[^<]*(?:<[^>]*>[^<]*)*?Reds', listing)
        assert reds, listing[:3000]
        page = f"/collections/{reds[1]}/"
        edit = person.form(page, "collection-edit")
        assert person.submit(edit, {"visibility": "unlisted"}).status_code == 200
        header = person.form(page, "collection-details")
        assert person.submit(header, {"description": "warm colours"}).status_code == 200
        note = person.form(page, "collection-item-note")
        assert person.submit(note, {"note": "the first one"}).status_code == 200
        move = person.form(page, "collection-item-move")
        assert person.submit(move, button="later").status_code == 200
        shared = re.search(r"/c/([A-Za-z0-9_\-]+)/", person.get(page).text)
        assert shared and anonymous.get(shared[0]).status_code == 200
        rotate = person.form(page, "collection-share-rotate")
        assert person.submit(rotate).status_code == 200
        fresh = re.search(r"/c/([A-Za-z0-9_\-]+)/", person.get(page).text)
        assert fresh and fresh[0] != shared[0]
        assert anonymous.get(shared[0]).status_code == 404
        assert anonymous.get(fresh[0]).status_code == 200
        remove = person.form(page, "collection-item-remove")
        assert person.submit(remove).status_code == 200

        # Save the search; on its page pin the red square, then hide it (and it is listed as
        # hidden, with its "Show again").
        save = person.form("/search/?q=red", "search-save")
        answer = person.submit(save, {"name": "Red things"})
        assert answer.status_code == 200 and "/search/saved/" in answer.url, answer.url
        saved = urllib.parse.urlsplit(answer.url).path
        assert f"/images/{red}/" in answer.text

        def card_form(route: str):
            forms = person.forms_in(person.get(saved))
            return next(f for f in forms if f.route == route and f"/{red}/" in f.action)

        assert person.submit(card_form("search-saved-pin")).status_code == 200
        answer = person.submit(card_form("search-saved-hide"))
        assert answer.status_code == 200 and "Hidden" in answer.text, answer.text[:3000]

        # Delete the other image through the selection bar's Delete (its formaction).
        blue = next(i for i in ids if i != red)
        answer = person.request(
            "POST",
            "/selection/delete",
            data={"csrfmiddlewaretoken": selection.fields["csrfmiddlewaretoken"], "image_id": blue,
                  "next": "/?show=mine"},
            headers={"Referer": selection.page},
        )  # fmt: skip
        person.posted.add("selection-delete")
        assert answer.status_code == 200 and person.get(f"/images/{blue}/").status_code == 404

        # Delete an image from its page, revoke the token.
        delete = person.form(f"/images/{red}/", "image-delete")
        assert person.submit(delete).status_code == 200
        assert person.get(f"/images/{red}/").status_code == 404
        revoke = person.form("/accounts/tokens/", "api-tokens", containing="Revoke")
        assert person.submit(revoke, button="revoke").status_code == 200

        # Password change, then a reset by mail (the console backend prints it to the log).
        change = person.form("/accounts/password_change/", "password_change")
        new_password = PASSWORD + " changed"
        answer = person.submit(
            change,
            {"old_password": PASSWORD, "new_password1": new_password,
             "new_password2": new_password},
        )  # fmt: skip
        assert answer.status_code == 200
        reset = anonymous.form("/accounts/password_reset/", "password_reset")
        assert anonymous.submit(reset, {"email": "newcomer@example.com"}).status_code == 200
        link = site.wait_until(
            lambda: re.search(r"/accounts/reset/[\w-]+/[\w-]+/", site.log()), 60, "the reset mail"
        )
        confirm = anonymous.form(link[0], "password_reset_confirm")
        final = PASSWORD + " reset"
        answer = anonymous.submit(confirm, {"new_password1": final, "new_password2": final})
        assert answer.status_code == 200

        # The reset ended the old session; the new password signs in. Odd requests, sign out.
        login = person.form("/accounts/login/", "login")
        answer = person.submit(login, {"username": "newcomer", "password": final})
        assert answer.status_code == 200 and "newcomer" in answer.text
        for method, path in ODD_REQUESTS:
            assert anonymous.request(method, path).status_code < 500, path
        person.submit(person.form("/", "logout"))

    server_errors = [answer for answer in answers if answer[2] >= 500]
    assert not server_errors, server_errors
    forms_seen = set(person.forms_seen) | set(anonymous.forms_seen)
    posted = person.posted | anonymous.posted
    assert forms_seen <= posted, forms_seen - posted
    assert posted >= SITE_POST_ROUTES, SITE_POST_ROUTES - posted
    assert route_name("/accounts/signup/") == "signup"

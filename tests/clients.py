"""Clients the tests act through: Django's test client signed in as someone, and a real HTTP
session (urllib with a cookie jar) for what the test client skips, the CSRF check above all."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

from django.test import Client
from playwright.sync_api import Page

from tests.factories import PASSWORD

CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


class HttpSession:
    """urllib with a cookie jar against a live server: keeps the session and CSRF cookies."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def open(
        self, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """(status, final URL path, body), following redirects."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=60) as response:
                final = urllib.parse.urlsplit(response.geturl()).path
                return response.status, final, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, path, error.read().decode()

    def csrf_token(self, page: str) -> str:
        """The CSRF token of the form on ``page``."""
        status, _, body = self.open(page)
        assert status == 200, body
        token = CSRF_FIELD.search(body)
        assert token, body
        return token[1]

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, str, str]:
        """GET the page, then POST its form with the CSRF token it carries."""
        return self.open(path, {"csrfmiddlewaretoken": self.csrf_token(path), **fields})


def browser_sign_in(page: Page, url: str, username: str) -> None:
    """Sign ``username`` in through the login form, as a person does, and land on the home page."""
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{url}/")

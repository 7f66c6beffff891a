"""A plain HTTP client for journeys against a live site: it reads each page's forms as a browser
does (fields, defaults, the CSRF token), fills in what the test says, and posts them, keeping
every answer so a test can say no request was answered with a 5xx and every form was sent."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import requests
from django.urls import Resolver404, resolve
from PIL import Image as PILImage


@dataclass
class Form:
    page: str
    action: str
    method: str
    enctype: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def route(self) -> str:
        return route_name(self.action)


def route_name(url: str) -> str:
    path = urlsplit(url).path
    try:
        return resolve(path).url_name or path
    except Resolver404:
        return path


class _FormParser(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.forms: list[Form] = []
        self.current: Form | None = None
        self.select: str | None = None
        self.select_first: str | None = None
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.current = Form(
                page=self.page,
                action=urljoin(self.page, a.get("action") or self.page),
                method=(a.get("method") or "get").lower(),
                enctype=a.get("enctype", ""),
            )
            self.forms.append(self.current)
            return
        form = self.current
        if form is None:
            return
        name = a.get("name", "")
        if tag == "input" and name:
            kind = a.get("type", "text").lower()
            if kind == "file":
                form.files.append(name)
            elif kind in ("checkbox", "radio"):
                if "checked" in a:
                    form.fields[name] = a.get("value", "on")
            elif kind in ("submit", "button"):
                form.buttons.append((name, a.get("value", "")))
            else:
                form.fields.setdefault(name, a.get("value", ""))
        elif tag == "button" and name:
            form.buttons.append((name, a.get("value", "")))
        elif tag == "select" and name:
            self.select, self.select_first = name, None
        elif tag == "option" and self.select:
            value = a.get("value", "")
            if self.select_first is None:
                self.select_first = value
                form.fields.setdefault(self.select, value)
            if "selected" in a:
                form.fields[self.select] = value
        elif tag == "textarea" and name:
            self.textarea = name
            form.fields[name] = ""

    def handle_data(self, data: str) -> None:
        if self.current is not None:
            self.current.text += data
            if self.textarea:
                self.current.fields[self.textarea] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.current = None
        elif tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


class JourneyClient:
    """One person's browser-less session: cookies, CSRF, and a record of every answer."""

    def __init__(self, base: str, answers: list[tuple[str, str, int]]) -> None:
        self.base = base
        self.http = requests.Session()
        self.answers = answers  # shared by every client of a journey
        self.forms_seen: dict[str, Form] = {}
        self.posted: set[str] = set()

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        response = self.http.request(method, urljoin(self.base, path), **kwargs)
        for hop in [*response.history, response]:
            self.answers.append((method, urlsplit(hop.url).path, hop.status_code))
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        response = self.request("GET", path, **kwargs)
        if "text/html" in response.headers.get("Content-Type", ""):
            for form in self.forms_in(response):
                if form.method == "post":
                    self.forms_seen.setdefault(form.route, form)
        return response

    def forms_in(self, response: requests.Response) -> list[Form]:
        parser = _FormParser(response.url)
        parser.feed(response.text)
        return parser.forms

    def form(self, path: str, route: str, *, containing: str = "") -> Form:
        """The POST form on ``path`` that goes to ``route`` (and whose text has ``containing``)."""
        page = self.get(path)
        assert page.status_code == 200, (path, page.status_code, page.text[:2000])
        for form in self.forms_in(page):
            if form.method == "post" and form.route == route and containing in form.text:
                return form
        raise AssertionError(f"no form to {route} on {path}: {page.text[:3000]}")

    def submit(
        self,
        form: Form,
        values: dict[str, str] | None = None,
        *,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        button: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        data = {**form.fields, **(values or {})}
        if button is not None:
            name, value = next(b for b in form.buttons if b[0] == button or b[1] == button)
            data[name] = value
        self.posted.add(form.route)
        headers = {"Referer": form.page, **(headers or {})}
        return self.request("POST", form.action, data=data, files=files, headers=headers)

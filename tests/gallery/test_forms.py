"""The sign-up, sign-in, password and account forms as people meet them: each error right under
the field it is about (and named by the field's aria-describedby), help text under the field,
errors of no one field in one alert at the top, one primary button, links to the neighbouring
forms; the lock-out page offers the self-service reset; the API token page redirects after
every POST, so a reload never makes another token."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse

from gallery.models import ApiToken
from gallery.services.accounts import api_token_create
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


class _Elements(HTMLParser):
    """The page's elements in document order: (tag, attributes, text of its first data)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: dict[int, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        index = len(self.elements) - 1
        self.texts[index] = self.texts.get(index, "") + data


def elements(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


def position(page: _Elements, **wanted: str) -> int:
    for index, (_, attrs) in enumerate(page.elements):
        if all(attrs.get(k.replace("_", "-")) == v for k, v in wanted.items()):
            return index
    raise AssertionError(f"no element with {wanted}")


def assert_error_follows_field(html: str, field_id: str, message: str) -> None:
    """The field's error list comes right after its input (nothing but the list's own items
    between), holds the message, and the input names it in aria-describedby."""
    page = elements(html)
    field = position(page, id=field_id)
    error = position(page, id=f"{field_id}_error")
    assert error == field + 1, f"{field_id}: its error is not right under it"
    _, attrs = page.elements[field]
    assert f"{field_id}_error" in attrs.get("aria-describedby", "").split()
    assert attrs.get("aria-invalid") == "true"
    error_text = "".join(page.texts.get(i, "") for i in range(error, error + 4))
    assert message in error_text, error_text


def test_sign_up_errors_sit_under_their_fields_and_help_text_under_the_input(
    client: Client,
) -> None:
    UserFactory(username="taken", email="taken@example.com")
    response = client.post(
        reverse("signup"),
        {
            "username": "taken",
            "email": "taken@example.com",
            "password1": "a-long-passphrase-9",
            "password2": "another-passphrase-9",
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert_error_follows_field(html, "id_username", "already exists")
    assert_error_follows_field(html, "id_email", "Another account uses that e-mail address.")
    assert_error_follows_field(html, "id_password2", "didn’t match")
    # Help text comes after the input (under it), never before it or beside the label.
    page = elements(html)
    assert position(page, id="id_email_helptext") > position(page, id="id_email")
    assert 'class="errorlist"' not in html  # none of Django's bullet lists away from the fields
    assert "{#" not in html and "{%" not in html  # the templates' comments stay comments
    # One primary button, and the way to the neighbouring forms.
    assert html.count('class="primary"') == 2  # the header's Search button and this one
    assert '<button type="submit" class="primary">Create account</button>' in html
    assert f'href="{reverse("login")}">Sign in</a>' in html
    assert f'href="{reverse("password_reset")}"' in html


def test_sign_in_error_is_one_alert_above_the_fields(client: Client) -> None:
    user = UserFactory()
    html = client.post(
        reverse("login"), {"username": user.username, "password": "wrong"}
    ).content.decode()
    page = elements(html)
    alert = position(page, **{"class": "form-alert", "role": "alert"})
    assert alert < position(page, id="id_username")
    assert html.count('role="alert"') == 1 and "{#" not in html
    assert "Please enter a correct username and password" in html
    assert '<button type="submit" class="primary">Sign in</button>' in html
    assert f'href="{reverse("signup")}">Sign up</a>' in html
    assert f'href="{reverse("password_reset")}">Forgot your password?</a>' in html


def test_password_change_and_account_e_mail_errors_sit_under_their_fields(
    client: Client,
) -> None:
    user = UserFactory()
    client.force_login(user)
    html = client.post(
        reverse("password_change"),
        {"old_password": "wrong", "new_password1": "x", "new_password2": "y"},
    ).content.decode()
    assert_error_follows_field(html, "id_old_password", "incorrectly")
    assert_error_follows_field(html, "id_new_password2", "didn’t match")

    response = client.post(reverse("account"), {"email": "a@example.com", "password": "wrong"})
    assert response.status_code == 400
    assert_error_follows_field(
        response.content.decode(), "id_password", "That is not your current password."
    )
    # The reset form has the same look; its errors too.
    client.logout()
    html = client.post(reverse("password_reset"), {"email": "not an address"}).content.decode()
    assert_error_follows_field(html, "id_email", "valid email address")


def test_the_lockout_page_links_to_the_password_reset(settings) -> None:
    settings.AXES_FAILURE_LIMIT = 2
    user = UserFactory()
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(2):
        client.post(reverse("login"), {"username": user.username, "password": "wrong"})
    response = client.post(reverse("login"), {"username": user.username, "password": PASSWORD})
    assert response.status_code == 429
    html = response.content.decode()
    assert f'<a href="{reverse("password_reset")}">Reset your password</a>' in html
    assert "administrator" not in html and "{#" not in html
    # The link leads to the working form, which this client may use while locked out.
    assert client.get(reverse("password_reset")).status_code == 200


def test_a_new_token_is_shown_once_after_a_redirect(client: Client) -> None:
    user = UserFactory()
    client.force_login(user)
    response = client.post(reverse("api-tokens"), {"name": "laptop"})
    assert response.status_code == 302 and response["Location"] == reverse("api-tokens")
    assert ApiToken.objects.filter(user=user).count() == 1
    page = client.get(reverse("api-tokens"))
    raw = page.context["new_token"]
    assert raw and ApiToken.objects.get(user=user).key_hash == ApiToken.hash(raw)
    assert f'<code id="new-token">{raw}</code>' in page.content.decode()
    assert 'data-copy-text="#new-token"' in page.content.decode()
    # A reload (the GET again) shows no token and makes none.
    again = client.get(reverse("api-tokens"))
    assert again.context["new_token"] is None and raw not in again.content.decode()
    assert ApiToken.objects.filter(user=user).count() == 1


def test_revoking_redirects_too(client: Client) -> None:
    user = UserFactory()
    token, _ = api_token_create(user=user, name="old")
    client.force_login(user)
    response = client.post(reverse("api-tokens"), {"revoke": token.pk})
    assert response.status_code == 302 and response["Location"] == reverse("api-tokens")
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    assert "Token revoked." in client.get(reverse("api-tokens")).content.decode()

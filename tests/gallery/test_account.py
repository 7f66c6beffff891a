"""The account page (the user's own uploads, collections, tokens and index summary, e-mail
address), sign-up's optional e-mail, password change, and password reset by e-mail: with the
test client, and over real HTTP against a live server with the CSRF check a browser meets."""

from __future__ import annotations

import re
import runpy

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from playwright.sync_api import Page, expect

from gallery.services.accounts import api_token_create
from tests.clients import HttpSession, signed_in
from tests.factories import PASSWORD, CollectionFactory, ImageFactory, UserFactory
from workers.models import EmbeddingJob
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
NEW_PASSWORD = "a-brand-new-passphrase-7"


def can_sign_in(username: str, password: str) -> bool:
    response = Client().post("/accounts/login/", {"username": username, "password": password})
    return response.status_code == 302


# --- The account page ----------------------------------------------------------------------


def test_the_account_page_needs_sign_in() -> None:
    response = Client().get("/accounts/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_account_page_shows_the_users_own_things_and_nobody_elses(tiny_models) -> None:
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    indexed = ImageFactory(owner=alice, title="alice indexed", visibility="public")
    failed = ImageFactory(owner=alice, title="alice failed")
    waiting = ImageFactory(owner=alice, title="alice waiting")
    embeddings_store(model_id=CLIP, image_ids=[indexed.pk], vectors=np.ones((1, 512)))
    EmbeddingJob.objects.create(
        image=failed, model_id=CLIP, status=EmbeddingJob.Status.FAILED, error="corrupt file"
    )
    bob_image = ImageFactory(owner=bob, title="bob secret", visibility="public")
    CollectionFactory(owner=alice, name="alice trips")
    CollectionFactory(owner=bob, name="bob hidden collection", visibility="public")
    api_token_create(user=alice, name="alice laptop")
    api_token_create(user=alice, name="alice phone")
    api_token_create(user=bob, name="bob server")

    response = signed_in(alice).get("/accounts/")
    assert response.status_code == 200
    page = response.content.decode()
    overview = response.context["overview"]
    assert (overview.uploads, overview.public_uploads) == (3, 1)
    assert (overview.indexed, overview.pending, overview.failed) == (1, 1, 1)
    assert (overview.collection_total, overview.token_total) == (1, 2)
    assert {image.pk for image in overview.newest} == {indexed.pk, failed.pk, waiting.pk}
    for image in (indexed, failed, waiting):
        assert f"/images/{image.pk}/thumb" in page
    assert "alice trips" in page and "2 tokens" in page
    assert "1 indexed" in page and "1 waiting" in page and "1 failed" in page
    assert "/?show=mine" in page and "/accounts/tokens/" in page
    assert "/accounts/password_change/" in page and "/accounts/logout/" in page
    # Bob's public image, public collection and token are his alone to see listed here.
    assert f"/images/{bob_image.pk}/" not in page
    for name in ("bob secret", "bob hidden collection", "bob server"):
        assert name not in page


def test_the_account_page_costs_the_same_queries_for_many_uploads(tiny_models) -> None:
    user = UserFactory()
    client = signed_in(user)
    ImageFactory(owner=user)
    with CaptureQueriesContext(connection) as few:
        client.get("/accounts/")
    for _ in range(8):
        ImageFactory(owner=user)
    CollectionFactory.create_batch(3, owner=user)
    with CaptureQueriesContext(connection) as many:
        response = client.get("/accounts/")
    assert response.context["overview"].uploads == 9
    assert len(many.captured_queries) == len(few.captured_queries)


def test_the_menu_links_to_the_account_page() -> None:
    page = signed_in(UserFactory()).get("/").content.decode()
    assert 'href="/accounts/">Account</a>' in page


# --- E-mail address ------------------------------------------------------------------------


def test_the_email_address_is_changed_with_the_current_password() -> None:
    user = UserFactory(email="old@example.com")
    client = signed_in(user)
    response = client.post("/accounts/", {"email": "New@Example.COM", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/accounts/"
    user.refresh_from_db()
    assert user.email == "New@example.com"  # the domain is case-insensitive, the name may not be
    assert "E-mail address set to New@example.com." in client.get("/accounts/").content.decode()

    response = client.post("/accounts/", {"email": "", "password": PASSWORD})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.email == ""


def test_a_wrong_password_or_a_bad_address_changes_nothing() -> None:
    user = UserFactory(email="kept@example.com")
    client = signed_in(user)
    response = client.post("/accounts/", {"email": "new@example.com", "password": "wrong"})
    assert response.status_code == 400
    assert "That is not your current password." in response.content.decode()
    response = client.post("/accounts/", {"email": "not an address", "password": PASSWORD})
    assert response.status_code == 400
    assert "Enter a valid email address." in response.content.decode()
    user.refresh_from_db()
    assert user.email == "kept@example.com"


def test_an_address_another_account_uses_is_refused_in_any_case() -> None:
    UserFactory(email="taken@example.com")
    user = UserFactory(email="mine@example.com")
    response = signed_in(user).post(
        "/accounts/", {"email": "TAKEN@example.com", "password": PASSWORD}
    )
    assert response.status_code == 409
    assert "Another account uses that e-mail address" in response.content.decode()
    user.refresh_from_db()
    assert user.email == "mine@example.com"


def test_sign_up_takes_an_optional_email_address_not_one_in_use() -> None:
    form = {"username": "newcomer", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    assert Client().post("/accounts/signup/", form).status_code == 302
    assert get_user_model().objects.get(username="newcomer").email == ""

    response = Client().post(
        "/accounts/signup/", {**form, "username": "second", "email": "a@x.org"}
    )
    assert response.status_code == 302
    assert get_user_model().objects.get(username="second").email == "a@x.org"

    response = Client().post("/accounts/signup/", {**form, "username": "third", "email": "A@X.org"})
    assert response.status_code == 200
    assert "Another account uses that e-mail address." in response.content.decode()
    assert not get_user_model().objects.filter(username="third").exists()


# --- Password change -----------------------------------------------------------------------


def test_a_password_change_replaces_the_old_password() -> None:
    user = UserFactory()
    client = signed_in(user)
    assert client.get("/accounts/password_change/").status_code == 200
    response = client.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/password_change/done/"
    assert "Password changed" in client.get(response["Location"]).content.decode()
    assert client.get("/accounts/").status_code == 200  # still signed in here
    assert not can_sign_in(user.username, PASSWORD)
    assert can_sign_in(user.username, NEW_PASSWORD)


def test_a_password_change_needs_the_old_password() -> None:
    user = UserFactory()
    response = signed_in(user).post(
        "/accounts/password_change/",
        {"old_password": "wrong", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 200
    assert "Your old password was entered incorrectly" in response.content.decode()
    assert can_sign_in(user.username, PASSWORD)


# --- Password reset ------------------------------------------------------------------------

LINK = re.compile(r"https?://[^/\s]+(/accounts/reset/[^/\s]+/[^/\s]+/)")


def test_the_login_page_links_to_password_reset() -> None:
    page = Client().get("/accounts/login/").content.decode()
    assert 'href="/accounts/password_reset/">Forgot your password?' in page


@pytest.mark.django_db(transaction=True)
def test_password_reset_by_email_sets_a_new_password(celery_eager) -> None:
    user = UserFactory(email="walker@example.com")
    other = UserFactory(email="someone@example.com")
    client = Client()
    assert "Reset password" in client.get("/accounts/password_reset/").content.decode()
    response = client.post("/accounts/password_reset/", {"email": "WALKER@example.com"})
    assert response.status_code == 302 and response["Location"] == "/accounts/password_reset/done/"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["walker@example.com"]
    assert user.username in mail.outbox[0].body and other.username not in mail.outbox[0].body
    link = LINK.search(mail.outbox[0].body)
    assert link, mail.outbox[0].body

    # Django swaps the token in the link for one kept in the session, off the address bar.
    response = client.get(link[1])
    assert response.status_code == 302 and response["Location"].endswith("/set-password/")
    assert "Choose a new password" in client.get(response["Location"]).content.decode()
    response = client.post(
        response["Location"], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert response.status_code == 302 and response["Location"] == "/accounts/reset/done/"
    assert "Password set" in client.get(response["Location"]).content.decode()
    assert can_sign_in(user.username, NEW_PASSWORD)
    assert not can_sign_in(user.username, PASSWORD)
    assert can_sign_in(other.username, PASSWORD)

    # The link worked once.
    again = Client().get(link[1], follow=True).content.decode()
    assert "This link no longer works" in again


def test_reset_mail_is_left_to_a_worker_and_the_request_answers_at_once(
    django_capture_on_commit_callbacks, celery_eager
) -> None:
    from config.celery import app

    user = UserFactory(email="patient@example.com")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = Client().post("/accounts/password_reset/", {"email": "patient@example.com"})
    assert response.status_code == 302
    assert mail.outbox == []  # nothing sent during the request
    assert len(queued) == 1  # the task is sent once the request's transaction commits
    # What the worker runs: the task, with only ids and addresses (no reset token) to carry.
    sent: list[dict] = []
    task = app.tasks["gallery.tasks.password_reset_mail_send_task"]
    real = task.apply_async
    task.apply_async = lambda *a, **k: sent.append(k["kwargs"]) or real(*a, **k)
    try:
        queued[0]()
    finally:
        del task.apply_async
    assert sent == [
        {"mail": {"user_id": user.pk, "email": "patient@example.com", "domain": "testserver",
                  "site_name": "testserver", "use_https": False}}
    ]  # fmt: skip
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["patient@example.com"]
    link = LINK.search(mail.outbox[0].body)
    assert link and Client().get(link[1]).status_code == 302  # a valid token


def test_a_queued_reset_mail_is_not_sent_to_an_address_changed_meanwhile() -> None:
    from gallery.services.accounts import PasswordResetMail, user_password_reset_mail_send

    user = UserFactory(email="old@example.com")
    queued = PasswordResetMail(user.pk, "old@example.com", "testserver", "testserver", False)
    user.email = "new@example.com"
    user.save()
    assert user_password_reset_mail_send(mail=queued) is False
    assert mail.outbox == []


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_away_the_reset_mail_is_sent_in_the_request(monkeypatch) -> None:
    from kombu.exceptions import OperationalError

    from gallery.tasks import password_reset_mail_send_task

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis")

    monkeypatch.setattr(password_reset_mail_send_task, "apply_async", broker_down)
    UserFactory(email="hurried@example.com")
    response = Client().post("/accounts/password_reset/", {"email": "hurried@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["hurried@example.com"]


@pytest.mark.django_db(transaction=True)
def test_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(celery_eager) -> None:
    UserFactory(email="known@example.com")
    known = Client().post("/accounts/password_reset/", {"email": "known@example.com"})
    assert len(mail.outbox) == 1
    mail.outbox.clear()
    unknown_client = Client()
    unknown = unknown_client.post("/accounts/password_reset/", {"email": "nobody@example.com"})
    assert mail.outbox == []
    assert (unknown.status_code, unknown["Location"]) == (known.status_code, known["Location"])
    done = unknown_client.get(unknown["Location"]).content.decode()
    assert "If an account has that e-mail address" in done


@pytest.mark.django_db(transaction=True)
def test_reset_with_the_mail_server_down_still_tells_nothing(
    celery_eager, settings, caplog
) -> None:
    # A real SMTP connection to a closed port: refused at once.
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", 9, False
    user = UserFactory(email="unlucky@example.com")
    known = Client().post("/accounts/password_reset/", {"email": "unlucky@example.com"})
    unknown = Client().post("/accounts/password_reset/", {"email": "nobody@example.com"})
    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])
    assert known.status_code == 302
    assert f"Failed to send password reset email to {user.pk}" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_reset_mail_is_limited_per_client_and_per_address(celery_eager, settings) -> None:
    settings.RATELIMIT_PASSWORD_RESET = "2/h"
    UserFactory(email="target@example.com")
    client = Client(REMOTE_ADDR="203.0.113.20")
    for _ in range(2):
        response = client.post("/accounts/password_reset/", {"email": "target@example.com"})
        assert response.status_code == 302
    assert client.post("/accounts/password_reset/", {"email": "x@example.com"}).status_code == 429
    assert client.get("/accounts/password_reset/").status_code == 200  # only POSTs count
    # The same address from elsewhere is limited too (in any case); another address is not.
    elsewhere = Client(REMOTE_ADDR="198.51.100.20")
    response = elsewhere.post("/accounts/password_reset/", {"email": "Target@example.com"})
    assert response.status_code == 429
    assert (
        elsewhere.post("/accounts/password_reset/", {"email": "y@example.com"}).status_code == 302
    )
    assert len(mail.outbox) == 2


def base_settings(monkeypatch, settings, **env: str) -> dict:
    for name in ("EMAIL_HOST", "EMAIL_PORT", "EMAIL_USE_TLS", "EMAIL_USE_SSL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(settings.BASE_DIR / "config" / "settings" / "base.py"))


def test_mail_is_printed_unless_an_smtp_server_is_set(monkeypatch, settings) -> None:
    values = base_settings(monkeypatch, settings)
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"
    values = base_settings(
        monkeypatch,
        settings,
        EMAIL_HOST="smtp.example.org",
        EMAIL_PORT="465",
        EMAIL_USE_SSL="true",
        EMAIL_HOST_USER="site",
        EMAIL_HOST_PASSWORD="secret",
        DEFAULT_FROM_EMAIL="Images <images@example.org>",
    )
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert (values["EMAIL_HOST"], values["EMAIL_PORT"]) == ("smtp.example.org", 465)
    assert (values["EMAIL_USE_SSL"], values["EMAIL_USE_TLS"]) == (True, False)
    assert (values["EMAIL_HOST_USER"], values["EMAIL_HOST_PASSWORD"]) == ("site", "secret")
    assert values["DEFAULT_FROM_EMAIL"] == "Images <images@example.org>"
    values = base_settings(monkeypatch, settings, EMAIL_HOST="smtp.example.org")
    assert (values["EMAIL_PORT"], values["EMAIL_USE_TLS"]) == (587, True)


# --- Over real HTTP ------------------------------------------------------------------------


def test_password_reset_over_http_with_the_csrf_check(
    celery_eager, live_server, transactional_db
) -> None:
    user = UserFactory(email="remote@example.com")
    browser = HttpSession(live_server.url)

    # Without the token the form is refused, so the check is really on.
    status, _, _ = browser.open("/accounts/password_reset/", {"email": "remote@example.com"})
    assert status == 403 and mail.outbox == []

    status, path, body = browser.post_form("/accounts/password_reset/", {"email": user.email})
    assert (status, path) == (200, "/accounts/password_reset/done/")
    assert len(mail.outbox) == 1
    link = LINK.search(mail.outbox[0].body)
    assert link and link[0].startswith(live_server.url), mail.outbox[0].body

    status, path, body = browser.open(link[1])
    assert status == 200 and path.endswith("/set-password/") and "Choose a new password" in body
    status, path, body = browser.post_form(
        path, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert (status, path) == (200, "/accounts/reset/done/")

    fresh = HttpSession(live_server.url)
    status, path, _ = fresh.post_form(
        "/accounts/login/", {"username": user.username, "password": PASSWORD}
    )
    assert (status, path) == (200, "/accounts/login/")  # the form again
    status, path, _ = fresh.post_form(
        "/accounts/login/", {"username": user.username, "password": NEW_PASSWORD}
    )
    assert (status, path) == (200, "/")
    status, _, body = fresh.open("/accounts/")
    assert status == 200 and "remote@example.com" in body


def test_forgotten_password_in_the_browser(
    celery_eager, live_server, transactional_db, page: Page
) -> None:
    """From the login page's link to the account page, as a person does it."""
    user = UserFactory(username="forgetful", email="forgetful@example.com")
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill("Forgetful@example.com")
    page.get_by_role("button", name="Send the link").click()
    expect(page.locator("h1")).to_have_text("Check your e-mail")
    link = LINK.search(mail.outbox[0].body)
    assert link and mail.outbox[0].to == ["forgetful@example.com"]

    page.goto(live_server.url + link[1])
    page.fill("#id_new_password1", NEW_PASSWORD)
    page.get_by_label("New password confirmation").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set password").click()
    page.get_by_role("link", name="Log in").last.click()
    page.fill("#id_username", user.username)
    page.fill("#id_password", NEW_PASSWORD)
    page.click("main button[type=submit]")
    page.locator("details.menu summary").click()
    page.get_by_role("link", name="Account").click()
    expect(page.locator("main")).to_contain_text("Signed in as forgetful")
    expect(page.get_by_role("textbox", name="E-mail address")).to_have_value(
        "forgetful@example.com"
    )

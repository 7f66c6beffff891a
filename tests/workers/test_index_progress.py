"""The embedding models page follows an online index build without a reload: a staff-only JSON
endpoint gives pg_stat_progress_create_index's phase and counts, and admin_index_progress.js
polls it while a build runs; without script the column shows where the build was, with a
Reload link.

Real builds, held in their last wait phase by an open snapshot (test_index_build's
``build_held``), so the progress read is a running build's."""

from __future__ import annotations

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Page, expect

from tests.config.test_csp import watch_violations
from tests.factories import PASSWORD, UserFactory
from tests.workers.test_index_build import (  # noqa: F401  # indexes_restored: autouse fixture
    CLIP,
    PARTITION,
    build_held,
    embeddings_add,
    index_valid,
    indexes_restored,
)
from workers.indexes import hnsw_index_name
from workers.models import EmbeddingModel

pytestmark = pytest.mark.django_db(transaction=True)
PROGRESS = reverse("admin:workers_embeddingmodel_index_progress")
CHANGELIST = reverse("admin:workers_embeddingmodel_changelist")


def staff_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def clip_entry(client: Client) -> tuple[dict, dict]:
    response = client.get(PROGRESS)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    (entry,) = [model for model in body["models"] if model["model_id"] == CLIP]
    return body, entry


def progress_row(watch: psycopg.Connection) -> tuple:
    row = watch.execute(
        "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
        "FROM pg_stat_progress_create_index WHERE relid = %s::regclass",
        [PARTITION],
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_endpoint_gives_a_running_builds_progress_then_ready() -> None:
    EmbeddingModel.objects.get_or_create(model_id=CLIP)
    embeddings_add(200)
    staff = staff_client()
    with build_held(rebuild=True) as (watch, _pid, builder, outcome):
        body, entry = clip_entry(staff)
        phase, blocks_done, blocks_total, tuples_done, tuples_total = progress_row(watch)
        assert body["building"] is True
        assert entry["status"] == "building" and entry["phase"] == phase
        assert phase == "waiting for old snapshots"
        assert (entry["blocks_done"], entry["blocks_total"]) == (blocks_done, blocks_total)
        assert (entry["tuples_done"], entry["tuples_total"]) == (tuples_done, tuples_total)
        expected = (
            100 * tuples_done / tuples_total
            if tuples_total
            else 100 * blocks_done / blocks_total
            if blocks_total
            else None
        )
        assert entry["percent"] == expected
        assert entry["text"].startswith("building: waiting for old snapshots")
        # The page as served: the same words, where the script finds them, a Reload link for
        # browsers without script, and the script itself (a file: the CSP allows no inline).
        html = staff.get(CHANGELIST).content.decode()
        assert f'data-index-model="{CLIP}" data-index-status="building"' in html
        assert f'data-index-progress-url="{PROGRESS}"' in html
        assert 'class="index-reload" href="">Reload</a>' in html
        assert "/static/admin_index_progress.js" in html
    builder.join(timeout=180)
    assert not isinstance(outcome[0], Exception), outcome
    body, entry = clip_entry(staff)
    assert body["building"] is False
    assert entry["status"] == "ready" and entry["text"] == "ready"
    assert entry["phase"] is None and entry["percent"] is None
    assert "index-reload" not in staff.get(CHANGELIST).content.decode()


def test_only_staff_who_may_view_models_get_the_progress() -> None:
    EmbeddingModel.objects.get_or_create(model_id=CLIP)
    anonymous = Client().get(PROGRESS)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    person = Client()
    person.force_login(UserFactory())
    signed_in = person.get(PROGRESS)
    assert signed_in.status_code == 302 and "/admin/login/" in signed_in["Location"]
    # Staff, but without the view permission on embedding models.
    clerk = Client()
    clerk.force_login(UserFactory(is_staff=True))
    refused = clerk.get(PROGRESS)
    assert refused.status_code == 403
    for response in (anonymous, signed_in, refused):
        assert CLIP.encode() not in response.content and b"building" not in response.content
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_embeddingmodel"))
    allowed = Client()
    allowed.force_login(viewer)
    assert allowed.get(PROGRESS).json()["models"][0]["model_id"] == CLIP


def test_the_models_page_follows_a_build_without_a_reload(live_server, page: Page) -> None:
    """Chromium on the models page while a build is held: the column shows the build's phase;
    let go, the build swaps its index in, and the column turns to "ready" in the same page
    (the polling, not a reload: a mark set on the page survives), under the site's CSP."""
    EmbeddingModel.objects.get_or_create(model_id=CLIP)
    embeddings_add(200)
    violations = watch_violations(page)
    staff = UserFactory(is_staff=True, is_superuser=True)
    page.goto(f"{live_server.url}/admin/login/?next={CHANGELIST}")
    page.fill("#id_username", staff.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{CHANGELIST}")
    state = page.locator(f'[data-index-model="{CLIP}"]')
    expect(state).to_have_text("ready")

    with build_held(rebuild=True) as (_watch, _pid, builder, outcome):
        page.reload()
        expect(state).to_contain_text("building: waiting for old snapshots")
        expect(page.locator(".index-reload")).to_have_count(1)
        page.evaluate("window.servedOnce = true")
        # Two polls at least: the column is rewritten from the endpoint while the build runs.
        with page.expect_response(lambda r: r.url.endswith(PROGRESS)) as first:
            pass
        assert first.value.json()["building"] is True
        expect(state).to_have_attribute("data-index-status", "building")
    builder.join(timeout=180)
    assert not isinstance(outcome[0], Exception), outcome
    assert index_valid(hnsw_index_name(CLIP)) is True

    expect(state).to_have_text("ready", timeout=30_000)
    expect(state).to_have_attribute("data-index-status", "ready")
    expect(page.locator(".index-reload")).to_have_count(0)
    assert page.evaluate("window.servedOnce") is True  # the same page, never reloaded
    assert violations == [], "\n".join(violations)

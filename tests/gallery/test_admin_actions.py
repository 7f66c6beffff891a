"""The admin's image list: filters (source, visibility, owner, embedding status per model) and the
bulk actions (re-embed, retry failed, make public/private, delete), through the admin as staff,
with selections bigger than one batch, and one flow in Chromium against a live server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from playwright.sync_api import Page, expect

from gallery.models import Caption, CollectionItem, Image
from gallery.services import images as image_services
from gallery.services.images import image_thumbnail_name
from gallery.storage import thumbnail_storage
from kernel.errors import InvalidInput
from tests.factories import (
    PASSWORD,
    CaptionFactory,
    CollectionItemFactory,
    ImageFactory,
    UserFactory,
)
from workers import pipeline, queueing
from workers import services as index_services
from workers.models import EmbeddingJob, ImageEmbedding
from workers.selectors import images_with_embedding_status
from workers.services import embedding_model_enable, embeddings_store

CLIP, ALIGN = "clip-vit-base-patch32", "align-base"
DIM = {CLIP: 512, ALIGN: 640}
CHANGELIST = reverse("admin:gallery_image_changelist")


@pytest.fixture
def admin(client: Client) -> Client:
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def small_batches(monkeypatch) -> None:
    """Two images per chunk, so every selection below spans several chunks."""
    monkeypatch.setattr(image_services, "STAFF_BATCH_SIZE", 2)


def embed(model_id: str, *images: Image) -> None:
    vectors = np.ones((len(images), DIM[model_id]), dtype=np.float32)
    embeddings_store(model_id=model_id, image_ids=[i.pk for i in images], vectors=vectors)


def job(image: Image, model_id: str, status: str, **fields) -> EmbeddingJob:
    return EmbeddingJob.objects.create(image=image, model_id=model_id, status=status, **fields)


def listed(client: Client, **params: str) -> set[int]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200, response
    return {image.pk for image in response.context["cl"].queryset}


def act(client: Client, action: str, images=(), query: str = "", across=False, **data):
    """POST an action the way the list page does (ticked rows, or "select all")."""
    post = {
        "action": action,
        "_selected_action": [i.pk for i in images],
        "select_across": "1" if across else "0",
        **data,
    }
    if "post" not in data and "apply" not in data:
        post["index"] = "0"  # the action bar's Go button
    return client.post(CHANGELIST + query, post, follow=True)


def text_of(response) -> str:
    return " ".join(str(m) for m in response.context["messages"])


# --- Filters ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_filters_by_source_visibility_and_owner(admin: Client) -> None:
    alice, bob = UserFactory(), UserFactory()
    dataset = ImageFactory(dataset=True)
    alice_private = ImageFactory(owner=alice)
    alice_public = ImageFactory(owner=alice, visibility="public")
    bob_private = ImageFactory(owner=bob)

    assert listed(admin, source="upload") == {alice_private.pk, alice_public.pk, bob_private.pk}
    assert listed(admin, source="flickr30k") == {dataset.pk}
    assert listed(admin, visibility="public") == {dataset.pk, alice_public.pk}
    assert listed(admin, owner=str(alice.pk)) == {alice_private.pk, alice_public.pk}
    assert listed(admin, owner="none") == {dataset.pk}
    assert listed(admin, owner=str(bob.pk), visibility="private") == {bob_private.pk}
    # The owner filter names the chosen owner only, never a list of every user.
    response = admin.get(CHANGELIST, {"owner": str(alice.pk)})
    owner_filter = next(f for f in response.context["cl"].filter_specs if f.title == "owner")
    assert owner_filter.lookup_choices == [
        ("none", "No owner (data set)"),
        (str(alice.pk), alice.username),
    ]
    # Each row's owner links to that filter.
    page = admin.get(CHANGELIST).content.decode()
    assert f'href="{CHANGELIST}?owner={bob.pk}"' in page
    # A malformed owner is the admin's "bad filter" answer, not an error page.
    assert admin.get(CHANGELIST, {"owner": "bob"})["Location"].endswith("?e=1")


@pytest.fixture
def statuses() -> dict[str, Image]:
    """One image per embedding status for CLIP, and other states for ALIGN."""
    embedding_model_enable(model_id=ALIGN)
    images = {name: ImageFactory(dataset=True) for name in
              ("done", "pending", "failed", "missing", "blocked", "again")}  # fmt: skip
    embed(CLIP, images["done"], images["again"])
    job(images["pending"], CLIP, "pending")
    job(images["blocked"], CLIP, "pending", error="weights missing")
    job(images["failed"], CLIP, "failed", error="cannot identify image file")
    # A done image asked to be embedded again: done (it keeps its vector) and pending.
    EmbeddingJob.objects.filter(image=images["again"], model_id=CLIP).update(status="pending")
    embed(ALIGN, images["failed"])
    job(images["done"], ALIGN, "failed", error="truncated")
    return images


@pytest.mark.django_db
def test_embedding_status_filter_per_model(admin: Client, statuses) -> None:
    ids = {name: image.pk for name, image in statuses.items()}
    expected = {
        # Being re-embedded is not done yet (it keeps its older vector meanwhile).
        f"{CLIP}:done": {ids["done"]},
        f"{CLIP}:pending": {ids["pending"], ids["blocked"], ids["again"]},
        f"{CLIP}:failed": {ids["failed"]},
        f"{CLIP}:missing": {ids["missing"]},
        f"{ALIGN}:done": {ids["failed"]},
        f"{ALIGN}:failed": {ids["done"]},
        f"{ALIGN}:pending": set(),
        f"{ALIGN}:missing": set(ids.values()) - {ids["failed"], ids["done"]},
    }
    for value, images in expected.items():
        assert listed(admin, embedding=value) == images, value
    assert listed(admin, embedding=f"{CLIP}:failed", source="upload") == set()
    # Every enabled model's four statuses are offered.
    response = admin.get(CHANGELIST)
    spec = next(f for f in response.context["cl"].filter_specs if f.title == "embedding status")
    assert {value for value, _ in spec.lookup_choices} >= set(expected)
    assert admin.get(CHANGELIST, {"embedding": f"{CLIP}:lost"})["Location"].endswith("?e=1")


@pytest.mark.django_db
def test_the_status_filter_is_one_query_of_exists_subqueries(statuses) -> None:
    images = images_with_embedding_status(
        images=Image.objects.all(), model_id=CLIP, status="missing"
    )
    with CaptureQueriesContext(connection) as queries:
        assert [i.pk for i in images] == [statuses["missing"].pk]
    assert len(queries) == 1
    assert queries[0]["sql"].count("EXISTS") == 2


# --- Re-embed -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_reembed_asks_for_a_model_then_queues_jobs_for_that_model_only(
    admin: Client, tiny_models, django_capture_on_commit_callbacks
) -> None:
    embedding_model_enable(model_id=ALIGN)
    embedded = ImageFactory(dataset=True)
    failed = ImageFactory(dataset=True)
    unseen = ImageFactory(dataset=True)
    other = ImageFactory(dataset=True)
    embed(CLIP, embedded, other)
    embed(ALIGN, embedded, failed, unseen, other)
    job(failed, CLIP, "failed", error="cannot identify image file", attempts=3)
    chosen = [embedded, failed, unseen]

    page = act(admin, "reembed", chosen)
    content = page.content.decode()
    assert "3 images selected" in content
    assert f'<option value="{ALIGN}">' in content and f'<option value="{CLIP}">' in content
    assert EmbeddingJob.objects.filter(status="pending").count() == 0  # nothing queued yet

    with django_capture_on_commit_callbacks() as sweeps:
        response = act(admin, "reembed", chosen, model_id=CLIP, post="yes", apply="1")
    assert f"Re-embedding with {CLIP}: 3 of 3 images queued" in text_of(response)
    assert len(sweeps) == 1  # the sweep for CLIP, sent once the action commits
    jobs = {j.image_id: j for j in EmbeddingJob.objects.filter(model_id=CLIP)}
    assert {i.pk for i in chosen} <= set(jobs)
    for image in chosen:
        assert (jobs[image.pk].status, jobs[image.pk].attempts) == ("pending", 0)
        assert jobs[image.pk].enqueued_at is None and jobs[image.pk].error == ""
    assert jobs[other.pk].status == "done"
    assert set(EmbeddingJob.objects.filter(model_id=ALIGN).values_list("status", flat=True)) == {
        "done"
    }
    # The old vector stays in search until the new one replaces it.
    assert ImageEmbedding.objects.filter(model_id=CLIP, image=embedded).exists()

    # Twice: no new jobs, nothing reset, no second sweep.
    job_count = EmbeddingJob.objects.count()
    with django_capture_on_commit_callbacks() as sweeps:
        response = act(admin, "reembed", chosen, model_id=CLIP, post="yes", apply="1")
    assert "0 of 3 images queued; 3 were already waiting" in text_of(response)
    assert not sweeps and EmbeddingJob.objects.count() == job_count

    # The sweep queues each of them once; the worker replaces the vector and marks it done.
    with django_capture_on_commit_callbacks():
        assert queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=10) == 1
        assert queueing.embeddings_enqueue_missing(model_id=CLIP, batch_size=10) == 0
    result = pipeline.images_embed_batch(model_id=CLIP, image_ids=[i.pk for i in chosen])
    assert (result.embedded, result.skipped) == (3, 0)
    vector = np.asarray(ImageEmbedding.objects.get(model_id=CLIP, image=embedded).vector)
    assert not np.allclose(vector, np.ones(512) / np.sqrt(512))
    assert set(EmbeddingJob.objects.filter(model_id=CLIP).values_list("status", flat=True)) == {
        "done"
    }
    assert ImageEmbedding.objects.filter(model_id=CLIP).count() == 4


@pytest.mark.django_db
def test_reembed_refuses_a_model_that_is_not_enabled(admin: Client) -> None:
    image = ImageFactory(dataset=True)
    response = act(admin, "reembed", [image], model_id=ALIGN, post="yes", apply="1")
    assert "Select a valid choice" in response.content.decode()
    assert not EmbeddingJob.objects.exists()
    with pytest.raises(InvalidInput, match="not an enabled model"):
        index_services.images_reembed(images=Image.objects.all(), model_id=ALIGN)


# --- Retry failed ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_failed_resets_only_the_failed_jobs_of_the_selection(
    admin: Client, statuses, django_capture_on_commit_callbacks
) -> None:
    queued = statuses["pending"]
    EmbeddingJob.objects.filter(image=queued).update(enqueued_at="2026-01-01T00:00Z", attempts=1)
    unselected = ImageFactory(dataset=True)
    job(unselected, CLIP, "failed", error="truncated")
    chosen = [statuses[name] for name in ("failed", "done", "pending", "missing")]

    with django_capture_on_commit_callbacks() as sweeps:
        response = act(admin, "retry_failed", chosen)
    assert f"{ALIGN}: 1, {CLIP}: 1" in text_of(response)
    assert len(sweeps) == 2  # one sweep per model with retried jobs
    clip_failed = EmbeddingJob.objects.get(image=statuses["failed"], model_id=CLIP)
    align_failed = EmbeddingJob.objects.get(image=statuses["done"], model_id=ALIGN)
    for retried in (clip_failed, align_failed):
        assert (retried.status, retried.error, retried.attempts) == ("pending", "", 0)
        assert retried.enqueued_at is None
    untouched = EmbeddingJob.objects.get(image=queued)
    assert (untouched.status, untouched.attempts) == ("pending", 1)
    assert untouched.enqueued_at is not None
    assert EmbeddingJob.objects.get(image=statuses["done"], model_id=CLIP).status == "done"
    assert EmbeddingJob.objects.get(image=unselected).status == "failed"

    again = act(admin, "retry_failed", chosen)
    assert "None of the selected images has a failed embedding" in text_of(again)


# --- Visibility ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_make_private_and_public_skip_dataset_images_and_say_so(admin: Client) -> None:
    public_upload = ImageFactory(visibility="public")
    private_upload = ImageFactory(owner=UserFactory())
    dataset = ImageFactory(dataset=True)
    chosen = [public_upload, private_upload, dataset]

    response = act(admin, "make_private", chosen)
    messages = text_of(response)
    assert "1 upload made private; 1 already were." in messages
    assert "Skipped 1 Flickr30k data-set image: data-set images always stay public." in messages
    visibility = dict(Image.objects.values_list("pk", "visibility"))
    assert visibility == {public_upload.pk: "private", private_upload.pk: "private",
                          dataset.pk: "public"}  # fmt: skip

    response = act(admin, "make_public", chosen)
    assert "2 uploads made public." in text_of(response)
    assert "Skipped 1 Flickr30k" in text_of(response)
    assert set(Image.objects.values_list("visibility", flat=True)) == {"public"}


# --- Delete -------------------------------------------------------------------------------


def stored_paths(image: Image) -> list[Path]:
    thumbs = [
        Path(thumbnail_storage().path(image_thumbnail_name(image=image, size=size)))
        for size in image_services.THUMBNAIL_SIZES
    ]
    return [Path(image.file.path), *thumbs]


@pytest.mark.django_db
def test_delete_confirms_then_removes_files_thumbnails_embeddings_and_collection_items(
    admin: Client, django_capture_on_commit_callbacks
) -> None:
    doomed = [ImageFactory(), ImageFactory(dataset=True)]
    kept = ImageFactory()
    for image in [*doomed, kept]:
        CaptionFactory(image=image)
        CollectionItemFactory(image=image)
        job(image, ALIGN, "failed", error="x")
    embed(CLIP, *doomed, kept)
    files = [path for image in doomed for path in stored_paths(image)]
    kept_files = stored_paths(kept)
    assert all(path.exists() for path in files + kept_files)
    ids = [i.pk for i in doomed]

    page = act(admin, "delete_images", doomed)
    assert "2 images selected" in page.content.decode()
    assert "1 upload, 1 Flickr30k data-set image" in page.content.decode()
    assert Image.objects.filter(pk__in=ids).count() == 2  # nothing deleted before the "yes"

    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin, "delete_images", doomed, post="yes", apply="1")
    assert "Deleted 2 images" in text_of(response)
    assert not Image.objects.filter(pk__in=ids).exists()
    for rows in (Caption, CollectionItem, ImageEmbedding, EmbeddingJob):
        assert not rows.objects.filter(image_id__in=ids).exists(), rows
        assert rows.objects.filter(image=kept).exists(), rows
    assert not any(path.exists() for path in files)
    assert all(path.exists() for path in kept_files)


@pytest.mark.django_db
def test_the_delete_button_of_one_image_removes_its_file(
    admin: Client, django_capture_on_commit_callbacks
) -> None:
    image = ImageFactory()
    paths = stored_paths(image)
    url = reverse("admin:gallery_image_delete", args=[image.pk])
    with django_capture_on_commit_callbacks(execute=True):
        assert admin.post(url, {"post": "yes"}).status_code == 302
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not any(path.exists() for path in paths)


# --- Batches ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_select_all_across_pages_works_through_several_batches(
    admin: Client, small_batches, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    """Five images in chunks of two. Actions that change what the filter matches (making the
    public ones private, deleting) must still reach every row."""
    public = [ImageFactory(visibility="public") for _ in range(5)]
    private = ImageFactory()
    dataset = ImageFactory(dataset=True)
    on_page = public[:1]  # the page's ticked box; "select all" reaches the rest

    response = act(admin, "make_private", on_page, "?visibility=public", across=True)
    assert "5 uploads made private." in text_of(response)
    assert "Skipped 1 Flickr30k" in text_of(response)  # the data-set image is public too
    assert set(Image.objects.values_list("visibility", flat=True).exclude(pk=dataset.pk)) == {
        "private"
    }

    chunks: list[int] = []
    request = index_services.embedding_jobs_request

    def spy(**kwargs):
        chunks.append(len(kwargs["image_ids"]))
        return request(**kwargs)

    monkeypatch.setattr(index_services, "embedding_jobs_request", spy)
    with django_capture_on_commit_callbacks():
        response = act(admin, "reembed", on_page, "?source=upload", across=True, model_id=CLIP,
                       post="yes", apply="1")  # fmt: skip
    assert "6 of 6 images queued" in text_of(response)
    assert chunks == [2, 2, 2]
    EmbeddingJob.objects.filter(model_id=CLIP).update(status="failed")
    with django_capture_on_commit_callbacks():
        response = act(admin, "retry_failed", on_page, "?source=upload", across=True)
    assert f"{CLIP}: 6" in text_of(response)

    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin, "delete_images", on_page, "?source=upload", across=True,
                       post="yes", apply="1")  # fmt: skip
    assert "Deleted 6 images" in text_of(response)
    assert list(Image.objects.values_list("pk", flat=True)) == [dataset.pk]
    assert not Path(private.file.path).exists()


# --- Who may act --------------------------------------------------------------------------


@pytest.mark.django_db
def test_non_staff_get_no_admin_and_change_nothing(client: Client) -> None:
    image = ImageFactory(visibility="public")
    for user in (None, UserFactory()):
        if user is not None:
            client.force_login(user)
        assert client.get(CHANGELIST).status_code == 302
        response = act(client, "delete_images", [image], post="yes", apply="1")
        assert response.redirect_chain[-1][0].startswith(reverse("admin:login"))
        act(client, "make_private", [image])
    image.refresh_from_db()
    assert image.visibility == "public"


@pytest.mark.django_db
def test_staff_without_delete_permission_cannot_delete(client: Client) -> None:
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_image", "change_image"])
    )
    client.force_login(staff)
    image = ImageFactory()
    page = client.get(CHANGELIST).content.decode()
    assert 'value="make_private"' in page and 'value="delete_images"' not in page
    act(client, "delete_images", [image], post="yes", apply="1")
    assert Image.objects.filter(pk=image.pk).exists()


# --- Over real HTTP -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_staff_select_rows_and_delete_them_in_the_browser(live_server, page: Page) -> None:
    staff = UserFactory(is_staff=True, is_superuser=True)
    doomed = [ImageFactory(original_filename="a.jpg"), ImageFactory(original_filename="b.jpg")]
    kept = ImageFactory(original_filename="c.jpg", visibility="public")
    CollectionItemFactory(image=doomed[0])
    files = [path for image in doomed for path in stored_paths(image)]

    page.goto(f"{live_server.url}/admin/login/?next={CHANGELIST}")
    page.fill("#id_username", staff.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    for image in doomed:
        page.check(f"input[name=_selected_action][value='{image.pk}']")
    page.select_option("select[name=action]", "delete_images")
    page.click("button[name=index]")
    expect(page.locator("#action-summary")).to_contain_text("2 images selected")
    page.click("input[name=apply]")
    expect(page.locator(".messagelist")).to_contain_text("Deleted 2 images")
    assert list(Image.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not CollectionItem.objects.exists()
    assert not any(path.exists() for path in files)

    page.check(f"input[name=_selected_action][value='{kept.pk}']")
    page.select_option("select[name=action]", "make_private")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("1 upload made private")
    kept.refresh_from_db()
    assert kept.visibility == "private"

"""The image page and the owner's controls: visibility and delete, never for anyone else;
browse, upload answers for the page's script, the save picker and the collection warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery.models import CollectionItem, Image
from gallery.services.images import THUMBNAIL_SIZES, image_thumbnail_name
from gallery.storage import thumbnail_storage
from tests.clients import signed_in
from tests.factories import (
    CollectionFactory,
    CollectionItemFactory,
    ImageFactory,
    UserFactory,
    jpeg_bytes,
)
from workers.models import ImageEmbedding
from workers.services import embeddings_store

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
HX = {"HTTP_HX_REQUEST": "true"}


def test_image_page_shows_details_and_owner_controls_to_the_owner_only() -> None:
    owner, stranger = UserFactory(), UserFactory()
    private = ImageFactory(owner=owner, original_filename="diary.jpg")
    private.captions.create(text="a page of my diary", position=0)
    public = ImageFactory(owner=owner, visibility=Image.Visibility.PUBLIC)
    url = reverse("image", args=[private.pk])

    page = signed_in(owner).get(url).content.decode()
    assert "a page of my diary" in page and "64 × 48 px" in page
    assert reverse("image-delete", args=[private.pk]) in page
    assert reverse("image-visibility", args=[private.pk]) in page
    # Someone else's private image does not exist for them; nor for the signed-out.
    assert signed_in(stranger).get(url).status_code == 404
    assert Client().get(url).status_code == 404
    # A public one they see, without the owner's controls.
    other = signed_in(stranger).get(reverse("image", args=[public.pk])).content.decode()
    assert reverse("image-delete", args=[public.pk]) not in other
    assert reverse("image-visibility", args=[public.pk]) not in other


def test_owner_changes_visibility_and_nobody_else_can() -> None:
    owner, stranger = UserFactory(), UserFactory()
    image = ImageFactory(owner=owner)
    url = reverse("image-visibility", args=[image.pk])

    swapped = signed_in(owner).post(url, {"visibility": "public"}, **HX)
    assert swapped.status_code == 200 and "now public" in swapped.content.decode()
    image.refresh_from_db()
    assert image.visibility == "public"
    assert Client().get(reverse("image-file", args=[image.pk])).status_code == 200

    # A stranger cannot change it even though they can see it now, nor a data-set image.
    assert signed_in(stranger).post(url, {"visibility": "private"}).status_code == 404
    photo = ImageFactory(dataset=True)
    dataset_url = reverse("image-visibility", args=[photo.pk])
    assert signed_in(stranger).post(dataset_url, {"visibility": "private"}).status_code == 404
    assert Client().post(url, {"visibility": "private"}).status_code == 302  # sign in first
    assert signed_in(owner).post(url, {"visibility": "bogus"}).status_code == 302
    image.refresh_from_db()
    photo.refresh_from_db()
    assert (image.visibility, photo.visibility) == ("public", "public")


def test_owner_deletes_an_image_with_its_files_embeddings_and_collection_items(
    django_capture_on_commit_callbacks,
) -> None:
    owner, stranger = UserFactory(), UserFactory()
    image = ImageFactory(owner=owner, visibility=Image.Visibility.PUBLIC)
    keep = ImageFactory(owner=owner)
    embeddings_store(model_id=CLIP, image_ids=[image.pk, keep.pk], vectors=np.eye(2, 512))
    CollectionItemFactory(collection=CollectionFactory(owner=owner), image=image)
    thumbs = [
        Path(thumbnail_storage().path(image_thumbnail_name(image=image, size=size)))
        for size in THUMBNAIL_SIZES
    ]
    file_path = Path(settings.MEDIA_ROOT) / image.file.name
    assert file_path.exists() and all(t.exists() for t in thumbs)
    url = reverse("image-delete", args=[image.pk])

    # Not someone else's, not signed out: nothing changes.
    assert signed_in(stranger).post(url).status_code == 404
    assert Client().post(url).status_code == 302
    assert Image.objects.filter(pk=image.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = signed_in(owner).post(url, **HX)
    assert response.status_code == 204 and response["HX-Redirect"].startswith("/")
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not ImageEmbedding.objects.filter(image_id=image.pk).exists()
    assert not CollectionItem.objects.filter(image_id=image.pk).exists()
    assert not file_path.exists() and not any(t.exists() for t in thumbs)
    assert signed_in(owner).get(reverse("image-file", args=[image.pk])).status_code == 404
    assert Image.objects.filter(pk=keep.pk).exists()
    assert ImageEmbedding.objects.filter(image_id=keep.pk).exists()


def test_upload_answers_the_pages_script_in_json_and_names_duplicates() -> None:
    owner = UserFactory()
    client = signed_in(owner)
    content = jpeg_bytes(size=(40, 30))

    def send(name: str, data: bytes) -> dict:
        response = client.post(
            reverse("upload"),
            {"file": SimpleUploadedFile(name, data), "visibility": "private"},
            HTTP_ACCEPT="application/json",
        )
        return {"status": response.status_code, **response.json()}

    first = send("dog.jpg", content)
    assert first["status"] == 201 and first["duplicate"] is False
    assert first["url"] == reverse("image", args=[first["id"]])
    status = client.get(first["status_url"]).json()
    assert status["state"] in {"pending", "ready", "blocked"} and status["label"]

    again = send("dog-copy.jpg", content)
    assert again["status"] == 200 and again["duplicate"] is True and again["id"] == first["id"]
    assert "already in your library" in again["message"]
    bad = send("notes.jpg", b"not a picture")
    assert bad["status"] == 400 and "not an image we can read" in bad["error"]
    # Without the script: the same message on the next page.
    page = client.post(
        reverse("upload"),
        {"file": SimpleUploadedFile("dog.jpg", content), "visibility": "private"},
        follow=True,
    )
    assert "dog.jpg is already in your library." in page.content.decode()
    # Another person's status is not theirs to read.
    assert signed_in(UserFactory()).get(first["status_url"]).status_code == 404


def test_browse_filters_and_pages() -> None:
    owner = UserFactory()
    mine = ImageFactory(owner=owner, original_filename="mine.jpg")
    ImageFactory(original_filename="someone-elses.jpg")
    ImageFactory.create_batch(61, dataset=True)
    client = signed_in(owner)

    everything = client.get("/").content.decode()
    assert everything.count('class="result card"') == 60 and "page=2" in everything
    assert "someone-elses.jpg" not in everything
    older = client.get("/", {"page": 2}, **HX)
    assert older.content.decode().count('class="result card"') == 2
    assert "<html" not in older.content.decode() and "Older images" not in older.content.decode()
    # The address htmx leaves behind lists both pages, so back and reload show all 62.
    assert older["HX-Replace-Url"] == "/?show=all&pages=2"
    both = client.get(older["HX-Replace-Url"]).content.decode()
    assert both.count('class="result card"') == 62 and "Older images" not in both
    assert client.get("/", {"pages": 999}).status_code == 200  # out of range: the first page
    only_mine = client.get("/", {"show": "mine"}).content.decode()
    assert only_mine.count('class="result card"') == 1 and "mine.jpg" in only_mine
    dataset = client.get("/", {"show": "dataset"}).content.decode()
    assert reverse("image", args=[mine.pk]) not in dataset
    assert Client().get("/", {"show": "mine"}).status_code == 200
    assert client.get("/", {"show": "nonsense", "page": "x"}).status_code == 200


def test_save_picker_and_htmx_save() -> None:
    user = UserFactory()
    photo = ImageFactory(dataset=True)
    CollectionFactory(owner=user, name="Beach trip")
    client = signed_in(user)
    picker = client.get(reverse("collection-picker", args=[photo.pk]), {"query": "sand"})
    assert "Beach trip" in picker.content.decode() and 'value="sand"' in picker.content.decode()
    saved = client.post(
        reverse("collection-add"),
        {"image_id": photo.pk, "new_name": "Dunes", "query": "sand"},
        **HX,
    )
    assert saved.status_code == 200 and "Saved to" in saved.content.decode()
    assert CollectionItem.objects.get(collection__name="Dunes").query == "sand"
    private = ImageFactory()  # someone else's
    refused = client.post(
        reverse("collection-add"), {"image_id": private.pk, "new_name": "Nope"}, **HX
    )
    assert refused.status_code == 404 and "no such image" in refused.content.decode()
    assert signed_in(user).get(reverse("collection-picker", args=[private.pk])).status_code == 404


def test_owner_is_warned_about_private_items_in_a_shared_collection() -> None:
    owner = UserFactory()
    collection = CollectionFactory(owner=owner, visibility="unlisted")
    CollectionItemFactory(collection=collection, image=ImageFactory(owner=owner))
    CollectionItemFactory(collection=collection, image=ImageFactory(dataset=True))
    page = signed_in(owner).get(reverse("collection", args=[collection.pk])).content.decode()
    assert "1 of these images is private" in page and "Copy link" in page
    shared = Client().get(reverse("collection-shared", args=[collection.share_token]))
    html = shared.content.decode()
    assert html.count('class="result"') == 1 and "is private" not in html
    listing = signed_in(owner).get(reverse("collections")).content.decode()
    assert listing.count('class="mosaic"') == 1 and listing.count("thumb/256") == 2


def test_favicon_and_the_header_on_every_page(client: Client) -> None:
    assert client.get("/favicon.ico").status_code == 301
    page = client.get("/").content.decode()
    assert 'rel="icon"' in page and "data-slash-focus" in page and "htmx.min.js" in page

"""Image files in S3-compatible object storage, against a real S3 server over HTTP.

No MinIO binary is installable where the tests run, so the ``s3_bucket`` fixture
(tests/s3_server.py) starts moto's standalone server (``moto.server.ThreadedMotoServer``) on a
free loopback port: it speaks the S3 protocol over HTTP, and the site reaches it exactly as it
would reach MinIO, AWS S3 or R2, through django-storages and boto3 with the settings
``config.settings.base.image_storages`` builds from the environment. Each test gets a bucket of
its own; a separate boto3 client lists it to see what really landed there.
"""

from __future__ import annotations

import io
import urllib.request

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from config.settings.base import image_storages
from encoders import open_image
from gallery.models import Image
from gallery.storage import image_storage, stored_file_open
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from tests.s3_server import Bucket
from workers import pipeline
from workers.encoder_cache import encoder_for
from workers.models import EmbeddingJob, ImageEmbedding

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_settings_choose_the_local_folder_without_a_bucket() -> None:
    storages = image_storages({})
    assert storages["default"]["BACKEND"] == "django.core.files.storage.FileSystemStorage"
    options = image_storages({"AWS_STORAGE_BUCKET_NAME": "b"})["default"]["OPTIONS"]
    # Private whatever the bucket's defaults: no ACL sent, every URL signed and short-lived.
    assert options["default_acl"] is None and options["querystring_auth"] is True
    assert options["querystring_expire"] == 300


def test_an_upload_lands_in_the_bucket_private_and_is_served_to_its_owner_alone(
    s3_bucket: Bucket,
) -> None:
    owner, stranger = UserFactory(), UserFactory()
    content = jpeg_bytes(color=(200, 40, 40), size=(300, 200))
    response = signed_in(owner).post(
        reverse("upload"),
        {
            "file": SimpleUploadedFile("beach.jpg", content, content_type="image/jpeg"),
            "visibility": "private",
        },
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 201, response.content
    image = Image.objects.get(pk=response.json()["id"])
    assert s3_bucket.keys() == [image.file.name]
    assert s3_bucket.read(image.file.name) == content
    # No grant to everyone: the object is as private as the bucket.
    grants = s3_bucket.client.get_object_acl(Bucket=s3_bucket.name, Key=image.file.name)["Grants"]
    assert not [g for g in grants if "URI" in g.get("Grantee", {})], grants

    file_url = reverse("image-file", args=[image.pk])
    thumb_url = reverse("image-thumb-size", args=[image.pk, 128])
    served = signed_in(owner).get(file_url)
    assert served.status_code == 200 and b"".join(served.streaming_content) == content
    thumb = signed_in(owner).get(thumb_url)
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    with PILImage.open(io.BytesIO(b"".join(thumb.streaming_content))) as picture:
        assert picture.size == (128, 85)
    # The thumbnail was made from the bucket's bytes and kept there, beside the image.
    assert s3_bucket.keys() == sorted([image.file.name, f"thumbs/128/{image.sha256}.jpg"])

    for client in (signed_in(stranger), Client()):
        assert client.get(file_url).status_code == 404
        assert client.get(thumb_url).status_code == 404


def test_signed_urls_are_issued_after_the_permission_check_and_expire_soon(
    s3_bucket: Bucket, settings
) -> None:
    settings.IMAGE_FILES_SIGNED_URLS = True
    image = ImageFactory()
    owner_response = signed_in(image.owner).get(reverse("image-file", args=[image.pk]))
    assert owner_response.status_code == 302
    location = owner_response["Location"]
    assert location.startswith(f"{s3_bucket.endpoint}/{s3_bucket.name}/{image.file.name}?")
    assert "X-Amz-Expires=300" in location and "X-Amz-Signature=" in location
    with urllib.request.urlopen(location, timeout=10) as fetched:
        assert fetched.read() == s3_bucket.read(image.file.name)
    thumb = signed_in(image.owner).get(reverse("image-thumb-size", args=[image.pk, 128]))
    assert thumb.status_code == 302 and "/thumbs/128/" in thumb["Location"]
    stranger = signed_in(UserFactory())
    assert stranger.get(reverse("image-file", args=[image.pk])).status_code == 404
    assert stranger.get(reverse("image-thumb", args=[image.pk])).status_code == 404


def test_the_worker_embeds_images_read_from_the_bucket(s3_bucket: Bucket, tiny_models) -> None:
    images = [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(i * 60, 90, 200 - i), size=(60, 45)))
        for i in range(3)
    ]
    assert s3_bucket.keys() == sorted(i.file.name for i in images)

    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=[i.pk for i in images])

    assert result["embedded"] == 3 and not result["failed"]
    expected = encoder_for(CLIP).embed_images(
        [open_image(io.BytesIO(s3_bucket.read(i.file.name))) for i in images]
    )
    stored = dict(ImageEmbedding.objects.filter(model_id=CLIP).values_list("image_id", "vector"))
    got = np.stack([np.asarray(stored[i.pk]) for i in images])
    assert np.abs(got - expected).max() <= 1e-5
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}


def test_deleting_an_upload_removes_its_objects(
    s3_bucket: Bucket, django_capture_on_commit_callbacks
) -> None:
    image, kept = ImageFactory(), ImageFactory()
    owner = signed_in(image.owner)
    assert owner.get(reverse("image-thumb", args=[image.pk])).status_code == 200
    assert len(s3_bucket.keys()) == 3  # two images and one thumbnail

    with django_capture_on_commit_callbacks(execute=True):
        assert owner.post(reverse("image-delete", args=[image.pk])).status_code == 302

    assert s3_bucket.keys() == [kept.file.name]


def test_a_missing_object_still_fails_its_job_alone(s3_bucket: Bucket, tiny_models) -> None:
    gone, good = ImageFactory(dataset=True), ImageFactory(dataset=True)
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=gone.file.name)

    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=[gone.pk, good.pk])

    assert result["embedded"] == 1 and list(result["failed"]) == [gone.pk]
    job = EmbeddingJob.objects.get(image=gone, model_id=CLIP)
    assert job.status == "failed" and "unreadable" in job.error


def test_storage_down_keeps_the_jobs_waiting_with_the_reason(
    s3_bucket: Bucket, tiny_models, settings
) -> None:
    images = [ImageFactory(dataset=True) for _ in range(2)]
    ids = [i.pk for i in images]
    settings.EMBEDDING_MAX_ATTEMPTS = 1  # one attempt spent on an outage would fail the job
    s3_bucket.stop()

    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=ids)

    assert result["embedded"] == 0 and "image storage unreachable" in result["storage_unreachable"]
    jobs = EmbeddingJob.objects.filter(image_id__in=ids, model_id=CLIP)
    assert {(j.status, j.attempts, j.enqueued_at) for j in jobs} == {("pending", 0, None)}
    assert all(j.error.startswith("image storage unreachable") for j in jobs)
    assert not ImageEmbedding.objects.exists()
    # Pages say so too, rather than a server error.
    response = signed_in(UserFactory()).get(reverse("image-thumb", args=[ids[0]]))
    assert response.status_code == 503

    # Back up (a new server: moto keeps its objects in memory), the same jobs go through.
    s3_bucket.restart()
    for image in images:
        image.file.storage.save(image.file.name, io.BytesIO(jpeg_bytes()))
    assert image_storage().exists(images[0].file.name)
    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=ids)
    assert result["embedded"] == 2
    assert set(jobs.values_list("status", flat=True)) == {"done"}


def test_reading_an_image_from_the_bucket_is_one_request(s3_bucket: Bucket) -> None:
    """A worker reads every image it embeds: one GetObject each, not django-storages' HEAD,
    HEAD (s3transfer's size probe) and GET, three round trips to the bucket per image."""
    image = ImageFactory(dataset=True, content=jpeg_bytes(size=(40, 30)))
    storage = image_storage()
    calls: list[str] = []
    events = storage.connection.meta.client.meta.events
    events.register("before-call.s3", lambda model, **_: calls.append(model.name))

    with stored_file_open(image.file.name) as handle:
        assert handle.read() == s3_bucket.read(image.file.name)
    assert calls == ["GetObject"]

    calls.clear()
    with pytest.raises(FileNotFoundError), stored_file_open("images/no/such.jpg"):
        pass
    assert calls == ["GetObject"]

"""Image files in S3-compatible object storage, against a real S3 server over HTTP.

No MinIO binary is installable where the tests run, so they start moto's standalone server
(``moto.server.ThreadedMotoServer``) on a free loopback port: it speaks the S3 protocol over
HTTP, and the site reaches it exactly as it would reach MinIO, AWS S3 or R2, through
django-storages and boto3 with the settings ``config.settings.base.image_storages`` builds from
the environment. Each test gets a bucket of its own; the bucket is listed with a separate boto3
client to see what really landed there.
"""

from __future__ import annotations

import io
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from moto.server import ThreadedMotoServer
from PIL import Image as PILImage

from config.settings.base import image_storages
from encoders import open_image
from gallery.models import Image
from gallery.storage import image_storage
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from workers import pipeline
from workers.encoder_cache import encoder_for
from workers.models import EmbeddingJob, ImageEmbedding

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Bucket:
    server: ThreadedMotoServer
    endpoint: str
    name: str
    client: Any  # boto3's S3 client, typed only in boto3-stubs

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())


@pytest.fixture
def bucket(settings) -> Iterator[Bucket]:
    """A running S3 server with an empty private bucket, and the site's image storages on it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    name = f"images-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=name)
    environ = {
        **CREDENTIALS,
        "AWS_STORAGE_BUCKET_NAME": name,
        "AWS_S3_ENDPOINT_URL": endpoint,
        "AWS_S3_REGION_NAME": "us-east-1",
        "AWS_S3_ADDRESSING_STYLE": "path",
        # Down means down at once: no waiting out connect timeouts in the test.
        "AWS_S3_CONNECT_TIMEOUT": "2",
    }
    settings.STORAGES = {**settings.STORAGES, **image_storages(environ)}
    try:
        yield Bucket(server, endpoint, name, client)
    finally:
        server.stop()


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
    bucket: Bucket,
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
    assert bucket.keys() == [image.file.name]
    assert bucket.read(image.file.name) == content
    # No grant to everyone: the object is as private as the bucket.
    grants = bucket.client.get_object_acl(Bucket=bucket.name, Key=image.file.name)["Grants"]
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
    assert f"thumbs/128/{image.sha256}.jpg" in bucket.keys()

    for client in (signed_in(stranger), Client()):
        assert client.get(file_url).status_code == 404
        assert client.get(thumb_url).status_code == 404


def test_signed_urls_are_issued_after_the_permission_check_and_expire_soon(
    bucket: Bucket, settings
) -> None:
    settings.IMAGE_FILES_SIGNED_URLS = True
    image = ImageFactory()
    owner_response = signed_in(image.owner).get(reverse("image-file", args=[image.pk]))
    assert owner_response.status_code == 302
    location = owner_response["Location"]
    assert location.startswith(f"{bucket.endpoint}/{bucket.name}/{image.file.name}?")
    assert "X-Amz-Expires=300" in location and "X-Amz-Signature=" in location
    with urllib.request.urlopen(location, timeout=10) as fetched:  # noqa: S310 - loopback
        assert fetched.read() == bucket.read(image.file.name)
    thumb = signed_in(image.owner).get(reverse("image-thumb-size", args=[image.pk, 128]))
    assert thumb.status_code == 302 and "/thumbs/128/" in thumb["Location"]
    stranger = signed_in(UserFactory())
    assert stranger.get(reverse("image-file", args=[image.pk])).status_code == 404
    assert stranger.get(reverse("image-thumb", args=[image.pk])).status_code == 404


def test_the_worker_embeds_images_read_from_the_bucket(bucket: Bucket, tiny_models) -> None:
    images = [
        ImageFactory(dataset=True, content=jpeg_bytes(color=(i * 60, 90, 200 - i), size=(60, 45)))
        for i in range(3)
    ]
    assert bucket.keys() == sorted(i.file.name for i in images)

    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=[i.pk for i in images])

    assert result["embedded"] == 3 and not result["failed"]
    expected = encoder_for(CLIP).embed_images(
        [open_image(io.BytesIO(bucket.read(i.file.name))) for i in images]
    )
    stored = dict(ImageEmbedding.objects.filter(model_id=CLIP).values_list("image_id", "vector"))
    got = np.stack([np.asarray(stored[i.pk]) for i in images])
    assert np.abs(got - expected).max() <= 1e-5
    assert set(EmbeddingJob.objects.values_list("status", flat=True)) == {"done"}


def test_deleting_an_upload_removes_its_objects(
    bucket: Bucket, django_capture_on_commit_callbacks
) -> None:
    image, kept = ImageFactory(), ImageFactory()
    owner = signed_in(image.owner)
    assert owner.get(reverse("image-thumb", args=[image.pk])).status_code == 200
    assert len(bucket.keys()) == 3  # two images and one thumbnail

    with django_capture_on_commit_callbacks(execute=True):
        assert owner.post(reverse("image-delete", args=[image.pk])).status_code == 302

    assert bucket.keys() == [kept.file.name]


def test_a_missing_object_still_fails_its_job_alone(bucket: Bucket, tiny_models) -> None:
    gone, good = ImageFactory(dataset=True), ImageFactory(dataset=True)
    bucket.client.delete_object(Bucket=bucket.name, Key=gone.file.name)

    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=[gone.pk, good.pk])

    assert result["embedded"] == 1 and list(result["failed"]) == [gone.pk]
    job = EmbeddingJob.objects.get(image=gone, model_id=CLIP)
    assert job.status == "failed" and "unreadable" in job.error


def test_storage_down_keeps_the_jobs_waiting_with_the_reason(
    bucket: Bucket, tiny_models, settings
) -> None:
    images = [ImageFactory(dataset=True) for _ in range(2)]
    ids = [i.pk for i in images]
    settings.EMBEDDING_MAX_ATTEMPTS = 1  # one attempt spent on an outage would fail the job
    bucket.server.stop()

    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=ids)

    assert result["embedded"] == 0 and "image storage unreachable" in result["storage_unreachable"]
    jobs = EmbeddingJob.objects.filter(image_id__in=ids, model_id=CLIP)
    assert {(j.status, j.attempts, j.enqueued_at) for j in jobs} == {("pending", 0, None)}
    assert all(j.error.startswith("image storage unreachable") for j in jobs)
    assert not ImageEmbedding.objects.exists()
    # Pages say so too, rather than a server error.
    response = signed_in(UserFactory()).get(reverse("image-thumb", args=[ids[0]]))
    assert response.status_code == 503

    # Back up (a new server: moto keeps its buckets in memory), the same jobs go through.
    bucket.server = ThreadedMotoServer(
        ip_address="127.0.0.1", port=int(bucket.endpoint.rsplit(":", 1)[1]), verbose=False
    )
    bucket.server.start()
    bucket.client.create_bucket(Bucket=bucket.name)
    for image in images:
        image.file.storage.save(image.file.name, io.BytesIO(jpeg_bytes()))
    assert image_storage().exists(images[0].file.name)
    result = pipeline.embedding_batch_run(model_id=CLIP, image_ids=ids)
    assert result["embedded"] == 2
    assert set(jobs.values_list("status", flat=True)) == {"done"}

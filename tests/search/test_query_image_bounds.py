"""Query images (search by image) cost a bounded amount: giants that can only be decoded whole
are refused from their header with a 400 (page, API, and the API over real HTTP); the rest are
decoded at the size the models need, never at full size. The cost itself is measured by
bench/query_image_cost.py."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from gallery import decoding
from gallery.decoding import DECODE_MIN_SIDE, image_file_decode, image_query_decode
from gallery.models import Image
from tests.factories import ImageFactory
from workers.services import embeddings_store

CLIP = "clip-vit-base-patch32"
QUERY_LIMIT = 1_000_000  # pixels, set for these tests so the giants stay small and quick


def encoded(image: PILImage.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def palette(size: tuple[int, int]) -> PILImage.Image:
    image = PILImage.new("P", size)
    image.putpalette(bytes(range(256)) * 3)
    return image


def rotated_exif() -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    return exif.tobytes()


GIANT = (1100, 1000)  # over QUERY_LIMIT, far under the upload limits

# Shapes that can only be decoded whole (no scaled decoding): refused above the query limit.
WHOLE_DECODE_GIANTS: dict[str, Callable[[], bytes]] = {
    "png 1-bit": lambda: encoded(PILImage.new("1", GIANT), "PNG"),
    "png palette": lambda: encoded(palette(GIANT), "PNG"),
    "png 16-bit": lambda: encoded(PILImage.new("I;16", GIANT), "PNG"),
    "tiff 1-bit group4": lambda: encoded(PILImage.new("1", GIANT), "TIFF", compression="group4"),
    "gif": lambda: encoded(palette(GIANT), "GIF"),
    "bmp 1-bit": lambda: encoded(PILImage.new("1", GIANT), "BMP"),
    "jpeg progressive": lambda: encoded(PILImage.new("RGB", GIANT), "JPEG", progressive=True),
    # The slowest to decode get a quarter of the limit.
    "webp over a quarter": lambda: encoded(PILImage.new("RGB", (600, 500)), "WEBP"),
    "jpeg progressive over a quarter": lambda: encoded(
        PILImage.new("RGB", (600, 500)), "JPEG", progressive=True
    ),
}


def embedded_images() -> None:
    images = Image.objects.bulk_create(ImageFactory.build_batch(3, dataset=True, file="x.jpg"))
    vectors = np.random.default_rng(3).normal(size=(3, 512))
    embeddings_store(model_id=CLIP, image_ids=[i.pk for i in images], vectors=vectors)


@pytest.fixture
def searchable(db, tiny_models, settings) -> None:
    settings.QUERY_IMAGE_MAX_PIXELS = QUERY_LIMIT
    embedded_images()


@pytest.fixture
def decoded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every picture the query path decodes (what the model and preview get)."""
    sizes: list[tuple[int, int]] = []
    real = decoding.open_image

    def recording(*args, **kwargs):
        picture = real(*args, **kwargs)
        sizes.append(picture.size)
        return picture

    monkeypatch.setattr("gallery.decoding.open_image", recording)
    return sizes


def upload(content: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content)


@pytest.mark.parametrize("shape", WHOLE_DECODE_GIANTS)
def test_giants_that_decode_only_whole_are_refused_from_the_header(
    client: Client, searchable, decoded_sizes, shape: str
) -> None:
    content = WHOLE_DECODE_GIANTS[shape]()
    api = client.post("/api/search/image", {"image": upload(content, "giant.img")})
    page = client.post("/search/image/", {"image": upload(content, "giant.img")})
    assert api.status_code == page.status_code == 400, shape
    message = api.json()["error"]
    assert message.startswith("the query image: image too large to search with: "), message
    assert "a smaller copy finds the same matches" in message
    assert message in page.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    assert decoded_sizes == []  # refused before any pixel was decoded


def test_a_huge_baseline_jpeg_is_searched_with_at_reduced_scale(
    client: Client, searchable, decoded_sizes
) -> None:
    # 49 times the query limit, but libjpeg decodes it at 1/8 scale.
    content = encoded(PILImage.new("RGB", (8000, 6144), (200, 30, 30)), "JPEG")
    api = client.post("/api/search/image", {"image": upload(content, "photo.jpg")})
    assert api.status_code == 200, api.content
    page = client.post("/search/image/", {"image": upload(content, "photo.jpg")})
    assert page.status_code in (200, 302), page.content
    assert decoded_sizes == [(1000, 768), (1000, 768)]


@pytest.mark.parametrize(
    ("make", "decoded_size"),
    [
        # Reduced by whole factors until the shorter side would drop under 768 px.
        (lambda: encoded(PILImage.new("1", (4000, 3200)), "PNG"), (1000, 800)),
        (lambda: encoded(palette((3200, 3200)), "PNG", transparency=0), (800, 800)),
        (lambda: encoded(PILImage.new("I;16", (3200, 2400)), "PNG"), (1067, 800)),
        (lambda: encoded(PILImage.new("RGBA", (3200, 2400)), "PNG", interlace=1), (1067, 800)),
        (
            lambda: encoded(
                PILImage.new("CMYK", (3200, 2400)), "TIFF", compression="tiff_adobe_deflate"
            ),
            (1067, 800),
        ),
        (
            lambda: encoded(PILImage.new("F", (2400, 2400)), "TIFF", compression="tiff_lzw"),
            (800, 800),
        ),
        (
            lambda: encoded(
                palette((2400, 1600)), "GIF", save_all=True, append_images=[palette((2400, 1600))]
            ),
            (1200, 800),
        ),
        (lambda: encoded(PILImage.new("RGB", (1800, 1800)), "WEBP", lossless=True), (900, 900)),
        # A strip: the longer side is held to 8 x 768 too.
        (lambda: encoded(PILImage.new("RGB", (13000, 900)), "PNG"), (6500, 450)),
        # JPEG at 1/8 scale, CMYK and grey included; EXIF-rotated comes back upright.
        (lambda: encoded(PILImage.new("RGB", (10000, 8000)), "JPEG"), (1250, 1000)),
        (lambda: encoded(PILImage.new("CMYK", (10000, 8000)), "JPEG"), (1250, 1000)),
        (lambda: encoded(PILImage.new("L", (10000, 8000)), "JPEG"), (1250, 1000)),
        (
            lambda: encoded(PILImage.new("RGB", (10000, 8000)), "JPEG", exif=rotated_exif()),
            (1000, 1250),
        ),
    ],
    ids=[
        "png 1-bit",
        "png palette+transparency",
        "png 16-bit",
        "png RGBA interlaced",
        "tiff CMYK",
        "tiff float",
        "gif 2 frames",
        "webp lossless",
        "png strip",
        "jpeg",
        "jpeg CMYK",
        "jpeg grey",
        "jpeg EXIF-rotated",
    ],  # fmt: skip
)
def test_query_images_within_the_limits_are_decoded_reduced_to_rgb(
    settings, make: Callable[[], bytes], decoded_size: tuple[int, int]
) -> None:
    settings.QUERY_IMAGE_MAX_PIXELS = 13_000_000  # above every shape here
    picture = image_query_decode(file=upload(make(), "query.img"), label="the query image")
    assert picture.mode == "RGB"
    assert picture.size == decoded_size


def test_an_upload_keeps_its_full_upright_size_while_decoded_reduced() -> None:
    content = encoded(PILImage.new("RGB", (6000, 4000)), "JPEG", exif=rotated_exif())
    decoded = image_file_decode(file=upload(content, "portrait.jpg"), label="portrait.jpg")
    assert (decoded.width, decoded.height) == (4000, 6000)  # upright, whole
    assert decoded.image.size == (1000, 1500)  # what was decoded: 1/4 scale, turned upright
    assert min(decoded.image.size) >= DECODE_MIN_SIDE


def test_a_giant_query_over_real_http_is_a_400_with_its_reason(
    live_server, transactional_db, tiny_models, settings
) -> None:
    settings.QUERY_IMAGE_MAX_PIXELS = QUERY_LIMIT
    embedded_images()
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="image"; filename="giant.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + WHOLE_DECODE_GIANTS["png 1-bit"]()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{live_server.url}/api/search/image",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400
    message = json.loads(refused.value.read())["error"]
    assert message == (
        "the query image: image too large to search with: 1100x1000 is 1.1 megapixels and the "
        "limit is 1.0 for PNG (a smaller copy finds the same matches)"
    )


@pytest.mark.django_db
def test_the_worker_decodes_a_stored_upload_as_the_query_path_decodes_the_same_file() -> None:
    """Searching with the very file that was uploaded must give its stored vector: both paths
    reduce the same way (and neither keeps a full-size copy of an 80-megapixel upload)."""
    from workers.pipeline import _decode

    content = encoded(PILImage.effect_noise((3200, 2400), 60).convert("RGB"), "PNG")
    image = ImageFactory(content=content, original_filename="big.png")
    _, stored, reason = _decode(image)
    queried = image_query_decode(file=upload(content, "big.png"), label="the query image")
    assert reason == "" and stored is not None
    assert stored.size == queried.size == (1067, 800)
    assert stored.tobytes() == queried.tobytes()

"""factory_boy factories that build real rows (and real JPEG files) in the test database."""

from __future__ import annotations

import hashlib
import io

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.files.base import ContentFile
from PIL import Image as PILImage

from gallery.models import Caption, Collection, CollectionItem, Image


def jpeg_bytes(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)
) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


PASSWORD = "correct-horse-battery"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.LazyFunction(lambda: make_password(PASSWORD))


class ImageFactory(factory.django.DjangoModelFactory):
    """An uploaded image by default; ``ImageFactory(dataset=True)`` gives a Flickr30k one."""

    class Meta:
        model = Image
        exclude = ("content", "dataset")

    class Params:
        dataset = factory.Trait(
            source=Image.Source.FLICKR30K,
            owner=None,
            visibility=Image.Visibility.PUBLIC,
            flickr30k_id=factory.Sequence(lambda n: 1_000_000 + n),
            split=Image.Split.TEST,
        )

    source = Image.Source.UPLOAD
    owner = factory.SubFactory(UserFactory)
    visibility = Image.Visibility.PRIVATE
    content = factory.Sequence(lambda n: jpeg_bytes(color=(n % 256, (n * 7) % 256, 90)))
    sha256 = factory.LazyAttribute(lambda o: hashlib.sha256(o.content).hexdigest())
    original_filename = factory.Sequence(lambda n: f"photo{n}.jpg")
    width = 64
    height = 48
    file = factory.LazyAttribute(lambda o: ContentFile(o.content, name=o.original_filename))


class CaptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Caption

    image = factory.SubFactory(ImageFactory, dataset=True)
    text = factory.Sequence(lambda n: f"a caption number {n}")
    position = 0


class CollectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Collection

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"collection {n}")


class CollectionItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CollectionItem

    collection = factory.SubFactory(CollectionFactory)
    image = factory.SubFactory(ImageFactory)


def evaluate(*args: str) -> str:
    """Run ``manage.py evaluate`` with ``args``; return what it printed."""
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("evaluate", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def photo_bytes(
    *,
    taken: object = None,
    offset: object = None,
    make: object = None,
    model: object = None,
    gps: tuple[str, tuple[float, ...], str, tuple[float, ...]] | None = None,
    image_format: str = "JPEG",
    color: tuple[int, int, int] = (40, 120, 200),
    size: tuple[int, int] = (64, 48),
) -> bytes:
    """A small photo whose EXIF holds what is given: DateTimeOriginal ``taken``
    ("2025:06:14 10:30:00") with OffsetTimeOriginal ``offset``, Make and Model, and a GPS
    position (lat ref, (deg, min, sec), lon ref, (deg, min, sec)). ``image_format`` "HEIF"
    makes a HEIC (pillow-heif's encoder)."""
    exif = PILImage.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if taken is not None or offset is not None:
        ifd = exif.get_ifd(0x8769)
        if taken is not None:
            ifd[0x9003] = taken
        if offset is not None:
            ifd[0x9011] = offset
    if gps is not None:
        ifd = exif.get_ifd(0x8825)
        ifd[1], ifd[2], ifd[3], ifd[4] = gps
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, image_format, exif=exif.tobytes())
    return buffer.getvalue()

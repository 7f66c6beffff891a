"""EXIF facts (taken date with its offset, camera, GPS position): read from well-formed and
hostile tags alike, stored at upload and import, back-filled, and shown."""

from __future__ import annotations

import io
import json
import math
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage
from PIL.TiffImagePlugin import IFDRational

from gallery.exif import NO_FACTS, PhotoFacts, camera_name, photo_facts_from_tags, photo_facts_read
from gallery.models import Image
from gallery.selectors import image_browse_neighbours, images_browse
from gallery.services.images import image_upload, images_photo_facts_backfill
from gallery.templatetags.gallery_ui import day_label
from tests.clients import signed_in
from tests.factories import ImageFactory, UserFactory, jpeg_bytes, photo_bytes

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ORIGINAL, DIGITIZED, OFFSET_ORIGINAL, OFFSET_DIGITIZED = 0x9003, 0x9004, 0x9011, 0x9012
MAKE, MODEL, DATE_TIME = 0x010F, 0x0110, 0x0132


def at(*parts: int, offset: int = 0) -> datetime:
    """The UTC instant of a wall-clock time at ``offset`` minutes east of UTC."""
    return datetime(*parts, tzinfo=UTC) - timedelta(minutes=offset)


# (what the tags hold, taken_at, taken_offset)
DATES = [
    (
        {ORIGINAL: "2025:06:14 10:30:00", OFFSET_ORIGINAL: "+02:00"},
        at(2025, 6, 14, 10, 30, offset=120),
        120,
    ),
    (
        {ORIGINAL: "2025:06:14 10:30:00", OFFSET_ORIGINAL: "-05:30"},
        at(2025, 6, 14, 10, 30, offset=-330),
        -330,
    ),
    ({ORIGINAL: "2025:06:14 10:30:00"}, at(2025, 6, 14, 10, 30), None),
    ({ORIGINAL: "2025:06:14 10:30:00\x00"}, at(2025, 6, 14, 10, 30), None),
    ({ORIGINAL: b"2025:06:14 10:30:00"}, at(2025, 6, 14, 10, 30), None),
    ({ORIGINAL: "2025-06-14T10:30:00.123"}, at(2025, 6, 14, 10, 30), None),
    ({ORIGINAL: "2025:06:14 10:30:00", OFFSET_ORIGINAL: "Z"}, at(2025, 6, 14, 10, 30), 0),
    # A bad offset leaves the wall-clock time without one rather than dropping the date.
    ({ORIGINAL: "2025:06:14 10:30:00", OFFSET_ORIGINAL: "+25:00"}, at(2025, 6, 14, 10, 30), None),
    ({ORIGINAL: "2025:06:14 10:30:00", OFFSET_ORIGINAL: "+02:75"}, at(2025, 6, 14, 10, 30), None),
    ({ORIGINAL: "2025:06:14 10:30:00", OFFSET_ORIGINAL: 120}, at(2025, 6, 14, 10, 30), None),
    (
        {ORIGINAL: "2025:06:14 10:30:00", OFFSET_ORIGINAL: "+02:00" * 40},
        at(2025, 6, 14, 10, 30),
        None,
    ),
    # Falls back to DateTimeDigitized, then DateTime, each with its own offset.
    (
        {DIGITIZED: "2024:01:02 03:04:05", OFFSET_DIGITIZED: "+09:00"},
        at(2024, 1, 2, 3, 4, 5, offset=540),
        540,
    ),
    (
        {ORIGINAL: "0000:00:00 00:00:00", DATE_TIME: "2023:05:06 07:08:09"},
        at(2023, 5, 6, 7, 8, 9),
        None,
    ),
    # Garbage and impossible dates: nothing.
    ({ORIGINAL: "0000:00:00 00:00:00"}, None, None),
    ({ORIGINAL: "    :  :     :  :  "}, None, None),
    ({ORIGINAL: "2025:02:30 10:00:00"}, None, None),
    ({ORIGINAL: "2025:13:01 10:00:00"}, None, None),
    ({ORIGINAL: "2025:06:14 25:00:00"}, None, None),
    ({ORIGINAL: "1601:01:01 00:00:00"}, None, None),
    ({ORIGINAL: "9999:12:31 23:59:59"}, None, None),
    ({ORIGINAL: "2027:01:01 00:00:00"}, None, None),  # after NOW
    ({ORIGINAL: 20250614}, None, None),
    ({ORIGINAL: ("2025:06:14 10:30:00",)}, None, None),
    ({ORIGINAL: "2025:06:14 10:30:00" + "9" * 100_000}, None, None),
    ({ORIGINAL: "١٢٣٤:06:14 10:30:00"}, None, None),  # non-ASCII digits
    ({}, None, None),
]


@pytest.mark.parametrize(("tags", "taken_at", "taken_offset"), DATES)
def test_taken_date_from_tags(
    tags: dict, taken_at: datetime | None, taken_offset: int | None
) -> None:
    main = {key: value for key, value in tags.items() if key == DATE_TIME}
    exif = {key: value for key, value in tags.items() if key != DATE_TIME}
    facts = photo_facts_from_tags(main, exif, {}, now=NOW)
    assert (facts.taken_at, facts.taken_offset) == (taken_at, taken_offset)


def rationals(*values: float) -> tuple[IFDRational, ...]:
    return tuple(IFDRational(value) for value in values)


# (GPS IFD, latitude, longitude)
POSITIONS = [
    ({1: "N", 2: rationals(52, 22, 12), 3: "E", 4: rationals(4, 53, 24)}, 52.37, 4.89),
    ({1: "S", 2: rationals(33, 51, 54), 3: "W", 4: rationals(70, 40, 12)}, -33.865, -70.67),
    ({1: b"S\x00", 2: rationals(33.5), 3: "E", 4: rationals(151.25)}, -33.5, 151.25),
    ({2: rationals(10, 30, 0), 4: rationals(20, 15, 0)}, 10.5, 20.25),  # no refs: N and E
    # Missing, malformed or impossible: no position at all.
    ({1: "N", 2: rationals(52, 22, 12)}, None, None),  # half a position
    ({1: "N", 2: (IFDRational(1, 0), 0, 0), 3: "E", 4: rationals(4)}, None, None),  # 1/0: NaN
    ({1: "N", 2: (float("inf"), 0, 0), 3: "E", 4: rationals(4)}, None, None),
    ({1: "N", 2: rationals(91), 3: "E", 4: rationals(4)}, None, None),
    ({1: "N", 2: rationals(52), 3: "E", 4: rationals(181)}, None, None),
    ({1: "N", 2: rationals(52, 61), 3: "E", 4: rationals(4)}, None, None),
    ({1: "N", 2: rationals(-52), 3: "E", 4: rationals(4)}, None, None),
    ({1: "Q", 2: rationals(52), 3: "E", 4: rationals(4)}, None, None),
    ({1: "N", 2: "52,22,12", 3: "E", 4: rationals(4)}, None, None),
    ({1: "N", 2: rationals(1, 2, 3, 4), 3: "E", 4: rationals(4)}, None, None),
    ({1: "N", 2: ("x", 1, 2), 3: "E", 4: rationals(4)}, None, None),
    ({1: "N", 2: rationals(0, 0, 0), 3: "E", 4: rationals(0, 0, 0)}, None, None),  # no fix
]


@pytest.mark.parametrize(("gps", "latitude", "longitude"), POSITIONS)
def test_position_from_tags(gps: dict, latitude: float | None, longitude: float | None) -> None:
    facts = photo_facts_from_tags({}, {}, gps, now=NOW)
    if latitude is None:
        assert (facts.latitude, facts.longitude) == (None, None)
    else:
        assert facts.latitude == pytest.approx(latitude, abs=1e-3)
        assert facts.longitude == pytest.approx(longitude, abs=1e-3)
        assert facts.latitude is not None and math.isfinite(facts.latitude)


# (Make, Model, camera_make, camera_model, shown as)
CAMERAS = [
    ("Canon", "Canon EOS R6", "Canon", "Canon EOS R6", "Canon EOS R6"),
    ("Apple", "iPhone 15 Pro", "Apple", "iPhone 15 Pro", "Apple iPhone 15 Pro"),
    ("NIKON CORPORATION", "NIKON D750", "NIKON CORPORATION", "NIKON D750", "NIKON D750"),
    ("  FUJIFILM\x00\x00", "X-T4 ", "FUJIFILM", "X-T4", "FUJIFILM X-T4"),
    (b"Sony", b"ILCE-7M3", "Sony", "ILCE-7M3", "Sony ILCE-7M3"),
    (None, "Pixel 8", "", "Pixel 8", "Pixel 8"),
    ("Evil\x1b[31m\nCam", "M" * 5000, "Evil [31m Cam", "M" * 100, "Evil [31m Cam " + "M" * 100),
    (42, 3.5, "", "", ""),
    (None, None, "", "", ""),
]


@pytest.mark.parametrize(("make", "model", "stored_make", "stored_model", "shown"), CAMERAS)
def test_camera_from_tags(make, model, stored_make, stored_model, shown) -> None:
    main = {key: value for key, value in ((MAKE, make), (MODEL, model)) if value is not None}
    facts = photo_facts_from_tags(main, {}, {}, now=NOW)
    assert (facts.camera_make, facts.camera_model) == (stored_make, stored_model)
    assert camera_name(make=facts.camera_make, model=facts.camera_model) == shown


def test_facts_are_read_from_a_jpeg_and_a_heic_file() -> None:
    for image_format in ("JPEG", "HEIF"):
        content = photo_bytes(
            taken="2025:06:14 10:30:00", offset="+02:00", make="Apple", model="iPhone 15 Pro",
            gps=("N", rationals(52, 22, 12), "E", rationals(4, 53, 24)), image_format=image_format,
        )  # fmt: skip
        facts = photo_facts_read(io.BytesIO(content))
        assert facts.taken_at == at(2025, 6, 14, 10, 30, offset=120), image_format
        assert (facts.taken_offset, facts.camera_make, facts.camera_model) == (
            120, "Apple", "iPhone 15 Pro",
        )  # fmt: skip
        assert facts.latitude == pytest.approx(52.37, abs=1e-3)


def hostile_jpegs() -> dict[str, bytes]:
    """JPEGs whose EXIF is broken in the ways files in the wild are."""
    plain = jpeg_bytes(size=(40, 30))
    app1 = lambda body: b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body  # noqa: E731
    zero_denominator = photo_bytes(gps=("N", rationals(12345), "E", rationals(4)))
    # Pillow writes EXIF little-endian: the latitude's 12345/1 becomes 12345/0.
    zero_denominator = zero_denominator.replace(
        struct.pack("<LL", 12345, 1), struct.pack("<LL", 12345, 0), 1
    )
    return {
        "garbage after the Exif header": plain[:2]
        + app1(b"Exif\x00\x00" + b"\xde\xad" * 500)
        + plain[2:],
        "truncated TIFF header": plain[:2] + app1(b"Exif\x00\x00II*\x00\x08") + plain[2:],
        "IFD pointing past the end": plain[:2]
        + app1(b"Exif\x00\x00II*\x00" + struct.pack("<L", 0xFFFFFF00) + b"\x00" * 8)
        + plain[2:],
        "zero date and a 30 KB make": photo_bytes(taken="0000:00:00 00:00:00", make="A" * 30_000),
        "latitude 12345/0": zero_denominator,
        "wrong types": photo_bytes(taken=b"\xff\xfe\xfd", offset="+99:99", model=b"\x00" * 50),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("kind", list(hostile_jpegs()))
def test_hostile_exif_never_fails_an_upload_and_stores_nothing_wrong(kind: str) -> None:
    content = hostile_jpegs()[kind]
    assert isinstance(photo_facts_read(io.BytesIO(content)), PhotoFacts)
    image = image_upload(
        owner=UserFactory(), file=SimpleUploadedFile("odd.jpg", content, "image/jpeg")
    )
    image.refresh_from_db()
    assert image.width == 40 or image.width == 64
    assert image.taken_at is None and image.taken_offset is None
    assert image.latitude is None and image.longitude is None
    assert len(image.camera_make) <= 100 and len(image.camera_model) <= 100
    assert "\x00" not in image.camera_model


def test_a_file_that_is_not_an_image_has_no_facts() -> None:
    assert photo_facts_read(io.BytesIO(b"not an image at all")) == NO_FACTS


@pytest.mark.django_db
def test_upload_stores_what_the_exif_says() -> None:
    content = photo_bytes(
        taken="2025:06:14 23:30:00", offset="-04:00", make="Canon", model="Canon EOS R6",
        gps=("S", rationals(33, 51, 54), "E", rationals(151, 12, 36)),
    )  # fmt: skip
    image = image_upload(
        owner=UserFactory(), file=SimpleUploadedFile("beach.jpg", content, "image/jpeg")
    )
    image.refresh_from_db()
    assert image.taken_at == at(2025, 6, 15, 3, 30)  # the true instant
    assert image.taken_offset == -240
    assert image.taken_local == datetime(2025, 6, 14, 23, 30)  # as the camera showed it
    assert image.day.isoformat() == "2025-06-14"
    assert (image.camera_make, image.camera_model) == ("Canon", "Canon EOS R6")
    assert image.latitude == pytest.approx(-33.865, abs=1e-3)
    assert image.longitude == pytest.approx(151.21, abs=1e-3)


@pytest.mark.django_db
def test_flickr30k_import_reads_exif(tmp_path: Path) -> None:
    from gallery.flickr30k import Flickr30kEntry
    from gallery.services.flickr30k import flickr30k_import

    (tmp_path / "1.jpg").write_bytes(
        photo_bytes(taken="2010:07:04 18:00:00", make="Canon", model="Canon EOS 7D")
    )
    (tmp_path / "2.jpg").write_bytes(jpeg_bytes())
    entries = [
        Flickr30kEntry(flickr30k_id=1, filename="1.jpg", split="test", captions=("a dog",)),
        Flickr30kEntry(flickr30k_id=2, filename="2.jpg", split="test", captions=("a cat",)),
    ]
    flickr30k_import(entries=entries, images_dir=tmp_path)
    dated = Image.objects.get(flickr30k_id=1)
    assert dated.taken_at == at(2010, 7, 4, 18) and dated.camera_model == "Canon EOS 7D"
    assert Image.objects.get(flickr30k_id=2).taken_at is None


@pytest.mark.django_db
def test_backfill_reads_stored_files_once_and_is_safe_to_run_again(capsys) -> None:
    dated = ImageFactory(content=photo_bytes(taken="2019:03:02 08:00:00", make="Sony"))
    plain = ImageFactory()
    gone = ImageFactory(content=photo_bytes(taken="2018:01:01 00:00:00"))
    gone.file.storage.delete(gone.file.name)
    known = ImageFactory(
        content=photo_bytes(taken="2017:01:01 00:00:00"), taken_at=at(2000, 1, 1), camera_make="X"
    )
    call_command("backfill_photo_facts", batch=2)
    assert "2 images read, 1 updated" in capsys.readouterr().out
    dated.refresh_from_db()
    assert dated.taken_at == at(2019, 3, 2, 8) and dated.camera_make == "Sony"
    plain.refresh_from_db()
    assert plain.taken_at is None
    known.refresh_from_db()
    assert known.taken_at == at(2000, 1, 1)  # already known: not read again

    again = images_photo_facts_backfill(batch_size=1)
    assert (again.read, again.updated, again.missing) == (1, 0, 1)  # the plain one, the gone one
    redo = images_photo_facts_backfill(redo=True)
    assert (redo.updated, redo.missing) == (1, 1)  # `known` now says what its file says
    known.refresh_from_db()
    assert known.taken_at == at(2017, 1, 1) and known.camera_make == ""


@pytest.mark.django_db
def test_browse_orders_by_taken_date_then_upload_date_then_id() -> None:
    owner = UserFactory()
    old_photo = ImageFactory(owner=owner, taken_at=at(2001, 1, 1))
    upload_only = ImageFactory(owner=owner)  # uploaded now, no EXIF date
    twins = [ImageFactory(owner=owner, taken_at=at(2020, 5, 5)) for _ in range(3)]
    future_upload = ImageFactory(owner=owner, taken_at=timezone.now() + timedelta(hours=1))
    order = list(images_browse(user=owner).values_list("pk", flat=True))
    expected = [future_upload.pk, upload_only.pk, *sorted((t.pk for t in twins), reverse=True)]
    assert order == [*expected, old_photo.pk]
    # The image page's arrows walk the same order, ties included.
    walked = [order[0]]
    while following := image_browse_neighbours(
        user=owner, image=Image.objects.get(pk=walked[-1])
    ).older:
        walked.append(following)
    assert walked == order
    back = image_browse_neighbours(user=owner, image=twins[1])
    assert (back.newer, back.older) == (twins[2].pk, twins[0].pk)


@pytest.mark.django_db
def test_browse_reads_the_sorted_at_index() -> None:
    owner = UserFactory()
    photos = [ImageFactory.build(owner=owner, visibility="public") for _ in range(2000)]
    for number, photo in enumerate(photos):
        photo.sha256 = f"{number:064x}"
        photo.file = f"images/{number}.jpg"
        photo.taken_at = at(2000, 1, 1) + timedelta(hours=number) if number % 2 else None
    Image.objects.bulk_create(photos)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_image")
    page = images_browse(user=UserFactory())[:60]
    plan = json.dumps(json.loads(page.explain(format="json"))[0]["Plan"])
    assert '"Index Name": "image_sorted_at_id"' in plan, plan
    assert '"Node Type": "Sort"' not in plan, plan


def test_day_labels() -> None:
    today = timezone.localdate()
    assert day_label(today) == "Today"
    assert day_label(today - timedelta(days=1)) == "Yesterday"
    assert day_label(datetime(2025, 6, 14).date()) == "Saturday, 14 June 2025"


@pytest.mark.django_db
def test_browse_groups_by_the_day_taken_under_day_headers() -> None:
    owner = UserFactory()
    ImageFactory(owner=owner, taken_at=at(2025, 6, 14, 23, 30, offset=-240), taken_offset=-240)
    ImageFactory(owner=owner, taken_at=at(2025, 6, 14, 9), title="same day")
    ImageFactory(owner=owner, taken_at=at(2024, 12, 25, 10))
    ImageFactory(owner=owner)
    page = signed_in(owner).get(reverse("home")).content.decode()
    headers = [
        line.split(">", 1)[1].split("<", 1)[0]
        for line in page.splitlines()
        if 'class="day-header"' in line
    ]
    assert headers == ["Today", "Saturday, 14 June 2025", "Wednesday, 25 December 2024"]


@pytest.mark.django_db
def test_image_page_shows_camera_and_taken_date_with_its_offset() -> None:
    image = ImageFactory(
        taken_at=at(2025, 6, 14, 10, 30, offset=120), taken_offset=120,
        camera_make="Canon", camera_model="Canon EOS R6",
    )  # fmt: skip
    page = signed_in(image.owner).get(reverse("image", args=[image.pk])).content.decode()
    assert "Saturday, 14 June 2025, 10:30" in page and "UTC+02:00" in page
    assert 'datetime="2025-06-14T10:30:00+02:00"' in page
    assert '<dd class="camera">Canon EOS R6</dd>' in page
    plain = ImageFactory(owner=image.owner)
    page = signed_in(image.owner).get(reverse("image", args=[plain.pk])).content.decode()
    assert "<dt>Taken</dt>" not in page and "<dt>Camera</dt>" not in page


@pytest.mark.django_db
def test_admin_lists_the_taken_date() -> None:
    staff = UserFactory(is_staff=True, is_superuser=True)
    image = ImageFactory(taken_at=at(2025, 6, 14, 10, 30), camera_model="X100V")
    listing = signed_in(staff).get(reverse("admin:gallery_image_changelist")).content.decode()
    assert "2025-06-14 10:30" in listing
    detail = signed_in(staff).get(reverse("admin:gallery_image_change", args=[image.pk]))
    assert "2025-06-14 10:30" in detail.content.decode() and "X100V" in detail.content.decode()


@pytest.mark.django_db
def test_heic_upload_is_stored_and_shown_through_a_jpeg() -> None:
    content = photo_bytes(
        image_format="HEIF", taken="2024:08:01 12:00:00", offset="+01:00", make="Apple",
        model="iPhone 15", size=(96, 64),
    )  # fmt: skip
    owner = UserFactory()
    client = signed_in(owner)
    answer = client.post(
        reverse("upload"),
        {
            "file": SimpleUploadedFile("IMG_0001.HEIC", content, "image/heic"),
            "visibility": "private",
        },
        headers={"accept": "application/json"},
    )
    assert answer.status_code == 201, answer.content
    image = Image.objects.get(pk=answer.json()["id"])
    assert (image.width, image.height, image.file.name.rsplit(".", 1)[-1]) == (96, 64, "heif")
    assert image.taken_at == at(2024, 8, 1, 12, offset=60) and image.camera_model == "iPhone 15"
    page = client.get(reverse("image", args=[image.pk])).content.decode()
    display = reverse("image-thumb-size", args=[image.pk, 2048])
    assert f'id="stage-image" src="{display}"' in page
    assert 'download="IMG_0001.HEIC">Download the original</a>' in page
    for url in (display, answer.json()["thumbnail_url"], reverse("image-thumb", args=[image.pk])):
        response = client.get(url)
        assert response["Content-Type"] == "image/jpeg"
        with PILImage.open(io.BytesIO(b"".join(response.streaming_content))) as thumb:
            assert thumb.format == "JPEG"

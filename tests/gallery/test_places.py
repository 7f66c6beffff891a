"""Place names from GPS positions, offline (gallery.places), at upload and by the command."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from gallery.models import Image
from gallery.places import place_of
from gallery.services.images import image_upload, images_photo_facts_backfill
from gallery.services.places import image_place_fill
from tests.factories import ImageFactory, UserFactory, jpeg_bytes, photo_bytes
from tests.gallery.test_photo_facts import rationals


def test_positions_resolve_to_places_offline() -> None:
    hanoi = place_of(21.0285, 105.8542)
    assert hanoi is not None
    assert (hanoi.region, hanoi.country, hanoi.country_code) == ("Hanoi", "Vietnam", "VN")
    paris = place_of(48.8566, 2.3522)
    assert paris is not None and (paris.city, paris.country_code) == ("Paris", "FR")


@pytest.mark.parametrize("position", [(None, 2.0), (91.0, 0.0), (0.0, 181.0), (float("nan"), 1.0)])
def test_no_or_impossible_position_is_no_place(position) -> None:
    assert place_of(*position) is None
    image = Image(latitude=position[0], longitude=position[1])
    assert image_place_fill(image) is False and image.place_country == ""


@pytest.mark.django_db
def test_the_command_fills_images_with_a_position_and_no_place(capsys) -> None:
    positioned = ImageFactory(dataset=True, latitude=48.8566, longitude=2.3522)
    kept = {"place_city": "Kept", "place_country": "Kept", "place_country_code": "XX"}
    named = ImageFactory(dataset=True, latitude=21.0285, longitude=105.8542, **kept)
    nowhere = ImageFactory(dataset=True)
    call_command("places_fill")
    assert "1 of 1" in capsys.readouterr().out
    positioned.refresh_from_db()
    assert (positioned.place_city, positioned.place_country_code) == ("Paris", "FR")
    named.refresh_from_db()
    assert named.place_city == "Kept", "names already there are left alone"
    nowhere.refresh_from_db()
    assert nowhere.place_country == ""
    call_command("places_fill")
    assert "0 of 0" in capsys.readouterr().out


@pytest.mark.django_db
def test_an_upload_with_a_position_gets_its_place() -> None:
    content = photo_bytes(gps=("S", rationals(33, 51, 54), "E", rationals(151, 12, 36)))
    image = image_upload(
        owner=UserFactory(), file=SimpleUploadedFile("harbour.jpg", content, "image/jpeg")
    )
    image.refresh_from_db()
    assert image.place_city.startswith("Sydney") and image.place_country_code == "AU"
    assert image.place_region and image.place_country == "Australia"
    plain = image_upload(
        owner=UserFactory(), file=SimpleUploadedFile("x.jpg", jpeg_bytes(), "image/jpeg")
    )
    assert plain.place_country == ""


@pytest.mark.django_db
def test_backfill_redo_resolves_the_place_again_where_the_position_changed() -> None:
    sydney = photo_bytes(gps=("S", rationals(33, 51, 54), "E", rationals(151, 12, 36)))
    # Stored with a stale position and its town: the file now says Sydney.
    moved = ImageFactory(
        content=sydney, latitude=48.8566, longitude=2.3522,
        place_city="Paris", place_region="Ile-de-France", place_country="France",
        place_country_code="FR",
    )  # fmt: skip
    # The file has no GPS any more (stripped): the old names must go with the position.
    stripped = ImageFactory(
        latitude=21.0285, longitude=105.8542, place_region="Hanoi", place_country="Vietnam",
        place_country_code="VN",
    )  # fmt: skip
    # A re-read that finds the same position leaves the names alone (an operator's edit).
    same = ImageFactory(content=sydney)
    images_photo_facts_backfill(redo=True)
    Image.objects.filter(pk=same.pk).update(place_city="Kept", place_country_code="XX")
    images_photo_facts_backfill(redo=True)

    moved.refresh_from_db()
    assert (moved.place_country_code, moved.place_country) == ("AU", "Australia")
    assert moved.place_city.startswith("Sydney")
    stripped.refresh_from_db()
    assert stripped.latitude is None
    assert not (stripped.place_region or stripped.place_country or stripped.place_country_code)
    same.refresh_from_db()
    assert (same.place_city, same.place_country_code) == ("Kept", "XX")

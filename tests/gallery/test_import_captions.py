"""manage.py import_captions: translated captions for imported images, by file name or Flickr30k
id (never an ambiguous image_id), from CSV or JSONL, in NFC; unknown images reported; a rerun
adds nothing; evaluate --lang queries with them."""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from gallery.models import Caption
from search.models import EvaluationRun
from tests.factories import CaptionFactory, ImageFactory

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"


def import_captions(*args: str) -> str:
    out = io.StringIO()
    call_command("import_captions", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def images():
    """Three data-set images with English captions, named as Flickr30k names its files."""
    found = []
    for n in range(3):
        image = ImageFactory(dataset=True, split="test", original_filename=f"10{n}.jpg")
        for position in range(2):
            CaptionFactory(image=image, position=position, text=f"english {n}.{position}")
        found.append(image)
    return found


def test_csv_by_file_name_reports_unknown_images_and_is_idempotent(images, tmp_path: Path) -> None:
    ImageFactory(original_filename="mine.jpg")  # someone's upload: never matched
    path = tmp_path / "vi.csv"
    path.write_text(
        "image,caption\n"
        "100.jpg,một con chó\n"
        "flickr30k-images/100.jpg,hai con mèo\n"
        "101.jpg,một chiếc xe màu đỏ\n"
        "999.jpg,không có ảnh này\n"
        "mine.jpg,ảnh riêng\n",
        encoding="utf-8",
    )

    out = import_captions("--lang", "vi", str(path))

    assert "5 rows: added 3 vi captions, 0 already present, 2 unknown images" in out
    assert "unknown image: vi.csv line 5: 999.jpg" in out
    assert "unknown image: vi.csv line 6: mine.jpg" in out
    vi = Caption.objects.filter(lang="vi").order_by("image_id", "position")
    assert [(c.image_id, c.position, c.text) for c in vi] == [
        (images[0].pk, 0, "một con chó"),
        (images[0].pk, 1, "hai con mèo"),
        (images[1].pk, 0, "một chiếc xe màu đỏ"),
    ]
    # English captions untouched.
    assert Caption.objects.filter(lang="en").count() == 6

    again = import_captions("--lang", "vi", str(path))

    assert "added 0 vi captions, 3 already present, 2 unknown images" in again
    assert Caption.objects.filter(lang="vi").count() == 3


def test_flickr30k_ids_match_the_flickr30k_id_never_the_site_s_own_number(
    images, tmp_path: Path
) -> None:
    # An image whose site number is another image's Flickr30k id: the id must win.
    decoy = ImageFactory(dataset=True, flickr30k_id=images[0].pk, original_filename="9.jpg")
    path = tmp_path / "de.csv"
    path.write_text(
        f"flickr30k_id,caption\n{images[0].flickr30k_id},ein Hund\n{images[0].pk},eine Katze\n",
        encoding="utf-8",
    )

    out = import_captions("--lang", "de", str(path))

    assert "2 rows: added 2 de captions" in out
    assert set(Caption.objects.filter(lang="de").values_list("image_id", "text")) == {
        (images[0].pk, "ein Hund"),
        (decoy.pk, "eine Katze"),
    }


@pytest.mark.parametrize(
    ("content", "suffix"),
    [
        ("image_id,caption\n{pk},một con chó\n", ".csv"),
        ("{pk},một con chó\n", ".csv"),
        ("image,caption\n{pk},một con chó\n", ".csv"),
        ('{{"image_id": {pk}, "caption": "ein Hund"}}\n', ".jsonl"),
        ('{{"image": {pk}, "caption": "ein Hund"}}\n', ".jsonl"),
    ],
    ids=["csv-image_id", "csv-number-without-header", "csv-image-number", "jsonl-image_id",
         "jsonl-image-number"],
)  # fmt: skip
def test_an_integer_that_could_be_either_id_is_refused_naming_the_columns_to_use(
    images, tmp_path: Path, content: str, suffix: str
) -> None:
    path = tmp_path / f"x{suffix}"
    path.write_text(content.format(pk=images[1].pk), encoding="utf-8")
    with pytest.raises(CommandError, match=r"line \d: .*'filename'.*'flickr30k_id'"):
        import_captions("--lang", "vi", str(path))
    assert not Caption.objects.filter(lang="vi").exists()


def test_the_same_caption_in_nfc_and_nfd_is_stored_once_in_nfc(images, tmp_path: Path) -> None:
    nfc = "một con chó"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    path = tmp_path / "vi.jsonl"
    rows = [{"filename": "100.jpg", "caption": nfc}, {"filename": "100.jpg", "caption": nfd}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")

    out = import_captions("--lang", "vi", str(path))

    assert "added 1 vi captions" in out
    assert list(Caption.objects.filter(lang="vi").values_list("text", flat=True)) == [nfc]


def test_jsonl_and_languages_side_by_side(images, tmp_path: Path) -> None:
    path = tmp_path / "de.jsonl"
    rows = [
        {"filename": "100.jpg", "caption": "ein Hund"},
        {"flickr30k_id": images[2].flickr30k_id, "text": "eine Katze"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")

    import_captions("--lang", "de", str(path))
    import_captions("--lang", "fr", str(path))

    assert set(Caption.objects.filter(lang="de").values_list("image_id", "text")) == {
        (images[0].pk, "ein Hund"),
        (images[2].pk, "eine Katze"),
    }
    assert Caption.objects.filter(lang="fr").count() == 2
    # The same text in two languages is two captions, each numbered within its language.
    assert set(
        Caption.objects.filter(image=images[0], lang__in=["de", "fr"]).values_list(
            "lang", "position"
        )
    ) == {("de", 0), ("fr", 0)}


def test_bad_input_is_refused_plainly(images, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("100.jpg,one,two\n", encoding="utf-8")
    with pytest.raises(CommandError, match="line 1: expected 2 columns"):
        import_captions("--lang", "vi", str(path))
    path.write_text("flickr30k_id,caption\n100.jpg,one\n", encoding="utf-8")
    with pytest.raises(CommandError, match="line 2: flickr30k_id '100.jpg' is not a whole number"):
        import_captions("--lang", "vi", str(path))
    with pytest.raises(CommandError, match="language tag"):
        import_captions("--lang", "Vietnamese", str(path))
    with pytest.raises(CommandError, match="no captions file"):
        import_captions("--lang", "vi", str(tmp_path / "missing.csv"))
    assert not Caption.objects.filter(lang="vi").exists()


def test_evaluate_lang_queries_with_that_language_only(tiny_models, tmp_path: Path) -> None:
    test_images = ImageFactory.create_batch(3, dataset=True, split="test")
    for n, image in enumerate(test_images):
        for position in range(5):
            CaptionFactory(image=image, position=position, text=f"a photo number {n} {position}")
    path = tmp_path / "vi.csv"
    # Vietnamese captions for two of the three images, two each.
    path.write_text(
        "flickr30k_id,caption\n"
        + "".join(f"{image.flickr30k_id},ảnh số {n} câu {c}\n"
                  for n, image in enumerate(test_images[:2]) for c in range(2)),
        encoding="utf-8",
    )  # fmt: skip
    import_captions("--lang", "vi", str(path))
    call_command("embed", "--model", CLIP, "--sync", "--missing", stdout=io.StringIO())
    out = io.StringIO()

    call_command("evaluate", "--model", CLIP, "--lang", "vi", stdout=out, stderr=io.StringIO())

    run = EvaluationRun.objects.get()
    assert (run.lang, run.n_queries, run.n_images) == ("vi", 4, 2)
    text = out.getvalue()
    assert "2 images, 4 caption queries (vi)" in text
    assert "'vi' captions, not the original English ones" in text
    with pytest.raises(CommandError, match="no 'de' captions in Flickr30k split 'test'"):
        call_command("evaluate", "--model", CLIP, "--lang", "de", stdout=io.StringIO())

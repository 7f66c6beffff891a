"""One file never becomes two images: annotations that give one file name two different ids
are refused with both ids named, and the importer itself keeps one image per file name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from gallery.flickr30k import Flickr30kEntry, Flickr30kFormatError, flickr30k_annotations_read
from gallery.models import Image
from gallery.services.flickr30k import flickr30k_import
from tests.factories import jpeg_bytes


def karpathy(path: Path, *images: tuple[int, str]) -> Path:
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"filename": name, "imgid": imgid, "split": "test",
                     "sentences": [{"raw": f"caption of {imgid}"}]}
                    for imgid, name in images
                ]
            }
        )
    )  # fmt: skip
    return path


def test_a_file_name_under_two_ids_is_refused(tmp_path: Path) -> None:
    annotations = karpathy(tmp_path / "dataset_flickr30k.json", (1, "same.jpg"), (2, "same.jpg"))
    with pytest.raises(Flickr30kFormatError, match=r"images 1 and 2 both name the file same\.jpg"):
        flickr30k_annotations_read(path=annotations)
    # Under one id it is a repeated entry, kept once as before.
    again = karpathy(tmp_path / "again.json", (1, "same.jpg"), (1, "same.jpg"), (3, "b.jpg"))
    assert [e.flickr30k_id for e in flickr30k_annotations_read(path=again)] == [1, 3]


@pytest.mark.django_db
def test_the_import_command_refuses_it_and_stores_nothing(tmp_path: Path) -> None:
    (tmp_path / "same.jpg").write_bytes(jpeg_bytes())
    annotations = karpathy(tmp_path / "dataset_flickr30k.json", (1, "same.jpg"), (2, "same.jpg"))
    with pytest.raises(CommandError, match="both name the file"):
        call_command("import_flickr30k", "--csv", str(annotations), "--images", str(tmp_path))
    assert not Image.objects.exists()


@pytest.mark.django_db
def test_the_importer_keeps_one_image_per_file_name(tmp_path: Path) -> None:
    (tmp_path / "same.jpg").write_bytes(jpeg_bytes())
    entries = [
        Flickr30kEntry(flickr30k_id=n, filename="same.jpg", split="test", captions=(f"c{n}",))
        for n in (1, 2)
    ]
    result = flickr30k_import(entries=entries, images_dir=tmp_path, enqueue=False)
    assert result.created == 1 and result.already_present == 1
    assert list(Image.objects.values_list("flickr30k_id", "original_filename")) == [(1, "same.jpg")]

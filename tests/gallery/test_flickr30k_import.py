"""manage.py import_flickr30k on a generated mini Flickr30k in the exact published CSV format,
with a missing and a corrupt file; the Karpathy JSON; and download_flickr30k offline."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db.models import Count
from PIL import Image as PILImage
from PIL import ImageDraw

from gallery.flickr30k import flickr30k_annotations_read
from gallery.models import Caption, Image
from workers.models import EmbeddingJob

pytestmark = pytest.mark.django_db
CLIP = "clip-vit-base-patch32"
IMAGES = 30
MISSING, CORRUPT = "9000000001.jpg", "9000000002.jpg"
SPLIT_OF = {0: "test", 1: "val"}  # by img_id % 10; the rest train


def draw_photo(path: Path, n: int) -> None:
    picture = PILImage.new("RGB", (60 + n, 40 + n % 7), ((n * 37) % 256, (n * 91) % 256, 120))
    pen = ImageDraw.Draw(picture)
    pen.ellipse((5, 5, 25 + n % 20, 30), fill=(250 - n * 5, 20, n * 8))
    pen.rectangle((30, 10, 50, 35), outline=(0, 0, 0), width=2)
    picture.save(path, "JPEG", quality=90)


def captions_of(n: int) -> list[str]:
    return [
        f"Photo {n}: a {w} dog runs on the beach ." for w in ("red", "blue", "big", "tiny", "old")
    ]


@pytest.fixture
def mini_flickr30k(tmp_path: Path) -> dict[str, Path]:
    """30 JPEGs and their CSV rows, plus a row whose file is missing and one that is corrupt."""
    images = tmp_path / "flickr30k-images"
    images.mkdir()
    rows = []
    for n in range(IMAGES + 2):
        filename = f"{1000092795 + n}.jpg"
        if n == IMAGES:
            filename = MISSING  # listed in the CSV, never written
        elif n == IMAGES + 1:
            filename = CORRUPT
            draw_photo(images / filename, n)
            data = (images / filename).read_bytes()
            (images / filename).write_bytes(data[: len(data) // 2])  # a truncated download
        else:
            draw_photo(images / filename, n)
        rows.append(
            {
                "raw": json.dumps(captions_of(n)),
                "sentids": json.dumps(list(range(5 * n, 5 * n + 5))),
                "split": SPLIT_OF.get(n % 10, "train"),
                "filename": filename,
                "img_id": str(n),
            }
        )
    annotations = tmp_path / "flickr_annotations_30k.csv"
    with annotations.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["raw", "sentids", "split", "filename", "img_id"]
        )
        writer.writeheader()
        writer.writerows(rows)
    karpathy = tmp_path / "dataset_flickr30k.json"
    karpathy.write_text(
        json.dumps(
            {
                "dataset": "flickr30k",
                "images": [
                    {
                        "filename": row["filename"],
                        "imgid": int(row["img_id"]),
                        "split": row["split"],
                        "sentids": json.loads(row["sentids"]),
                        "sentences": [
                            {
                                "raw": text,
                                "tokens": text.lower().split(),
                                "imgid": int(row["img_id"]),
                            }
                            for text in json.loads(row["raw"])
                        ],
                    }
                    for row in rows
                ],
            }
        )
    )
    return {"csv": annotations, "json": karpathy, "images": images}


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("import_flickr30k", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_import_creates_public_images_with_five_captions_and_skips_bad_files(
    mini_flickr30k,
) -> None:
    out = run("--csv", str(mini_flickr30k["csv"]), "--images", str(mini_flickr30k["images"]))

    assert f"{IMAGES + 2} entries: created {IMAGES} images ({IMAGES * 5} captions)" in out
    assert "1 missing, 1 corrupt" in out
    assert f"missing: {MISSING}" in out
    assert f"corrupt: {CORRUPT}: cannot decode image" in out
    assert Image.objects.count() == IMAGES
    assert Caption.objects.count() == IMAGES * 5
    assert not Image.objects.filter(original_filename__in=[MISSING, CORRUPT]).exists()

    image = Image.objects.get(flickr30k_id=3)
    assert (image.source, image.owner, image.visibility) == ("flickr30k", None, "public")
    assert (image.original_filename, image.split) == ("1000092798.jpg", "train")
    assert (image.width, image.height) == (63, 43)
    assert list(image.captions.values_list("position", "text")) == list(enumerate(captions_of(3)))
    # The bytes were copied into the media storage, under their content address.
    source_bytes = (mini_flickr30k["images"] / "1000092798.jpg").read_bytes()
    assert default_storage.open(image.file.name).read() == source_bytes
    assert image.file.name == f"images/{image.sha256[:2]}/{image.sha256}.jpg"
    splits = Image.objects.values_list("split").annotate(n=Count("id"))
    assert dict(splits) == {"test": 3, "val": 3, "train": 24}


def test_rerun_adds_nothing(mini_flickr30k) -> None:
    args = ("--csv", str(mini_flickr30k["csv"]), "--images", str(mini_flickr30k["images"]))
    run(*args)
    files = sorted(p for p in Path(default_storage.location).rglob("*") if p.is_file())

    again = run(*args)

    assert f"created 0 images (0 captions), {IMAGES} already imported" in again
    assert "1 missing, 1 corrupt" in again  # still reported, still skipped
    assert Image.objects.count() == IMAGES
    assert Caption.objects.count() == IMAGES * 5
    assert sorted(p for p in Path(default_storage.location).rglob("*") if p.is_file()) == files


def test_karpathy_json_gives_the_same_images_and_adds_nothing_after_the_csv(
    mini_flickr30k,
) -> None:
    from_csv = flickr30k_annotations_read(path=mini_flickr30k["csv"])
    from_json = flickr30k_annotations_read(path=mini_flickr30k["json"])
    assert from_csv == from_json

    run("--csv", str(mini_flickr30k["csv"]), "--images", str(mini_flickr30k["images"]))
    out = run("--csv", str(mini_flickr30k["json"]), "--images", str(mini_flickr30k["images"]))
    assert "created 0 images" in out
    assert Image.objects.count() == IMAGES


def test_split_and_limit(mini_flickr30k) -> None:
    out = run(
        "--csv", str(mini_flickr30k["csv"]), "--images", str(mini_flickr30k["images"]),
        "--split", "test", "--limit", "2",
    )  # fmt: skip
    assert "2 entries: created 2 images" in out
    assert list(Image.objects.order_by("flickr30k_id").values_list("flickr30k_id", "split")) == [
        (0, "test"),
        (10, "test"),
    ]


def test_import_queues_embedding_for_every_enabled_model(mini_flickr30k) -> None:
    out = run("--csv", str(mini_flickr30k["csv"]), "--images", str(mini_flickr30k["images"]))
    assert f"queued 1 embedding batches for {CLIP}" in out
    # The jobs exist (and are claimed) even if the broker is down: the sweep finishes them.
    jobs = EmbeddingJob.objects.filter(model_id=CLIP, status=EmbeddingJob.Status.PENDING)
    assert jobs.count() == IMAGES


def test_a_file_that_is_not_the_annotations_csv_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "captions.csv"
    bad.write_text("image,caption\n1.jpg,a dog\n")
    with pytest.raises(CommandError, match="no column raw"):
        run("--csv", str(bad), "--images", str(tmp_path))
    assert not Image.objects.exists()


def test_download_offline_says_it_needs_internet_and_how_to_import(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CommandError, match="needs internet") as error:
        call_command("download_flickr30k", "--dest", str(tmp_path), stdout=io.StringIO())
    assert "import_flickr30k --csv" in str(error.value)
    assert not any(tmp_path.iterdir())


def test_download_without_a_network_says_it_needs_internet(monkeypatch, tmp_path) -> None:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CommandError, match="needs internet.*Name or service not known"):
        call_command("download_flickr30k", "--dest", str(tmp_path), stdout=io.StringIO())


def test_annotation_captions_are_read_in_nfc(tmp_path: Path) -> None:
    nfc = "Một con chó chạy trên cỏ"
    path = tmp_path / "annotations.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["raw", "sentids", "split", "filename", "img_id"])
        raw = json.dumps([unicodedata.normalize("NFD", nfc), nfc], ensure_ascii=False)
        writer.writerow([raw, "[0, 1]", "test", "1.jpg", "1"])

    (entry,) = flickr30k_annotations_read(path=path)

    assert entry.captions == (nfc, nfc)

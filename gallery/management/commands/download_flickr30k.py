"""manage.py download_flickr30k [--dest DIR]: fetch the data set the original project used."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

# The Hugging Face data set the original project loaded: flickr_annotations_30k.csv (captions,
# Karpathy split) and flickr30k-images.zip (31,783 JPEGs, about 4 GB).
REPO_ID = "nlphuji/flickr30k"
ANNOTATIONS = "flickr_annotations_30k.csv"
_TRUTHY = {"1", "ON", "YES", "TRUE"}


class Command(BaseCommand):
    help = (
        f"Download Flickr30k ({REPO_ID} on the Hugging Face hub, about 4 GB) into --dest and "
        "unpack the images; needs internet. Then run the import_flickr30k command it prints."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dest", type=Path, default=None, help="target folder (default: DATA_DIR/flickr30k)"
        )

    def handle(self, *args: object, **options: Any) -> None:
        given: Path | None = options["dest"]
        dest = (given or Path(settings.DATA_DIR) / "flickr30k").resolve()
        if _hub_offline():
            raise CommandError(_needs_internet(dest, "HF_HUB_OFFLINE is set"))
        # Imported here: huggingface_hub is only needed by this command.
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        dest.mkdir(parents=True, exist_ok=True)
        self.stdout.write(f"downloading {REPO_ID} into {dest} (about 4 GB) ...")
        try:
            snapshot_download(REPO_ID, repo_type="dataset", local_dir=dest)
        except LocalEntryNotFoundError as exc:
            # What huggingface_hub raises when the hub cannot be reached at all.
            raise CommandError(_needs_internet(dest, _first_line(exc))) from exc
        except (HfHubHTTPError, OSError) as exc:
            raise CommandError(f"downloading {REPO_ID} failed: {_first_line(exc)}") from exc

        annotations = dest / ANNOTATIONS
        if not annotations.is_file():
            found = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
            raise CommandError(f"{REPO_ID} has no {ANNOTATIONS} any more (found: {found})")
        images = _unpacked_images(dest)
        self.stdout.write(
            "done. Import it with:\n"
            f"  manage.py import_flickr30k --csv {annotations} --images {images}"
        )


def _unpacked_images(dest: Path) -> Path:
    """The folder of JPEGs, unpacking the archive once; reruns find it already there."""
    for archive in sorted(dest.glob("*.zip")):
        target = dest / archive.stem
        if not target.is_dir():
            # zipfile drops absolute paths and ".." parts, so nothing lands outside dest.
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(dest)
    folders = [p for p in dest.rglob("*") if p.is_dir() and any(p.glob("*.jpg"))]
    if not folders:
        raise CommandError(f"no folder of .jpg files in {dest} after unpacking")
    return max(folders, key=lambda p: sum(1 for _ in p.glob("*.jpg")))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    # The environment as well as the constant: huggingface_hub reads HF_HUB_OFFLINE only when
    # it is first imported.
    from_env = any(
        os.environ.get(name, "").upper() in _TRUTHY
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    return from_env or bool(constants.HF_HUB_OFFLINE)


def _needs_internet(dest: Path, why: str) -> str:
    return (
        f"download_flickr30k needs internet access to the Hugging Face hub ({why}). On a "
        f"machine with internet, run it there (or download {REPO_ID} by hand: "
        f"{ANNOTATIONS} and flickr30k-images.zip) and copy the files here, then import them "
        f"with: manage.py import_flickr30k --csv {dest / ANNOTATIONS} "
        f"--images {dest / 'flickr30k-images'}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

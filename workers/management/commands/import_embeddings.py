"""manage.py import_embeddings --model M --embeddings E.npy --filenames F.npy [--allow-pickle]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.cli import model_argument_add, model_option
from workers.selectors import embedding_models_enabled
from workers.services import EmbeddingVectorsError, embeddings_import

LISTED = 10


class Command(BaseCommand):
    help = (
        "Import precomputed image embeddings (one row per image, in the order of the file names "
        "array) for Flickr30k images already imported: a working index in seconds without a "
        "GPU. Everything is checked before anything is stored; importing twice adds nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        model_argument_add(parser, help_text="the registered model that made them")
        parser.add_argument("--embeddings", required=True, type=Path, help="image_embeddings.npy")
        parser.add_argument("--filenames", required=True, type=Path, help="image_filenames.npy")
        parser.add_argument(
            "--allow-pickle",
            action="store_true",
            help="accept object arrays; loading them runs code stored in the file, so only "
            "for files you trust",
        )

    def handle(self, *args: object, **options: Any) -> None:
        model_id = model_option(options)
        allow_pickle = bool(options["allow_pickle"])
        vectors = _load(options["embeddings"], allow_pickle)
        filenames = _load(options["filenames"], allow_pickle)
        if filenames.ndim != 1:
            raise CommandError(f"file names must be a 1-D array; got shape {filenames.shape}")
        try:
            result = embeddings_import(
                model_id=model_id, vectors=vectors, filenames=filenames.tolist()
            )
        except EmbeddingVectorsError as exc:
            raise CommandError(f"nothing imported: {exc}") from exc
        if result.stored + result.already_present == 0:
            raise CommandError(
                f"none of the {result.rows} file names (e.g. {result.unmatched[0]!r}) is an "
                f"imported Flickr30k image; run manage.py import_flickr30k first"
            )
        self.stdout.write(
            f"{model_id}: {result.rows} rows, stored {result.stored}, "
            f"{result.already_present} already had one, {len(result.unmatched)} file names "
            f"with no image"
        )
        for name in result.unmatched[:LISTED]:
            self.stdout.write(f"  no image: {name}")
        if len(result.unmatched) > LISTED:
            self.stdout.write(f"  ... and {len(result.unmatched) - LISTED} more")
        if model_id not in embedding_models_enabled():
            self.stdout.write(
                f"note: {model_id} is not enabled, so search does not use it yet; enable it in "
                f"the admin (Embedding models)"
            )


def _load(path: Path, allow_pickle: bool) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=allow_pickle)
    except FileNotFoundError:
        raise CommandError(f"no such file: {path}") from None
    except EOFError:
        raise CommandError(f"{path} is empty: it holds no array") from None
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CommandError(
                f"{path} holds Python objects (a pickled array); rerun with --allow-pickle if "
                f"you trust where the file came from"
            ) from exc
        raise CommandError(f"{path} is not a .npy array: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"{path} is not a .npy array: {exc}") from exc
    if not isinstance(loaded, np.ndarray):  # an .npz archive of several arrays
        raise CommandError(f"{path} is an archive of arrays; pass the .npy file of one array")
    return loaded

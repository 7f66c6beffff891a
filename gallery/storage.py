"""Where image bytes live: every read, write and delete of an image file or thumbnail goes
through Django's storage API (``STORAGES["default"]`` and ``STORAGES["thumbnails"]``, chosen
by the environment in ``config.settings.base.image_storages``): the local folder, or an
S3-compatible bucket that web and workers on different hosts all reach.

A storage that cannot be reached (the bucket's server down, a network mount gone, bad
credentials) is told apart from a file that is missing or corrupt: the first raises
``StorageUnreachable``, which the worker answers by waiting and trying again, the second is the
file's own problem and fails its job as before.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage, storages
from s3transfer.constants import ALLOWED_DOWNLOAD_ARGS as DOWNLOAD_ARGS
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

from kernel.errors import Unavailable

# OSError numbers that say the storage itself (a network file system, a mount) is away.
_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ETIMEDOUT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ENOTCONN,
        errno.ESTALE,
        errno.EIO,
    }
)
# S3 error codes that are the bucket's or the credentials' problem, never one object's.
_UNREACHABLE_S3_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "RequestTimeout",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
    }
)


class StorageUnreachable(Unavailable):
    """The image storage cannot be reached now; the file may well be there."""


def image_storage() -> Storage:
    """The storage of uploaded and data-set image files."""
    return storages["default"]


def thumbnail_storage() -> Storage:
    """The storage of thumbnails (the same place as the images, unless settings say otherwise)."""
    return storages["thumbnails"] if "thumbnails" in storages.backends else storages["default"]


def storage_error_is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the storage is away rather than that one file is missing or bad."""
    if isinstance(exc, StorageUnreachable | NoCredentialsError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error.get("Code") in _UNREACHABLE_S3_CODES or status >= 500 or status == 403
    if isinstance(exc, BotoCoreError):
        # Connection refused or reset, timeouts, DNS: everything botocore raises that is not a
        # server's answer about an object.
        return True
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS


def storage_unreachable_message(exc: BaseException) -> str:
    return f"image storage unreachable: {type(exc).__name__}: {exc}"


def stored_file_fetch(name: str, *, storage: Storage | None = None) -> File[Any]:
    """A stored file open for reading, with its bytes already fetched; the caller closes it.

    Fetching first (object storage downloads on the first read) means a storage that stops
    answering raises ``StorageUnreachable`` here, and never reaches an image decoder that
    would call it a corrupt file. A missing file raises FileNotFoundError as usual.
    """
    storage = storage or image_storage()
    try:
        handle = storage.open(name, "rb")
        try:
            handle.seek(0)
        except BaseException:
            handle.close()
            raise
    except Exception as exc:
        if storage_error_is_unreachable(exc):
            raise StorageUnreachable(storage_unreachable_message(exc)) from exc
        raise
    return handle


@contextmanager
def stored_file_open(name: str, *, storage: Storage | None = None) -> Iterator[File[Any]]:
    """``stored_file_fetch`` as a context manager that closes the file."""
    with stored_file_fetch(name, storage=storage) as handle:
        yield handle


def stored_file_delete(name: str, *, storage: Storage | None = None) -> None:
    """Delete a stored file if it is there (both backends' delete ignores a missing one)."""
    if name:
        (storage or image_storage()).delete(name)


class ReplacingFileSystemStorage(FileSystemStorage):
    """A local folder where saving a name that exists replaces the file atomically: the bytes
    go to a temporary file beside it, renamed over the name, so a concurrent reader sees the
    old file or the new one, never half of one. For content-named files (thumbnails) that any
    request may make."""

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        return name

    def _save(self, name: str, content: File[Any]) -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        descriptor, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
        try:
            with os.fdopen(descriptor, "wb") as target:
                for chunk in content.chunks():
                    target.write(chunk)
            if self.file_permissions_mode is not None:
                os.chmod(partial, self.file_permissions_mode)
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
        return name.replace("\\", "/")


class OneRequestS3Storage(S3Storage):
    """django-storages' S3 storage, reading a file with one GetObject.

    Its own S3File asks twice before it fetches (a HeadObject to fail early, then s3transfer's
    size probe): three round trips for every image a worker embeds, which on a bucket in
    another building is most of a batch's time. Writes, URLs and deletes are unchanged; a
    gzip-aware storage keeps the original path, which decompresses.
    """

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        if "w" in mode or "b" not in mode or self.gzip:
            return super()._open(name, mode)  # type: ignore[no-any-return]
        key = self._normalize_name(clean_name(name))
        extra = {k: v for k, v in self.get_object_parameters(name).items() if k in DOWNLOAD_ARGS}
        try:
            body = self.bucket.Object(key).get(**extra)["Body"].read()
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise FileNotFoundError(f"File does not exist: {key}") from exc
            raise
        return ContentFile(body, name=name)

"""A real S3 server for the tests: moto's standalone server on a free loopback port.

No MinIO binary is installable where the tests run; moto's server speaks the S3 protocol over
HTTP, so the site reaches it exactly as it would reach MinIO, AWS S3 or R2, through
django-storages and boto3 with the settings ``config.settings.base.image_storages`` builds from
the environment. ``s3_bucket`` (tests/conftest.py) gives each test an empty bucket of its own
and points the site's image storages at it; ``Bucket.environ`` does the same for a worker
process started by the test.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Bucket:
    server: ThreadedMotoServer
    port: int
    name: str
    client: Any  # boto3's S3 client (typed only in boto3-stubs), to see what really landed

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def environ(self) -> dict[str, str]:
        """The environment that points the site's image storages at this bucket."""
        return {
            "AWS_STORAGE_BUCKET_NAME": self.name,
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_S3_REGION_NAME": REGION,
            "AWS_S3_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            # Down means down at once: no waiting out connect timeouts in the tests.
            "AWS_S3_CONNECT_TIMEOUT": "2",
        }

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """A new server on the same port, with the bucket again (moto keeps objects in memory:
        they are gone)."""
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.client.create_bucket(Bucket=self.name)


@contextmanager
def s3_bucket_serving() -> Iterator[Bucket]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    bucket = Bucket(server, port, f"images-{uuid.uuid4().hex[:12]}", None)
    bucket.client = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket.client.create_bucket(Bucket=bucket.name)
    try:
        yield bucket
    finally:
        bucket.server.stop()

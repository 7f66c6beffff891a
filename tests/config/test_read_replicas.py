"""Read replicas against a real streaming standby of the tests' PostgreSQL.

The standby is made with ``pg_basebackup -R -X stream`` from the embedded server's own binaries
after the test database exists, so it holds (and keeps replaying) that database; each test adds
it as ``replica_0`` for its duration. Rows must be committed for the standby to see them, hence
transactional tests.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from config.devserver import embedded
from config.devserver.standby import Standby as EmbeddedStandby
from gallery.models import Image
from kernel.db_routing import replica_state, replicas_forget
from kernel.middleware import READ_YOUR_WRITES_COOKIE
from tests.factories import ImageFactory, UserFactory, jpeg_bytes
from workers.models import EmbeddingModel
from workers.services import embedding_models_sync_from_settings, embeddings_store

ALIAS = "replica_0"
# The replica's alias exists only while a test runs (the ``replica`` fixture): the test
# database is created and flushed on the primary alone.
pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", ALIAS]),
    pytest.mark.slow,
]

CLIP = "clip-vit-base-patch32"
DIM = 512


class Standby(EmbeddedStandby):
    def replayed(self) -> None:
        """Wait until the standby has replayed every commit the primary has made so far."""
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
            self.wait_replayed(cursor.fetchone()[0])


@pytest.fixture(scope="module")
def standby(django_db_setup, django_db_blocker) -> Iterator[Standby]:
    """The standby, as ``replica_0`` for this module's tests: the test database's name on the
    standby's socket. Added here, before each test's database set-up (a module fixture comes
    first), so that the tests may name it in ``databases``; a test mirror to Django's test
    machinery, so that it never creates or flushes a database there."""
    data_dir = Path(settings.DATA_DIR)
    socket = embedded.postgres_socket_dir(data_dir)
    assert socket is not None, "the tests' PostgreSQL is not running"
    server = Standby(Path(settings.TEST_DATA_DIR) / "standby", socket)
    server.create()
    replica_settings = copy.deepcopy(connections["default"].settings_dict)
    replica_settings["HOST"] = str(server.pgdata)
    replica_settings["TEST"] = {**replica_settings["TEST"], "MIRROR": "default"}
    connections.settings[ALIAS] = replica_settings
    try:
        yield server
    finally:
        connections[ALIAS].close()
        del connections[ALIAS]
        del connections.settings[ALIAS]
        replicas_forget()
        server.remove()


@pytest.fixture
def replica(standby: Standby, settings) -> Iterator[Standby]:
    """The standby, running, each test starting with no replica state checked."""
    standby.start()
    assert standby.execute("SELECT pg_is_in_recovery()") is True
    settings.DATABASE_REPLICA_CHECK_SECONDS = 3600  # checked once per test, unless asked
    replicas_forget()
    try:
        yield standby
    finally:
        connections[ALIAS].close()
        replicas_forget()


def _similar_to_stored() -> list[Image]:
    """Three public photos with embeddings: the first's neighbours are the other two."""
    embedding_models_sync_from_settings()
    photos = ImageFactory.create_batch(3, dataset=True)
    rng = np.random.default_rng(0)
    embeddings_store(
        model_id=CLIP,
        image_ids=[p.pk for p in photos],
        vectors=rng.standard_normal((3, DIM)).astype(np.float32),
    )
    return photos


def _ranked_on(captured: CaptureQueriesContext) -> bool:
    """Whether a nearest-neighbour query (pgvector's cosine distance) ran on that connection."""
    return any("<=>" in query["sql"] for query in captured.captured_queries)


def _models_state_read_on(captured: CaptureQueriesContext) -> bool:
    """Whether search.model_choice's one query for the enabled models' state ran there."""
    table = EmbeddingModel._meta.db_table
    return any(f'FROM "{table}" m' in query["sql"] for query in captured.captured_queries)


def _image_ids(html: str) -> set[int]:
    return {int(i) for i in re.findall(r'href="/images/(\d+)/"', html)}


def test_a_search_runs_on_the_standby(client: Client, replica: Standby) -> None:
    photos = _similar_to_stored()
    replica.replayed()
    with (
        CaptureQueriesContext(connections[ALIAS]) as on_replica,
        CaptureQueriesContext(connections["default"]) as on_primary,
    ):
        response = client.get(reverse("similar", args=[photos[0].pk]))
    assert response.status_code == 200
    assert {photos[1].pk, photos[2].pk} <= _image_ids(response.content.decode())
    assert _ranked_on(on_replica) and not _ranked_on(on_primary)
    # Nothing of the search itself reads the primary, the models' state (raw SQL) included.
    assert _models_state_read_on(on_replica) and not _models_state_read_on(on_primary)
    # The very connection that ranked is the standby's.
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        assert cursor.fetchone()[0] is True

    # The API's search too.
    with (
        CaptureQueriesContext(connections[ALIAS]) as on_replica,
        CaptureQueriesContext(connections["default"]) as on_primary,
    ):
        response = client.get(f"/api/images/{photos[0].pk}/similar")
    assert response.status_code == 200
    assert {photos[1].pk, photos[2].pk} <= {hit["id"] for hit in response.json()["results"]}
    assert _ranked_on(on_replica) and not _ranked_on(on_primary)


def test_an_upload_is_seen_at_once_by_its_owner(replica: Standby, settings) -> None:
    """The standby stops replaying (lag it is still allowed), so it never sees the upload: the
    owner's browser, pinned to the primary by its POST, lists it; the same person in another
    browser (no pin) is served by the standby, which does not have it yet."""
    settings.DATABASE_REPLICA_MAX_LAG_SECONDS = 3600
    owner = UserFactory()
    browser, elsewhere = Client(), Client()
    browser.force_login(owner)
    elsewhere.force_login(owner)
    replica.replayed()
    replica.execute("SELECT pg_wal_replay_pause()")
    try:
        file = SimpleUploadedFile("mine.jpg", jpeg_bytes(), content_type="image/jpeg")
        response = browser.post(reverse("upload"), {"file": file, "visibility": "private"})
        assert response.status_code == 302
        assert READ_YOUR_WRITES_COOKIE in response.cookies
        uploaded = Image.objects.get(owner=owner)

        with CaptureQueriesContext(connections[ALIAS]) as on_replica:
            seen = browser.get(reverse("home"), {"show": "mine"})
        assert uploaded.pk in _image_ids(seen.content.decode())
        assert not on_replica.captured_queries

        with CaptureQueriesContext(connections[ALIAS]) as on_replica:
            stale = elsewhere.get(reverse("home"), {"show": "mine"})
        assert stale.status_code == 200
        assert uploaded.pk not in _image_ids(stale.content.decode())
        assert on_replica.captured_queries  # the unpinned page did read the standby
    finally:
        replica.execute("SELECT pg_wal_replay_resume()")


def test_a_lagging_standby_is_skipped_and_the_admin_shows_its_lag(
    admin_client: Client, replica: Standby, settings
) -> None:
    photos = _similar_to_stored()
    replica.replayed()
    replica.execute("SELECT pg_wal_replay_pause()")
    try:
        settings.DATABASE_REPLICA_MAX_LAG_SECONDS = 0.5
        ImageFactory(dataset=True)  # a commit the paused standby never replays
        time.sleep(1)
        index = admin_client.get(reverse("admin:index")).content.decode()
        assert reverse("admin-replicas") in index
        page = admin_client.get(reverse("admin-replicas")).content.decode()
        assert ALIAS in page and "skipped" in page and "lagging" in page

        with CaptureQueriesContext(connections[ALIAS]) as on_replica:
            response = admin_client.get(reverse("similar", args=[photos[0].pk]))
        assert response.status_code == 200
        assert not _ranked_on(on_replica)
    finally:
        replica.execute("SELECT pg_wal_replay_resume()")

    # Caught up again; a bound no busy machine's replay can miss (this is no timing test).
    replica.replayed()
    settings.DATABASE_REPLICA_MAX_LAG_SECONDS = 60
    page = admin_client.get(reverse("admin-replicas")).content.decode()
    start = page.index('<table id="replicas">')
    table = page[start : page.index("</table>", start)]
    assert "in use" in table and re.search(r"<td>\d+\.\d s</td>", table), table


def test_a_stopped_standby_sends_reads_back_to_the_primary(
    client: Client, replica: Standby
) -> None:
    photos = _similar_to_stored()
    replica.replayed()
    url = reverse("similar", args=[photos[0].pk])
    with CaptureQueriesContext(connections[ALIAS]) as on_replica:
        assert client.get(url).status_code == 200
    assert _ranked_on(on_replica)

    # Stopped while this process still counts it usable: the request that meets the dead
    # connection is answered from the primary, and the replica is skipped from then on.
    replica.stop()
    with CaptureQueriesContext(connections["default"]) as on_primary:
        response = client.get(url)
    assert response.status_code == 200
    assert {photos[1].pk, photos[2].pk} <= _image_ids(response.content.decode())
    assert _ranked_on(on_primary)
    assert not replica_state(ALIAS).usable
    assert client.get(reverse("search"), {"q": ""}).status_code == 200
    assert client.get(reverse("home")).status_code == 200

"""Web and embedding workers as on separate machines (issue 20): every process in a working
directory of its own, with its own HOME, model cache and copy of the weights, and nothing shared
but URLs passed in the environment.

- web: gunicorn with the production settings; beat; two healthy Celery workers; a third worker
  whose copy of the ALIGN weights is missing (it loads CLIP only);
- PostgreSQL + pgvector over TCP with a password, the site connecting as a role that is not a
  superuser (the superuser first ran what ``manage.py db_setup_sql`` prints, as a DBA does);
- Redis with a password (broker, database 0; cache, database 1);
- no shared media folder: the images live in an S3 bucket. No MinIO binary is installable where
  the tests run; moto's standalone server (tests/s3_server.py) speaks the S3 protocol over HTTP,
  and the site reaches it through django-storages and boto3 as it would reach MinIO, S3 or R2.

Images arrive as a person sends them (sign-up and upload over HTTP, with the CSRF token) and
through the Flickr30k importer run on the web's host. Each worker's log (the pipeline's DEBUG
lines, on through tests/multi_host_settings.py) names the images its model embedded: summed over
the workers' own logs, every image went through each enabled model exactly once.
"""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import requests
from celery import Celery

from tests.multi_host import (
    Host,
    batch_in_hand,
    celery_beat,
    celery_worker,
    embedded_by,
    flickr30k_like,
    gunicorn_web,
    manage,
    postgres_over_tcp,
    redis_with_password,
    stop_all,
    wait_for,
)
from tests.run_site import free_port
from tests.s3_server import s3_bucket_serving

pytestmark = pytest.mark.slow  # a whole deployment in subprocesses

CLIP, ALIGN = "clip-vit-base-patch32", "align-base"
MODELS = (CLIP, ALIGN)
LEASE_SECONDS = 6
# The queues the workers take embedding batches from: one per model (workers.routing).
MODEL_QUEUES = [f"embed.{model_id}" for model_id in MODELS]
PASSWORD = "a-long-Passphrase-42!"


def jpeg(colour: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def test_web_and_workers_on_separate_hosts_embed_every_image_once(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    with (
        postgres_over_tcp(tmp_path / "db-host") as postgres,
        redis_with_password(tmp_path / "redis-host", secrets.token_hex(16)) as broker_url,
        s3_bucket_serving() as bucket,
    ):
        database_url = postgres.app_database(
            role="imagesearch", password=secrets.token_hex(16), database="imagesearch"
        )
        port = free_port()
        shared = {
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "CACHE_URL": broker_url.removesuffix("/0") + "/1",
            **bucket.environ,
            "EMBEDDING_MODELS": ",".join(MODELS),
            "EMBEDDING_DEVICE": "cpu",
            "EMBEDDING_BACKEND": "torch",
            "EMBEDDING_BATCH_SIZE": "8",
            "EMBEDDING_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
            "EMBEDDING_SWEEP_SECONDS": "2",
            "WORKER_HEARTBEAT_SECONDS": "1",
            "WORKER_STALE_SECONDS": "6",
            # Plain HTTP on loopback: the README's settings for a trial without TLS.
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "SESSION_COOKIE_SECURE": "false",
            "CSRF_COOKIE_SECURE": "false",
            "SECURE_HSTS_SECONDS": "0",
            "LOG_FORMAT": "text",  # the workers' lines are read back (tests/multi_host.py)
        }
        worker_env = {**shared, "DJANGO_SETTINGS_MODULE": "tests.multi_host_settings"}
        web = Host(tmp_path, "web-host", {**shared, "WEB_WORKERS": "1"})
        web.env["EMBEDDING_MODEL_SOURCES"] = web.models_copy(tiny_model_dirs)
        beat = Host(tmp_path, "beat-host", shared)
        workers = {name: Host(tmp_path, f"{name}-host", worker_env) for name in ("a", "b", "c")}
        for worker in workers.values():
            worker.env["EMBEDDING_MODEL_SOURCES"] = worker.models_copy(tiny_model_dirs)
        # Host c stands for a GPU host: bigger batches, so CLIP's queued batches are its size
        # (the biggest a live worker serving the model takes) and a and b split them in 8s.
        workers["c"].env["EMBEDDING_BATCH_SIZE"] = "48"
        # Host c's copy of ALIGN never arrived: it can load CLIP only.
        broken = workers["c"].dir / "models" / ALIGN
        for path in sorted(broken.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        broken.rmdir()
        hosts = [web, beat, *workers.values()]
        logs = [h.log for h in hosts]
        control = Celery(broker=broker_url)
        db: psycopg.Connection | None = None
        try:
            # Migrations as the site's own role (not a superuser).
            manage(web, "migrate", "--noinput")
            with psycopg.connect(postgres.superuser("imagesearch")) as conn:
                rolsuper = conn.execute(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = 'imagesearch'"
                ).fetchone()
                assert rolsuper == (False,)
                owner = conn.execute(
                    "SELECT tableowner FROM pg_tables WHERE tablename = 'gallery_image'"
                ).fetchone()
                assert owner == ("imagesearch",)

            gunicorn_web(web, port)
            celery_beat(beat)
            for node, worker in workers.items():
                celery_worker(worker, f"{node}@host-{node}")
            db = psycopg.connect(postgres.superuser("imagesearch"), autocommit=True)

            def query(sql: str, *args: object) -> list[tuple]:
                return db.execute(sql, args).fetchall()

            def loads(node: str) -> tuple | None:
                rows = query(
                    "SELECT models_loaded, models_failed FROM workers_worker WHERE name = %s",
                    f"{node}@host-{node}",
                )
                return rows[0] if rows else None

            for node in workers:
                wait_for(lambda n=node: loads(n), 180, f"worker {node}'s heartbeat", *logs)
            for node in ("a", "b"):
                assert sorted(loads(node)[0]) == sorted(MODELS) and loads(node)[1] == {}
            loaded, failed = loads("c")
            assert loaded == [CLIP] and "no such directory" in failed[ALIGN], (loaded, failed)
            # Live workers load both models: neither is unavailable, whatever c says.
            wait_for(
                lambda: query("SELECT DISTINCT unavailable_reason FROM search_embeddingmodel")
                == [("",)],
                30, "both models available", *logs,
            )  # fmt: skip

            base = f"http://127.0.0.1:{port}"

            def healthz() -> dict | None:
                try:
                    answer = requests.get(f"{base}/healthz", timeout=10)
                except requests.ConnectionError:
                    return None
                return answer.json() if answer.status_code == 200 else None

            ready = wait_for(healthz, 180, "the web's /healthz", *logs)
            assert ready["status"] == "ok" and ready["storage"] == "ok", ready

            # --- Uploads over HTTP: sign up, then the upload page's JSON posts.
            browser = requests.Session()
            browser.get(f"{base}/accounts/signup/", timeout=30).raise_for_status()
            signed_up = browser.post(
                f"{base}/accounts/signup/",
                data={
                    "csrfmiddlewaretoken": browser.cookies["csrftoken"], "username": "ana",
                    "password1": PASSWORD, "password2": PASSWORD,
                },
                timeout=30,
            )  # fmt: skip
            assert signed_up.status_code == 200 and "sessionid" in browser.cookies, signed_up.text
            # Host c alone takes the uploads' batches at first: it embeds their CLIP; it never
            # took ALIGN's queue (it cannot load ALIGN), so ALIGN's batch waits there.
            healthy = ["a@host-a", "b@host-b"]
            for name in MODEL_QUEUES:
                assert control.control.cancel_consumer(
                    name, destination=healthy, reply=True, timeout=10
                ), "workers a and b did not answer"
            uploaded = []
            browser.get(f"{base}/upload/", timeout=30).raise_for_status()
            for n in range(4):
                answer = browser.post(
                    f"{base}/upload/",
                    data={"visibility": "private"},
                    files={"file": (f"upload-{n}.jpg", jpeg((n * 60, 120, 30)), "image/jpeg")},
                    headers={
                        "Accept": "application/json", "X-CSRFToken": browser.cookies["csrftoken"],
                    },
                    timeout=60,
                )  # fmt: skip
                assert answer.status_code == 201, answer.text
                uploaded.append(answer.json()["id"])
            wait_for(
                lambda: {(CLIP, i) for i in uploaded} <= set(embedded_by(workers["c"].read_log())),
                120, "worker c to embed the uploads with CLIP", *logs,
            )  # fmt: skip
            # Not held against the model: the site keeps ALIGN (a and b load it), and the
            # uploads wait for them with nothing against them, as the person sees.
            assert query(
                "SELECT unavailable_reason FROM search_embeddingmodel WHERE model_id = %s", ALIGN
            ) == [("",)]
            status = browser.get(f"{base}/images/{uploaded[0]}/status", timeout=30).json()
            align = next(m for m in status["models"] if m["model_id"] == ALIGN)
            assert align["state"] == "pending" and align["reason"] == "", status
            assert not query("SELECT 1 FROM search_imageembedding WHERE model_id = %s", ALIGN), (
                "an ALIGN embedding before any worker that loads ALIGN took its queue"
            )
            for name in MODEL_QUEUES:
                assert control.control.add_consumer(
                    name, destination=healthy, reply=True, timeout=10
                )
            # --- The importer on the web's host: its files go to the bucket.
            csv_path, images_dir = flickr30k_like(
                web.dir / "flickr30k", 12, first=5000, size=(96, 72)
            )
            manage(web, "import_flickr30k", "--csv", str(csv_path), "--images", str(images_dir))

            def embedded_pairs() -> set[tuple[str, int]]:
                rows = query("SELECT model_id, image_id FROM search_imageembedding")
                return {(m, i) for m, i in rows}

            image_ids = {i for (i,) in query("SELECT id FROM gallery_image")}
            assert len(image_ids) == 16 and set(uploaded) <= image_ids
            wanted = {(m, i) for m in MODELS for i in image_ids}
            wait_for(lambda: embedded_pairs() == wanted, 180, "every embedding", *logs)

            def model_calls_covering(
                pairs: set[tuple[str, int]],
            ) -> Counter[tuple[str, int]] | None:
                """(model, image) -> times embedded, summed over the workers' own logs, once
                they name exactly ``pairs``."""
                calls: Counter[tuple[str, int]] = Counter()
                for worker in workers.values():
                    calls.update(embedded_by(worker.read_log()))
                return calls if set(calls) == pairs else None

            # The log line follows the stored rows: wait for the last to be written.
            calls = wait_for(lambda: model_calls_covering(wanted), 30, "the logs", *logs)
            assert set(calls.values()) == {1}, calls
            assert not any(m == ALIGN for m, _ in embedded_by(workers["c"].read_log()))
            # Per image and model: one row, one finished job; the model never left the site.
            assert query(
                "SELECT count(*), count(DISTINCT (model_id, image_id)) FROM search_imageembedding"
            ) == [(32, 32)]
            assert query("SELECT DISTINCT status FROM search_embeddingjob") == [("done",)]
            assert query(
                "SELECT model_id, unavailable_reason FROM search_embeddingmodel ORDER BY 1"
            ) == [(ALIGN, ""), (CLIP, "")]
            # Each worker read the images from the bucket: no host has a media folder.
            assert not [p for h in hosts for p in h.dir.rglob("media")]
            assert len(bucket.keys()) >= 16

            # --- A worker dies mid-batch: its batch is done by another once its lease ends.
            csv_path, images_dir = flickr30k_like(
                web.dir / "flickr30k-2", 48, first=6000, size=(1600, 1200)
            )
            # CLIP's 48 are queued as one batch (host c's size), which a or b would embed in
            # sub-batches of 8 and c in one pass: a run long enough to catch.
            manage(web, "import_flickr30k", "--csv", str(csv_path), "--images", str(images_dir))
            new = sorted({i for (i,) in query("SELECT id FROM gallery_image")} - image_ids)
            assert len(new) == 48

            def victim() -> tuple[str, str, list[int]] | None:
                for node in workers:
                    for model_id in MODELS:
                        hand = batch_in_hand(workers[node].read_log(), model_id)
                        # At least two sub-batches to go: the kill lands mid-batch.
                        if len(hand) >= 16:
                            return node, model_id, hand
                return None

            node, model_id, hand = wait_for(victim, 120, "a worker mid-batch", *logs)
            workers[node].kill()
            killed = workers[node].read_log()
            lost = batch_in_hand(killed, model_id)
            assert lost, f"worker {node} finished its batch before it died:\n{killed[-3000:]}"
            (lease_end,) = query(
                "SELECT max(lease_until) FROM search_embeddingjob "
                "WHERE model_id = %s AND image_id = ANY(%s)", model_id, lost,
            )[0]  # fmt: skip
            assert lease_end is not None
            assert not query(
                "SELECT 1 FROM search_imageembedding WHERE model_id = %s AND image_id = ANY(%s)",
                model_id, lost,
            )  # fmt: skip

            every = {(m, i) for m in MODELS for i in image_ids | set(new)}
            # Redis would hand the dead worker's unacknowledged message out again only after
            # its visibility timeout (an hour): within this wait, only the lease and the sweep
            # can have sent the batch again.
            wait_for(lambda: embedded_pairs() == every, 180, "the dead worker's batch", *logs)
            survivors = [other for other in workers if other != node]
            # Taken again only once the dead worker's lease had run out (the database's clock),
            # never while it might still have been running; then by a live worker, once.
            (taken_again,) = query(
                "SELECT min(started_at) FROM search_embeddingjob "
                "WHERE model_id = %s AND image_id = ANY(%s)", model_id, lost,
            )[0]  # fmt: skip
            assert taken_again >= lease_end
            calls = wait_for(lambda: model_calls_covering(every), 30, "the logs", *logs)
            assert set(calls.values()) == {1}, calls
            redone = [pair for n in survivors for pair in embedded_by(workers[n].read_log())]
            assert {(model_id, i) for i in lost} <= set(redone)
            assert query("SELECT DISTINCT status FROM search_embeddingjob") == [("done",)]
            # The web still reports the live workers, and both models as theirs.
            report = wait_for(healthz, 60, "/healthz", *logs)
            assert report["workers"]["live"] >= 2, report
            assert set(report["workers"]["models"]) >= set(MODELS), report
        finally:
            stop_all(hosts)
            control.close()
            if db is not None:
                db.close()

"""config/gunicorn.py as ./run uses it, plus one log line when a worker's warm-up is over.

The bench needs to know when every worker is ready (post_worker_init has loaded and warmed the
query encoder, so the worker accepts requests) without sending a search, so that the first
query after "ready" can be timed on its own. Everything else is the product's config.
"""

from typing import Any

from config import gunicorn as _product
from config.gunicorn import *  # noqa: F403

READY_LINE = "bench: worker warm"


def post_worker_init(worker: Any) -> None:
    _product.post_worker_init(worker)
    worker.log.info("%s (pid %s)", READY_LINE, worker.pid)

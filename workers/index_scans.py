"""How the HNSW indexes are scanned: pgvector's query-time settings, given per transaction.

The settings (``settings.HNSW_ITERATIVE_SCAN``, and ``hnsw.ef_search`` for the one-model search:
``settings.HNSW_EF_SEARCH``, a page's depth by ``hnsw_ef_search``) are set with ``SET LOCAL`` inside
the transaction that runs the index queries, never for the session or as a connection start-up
option: a transaction pooler (PgBouncer in transaction mode) hands each transaction whichever server
connection is free and carries neither start-up options nor session ``SET``s, and a session ``SET``
made through it would leak to other clients' transactions on that connection. A ``SET LOCAL`` ends
with its transaction, with or without a pooler, on the primary or a replica.

Operators may also set them per role (``ALTER ROLE imagesearch SET hnsw.iterative_scan =
'strict_order'``), which every server connection of that role starts with; the ``SET LOCAL``
here then changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connections, router, transaction

from workers.models import ImageEmbedding


@contextmanager
def hnsw_scan_transaction(
    *, using: str | None = None, ef_search: int | None = None
) -> Iterator[str]:
    """A transaction in which HNSW index scans run with the site's settings: pgvector's
    iterative scan (``HNSW_ITERATIVE_SCAN``), which keeps scanning past rows a filter drops
    until the LIMIT is met instead of returning a short page.

    ``using``: the database alias; by default the one the router reads embeddings from. It is
    yielded: the index queries must run on it (``queryset.using(alias)``), as a ``SET LOCAL``
    holds only on its own connection. Inside an outer transaction (a test, an atomic request)
    it joins that one (no savepoint: these are reads) and the settings hold until it ends.

    ``ef_search``: hnsw.ef_search for this transaction too (the scan's candidate list; None
    leaves the server's), for index queries that read deeper than one page.
    """
    alias = using or router.db_for_read(ImageEmbedding)
    with transaction.atomic(using=alias, savepoint=False):
        with connections[alias].cursor() as cursor:
            # set_config(..., true) is SET LOCAL with the value as a parameter.
            if ef_search is None:
                cursor.execute(
                    "SELECT set_config('hnsw.iterative_scan', %s, true)",
                    [settings.HNSW_ITERATIVE_SCAN],
                )
            else:
                cursor.execute(
                    "SELECT set_config('hnsw.iterative_scan', %s, true), "
                    "set_config('hnsw.ef_search', %s, true)",
                    [settings.HNSW_ITERATIVE_SCAN, str(ef_search)],
                )
        yield alias


# pgvector's largest hnsw.ef_search: a query reading more goes on by the iterative scan.
HNSW_EF_SEARCH_MAX = 1000


def hnsw_ef_search(candidates: int) -> int:
    """The hnsw.ef_search for an index query that reads ``candidates`` rows: the site's
    ``HNSW_EF_SEARCH``, or more when the query reads more (a deeper page, more rerank
    candidates), so one pass of the index's candidate list holds them (an iterative scan
    would otherwise go on past it, in small steps), up to pgvector's HNSW_EF_SEARCH_MAX."""
    return min(max(settings.HNSW_EF_SEARCH, candidates), HNSW_EF_SEARCH_MAX)

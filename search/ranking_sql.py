"""The ranking statement a search runs: one model's nearest images in a scope, written out as
SQL with the query vector bound as one binary parameter.

``search.ranking.embeddings_ranked`` builds the same query with the ORM, and stays the
reference (evaluation, benchmarks, EXPLAIN tests); searches run this one because building and
compiling that queryset, with two 512-float text literals in a ~20 KB statement, was most of a
cached search's CPU in the web process (bench/request_cpu.py; the figures are in
bench/README.md). Here the statement's text depends only on the model's dimension, the path
(index or exact) and the scope's own SQL, and the vector travels as pgvector's binary
``vector`` (2 + 2 + 4 x dim bytes) instead of ~10 KB of decimal text PostgreSQL must parse.

The scope (which images the searcher may see, and the search's filters) stays an ORM queryset
(``search.ranking``'s ``_filtered_images``), compiled to SQL and inlined as a subquery: one
definition of privacy, whatever filters are added to it.

How the parameters are bound: server side, on a psycopg cursor of Django's own connection for
the alias (so the replica router's choice, the stall watchdog and Django's query capture see
the statement), with the extended query protocol and an unnamed statement. The connections
never prepare named statements (``prepare_threshold`` is None), so it runs unchanged behind
PgBouncer in transaction mode, whose 1.18 cannot route named prepared statements. The vector's
parameter is sent with type oid 0 and the statement casts it (``::vector``): the server reads
the binary value with the type the cast names, so no per-connection type lookup
(``pgvector.psycopg.register_vector``, a round trip per new connection) is needed, and no loader
is registered that would change what Django's other queries read.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from django.db import connections, router
from django.db.backends.utils import CursorWrapper
from django.db.models import QuerySet
from psycopg.adapt import Dumper
from psycopg.pq import Format

from gallery.models import Caption, Image
from workers.models import ImageEmbedding


class BinaryVector:
    """A query vector to bind as pgvector's binary ``vector`` (big-endian float32)."""

    __slots__ = ("payload",)

    def __init__(self, vector: Sequence[float] | np.ndarray) -> None:
        values = np.asarray(vector, dtype=">f4").ravel()
        # pgvector's vector_recv: int16 dimension, int16 unused, then the float4s.
        self.payload = struct.pack(">HH", values.size, 0) + values.tobytes()


class _BinaryVectorDumper(Dumper):
    format = Format.BINARY
    oid = 0  # unknown: the statement's ::vector cast gives the parameter its type

    def dump(self, obj: BinaryVector) -> bytes:
        return obj.payload


@contextmanager
def binding_cursor(alias: str) -> Iterator[CursorWrapper]:
    """A cursor of Django's connection ``alias`` that binds parameters on the server (so a
    ``BinaryVector`` goes as binary), wrapped as Django wraps its own cursors."""
    connection = connections[alias]
    connection.ensure_connection()
    raw = psycopg.Cursor(connection.connection)
    raw.adapters.register_dumper(BinaryVector, _BinaryVectorDumper)
    # Django's wrappers take any DB-API cursor; the stubs name only their own.
    inner: Any = raw
    wrapped = (
        connection.make_debug_cursor(inner)
        if connection.queries_logged
        else connection.make_cursor(inner)
    )
    try:
        yield wrapped
    finally:
        raw.close()


def scope_sql(images: QuerySet[Image], *, alias: str) -> tuple[str, tuple[Any, ...]]:
    """``images``' ids as a subquery: its SQL (``%s`` placeholders) and parameters."""
    # Unordered, as the ORM's own ``image__in=images`` makes it: Image's default ordering
    # would sort the whole scope before the index scan could use it.
    return images.order_by().values("pk").query.get_compiler(using=alias).as_sql()


# The image columns a hit carries, in model order (``Image.from_db`` takes them positionally).
# The stored words (a tsvector) are left out: no hit shows them.
_IMAGE_FIELDS = [field.attname for field in Image._meta.concrete_fields if not field.generated]


@functools.lru_cache(maxsize=64)
def _statement(*, dim: int, exact: bool, hits: bool, scope: str) -> str:
    """The ranking statement for one shape. Parameters, by name: ``vector`` (a BinaryVector),
    ``model_id``, ``candidates`` (index path), ``limit``, ``offset``; the scope's own
    positional ``%s`` parameters are turned into named ones (``scope_0``, ...)."""
    embeddings = ImageEmbedding._meta.db_table
    images = Image._meta.db_table
    captions = Caption._meta.db_table
    scope = _named_scope(scope)
    query = "(%(vector)s::vector)"
    if exact:
        # The scope's ids first (an InitPlan, as below), then each one's embedding by the
        # image_id index: with ``IN (scope)`` the planner hashed the scope and scanned every
        # embedding of the model, as a narrow heap (the vectors are out of line) looks cheap
        # to scan: 9 ms warm against 4 for a month's 247 photos at 31,783 images. A scope
        # near EXACT_SEARCH_MAX_ROWS pays for it (14,000 photos: 115 ms against 94), but the
        # exact path is there for the few.
        where = f"e.model_id = %(model_id)s AND e.image_id = ANY(ARRAY({scope}))"
    else:
        # The candidates: the halfvec index of the model's partition answers this ORDER BY ...
        # LIMIT (the same cast as the index), the scope inside it so that an iterative scan
        # skips rows outside it. ANY(ARRAY(...)) is an InitPlan, run once (see
        # search.ranking._PkInArray); the candidates are then ranked by the full vectors.
        # The outer lookup names the model too, pruned to its partition's primary key.
        where = f"""e.model_id = %(model_id)s AND e.id = ANY(ARRAY(
            SELECT c.id FROM "{embeddings}" c
            WHERE c.model_id = %(model_id)s AND c.image_id IN ({scope})
            ORDER BY (c.vector::halfvec({dim})) <=> ({query}::halfvec({dim}))
            LIMIT %(candidates)s))"""
    columns = f"e.image_id, (e.vector <=> {query}) AS distance"
    join = ""
    if hits:
        image_columns = ", ".join(f'i."{name}"' for name in _IMAGE_FIELDS)
        columns += f""", ARRAY(
            SELECT t.text FROM "{captions}" t WHERE t.image_id = e.image_id
            ORDER BY t.position, t.id) AS caption_texts, {image_columns}"""
        join = f'JOIN "{images}" i ON i.id = e.image_id'
    return f"""SELECT {columns} FROM "{embeddings}" e {join}
        WHERE {where}
        ORDER BY distance, e.id LIMIT %(limit)s OFFSET %(offset)s"""


def ranking_execute(
    cursor: CursorWrapper,
    *,
    model_id: str,
    dim: int,
    vector: Sequence[float] | np.ndarray,
    scope: tuple[str, tuple[Any, ...]],
    exact: bool,
    candidates: int,
    limit: int,
    offset: int,
    hits: bool,
    explain: bool = False,
) -> list[tuple[Any, ...]]:
    """Run the ranking statement on ``cursor`` (a ``binding_cursor``): rows of (image id,
    cosine distance), plus (caption texts, the image's columns...) with ``hits``; with
    ``explain``, its plan's lines (EXPLAIN, for the tests that check the index is used)."""
    scope_text, scope_params = scope
    params = _params(
        vector, scope_params, model_id=model_id, candidates=candidates, limit=limit, offset=offset
    )
    statement = _statement(dim=dim, exact=exact, hits=hits, scope=scope_text)
    cursor.execute(f"EXPLAIN {statement}" if explain else statement, params)
    return cursor.fetchall()


def _params(
    vector: Sequence[float] | np.ndarray, scope_params: Sequence[Any], **named: Any
) -> dict[str, Any]:
    """A statement's parameters: the query vector (binary), the scope's values as
    ``scope_<n>`` and ``named``."""
    return {
        "vector": BinaryVector(vector),
        **named,
        **{f"scope_{index}": value for index, value in enumerate(scope_params)},
    }


@functools.lru_cache(maxsize=64)
def _lists_statement(*, dims: tuple[int, ...], exact: tuple[bool, ...], scope: str) -> str:
    """Several models' nearest images in one statement (one round trip): per model, the ids
    of its ``depth`` nearest in the scope, in order, as rows (list, image id, position)."""
    embeddings = ImageEmbedding._meta.db_table
    scope = _named_scope(scope)
    branches = []
    for index, (dim, by_vector) in enumerate(zip(dims, exact, strict=True)):
        query = f"(%(vector_{index})s::vector)"
        # The index's own expression (a halfvec index on each model's partition), or the full
        # vectors for a list the index left short (a scan of every row in scope).
        order = (
            f"c.vector <=> {query}"
            if by_vector
            else f"(c.vector::halfvec({dim})) <=> ({query}::halfvec({dim}))"
        )
        branches.append(
            f"""SELECT {index} AS list, u.image_id, u.position FROM unnest(ARRAY(
                SELECT c.image_id FROM "{embeddings}" c
                WHERE c.model_id = %(model_{index})s AND c.image_id IN ({scope})
                ORDER BY {order} LIMIT %(depth)s)) WITH ORDINALITY AS u(image_id, position)"""
        )
    return "\nUNION ALL\n".join(branches)


def nearest_lists_execute(
    cursor: CursorWrapper,
    *,
    lists: Sequence[tuple[str, int, Sequence[float] | np.ndarray, bool]],
    scope: tuple[str, tuple[Any, ...]],
    depth: int,
) -> list[list[int]]:
    """Each of ``lists`` (model id, dimension, query vector, exact?) as the ids of its model's
    ``depth`` nearest images in ``scope``, nearest first, from one statement on ``cursor``."""
    scope_text, scope_params = scope
    params: dict[str, Any] = {
        "depth": depth,
        **{f"scope_{index}": value for index, value in enumerate(scope_params)},
    }
    for index, (model_id, _, vector, _) in enumerate(lists):
        params[f"model_{index}"] = model_id
        params[f"vector_{index}"] = BinaryVector(vector)
    statement = _lists_statement(
        dims=tuple(dim for _, dim, _, _ in lists),
        exact=tuple(exact for *_, exact in lists),
        scope=scope_text,
    )
    cursor.execute(statement, params)
    found: list[list[int]] = [[] for _ in lists]
    for index, image_id, _ in sorted(cursor.fetchall(), key=lambda row: (row[0], row[2])):
        found[index].append(image_id)
    return found


def _named_scope(scope: str) -> str:
    # Only the scope's placeholders are %s: each becomes a named one, in order.
    parts = scope.replace("%%", "\0").split("%s")
    return "".join(
        part + (f"%(scope_{index})s" if index < len(parts) - 1 else "")
        for index, part in enumerate(parts)
    ).replace("\0", "%%")


def image_of_row(row: Sequence[Any], *, alias: str) -> Image:
    """The ``Image`` of a ``hits`` row (its columns after image id, distance, captions)."""
    return Image.from_db(alias, _IMAGE_FIELDS, row[3:])


@functools.cache
def _images_statement() -> str:
    images = Image._meta.db_table
    captions = Caption._meta.db_table
    image_columns = ", ".join(f'i."{name}"' for name in _IMAGE_FIELDS)
    return f"""SELECT ARRAY(
        SELECT t.text FROM "{captions}" t WHERE t.image_id = i.id ORDER BY t.position, t.id
        ), {image_columns} FROM "{images}" i WHERE i.id = ANY(%s)"""


def images_with_captions_execute(image_ids: Sequence[int]) -> dict[int, Image]:
    """The images ``image_ids`` (those that exist), each carrying ``caption_texts`` (its
    captions' texts in order): one written-out statement, where the ORM's ``in_bulk`` with an
    array subquery spent about 1 ms of a hybrid or fused page compiling it."""
    if not image_ids:
        return {}
    alias = router.db_for_read(Image)
    with connections[alias].cursor() as cursor:
        cursor.execute(_images_statement(), [list(image_ids)])
        rows = cursor.fetchall()
    found = {}
    for captions, *columns in rows:
        image = Image.from_db(alias, _IMAGE_FIELDS, columns)
        image.caption_texts = captions  # type: ignore[attr-defined]
        found[image.pk] = image
    return found


def keyword_expressions(config: str) -> tuple[str, str, str]:
    """The stored words of an image (table alias ``i``) and of a caption (alias ``t``), which
    the GIN indexes ``image_words`` and ``caption_words`` hold (gallery.models IMAGE_WORDS and
    CAPTION_WORDS), and the query of ``%(any_word)s`` in the configuration ``config``, as SQL."""
    regconfig = f"'{config}'::regconfig"
    return (
        'i."search_words"',
        't."search_words"',
        f"websearch_to_tsquery({regconfig}, %(any_word)s)",
    )


@functools.lru_cache(maxsize=64)
def _hybrid_statement(*, dim: int, exact: bool, scope: str, config: str) -> str:
    """Hybrid search's three lists in one statement (one round trip, the query vector bound
    once): the vector side (``_statement``'s ranking, ``limit`` deep), the keyword side and
    the cosine distances of the keyword matches the vector side did not hold. Rows are (side,
    image id, value): side 0 a distance of the vector ranking, 1 a keyword score, 2 a
    distance of a keyword-only match (NULL without an embedding: each is looked up by its
    image, about 300 index probes, where a join let the planner scan every embedding of the
    model, 10 of a hybrid search's 18 ms at 31,783 images). Cached per (dimension, path,
    scope's SQL): the scope's text is the filter shape, its values are parameters.

    The keyword side is ``search.hybrid.keyword_candidates`` written out: each of its three
    lists keeps its own ORDER BY ... LIMIT, so each stays a query its GIN index serves; the
    words are the indexed columns (gallery.models IMAGE_WORDS and CAPTION_WORDS, stored in
    their rows)."""
    embeddings = ImageEmbedding._meta.db_table
    images = Image._meta.db_table
    captions = Caption._meta.db_table
    by_vector = _statement(dim=dim, exact=exact, hits=False, scope=scope)
    scope = _named_scope(scope)
    image_words, caption_words, tsquery = keyword_expressions(config)
    # max(0, ...) as keyword_candidates merges its lists (a score starts at 0.0). The scores
    # are real (ts_rank, similarity); ::text::float8 reads one as a float4 column's text reads
    # in Python (the shortest decimal that names it), the value the ORM's queries returned.
    return f"""WITH by_vector AS MATERIALIZED ({by_vector}),
        by_words AS MATERIALIZED (
          SELECT found.image_id, GREATEST(0, max(found.score)) AS score FROM (
            (SELECT i.id AS image_id, ts_rank({image_words}, {tsquery}) AS score
             FROM "{images}" i WHERE i.id IN ({scope}) AND {image_words} @@ ({tsquery})
             ORDER BY 2 DESC, 1 LIMIT %(depth)s)
            UNION ALL
            (SELECT t.image_id, max(ts_rank({caption_words}, {tsquery}))
             FROM "{captions}" t WHERE t.image_id IN ({scope}) AND {caption_words} @@ ({tsquery})
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(depth)s)
            UNION ALL
            (SELECT i.id, similarity(i."original_filename", %(words)s)
             FROM "{images}" i WHERE i.id IN ({scope}) AND i."original_filename" %% %(words)s
             ORDER BY 2 DESC, 1 LIMIT %(depth)s)
          ) found GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(depth)s)
        SELECT 0, v.image_id, v.distance::float8 FROM by_vector v
        UNION ALL
        SELECT 1, w.image_id, w.score::text::float8 FROM by_words w
        UNION ALL
        SELECT 2, w.image_id, (
          SELECT e.vector <=> (%(vector)s::vector) FROM "{embeddings}" e
          WHERE e.model_id = %(model_id)s AND e.image_id = w.image_id)
        FROM by_words w WHERE w.image_id NOT IN (SELECT image_id FROM by_vector)"""


def hybrid_execute(
    cursor: CursorWrapper,
    *,
    model_id: str,
    dim: int,
    vector: Sequence[float] | np.ndarray,
    scope: tuple[str, tuple[Any, ...]],
    exact: bool,
    depth: int,
    words: str,
    any_word: str,
    config: str,
    candidates: int,
) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """Run ``_hybrid_statement`` on ``cursor`` (a ``binding_cursor``): the vector side (image
    id -> cosine distance, ``depth`` nearest, from ``candidates`` index candidates unless
    ``exact``); the keyword side (image id -> score); and the cosine distances of the
    keyword-only matches (image id -> distance). ``words`` are the words as typed (for
    trigrams), ``any_word`` them as a websearch "or" query."""
    scope_text, scope_params = scope
    params = _params(
        vector, scope_params, model_id=model_id, candidates=candidates, limit=depth, offset=0,
        depth=depth, words=words, any_word=any_word,
    )  # fmt: skip
    statement = _hybrid_statement(dim=dim, exact=exact, scope=scope_text, config=config)
    cursor.execute(statement, params)
    sides: tuple[dict[int, float], dict[int, float], dict[int, float]] = ({}, {}, {})
    for side, image_id, value in cursor.fetchall():
        if value is not None:  # None: a keyword match without an embedding of the model
            sides[side][image_id] = value
    return sides

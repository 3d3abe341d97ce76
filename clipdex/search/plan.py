"""Which rows answer a search, in order: the plan (exact sort over the filtered rows, or the
model's HNSW index with pgvector's iterative scan) and its SQL; and a browse (no query), newest
first through the (taken_at DESC NULLS LAST, id DESC) index."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import psycopg
from pgvector import HalfVector

from clipdex.search.filters import Filters
from clipdex.search.query_vector import as_halfvec
from clipdex.vocabulary import EF_SEARCH, MAX_SCAN_TUPLES

EXACT_SCAN_MIN_ROWS = 500      # bounds of the exact-sort threshold (see exact_scan_limit)
EXACT_SCAN_MAX_ROWS = 20_000


def _count_filtered(conn: psycopg.Connection, model_id: int, where: str, params: list, cap: int) -> int:
    return conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM images i WHERE {where} AND EXISTS (SELECT 1 FROM embeddings e "
        f"WHERE e.image_id = i.id AND e.model_id = %s) LIMIT %s) s", [*params, model_id, cap]).fetchone()[0]


def exact_scan_limit(conn: psycopg.Connection, limit: int) -> int:
    """How many filtered rows an exact sort may take before the index is cheaper.

    The exact sort costs a fixed time per filtered row (fetch the vector, one distance); the
    filtered index scan walks about limit / selectivity rows of the graph. With N vectors they
    break even near sqrt(3·limit·N) filtered rows (fitted on bench/search.py at 100k and 1M).
    """
    total = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'embeddings'::regclass").fetchone()[0]
    return int(min(EXACT_SCAN_MAX_ROWS, max(EXACT_SCAN_MIN_ROWS, math.sqrt(3 * limit * max(total, 1.0)))))


def ranked_ids(conn: psycopg.Connection, model_id: int, dim: int, query: np.ndarray, filters: Filters,
               limit: int, after: tuple[float, int] | None, *, iterative: bool,
               exact_max_rows: int | None = None,
               ef_search: int = EF_SEARCH) -> tuple[list[tuple[int, float]], str, int | None]:
    """The ids and distances of the next `limit` rows, and which strategy produced them.

    Every plan is made for the actual filter values (plan_cache_mode = force_custom_plan): a
    generic plan of a prepared statement cannot know whether a filter keeps 50 % or 0.05 % of
    the rows, and picks the wrong way to find them.
    """
    where, params = filters.sql()
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        filtered = None
        if exact_max_rows is None:
            exact_max_rows = exact_scan_limit(conn, limit)
        if filters.active:
            filtered = _count_filtered(conn, model_id, where, params, exact_max_rows + 1)
            if filtered == 0:
                return [], "exact", 0
        use_index = filtered is None or filtered > exact_max_rows
        vector = as_halfvec(query)
        rows = _ranked(conn, model_id, dim if use_index else None, vector, where, params, limit, after,
                       iterative, ef_search)
        if use_index and len(rows) < limit:
            # Short: the scan bound was reached, or pgvector 0.7 has no iterative scan. Only an
            # exact sort can say whether more rows exist, and it gives them in the right order.
            exact = _ranked(conn, model_id, None, vector, where, params, limit, after, iterative, ef_search)
            return exact, "exact", filtered
        return rows, "hnsw" if use_index else "exact", filtered


def _ranked(conn: psycopg.Connection, model_id: int, index_dim: int | None, query: HalfVector, where: str,
            params: list, limit: int, after: tuple[float, int] | None, iterative: bool,
            ef_search: int) -> list[tuple[int, float]]:
    """One ranking query. With ``index_dim`` the distance is written exactly as the model's HNSW
    index expression (``embedding::halfvec(dim)``, model_id constant) so the planner can use it;
    without, the plain expression matches no index and the filtered rows are sorted exactly."""
    if index_dim is None:
        distance = "e.embedding <=> %s::halfvec"
    else:
        distance = f"e.embedding::halfvec({index_dim}) <=> %s::halfvec({index_dim})"
    keyset, keyset_params = "", []
    if after is not None:
        keyset = f" AND ({distance}, e.image_id) > (%s, %s)"
        keyset_params = [query, after[0], after[1]]
    sql = (f"SELECT e.image_id, {distance} AS distance FROM embeddings e JOIN images i ON i.id = e.image_id "
           f"WHERE e.model_id = {int(model_id)} AND {where}{keyset} ORDER BY distance, e.image_id LIMIT %s")
    if index_dim is not None:
        conn.execute(f"SET LOCAL hnsw.ef_search = {int(max(ef_search, min(1000, 2 * limit)))}")
        if iterative:
            conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            conn.execute(f"SET LOCAL hnsw.max_scan_tuples = {MAX_SCAN_TUPLES}")
    return [tuple(r) for r in conn.execute(sql, [query, *params, *keyset_params, limit])]


def newest_ids(conn: psycopg.Connection, model_id: int, filters: Filters, limit: int,
               after: tuple[datetime | None, int] | None) -> list[tuple[int, datetime | None]]:
    """(id, taken_at) of the next ``limit`` images the filters keep, newest first; photos of unknown
    time come last; equal times by descending id, so pages never repeat or skip a photo."""
    where, params = filters.sql()
    keyset, keyset_params = "", []
    if after is not None:
        taken_at, image_id = after
        if taken_at is None:
            keyset, keyset_params = " AND i.taken_at IS NULL AND i.id < %s", [image_id]
        else:
            keyset = " AND (i.taken_at < %s OR (i.taken_at = %s AND i.id < %s) OR i.taken_at IS NULL)"
            keyset_params = [taken_at, taken_at, image_id]
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return [tuple(r) for r in conn.execute(
            f"SELECT i.id, i.taken_at FROM images i WHERE {where}{keyset} AND EXISTS (SELECT 1 FROM embeddings e "
            f"WHERE e.image_id = i.id AND e.model_id = {int(model_id)}) "
            "ORDER BY i.taken_at DESC NULLS LAST, i.id DESC LIMIT %s", [*params, *keyset_params, limit])]

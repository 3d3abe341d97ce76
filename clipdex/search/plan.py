"""Which rows answer a search, in order: the plan (exact sort over the filtered rows, or the
model's HNSW index with pgvector's iterative scan) and its SQL; and a browse (no query), newest
first through the (taken_at DESC NULLS LAST, id DESC) index."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Sequence

import numpy as np
import psycopg
from pgvector import HalfVector

from clipdex import vector_cells
from clipdex.search import lost_walks
from clipdex.search.filters import Filters
from clipdex.search.query_vector import as_halfvec
from clipdex.vocabulary import CELL_PROBES, CELL_PROBES_SELECTIVE, EF_SEARCH, MAX_SCAN_TUPLES

EXACT_SCAN_MIN_ROWS = 500      # bounds of the exact-sort threshold (see exact_scan_limit)
EXACT_SCAN_MAX_ROWS = 20_000
CANDIDATE_COST = 6            # a walked candidate costs this many filtered rows of the exact sort
FILTER_COST_PER_ROW = 0.5     # a filter costing more a row it keeps weighs more rows (see filter_work)
COUNT_ABOVE_ESTIMATE = 1.5    # estimates this many times the threshold skip the bounded count
EF_SEARCH_MAX = 1000          # pgvector's ceiling for hnsw.ef_search
SELECTIVE_SHARE = 0.1         # a filter the planner expects to keep less of the vectors than this
                              # walks CELL_PROBES cells (all again when the sample shows a miss) …
TIE_RATIO = 1.05              # with the cells whose centres are as near as the nearest's within
CELL_PROBES_TIED = 6          # this ratio, up to this many (see near_ties);
NARROW_SHARE = 0.03           # and one keeping less than this …
NARROW_EF_FACTOR = 2          # … with this many times the candidate list


def _exact_if_few(conn: psycopg.Connection, model_id: int, query: HalfVector, where: str, params: list,
                  most: int, limit: int, after: tuple[float, int] | None) -> tuple[int, list[tuple[int, float]]]:
    """How many photos the filters keep (counted up to ``most`` + 1), and when that is at most
    ``most``, the page by an exact sort over exactly their vectors; in one statement.

    The ids stay in the server: fetched into Python, sorted and sent back as a parameter, 5,000 of
    them cost 14 ms to fetch, 13 ms to send and 5 ms to plan (the planner weighs each element of a
    constant array) at a million photos, more than the sort itself (BENCHMARKS.md §4). As an
    array built in the statement, the pkey is walked in id order all the same."""
    distance = "e.embedding <=> %s::halfvec"
    keyset, keyset_params = lost_walks.rows_after(distance, query, after)
    rows = conn.execute(
        f"WITH kept AS MATERIALIZED (SELECT ARRAY(SELECT i.id FROM images i WHERE {where} LIMIT %s) AS ids) "
        f"SELECT cardinality(k.ids), r.image_id, r.distance FROM kept k LEFT JOIN LATERAL ("
        f"SELECT e.image_id, {distance} AS distance FROM embeddings e "
        f"WHERE cardinality(k.ids) <= %s AND e.model_id = {int(model_id)} AND e.image_id = ANY(k.ids){keyset} "
        f"ORDER BY distance, e.image_id LIMIT %s) r ON true",
        [*params, most + 1, query, most, *keyset_params, limit]).fetchall()
    return rows[0][0], [(r[1], r[2]) for r in rows if r[1] is not None]


def estimated_rows(conn: psycopg.Connection, where: str, params: list) -> float:
    """The planner's estimate of the photos the filters keep (from the column statistics, a
    fraction of a millisecond)."""
    return estimated_filter(conn, where, params)[0]


def estimated_filter(conn: psycopg.Connection, where: str, params: list) -> tuple[float, float]:
    """The planner's estimate of the photos the filters keep, and of the cost of finding them all
    (its cost units), in one EXPLAIN."""
    plan = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT i.id FROM images i WHERE {where}", params).fetchone()[0]
    return float(plan[0]["Plan"]["Plan Rows"]), float(plan[0]["Plan"]["Total Cost"])


def filter_work(rows: float, cost: float) -> float:
    """The work of an exact sort under a filter, in rows: the rows it keeps, or more when finding
    them costs more than FILTER_COST_PER_ROW a row in the planner's units. A B-tree filter (a camera
    make) costs 0.13-0.29 a row; a date range crossed with a source joins every file location and
    costs about 1.55 a row, at 100,000 photos as at a million, where finding its 22,000 photos
    takes 150-190 ms: counted first, it cost 90 ms more than the index alone for a page of 40
    (135.7 against 44.0 ms). At 0.5 it still goes to the exact sort at 100,000 photos for a page
    of 40 (14 ms, where the walk took 32) and to the index for 10 (7 ms against 15; BENCHMARKS.md §4)."""
    return max(rows, cost / FILTER_COST_PER_ROW)


def image_rows(conn: psycopg.Connection) -> float:
    """The photos in the library, as the planner last counted them."""
    return max(1.0, conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'images'::regclass").fetchone()[0])


def exact_scan_limit(total: float, limit: int, walked: int) -> int:
    """How many filtered rows an exact sort may take before the index is cheaper.

    The exact sort costs a fixed time per filtered row r (fetch the vector, one distance). The
    filtered index scan walks about limit·N / r candidates to find a page of ``limit`` among N
    vectors, plus the ``walked`` candidates every walk gathers first (its candidate lists, in
    each cell walked), each costing CANDIDATE_COST rows of the exact sort (a graph step and a
    join to the photo). They break even at r² = c·(walked·r + limit·N), c = CANDIDATE_COST. A
    candidate cost 4 rows at a million photos for a page of 10 under a 1 % filter (12.8 µs
    against 3.1), about 7 at 100,000 for a page of 40 under 5 % (the deeper an iterative scan
    goes, the dearer each candidate): c = 6. At a million photos in 16 cells (4 walked with
    lists of 400 under a narrow filter) the bound is about 13,900 rows for a page of 10 and the
    20,000 cap for 40: the 1 % filter (10,000 photos) is sorted exactly in 31 ms where the walk
    took 40, with recall 1.00 instead of 0.96-0.99. At 100,000 photos in one graph: 3,100 for 10,
    5,500 for 40, where the 5 % filter's exact sort took 10.5 ms against the walk's 14.4 (recall@40
    1.00 against 0.85; BENCHMARKS.md §4). (The bound was sqrt(3·limit·N): no ``walked``, c = 3.)
    """
    c = CANDIDATE_COST
    rows = (c * walked + math.sqrt((c * walked) ** 2 + 4 * c * limit * total)) / 2
    return int(min(EXACT_SCAN_MAX_ROWS, max(EXACT_SCAN_MIN_ROWS, rows)))


def near_ties(nearest: list[int], distances: list[float], least: int) -> list[int]:
    """The ``least`` nearest cells, and any further one whose centre is about as near as the
    nearest's (within TIE_RATIO). A query far from every photo (text) is nearly as far from many
    centres, and the photos it should find then lie in a fourth or fifth cell as often as in the
    third; a query near photos rarely has a tie, and walks ``least`` (BENCHMARKS.md §4)."""
    return [c for n, (c, d) in enumerate(zip(nearest, distances)) if n < least or d <= TIE_RATIO * distances[0]]


def ef_search_for(total: float, least: int) -> int:
    """The HNSW candidate list for a table of ``total`` vectors. A bigger library puts more
    near-ties around a query (more photos of each kind of scene), and a fixed list finds fewer
    of the true neighbours: bench/search.py measured recall@10 0.995 with 200 at 100k but 0.79
    at 1M, 0.95 with 1000. The list grows as (N / 100k)^0.7 from ``least``, up to pgvector's 1000."""
    return int(min(EF_SEARCH_MAX, max(least, least * (total / 100_000) ** 0.7)))


def ranked_ids(conn: psycopg.Connection, model_id: int, dim: int, query: np.ndarray, filters: Filters,
               limit: int, after: tuple[float, int] | None, *, iterative: bool,
               exact_max_rows: int | None = None,
               ef_search: int = EF_SEARCH) -> tuple[list[tuple[int, float]], str, int | None]:
    """The ids and distances of the next `limit` rows, and which strategy produced them.
    ``ef_search`` is the least HNSW candidate list; it grows with the table (ef_search_for).

    Every plan is made for the actual filter values (plan_cache_mode = force_custom_plan): a
    generic plan of a prepared statement cannot know whether a filter keeps 50 % or 0.05 % of
    the rows, and picks the wrong way to find them.
    """
    where, params = filters.sql()
    with conn.transaction():
        # A search is short: starting parallel workers costs more than they save below the
        # exact-sort bound (10 ms of 40 for 5,000 rows at 1M on 2 cores), and concurrent
        # searches use the cores anyway.
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL max_parallel_workers_per_gather = 0"
                     + (f"; SET LOCAL hnsw.iterative_scan = strict_order; SET LOCAL hnsw.max_scan_tuples = "
                        f"{MAX_SCAN_TUPLES}" if iterative else ""))
        filtered = None
        vector = as_halfvec(query)
        total, nearest, cell_count, sample_version, distances = vector_cells.route(
            conn, model_id, vector, CELL_PROBES_TIED)
        ef = ef_search_for(total / max(1, cell_count), ef_search)
        narrow_ef = min(EF_SEARCH_MAX, NARROW_EF_FACTOR * ef)
        if exact_max_rows is None:
            # (a filter near the bound is a narrow one: it walks the most cells, 3 to 6, about 4 on
            # average, with the widest lists)
            walked = CELL_PROBES_SELECTIVE * narrow_ef if nearest else ef
            exact_max_rows = exact_scan_limit(total, limit, walked)
        # Counting is only worth it near the threshold: a filter the planner expects to keep
        # far more rows, or that costs as much to evaluate, goes straight to the index (if it
        # keeps fewer after all, the index scan comes back short and the exact sort below answers).
        estimate, cost = estimated_filter(conn, where, params) if filters.active else (total, 0.0)
        if filters.active and filter_work(estimate, cost) <= COUNT_ABOVE_ESTIMATE * exact_max_rows:
            filtered, rows = _exact_if_few(conn, model_id, vector, where, params, exact_max_rows, limit, after)
            if filtered <= exact_max_rows:   # few enough: the exact sort over exactly those photos
                return rows, "exact", filtered
        # Under a selective filter the cells about as near as the nearest too: the filtered true
        # ten of a query far from the photos (text, whose nearest centres are nearly tied) often
        # lie in a fourth or fifth cell (at 1M, 5 %: recall 0.94 with three cells at twice the
        # list, 0.98 with four at the plain list; the ties hold as many of the true ten as four
        # cells for 3.1 cells off the data, and more for 4.1 text-like; BENCHMARKS.md §4).
        selective = estimate < SELECTIVE_SHARE * total
        cells = near_ties(nearest, distances, CELL_PROBES) if selective else nearest[:CELL_PROBES]
        if cells and estimate < NARROW_SHARE * total:
            # A narrow filter keeps few of the nearest candidates, and the walk of a cell of many
            # subjects then misses more: a wider list (at 1M, 1 % and 2.2 % filters: recall 0.92-0.97
            # at 200, 0.95-0.99 at 400, for 3 ms more; BENCHMARKS.md §4).
            ef = narrow_ef
        rows = _ranked(conn, model_id, dim, vector, where, params, limit, after, ef, cells=cells)
        if cells and len(rows) == limit:
            sample = lost_walks.SAMPLES.get(conn, model_id, sample_version)
            missed = lost_walks.missed_photo_cell(conn, model_id, sample, vector, where, params, after, rows)
            if missed is not None and selective:
                # Under a selective filter each walk yields few photos that pass, and a missed one
                # says they all ran too shallow: every cell again, and the photo's, with the widest list.
                rows = _ranked(conn, model_id, dim, vector, where, params, limit, after, EF_SEARCH_MAX,
                               cells=list(dict.fromkeys(cells + [missed])))
            elif missed is not None:
                # The walk of the photo's cell got lost, or that cell was not walked: it again, with
                # the widest list, merged into the page (the other cells' rows stand).
                again = _ranked(conn, model_id, dim, vector, where, params, limit, after, EF_SEARCH_MAX,
                                cells=[missed])
                rows = sorted({r[0]: r for r in rows + again}.values(), key=lambda r: (r[1], r[0]))[:limit]
        if len(rows) < limit:
            # Short: the scan bound was reached, the nearest cells hold too few of the filtered
            # photos, or pgvector 0.7 has no iterative scan. Only an exact sort can say whether
            # more rows exist, and it gives them in the right order.
            exact = _ranked(conn, model_id, None, vector, where, params, limit, after, ef_search)
            return exact, "exact", filtered
        return rows, "hnsw", filtered


def _ranked(conn: psycopg.Connection, model_id: int, index_dim: int | None, query: HalfVector, where: str,
            params: list, limit: int, after: tuple[float, int] | None, ef_search: int, *,
            cells: list[int] = ()) -> list[tuple[int, float]]:
    """One ranking query. With ``index_dim`` the distance is written exactly as the model's HNSW
    index expression (``embedding::halfvec(dim)``, model_id constant) so the planner can use it;
    without, the plain expression matches no index and the filtered rows are sorted exactly.
    With ``cells``, the graphs of those cells are walked and merged by distance, each read only as
    far as the page needs: a LIMIT in each (the scan bound, never reached) makes the planner walk
    the cell's index lazily; ordering each by id too, or a LIMIT of the page size, would make
    every cell fill a page of its own (4 times the rows under a selective filter)."""
    if index_dim is None:
        distance = "e.embedding <=> %s::halfvec"
    else:
        distance = f"e.embedding::halfvec({index_dim}) <=> %s::halfvec({index_dim})"
    keyset, keyset_params = lost_walks.rows_after(distance, query, after)
    rows = (f"SELECT e.image_id, {distance} AS distance FROM embeddings e JOIN images i ON i.id = e.image_id "
            f"WHERE e.model_id = {int(model_id)}")
    sql = f"{rows} AND {where}{keyset} ORDER BY distance, e.image_id LIMIT %s"
    args = [query, *params, *keyset_params, limit]
    if index_dim is not None and cells:
        sql = ("SELECT u.image_id, u.distance FROM ("
               + " UNION ALL ".join(f"({rows} AND e.cell = {int(c)} AND {where}{keyset} "
                                    f"ORDER BY distance LIMIT {MAX_SCAN_TUPLES})" for c in cells)
               + ") u ORDER BY u.distance, u.image_id LIMIT %s")
        args = [query, *params, *keyset_params] * len(cells) + [limit]
    if index_dim is not None:
        conn.execute(f"SET LOCAL hnsw.ef_search = {int(max(ef_search, min(EF_SEARCH_MAX, 2 * limit)))}")
    return [tuple(r) for r in conn.execute(sql, args)]


DATE_ORDERS = ("newest", "oldest")


def _date_keyset(order: str, after: tuple[datetime | None, int] | None) -> tuple[str, list]:
    """The rows after (taken_at, id) in date order; photos of unknown time come last either way."""
    if after is None:
        return "", []
    taken_at, image_id = after
    before, earlier = ("<", "<") if order == "newest" else (">", ">")
    if taken_at is None:
        return f" AND i.taken_at IS NULL AND i.id {earlier} %s", [image_id]
    return (f" AND (i.taken_at {before} %s OR (i.taken_at = %s AND i.id {earlier} %s) OR i.taken_at IS NULL)",
            [taken_at, taken_at, image_id])


def dated_ids(conn: psycopg.Connection, model_id: int, filters: Filters, limit: int,
              after: tuple[datetime | None, int] | None, order: str = "newest",
              also: str = "TRUE", also_params: Sequence = ()) -> list[tuple[int, datetime | None]]:
    """(id, taken_at) of the next ``limit`` images the filters (and the condition ``also`` on
    ``e``, a model's vector, and ``i``) keep, newest or oldest first; photos of unknown time come
    last; equal times by id (descending when newest), so pages never repeat or skip a photo.

    Both orders walk the (taken_at DESC NULLS LAST, id DESC) index, oldest first backwards: that
    direction puts unknown times first, so the dated photos come from one query and the undated
    ones from a second."""
    where, params = filters.sql()
    source = (f"FROM images i JOIN embeddings e ON e.image_id = i.id AND e.model_id = {int(model_id)} "
              f"WHERE {where} AND ({also})")
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        if order == "newest":
            keyset, keyset_params = _date_keyset(order, after)
            return [tuple(r) for r in conn.execute(
                f"SELECT i.id, i.taken_at {source}{keyset} ORDER BY i.taken_at DESC NULLS LAST, i.id DESC LIMIT %s",
                [*params, *also_params, *keyset_params, limit])]
        rows: list[tuple[int, datetime | None]] = []
        if after is None or after[0] is not None:
            keyset, keyset_params = _date_keyset(order, after)
            rows = [tuple(r) for r in conn.execute(
                f"SELECT i.id, i.taken_at {source}{keyset} AND i.taken_at IS NOT NULL "
                "ORDER BY i.taken_at ASC NULLS FIRST, i.id ASC LIMIT %s",
                [*params, *also_params, *keyset_params, limit])]
        if len(rows) < limit:
            last = after[1] if after is not None and after[0] is None else 0
            rows += [tuple(r) for r in conn.execute(
                f"SELECT i.id, i.taken_at {source} AND i.taken_at IS NULL AND i.id > %s ORDER BY i.id LIMIT %s",
                [*params, *also_params, last, limit - len(rows)])]
        return rows


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def date_key(order: str, taken_at: datetime | None, image_id: int) -> tuple:
    """The sort key of a row in date order, as dated_ids orders (for rows sorted in Python); whole
    microseconds, as PostgreSQL compares them (a float timestamp cannot tell them all apart)."""
    if taken_at is None:
        return (1, 0, -image_id if order == "newest" else image_id)
    stamp = (taken_at - EPOCH) // timedelta(microseconds=1)
    return (0, -stamp, -image_id) if order == "newest" else (0, stamp, image_id)

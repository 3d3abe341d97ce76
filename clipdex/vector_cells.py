"""Vector cells: a model with many vectors keeps one HNSW graph per k-means cell of its vectors,
and a search walks the graphs of the few cells nearest the query (migration 0015).

Why: at a million photos one graph loses some queries outright (a walk that enters the wrong
region has no road back; recall@10 0.91-0.97 at pgvector's largest ef_search, 12-41 ms). Sixteen
graphs of about 62,500 vectors, three of them walked per query (four under a selective filter, and
in psql), gave recall@10 1.00 unfiltered at p50 about 8 ms and 0.94-0.99 under filters, and built in
213 s instead of 359 (BENCHMARKS.md §4).

The centres are drawn (spherical k-means on a sample) only while the model has no HNSW index at
all, that is when its index is built after a bulk load or rebuilt on request: giving every vector
its cell is then an UPDATE of plain rows, where with a graph in place each updated row would be
inserted into it again (about the cost of building the graph). From then on a trigger gives each
new vector its nearest centre, and it goes into that cell's graph only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import psycopg

from clipdex.vocabulary import CELL_PROBES_SELECTIVE

CELL_VECTORS = 62_500        # about this many vectors per cell (16 cells at a million: measured)
CELLS_MIN = 2 * CELL_PROBES_SELECTIVE   # fewer cells would have a search walk half the library
CELLS_MAX = 64
REDRAW_GROWTH = 2            # centres are drawn again when the model has grown this many times since
SAMPLE_VECTORS = 50_000      # k-means on this many vectors (a few seconds at 512 dimensions on 2 cores)
KMEANS_ROUNDS = 25
SEED = 20261204


def cells_for(vectors: int) -> int:
    """How many cells a model of ``vectors`` vectors is split into."""
    return int(min(CELLS_MAX, max(CELLS_MIN, round(vectors / CELL_VECTORS))))


def index_names(model_id: int) -> str:
    """A regular expression for the names of the model's HNSW indexes: its one graph, or its cells'
    (as migration 0015's clipdex_ensure_vector_index names them)."""
    return f"^embeddings_hnsw_model_{int(model_id)}(_cell_[0-9]+)?$"


def has_any_index(conn: psycopg.Connection, model_id: int) -> bool:
    """Whether any HNSW index of the model exists (its one graph, or any cell's)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_class c WHERE c.relkind = 'i' AND c.relnamespace = 'public'::regnamespace "
        "AND c.relname ~ %s)", (index_names(model_id),)).fetchone()[0]


def due(conn: psycopg.Connection, model_id: int, cells_from: int) -> int:
    """The number of cells to draw for the model now, or 0: it has at least ``cells_from`` vectors,
    and no centres yet or far fewer vectors when they were drawn; and no index to keep up."""
    drawn_from, vectors = conn.execute(
        "SELECT m.cells_drawn_from, (SELECT count(*) FROM embeddings e WHERE e.model_id = m.id) "
        "FROM models m WHERE m.id = %s", (model_id,)).fetchone()
    if vectors < cells_from or (drawn_from is not None and vectors < REDRAW_GROWTH * drawn_from):
        return 0
    return 0 if has_any_index(conn, model_id) else cells_for(vectors)


def spherical_kmeans(vectors: np.ndarray, k: int, rounds: int = KMEANS_ROUNDS, seed: int = SEED) -> np.ndarray:
    """``k`` unit centres of unit ``vectors`` (cosine k-means, k-means++ start); every centre
    keeps at least one vector (an empty one restarts at the vector farthest from its own)."""
    rng = np.random.default_rng(seed)
    x = vectors.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    centres = [x[rng.integers(len(x))]]
    nearest = 1 - x @ centres[0]
    for _ in range(1, k):
        weights = np.maximum(nearest, 0) ** 2
        pick = rng.choice(len(x), p=weights / weights.sum()) if weights.sum() > 0 else rng.integers(len(x))
        centres.append(x[pick])
        nearest = np.minimum(nearest, 1 - x @ x[pick])
    c = np.stack(centres)
    for _ in range(rounds):
        scores = x @ c.T
        assigned = scores.argmax(axis=1)
        sums = np.eye(k, dtype=np.float32)[assigned].T @ x      # each cell's sum, in one product
        for j in np.flatnonzero(np.bincount(assigned, minlength=k) == 0):
            sums[j] = x[int(scores.max(axis=1).argmin())]
        c = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return c


def decode_halfvecs(blobs: list[bytes]) -> np.ndarray:
    """float32 rows from pgvector's binary halfvec form (int16 dimensions, int16 unused, then
    big-endian float16s), as ``halfvec_send`` gives them."""
    return np.stack([np.frombuffer(b, dtype=">f2", offset=4) for b in blobs]).astype(np.float32)


def _sample(conn: psycopg.Connection, model_id: int, size: int) -> np.ndarray:
    """About ``size`` of the model's vectors, drawn evenly over the whole table (read in
    pgvector's binary form: int16 dimensions, int16 unused, big-endian float16s)."""
    rows = max(1, conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])
    vectors = max(1, conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0])
    share = min(100.0, 100.0 * size / vectors)
    method = f"TABLESAMPLE BERNOULLI ({share:.6f}) REPEATABLE (1)" if share < 100 and vectors > rows / 4 else ""
    sample = conn.execute(f"SELECT halfvec_send(embedding) FROM embeddings {method} WHERE model_id = %s",
                          (model_id,)).fetchall()
    if len(sample) > size:   # (a model with a small share of the table is read whole, then thinned)
        keep = np.random.default_rng(SEED).choice(len(sample), size, replace=False)
        sample = [sample[i] for i in sorted(keep)]
    return decode_halfvecs([r[0] for r in sample])


def draw(conn: psycopg.Connection, model_id: int, cells: int) -> int:
    """Draws the model's centres and gives each of its vectors its cell, in one transaction that
    keeps writers out meanwhile (a vector inserted during it would miss its cell). Returns the
    vectors given a cell."""
    centres = spherical_kmeans(_sample(conn, model_id, SAMPLE_VECTORS), cells)
    with conn.transaction():
        conn.execute("LOCK TABLE embeddings IN SHARE MODE")
        conn.execute("DELETE FROM vector_cells WHERE model_id = %s", (model_id,))
        conn.execute("INSERT INTO vector_cells (model_id, cell, centre) SELECT %s, n.cell, n.centre "
                     "FROM unnest(%s::smallint[], %s::text[]::halfvec[]) AS n(cell, centre)",
                     (model_id, list(range(cells)), ["[" + ",".join(map(repr, c.tolist())) + "]" for c in centres]))
        given = conn.execute("UPDATE embeddings SET cell = clipdex_cell_of(model_id, embedding) "
                             "WHERE model_id = %s", (model_id,)).rowcount
        conn.execute("UPDATE models SET cells_drawn_from = %s WHERE id = %s", (given, model_id))
    return given


class Route(NamedTuple):
    total: float            # vectors stored (all models, as the planner last counted them)
    cells: list[int]        # the cells of the model nearest the query, nearest first ([] without cells)
    cell_count: int         # the model's cells (0 without)
    sample_version: str     # changes whenever the model's score sample is drawn again
    distances: list[float]  # the query's cosine distance to each of those cells' centres


def route(conn: psycopg.Connection, model_id: int, query, probes: int = CELL_PROBES_SELECTIVE) -> Route:
    """What a search needs to choose its walk, in one round trip (every search makes it), for
    ``query`` (a halfvec): the ``probes`` nearest cells and their centres' distances, and the
    version of the model's score sample (clipdex.search.lost_walks keeps the sample in the process)."""
    total, cells, distances, count, version = conn.execute(
        "SELECT (SELECT reltuples FROM pg_class WHERE oid = 'embeddings'::regclass), n.cells, n.distances, "
        "(SELECT count(*) FROM vector_cells v WHERE v.model_id = %(model)s), "
        "(SELECT m.xmin::text || ':' || coalesce(m.sampled_vectors, 0) FROM models m WHERE m.id = %(model)s) "
        "FROM (SELECT array_agg(c.cell::int ORDER BY c.distance, c.cell) AS cells, "
        "             array_agg(c.distance ORDER BY c.distance, c.cell) AS distances "
        "      FROM (SELECT v.cell, v.centre <=> %(query)s::halfvec AS distance FROM vector_cells v "
        "            WHERE v.model_id = %(model)s ORDER BY distance, v.cell LIMIT %(probes)s) c) n",
        {"model": model_id, "query": query, "probes": probes}).fetchone()
    return Route(max(1.0, total), list(cells or []), int(count), version or "", list(distances or []))

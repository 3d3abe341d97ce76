"""Telling a graph walk that lost its way, from the model's score sample (``score_samples``,
2,000 photos drawn from the whole library, kept for the match cut-off).

A sample photo that belongs on a page (it passes the filters, comes after the cursor and before
the page's last row) and is not on it proves the walk of a cell of many subjects ended in the
wrong one. Asked in SQL for every search, the check cost 1.9 ms at a million photos (2,000
distances, each sample photo joined to ``images``): a fifth of an unfiltered search. Here the
sample's vectors are kept in the process, so the distances are one product (0.26 ms), and SQL is
asked only about the few sample photos nearer than the page's last row, which most searches have
none of (BENCHMARKS.md §4).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector import HalfVector

from clipdex.vector_cells import decode_halfvecs

KEPT_SAMPLES = 8        # (database, model) samples one process keeps (4 MB each at 512 dimensions)
MARGIN = 1e-3           # numpy's distances against PostgreSQL's: SQL decides within this band


@dataclass(frozen=True)
class Sample:
    ids: np.ndarray        # int64 image ids
    vectors: np.ndarray    # float32, each of unit length


class SampleCache:
    """The score samples this process has read, by database, model and version. The version is
    the model row's xmin with its ``sampled_vectors``: drawing the sample again updates that row,
    so a stale sample is never used after its model changed. A photo deleted since is harmless:
    SQL confirms every photo the sample names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: OrderedDict[tuple, Sample] = OrderedDict()

    def get(self, conn: psycopg.Connection, model_id: int, version: str) -> Sample:
        info = conn.info
        key = (info.host, info.port, info.dbname, int(model_id), version)
        with self._lock:
            sample = self._samples.get(key)
            if sample is not None:
                self._samples.move_to_end(key)
                return sample
        rows = conn.execute("SELECT image_id, halfvec_send(embedding) FROM score_samples WHERE model_id = %s",
                            (model_id,)).fetchall()
        if rows:
            vectors = decode_halfvecs([r[1] for r in rows])
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            sample = Sample(np.array([r[0] for r in rows], dtype=np.int64), vectors)
        else:
            sample = Sample(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))
        with self._lock:
            self._samples[key] = sample
            while len(self._samples) > KEPT_SAMPLES:
                self._samples.popitem(last=False)
        return sample


SAMPLES = SampleCache()


def rows_after(distance: str, query: HalfVector, after: tuple[float, int] | None) -> tuple[str, list]:
    """The condition (and its parameters) for the rows after a cursor's last (distance, id), in
    the order every ranking statement sorts: distance, then id (none without a cursor)."""
    if after is None:
        return "", []
    return f" AND ({distance}, e.image_id) > (%s, %s)", [query, after[0], after[1]]


def missed_photo_cell(conn: psycopg.Connection, model_id: int, sample: Sample, query: HalfVector,
                      where: str, params: list, after: tuple[float, int] | None,
                      rows: list[tuple[int, float]]) -> int | None:
    """The cell of a sample photo the page ``rows`` should hold and does not, or None when the
    sample shows nothing wrong."""
    if not len(sample.ids):
        return None
    q = query.to_numpy().astype(np.float32)
    # einsum, not a BLAS product: BLAS's threads spin after each call, and on a small server they
    # took the cores from PostgreSQL (8 clients at once: 53-55 searches/s against 73-75).
    distances = 1.0 - np.einsum("ij,j->i", sample.vectors, q / max(float(np.linalg.norm(q)), 1e-12))
    near = distances < rows[-1][1] + MARGIN
    if after is not None:
        near &= distances > after[0] - MARGIN
    candidates = np.setdiff1d(sample.ids[near], [r[0] for r in rows])
    if not len(candidates):
        return None
    distance = "e.embedding <=> %s::halfvec"
    keyset, keyset_params = rows_after(distance, query, after)
    row = conn.execute(
        f"SELECT e.cell FROM embeddings e JOIN images i ON i.id = e.image_id "
        f"WHERE e.model_id = {int(model_id)} AND e.image_id = ANY(%s) AND {where}{keyset} "
        f"AND ({distance}, e.image_id) < (%s, %s) ORDER BY {distance}, e.image_id LIMIT 1",
        [candidates.tolist(), *params, *keyset_params, query, rows[-1][1], rows[-1][0], query]).fetchone()
    return None if row is None else row[0]

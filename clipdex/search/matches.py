"""Which photos *match* a query, not just how they rank: a cut-off calibrated per query against
the library itself (migration 0010, ``clipdex_match_cut``).

A cosine score means different things for different queries: one text scores every photo near
0.15, another near 0.25, so a fixed threshold keeps hundreds of photos for one and none for the
other. Here each query is scored against a fixed sample of the model's vectors (its background:
median and spread), and the cut-off is the lowest score at which, by that background, at most a
share alpha of the photos above it would be there by chance (a false discovery rate over the
query's own top rows). ``strictness`` (0..1) sets alpha = 10^(−2·strictness); 0 keeps every photo.
BENCHMARKS.md §11 measures it against the best fixed threshold chosen in hindsight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from clipdex.search.plan import estimated_rows, image_rows
from clipdex.search.query_vector import as_halfvec

DEFAULT_STRICTNESS = 0.5


@dataclass(frozen=True)
class CutOff:
    """The photos at ``distance`` or closer match (-1: none does); ``matches`` of them in the whole
    library, ``counted`` exactly (from the index's top rows) or estimated from the sample."""

    distance: float
    matches: float
    counted: bool

    @property
    def nothing(self) -> bool:
        return self.distance < 0

    def keeps(self, distance: float | None) -> bool:
        return distance is not None and distance <= self.distance

    def to_list(self) -> list:
        return [self.distance, round(self.matches, 1), self.counted]

    @classmethod
    def from_list(cls, data: Any) -> "CutOff | None":
        if data is None:
            return None
        distance, matches, counted = data
        cut = cls(float(distance), float(matches), bool(counted))
        if not (math.isfinite(cut.distance) and -1 <= cut.distance <= 2 and math.isfinite(cut.matches)
                and cut.matches >= 0):
            raise ValueError("not a cut-off")
        return cut


def cut_off(conn: psycopg.Connection, model_id: int, query: np.ndarray, strictness: float) -> CutOff | None:
    """The query's cut-off on a model's vectors; None when there is none (strictness 0, or a model
    with too few vectors sampled yet to know how the library scores)."""
    if strictness <= 0:
        return None
    row = conn.execute("SELECT * FROM clipdex_match_cut(%s::halfvec, %s::smallint, %s)",
                       (as_halfvec(query), model_id, strictness)).fetchone()
    return None if row is None else CutOff(float(row[0]), float(row[1]), bool(row[2]))


def share_kept(conn: psycopg.Connection, where: str, params: list) -> float:
    """About which share of the photos the filters keep (the planner's estimates, no scan)."""
    return min(1.0, estimated_rows(conn, where, params) / image_rows(conn))

"""What a search returns: hits with what a grid or a table shows, and the page around them.
No web addresses here: the web app adds its own links."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg


@dataclass
class Hit:
    id: int
    score: float | None       # cosine similarity, 1 = identical direction (None when browsing)
    distance: float | None    # cosine distance used for ordering
    taken_at: datetime | None
    width: int
    height: int
    format: str
    source: str | None          # of the best location (an album copy first)
    sources: list[str]          # every source the image was found in
    album: str | None
    root: str | None
    path: str | None
    favorite: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("score", "distance"):   # JSON has no NaN; a degenerate vector must not break it
            data[key] = data[key] if data[key] is not None and math.isfinite(data[key]) else None
        data["taken_at"] = self.taken_at.isoformat() if self.taken_at else None
        return data


@dataclass
class Page:
    hits: list[Hit]
    next_cursor: str | None
    strategy: str         # "exact" or "hnsw" (a search), "newest" (a browse)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [h.to_dict() for h in self.hits], "next_cursor": self.next_cursor,
                "strategy": self.strategy}


def load_hits(conn: psycopg.Connection, rows: list[tuple[int, float | None]]) -> list[Hit]:
    """The hits for ranked (id, distance) rows, in that order, from the `photos` view (a browse
    has no distance)."""
    details = {r[0]: r for r in conn.execute(
        "SELECT p.id, p.taken_at, p.width, p.height, p.format, p.source, p.sources, p.album, p.root, p.path, "
        "p.favorite FROM photos p WHERE p.id = ANY(%s)", ([i for i, _ in rows],))}
    return [Hit(i, None if d is None else 1.0 - d, d, *details[i][1:]) for i, d in rows if i in details]

"""What a search returns: hits with what a grid or a table shows, and the page around them.
No web addresses here: the web app adds its own links."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

import psycopg

from clipdex.search.words import compact


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
    place: str | None = None               # the town, region and country it was taken in
    written: bool = False                  # the query's words are in the photo's text (OCR) or names
    snippet: str | None = None             # the line of its text (or the name) that holds them
    marks: list[tuple[int, int]] | None = None   # [start, end) of the words within the snippet
    snippet_from: str | None = None        # where the snippet is from: SNIPPET_FIELDS
    similar: int = 0                       # other copies of this picture folded into its tile

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("score", "distance"):   # JSON has no NaN; a degenerate vector must not break it
            data[key] = data[key] if data[key] is not None and math.isfinite(data[key]) else None
        data["taken_at"] = self.taken_at.isoformat() if self.taken_at else None
        data["marks"] = [list(m) for m in self.marks] if self.marks else None
        return data


@dataclass
class Page:
    hits: list[Hit]
    next_cursor: str | None
    strategy: str         # "exact" or "hnsw" (a search by relevance), "newest"/"oldest" (by date)
    model: str | None = None   # whose vectors answered
    note: str | None = None    # about that choice, for the user (a query routed to another model)
    # How many photos match the query (None: no cut-off, every photo is in the list), whether that
    # is a count or an estimate, the lowest score that matches, and where the weaker photos
    # (past the cut-off, by relevance) begin.
    matches: int | None = None
    matches_exact: bool = False
    cut_score: float | None = None
    weaker_cursor: str | None = None
    # facet -> [{"value", "count", "filter"}] when asked for (clipdex.search.facets); partial when
    # the matches were too many to count them all (the best FACET_SCOPE by relevance were).
    facets: dict[str, list[dict[str, Any]]] | None = None
    facets_partial: bool = False
    folded: int = 0     # photos on this page folded into another copy's tile (not in hits)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [h.to_dict() for h in self.hits], "next_cursor": self.next_cursor,
                "strategy": self.strategy, "model": self.model, "note": self.note, "matches": self.matches,
                "matches_exact": self.matches_exact, "cut_score": self.cut_score,
                "weaker_cursor": self.weaker_cursor, "facets": self.facets, "facets_partial": self.facets_partial}


def load_hits(conn: psycopg.Connection, rows: list[tuple[int, float | None]]) -> list[Hit]:
    """The hits for ranked (id, distance) rows, in that order, from the `photos` view (a browse
    has no distance)."""
    details = {r[0]: r for r in conn.execute(
        "SELECT p.id, p.taken_at, p.width, p.height, p.format, p.source, p.sources, p.album, p.root, p.path, "
        "p.favorite, nullif(p.place, '') FROM photos p WHERE p.id = ANY(%s)", ([i for i, _ in rows],))}
    return [Hit(i, None if d is None else 1.0 - d, d, *details[i][1:]) for i, d in rows if i in details]


SNIPPET_LENGTH = 80


SNIPPET_FIELDS = ("text", "caption", "album", "file name", "place")


def add_snippets(conn: psycopg.Connection, hits: list[Hit], phrases: tuple[str, ...]) -> None:
    """For hits holding a phrase: the line of the photo's text that holds it, else its caption,
    album, file name or place (cut to SNIPPET_LENGTH around it), where the phrase stands in it, and which
    of those it is, for the page to highlight and label."""
    if not hits:
        return
    ids = [h.id for h in hits]
    lines: dict[int, list[tuple[str, str]]] = {i: [] for i in ids}
    for image_id, text in conn.execute(
            "SELECT DISTINCT ON (image_id) image_id, text FROM image_texts WHERE image_id = ANY(%s) "
            "AND error IS NULL ORDER BY image_id, created_at DESC", (ids,)):
        lines[image_id] += [("text", line) for line in text.splitlines()]
    for image_id, caption in conn.execute(
            "SELECT id, description FROM images WHERE id = ANY(%s) AND description IS NOT NULL", (ids,)):
        lines[image_id].append(("caption", caption))
    for image_id, album, relpath in conn.execute(
            "SELECT image_id, album, relpath FROM locations WHERE image_id = ANY(%s) ORDER BY id", (ids,)):
        lines[image_id] += [("album", album or ""), ("file name", PurePosixPath(relpath).name)]
    for image_id, place in conn.execute(
            "SELECT id, concat_ws(', ', place_name, nullif(place_region, place_name), place_country) FROM images "
            "WHERE id = ANY(%s) AND place_code IS NOT NULL", (ids,)):
        lines[image_id].append(("place", place))
    for hit in hits:
        for field, line in sorted(lines[hit.id], key=lambda item: SNIPPET_FIELDS.index(item[0])):
            span = next((found for phrase in phrases if (found := locate(line, phrase))), None)
            if span is None:
                continue
            start = max(0, min(span[0] - 20, len(line) - SNIPPET_LENGTH))
            hit.snippet = line[start:start + SNIPPET_LENGTH]
            hit.marks = [(span[0] - start, min(span[1] - start, len(hit.snippet)))]
            hit.snippet_from = field
            break


def locate(line: str, phrase: str) -> tuple[int, int] | None:
    """Where ``phrase`` stands in ``line`` as the text filter compares them (folded, without
    spaces or punctuation): [start, end) in the line's characters, or None."""
    kept = [(i, compact(ch)) for i, ch in enumerate(line)]
    kept = [(i, c) for i, c in kept if c]
    folded = "".join(c for _, c in kept)
    target = compact(phrase)
    at = folded.find(target) if target else -1
    if at < 0:
        return None
    # Positions in the folded string back to characters of the line (one character may fold to several).
    ends, length = [], 0
    for i, c in kept:
        length += len(c)
        ends.append((length, i))
    first = next(i for end, i in ends if end > at)
    last = next(i for end, i in ends if end >= at + len(target))
    return first, last + 1

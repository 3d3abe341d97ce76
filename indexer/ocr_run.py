"""Reading the text of indexed photos: the OCR pass of ``clipdex index`` and ``clipdex ocr``.

OCR is its own stage after embedding: a photo is searchable by its vector as soon as it is
indexed, and its text follows. Each photo still unread by this engine is read once, from the
first of its copies whose bytes are still the indexed ones, and one row per (photo, engine) says
what was read: the lines, no text, or why reading failed. So a second pass reads nothing again,
an interrupted one goes on where it stopped, and a new engine knows which rows are not its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psycopg

from clipdex.config import Settings
from clipdex.files import allowed_roots
from clipdex.imaging import DecodeBudget, DecodeFailure, NotAnImage
from clipdex.roots import RootError, absolute, local_root
from clipdex.search.words import compact, text_words
from clipdex.text import storable, storable_json
from indexer.ocr import OcrEngine, ReadText
from indexer.prepare import read_file

log = logging.getLogger(__name__)

BATCH = 16          # photos per transaction


@dataclass
class Scope:
    """Which photos: all, those with a copy under ``folder`` of ``root``, or a list."""
    root: str | None = None
    folder: bytes = b""
    retry_failed: bool = False
    image_ids: tuple[int, ...] | None = None    # just these photos (a Celery task's)

    def sql(self) -> tuple[str, list]:
        if self.image_ids is not None:
            return "i.id = ANY(%s)", [list(self.image_ids)]
        if self.root is None:
            return "true", []
        if not self.folder:
            return "EXISTS (SELECT 1 FROM locations l WHERE l.image_id = i.id AND l.root = %s)", [self.root]
        return ("EXISTS (SELECT 1 FROM locations l WHERE l.image_id = i.id AND l.root = %s "
                "AND l.relpath_bytes >= %s AND l.relpath_bytes < %s)",
                [self.root, self.folder + b"/", self.folder + b"0"])


@dataclass
class OcrSummary:
    read: int = 0            # photos given to the engine
    with_text: int = 0
    gated: int = 0           # the gate found no text
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Outcome:
    image_id: int
    read: ReadText | None
    error: str | None
    seconds: float
    copy: tuple | None       # (root, relpath_bytes, relpath, source) the bytes came from, or the first tried


def _unread(engine: str, scope: Scope) -> tuple[str, list]:
    """WHERE over ``images i``: in ``scope`` with no row of ``engine`` (or a failed one, when
    retrying)."""
    where, params = scope.sql()
    done = "t.error IS NULL" if scope.retry_failed else "true"
    return (f"{where} AND NOT EXISTS (SELECT 1 FROM image_texts t WHERE t.image_id = i.id "
            f"AND t.engine = %s AND {done})", [*params, engine])


def pending(conn: psycopg.Connection, engine: str, scope: Scope, after_id: int, limit: int) -> list[tuple[int, bytes]]:
    """(id, sha256) of the next unread photos in ``scope``, ascending."""
    where, params = _unread(engine, scope)
    return [(r[0], bytes(r[1])) for r in conn.execute(
        f"SELECT i.id, i.sha256 FROM images i WHERE i.id > %s AND {where} ORDER BY i.id LIMIT %s",
        [after_id, *params, limit])]


def count_pending(conn: psycopg.Connection, engine: str, scope: Scope) -> int:
    where, params = _unread(engine, scope)
    return conn.execute(f"SELECT count(*) FROM images i WHERE {where}", params).fetchone()[0]


def _copies(conn: psycopg.Connection, image_ids: list[int]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    for image_id, root, relpath_bytes, relpath, source in conn.execute(
            "SELECT image_id, root, relpath_bytes, relpath, source FROM locations WHERE image_id = ANY(%s) "
            "ORDER BY image_id, first_seen_at, id", (image_ids,)):
        out.setdefault(image_id, []).append((root, bytes(relpath_bytes), relpath, source))
    return out


def read_photo(engine: OcrEngine, settings: Settings, roots: dict[str, Path], inside, image_id: int,
               sha256: bytes, copies: list[tuple], budget: DecodeBudget | None = None) -> _Outcome:
    """Reads one photo's text from the first copy that still holds its bytes."""
    started = time.perf_counter()
    why = "no copy of the photo is left on disk"
    for copy in copies:
        root, relpath_bytes = copy[0], copy[1]
        try:
            root_path = local_root(settings, None, root, roots)   # CLIPDEX_ROOTS first: this machine's mounts
        except RootError as exc:
            why = str(exc)
            continue
        data, failure = read_file(absolute(root_path, relpath_bytes), settings.max_file_bytes, inside)
        if failure is not None or data is None:
            why = failure[1] if failure else "cannot read the file"
            continue
        if hashlib.sha256(data[0]).digest() != sha256:
            why = "the file has changed since it was indexed"
            continue
        try:
            read = engine.read_bytes(data[0], max_pixels=settings.max_pixels, budget=budget)
        except (NotAnImage, DecodeFailure) as exc:
            return _Outcome(image_id, None, str(exc), time.perf_counter() - started, copy)
        except Exception as exc:   # the engine on an odd image: this photo's failure, not the run's
            log.exception("OCR failed on image %s", image_id)
            return _Outcome(image_id, None, f"OCR failed: {type(exc).__name__}: {exc}",
                            time.perf_counter() - started, copy)
        return _Outcome(image_id, read, None, time.perf_counter() - started, copy)
    return _Outcome(image_id, None, why, time.perf_counter() - started, copies[0] if copies else None)


def write_texts(conn: psycopg.Connection, engine: str, outcomes: list[_Outcome], run_id: int | None) -> None:
    """One row per photo (replacing an earlier failed one); failures also go to the run's list."""
    rows = []
    for o in outcomes:
        text = storable(o.read.text) if o.read else ""
        lines = storable_json([line.to_json() for line in o.read.lines]) if o.read else []
        rows.append((o.image_id, engine, text, json.dumps(lines),
                     text_words(text), compact(text), bool(o.read and o.read.gated),
                     storable(o.error)[:2000] if o.error else None, o.seconds))
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO image_texts (image_id, engine, text, lines, words, compact, gated, error, seconds) "
            "SELECT %s, %s, %s, %s::jsonb, array_to_tsvector(%s::text[]), %s, %s, %s, %s "
            "WHERE EXISTS (SELECT 1 FROM images WHERE id = %s) "
            "ON CONFLICT (image_id, engine) DO UPDATE SET text = EXCLUDED.text, lines = EXCLUDED.lines, "
            "words = EXCLUDED.words, compact = EXCLUDED.compact, gated = EXCLUDED.gated, "
            "error = EXCLUDED.error, seconds = EXCLUDED.seconds, created_at = now()",
            [(*row, row[0]) for row in rows])
        if run_id is not None:
            failed = [o for o in outcomes if o.error and o.copy]
            if failed:
                conn.cursor().executemany(
                    "INSERT INTO ingest_failures (run_id, root, relpath, relpath_bytes, source, stage, reason) "
                    "VALUES (%s, %s, %s, %s, %s, 'ocr', %s) "
                    "ON CONFLICT (run_id, root, sha256(relpath_bytes)) DO NOTHING",
                    [(run_id, o.copy[0], o.copy[2], o.copy[1], o.copy[3], storable(o.error)[:2000]) for o in failed])


def read_texts(settings: Settings, conn: psycopg.Connection, engine: OcrEngine, roots: dict[str, Path],
               scope: Scope, *, run_id: int | None = None, out: TextIO | None = sys.stderr,
               budget: DecodeBudget | None = None) -> OcrSummary:
    """Reads every photo of ``scope`` this engine has not read, BATCH at a time."""
    summary = OcrSummary()
    started = time.perf_counter()
    total = count_pending(conn, engine.name, scope)
    if total == 0:
        return summary
    inside = allowed_roots(settings, roots)
    after = 0
    shown = 0.0
    while batch := pending(conn, engine.name, scope, after, BATCH):
        after = batch[-1][0]
        copies = _copies(conn, [image_id for image_id, _ in batch])
        outcomes = [read_photo(engine, settings, roots, inside, image_id, sha256, copies.get(image_id, []), budget)
                    for image_id, sha256 in batch]
        write_texts(conn, engine.name, outcomes, run_id)
        for o in outcomes:
            summary.read += o.read is not None
            summary.with_text += bool(o.read and o.read.lines)
            summary.gated += bool(o.read and o.read.gated)
            if o.error:
                summary.failed += 1
                summary.failures.append((o.image_id, o.error))
        done = summary.read + summary.failed
        if out is not None and (time.monotonic() - shown > 0.5 or done == total):
            shown = time.monotonic()
            rate = done / max(time.perf_counter() - started, 1e-6)
            out.write(f"\rreading text: {done}/{total} photos · {summary.with_text} with text · {rate:.1f} photos/s ")
            out.flush()
    if out is not None:
        out.write("\n")
    summary.seconds = time.perf_counter() - started
    return summary


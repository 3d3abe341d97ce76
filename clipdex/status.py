"""What ingest runs did, read from the database: the CLI's ``clipdex status`` and the web app's
status page print the same figures from these queries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg


@dataclass
class SourceStatus:
    source: str
    path: str
    seen: int            # files found by the scan
    unchanged: int       # already indexed with the same size and mtime
    skipped: int         # not photos by name (sidecars, videos, thumbnail copies)
    queued: int          # sent to be processed
    gone: int            # indexed before, no longer on disk: forgotten
    processed: int = 0   # files of finished batches
    new: int = 0         # images embedded for the first time
    duplicates: int = 0  # bytes already indexed: a new location of a known image
    ignored: int = 0     # not images by content
    failed: int = 0


@dataclass
class RunStatus:
    id: int
    mode: str
    root: str
    path: str
    source: str
    model: str
    host: str | None
    started_at: datetime
    enqueued_at: datetime | None
    finished_at: datetime | None
    batches: int
    batches_done: int
    batches_failed: int
    scan_failures: int
    sources: list[SourceStatus] = field(default_factory=list)
    images_per_second: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.finished_at is not None:
            return "done"
        if self.enqueued_at is None:
            return "planning"
        return "running"

    @property
    def failed(self) -> int:
        return self.scan_failures + sum(s.failed for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state
        data["failed"] = self.failed
        for key in ("started_at", "enqueued_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


_RUNS = """
SELECT r.id, r.mode, r.root, r.path, r.source, r.model, r.host, r.started_at, r.enqueued_at,
       r.finished_at,
       (SELECT count(*) FROM ingest_batches b WHERE b.run_id = r.id),
       (SELECT count(*) FROM ingest_batches b WHERE b.run_id = r.id AND b.state = 'done'),
       (SELECT count(*) FROM ingest_batches b WHERE b.run_id = r.id AND b.state = 'failed'),
       (SELECT count(*) FROM ingest_failures f WHERE f.run_id = r.id AND f.source IS NULL),
       (SELECT extract(epoch FROM max(b.finished_at) - min(b.started_at))
          FROM ingest_batches b WHERE b.run_id = r.id AND b.state = 'done'),
       (SELECT array_agg(DISTINCT b.error) FROM ingest_batches b
          WHERE b.run_id = r.id AND b.state <> 'done' AND b.error IS NOT NULL)
FROM ingest_runs r
"""

_SOURCES = """
SELECT s.source, s.path, s.files_seen, s.files_unchanged, s.files_skipped, s.files_queued, s.files_gone,
       coalesce(sum(b.files) FILTER (WHERE b.state <> 'queued'), 0),
       coalesce(sum(b.images_new), 0), coalesce(sum(b.images_known), 0),
       coalesce(sum(b.ignored), 0), coalesce(sum(b.failed), 0)
FROM ingest_sources s
LEFT JOIN ingest_batches b ON b.run_id = s.run_id AND b.source = s.source
WHERE s.run_id = %s
GROUP BY s.source, s.path, s.files_seen, s.files_unchanged, s.files_skipped, s.files_queued, s.files_gone
ORDER BY s.source
"""


def _run_from_row(conn: psycopg.Connection, row: tuple) -> RunStatus:
    *fields, seconds, errors = row
    run = RunStatus(*fields)
    run.sources = [SourceStatus(*r) for r in conn.execute(_SOURCES, (run.id,))]
    done = sum(s.new + s.duplicates for s in run.sources)
    if seconds and seconds > 0:
        run.images_per_second = round(done / float(seconds), 2)
    run.errors = [e for e in errors or [] if e]
    return run


def list_runs(conn: psycopg.Connection, limit: int = 20) -> list[RunStatus]:
    rows = conn.execute(_RUNS + " ORDER BY r.id DESC LIMIT %s", (limit,)).fetchall()
    return [_run_from_row(conn, row) for row in rows]


def get_run(conn: psycopg.Connection, run_id: int) -> RunStatus | None:
    row = conn.execute(_RUNS + " WHERE r.id = %s", (run_id,)).fetchone()
    return _run_from_row(conn, row) if row else None


@dataclass
class Failure:
    run_id: int
    root: str
    path: str
    source: str | None
    stage: str
    reason: str
    created_at: datetime


def failures(conn: psycopg.Connection, run_id: int | None = None, limit: int = 100) -> list[Failure]:
    where = "WHERE run_id = %s" if run_id is not None else ""
    params: tuple = (run_id, limit) if run_id is not None else (limit,)
    rows = conn.execute(
        f"SELECT run_id, root, relpath, source, stage, reason, created_at FROM ingest_failures {where} "
        "ORDER BY run_id DESC, relpath LIMIT %s", params).fetchall()
    return [Failure(*row) for row in rows]

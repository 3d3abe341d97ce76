"""What ingest runs did, read from the database: the CLI's ``clipdex status`` and the web app's
status page print the same figures, with the same words, from these queries.

Words: *skipped* files are not photos by their name (sidecars, videos), *not images* were named
like photos but hold something else, *unchanged* files were indexed before with the same size,
time and inode, *failed before* failed in an earlier run because of their content and have not
changed since.
Rates are over the time the run's batches took (first start to last finish): files/s of every
file handled, and new images/s of model work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    failed_before: int   # failed in an earlier run, unchanged since: not tried again
    processed: int = 0   # files of finished batches
    new: int = 0         # images embedded for the first time
    duplicates: int = 0  # bytes already indexed: a new location of a known image
    ignored: int = 0     # not images by content
    failed: int = 0


@dataclass
class TextProgress:
    """How far the OCR stage is over a run's photos (those whose files the run wrote)."""

    photos: int
    read: int          # text read (with or without any found)
    with_text: int
    failed: int

    def line(self) -> str:
        line = (f"text in photos: read {self.read} of {plural(self.photos, 'photo')}, {self.with_text} with text, "
                f"{self.failed} failed")
        return line + (f", {self.photos - self.read - self.failed} to read" if self.read + self.failed < self.photos
                       else "")


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
    busy_seconds: float | None = None   # first batch start to last batch finish
    sources: list[SourceStatus] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text: TextProgress | None = None    # the OCR stage over the photos this run wrote


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

    @property
    def files_queued(self) -> int:
        return sum(s.queued for s in self.sources)

    @property
    def files_processed(self) -> int:
        return sum(s.processed for s in self.sources)

    @property
    def files_per_second(self) -> float | None:
        if not self.busy_seconds or self.busy_seconds <= 0:
            return None
        return round(self.files_processed / self.busy_seconds, 1)

    @property
    def images_per_second(self) -> float | None:
        """New images embedded per second: the model's work."""
        if not self.busy_seconds or self.busy_seconds <= 0:
            return None
        return round(sum(s.new for s in self.sources) / self.busy_seconds, 1)

    @property
    def progress(self) -> float:
        """Share of the queued files handled, 0..1 (1 when nothing was queued)."""
        return self.files_processed / self.files_queued if self.files_queued else 1.0

    @property
    def seconds_left(self) -> float | None:
        """At the rate so far, for a run still going."""
        rate = self.files_per_second
        if self.state != "running" or not rate:
            return None
        return max(0.0, (self.files_queued - self.files_processed) / rate)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("state", "failed", "files_queued", "files_processed", "files_per_second",
                     "images_per_second", "progress", "seconds_left"):
            data[name] = getattr(self, name)
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
          FROM ingest_batches b WHERE b.run_id = r.id AND b.state <> 'queued'),
       (SELECT array_agg(DISTINCT b.error) FROM ingest_batches b
          WHERE b.run_id = r.id AND b.state <> 'done' AND b.error IS NOT NULL)
FROM ingest_runs r
"""

_SOURCES = """
SELECT s.source, s.path, s.files_seen, s.files_unchanged, s.files_skipped, s.files_queued, s.files_gone,
       s.files_failed_before,
       coalesce(sum(b.files) FILTER (WHERE b.state <> 'queued'), 0),
       coalesce(sum(b.images_new), 0), coalesce(sum(b.images_known), 0),
       coalesce(sum(b.ignored), 0), coalesce(sum(b.failed), 0)
FROM ingest_sources s
LEFT JOIN ingest_batches b ON b.run_id = s.run_id AND b.source = s.source
WHERE s.run_id = %s
GROUP BY s.source, s.path, s.files_seen, s.files_unchanged, s.files_skipped, s.files_queued, s.files_gone,
         s.files_failed_before
ORDER BY s.source
"""


_TEXT_PROGRESS = """
SELECT count(*), count(*) FILTER (WHERE t.ok), count(*) FILTER (WHERE t.found),
       count(*) FILTER (WHERE t.failed AND NOT coalesce(t.ok, false))
FROM (SELECT DISTINCT image_id FROM locations WHERE run_id = %s) p
LEFT JOIN LATERAL (SELECT bool_or(x.error IS NULL) AS ok, bool_or(x.error IS NULL AND x.text <> '') AS found,
                          bool_or(x.error IS NOT NULL) AS failed
                   FROM image_texts x WHERE x.image_id = p.image_id) t ON true
"""


def _run_from_row(conn: psycopg.Connection, row: tuple) -> RunStatus:
    *fields, seconds, errors = row
    run = RunStatus(*fields, busy_seconds=float(seconds) if seconds is not None else None)
    progress = TextProgress(*conn.execute(_TEXT_PROGRESS, (run.id,)).fetchone())
    # A run before any photo's text was read, or with OCR off, says nothing about it.
    if progress.read or progress.failed:
        run.text = progress
    # A source the scan met but that gave nothing to do or tell is not worth a row of zeros.
    run.sources = [s for s in (SourceStatus(*r) for r in conn.execute(_SOURCES, (run.id,)))
                   if s.seen or s.gone or s.queued]
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


def text_reading(conn: psycopg.Connection) -> str | None:
    """One line on the OCR stage: how many photos have had their text read (by any engine)."""
    photos, read, with_text, failed = conn.execute(
        "SELECT (SELECT count(*) FROM images), count(DISTINCT image_id) FILTER (WHERE error IS NULL), "
        "count(DISTINCT image_id) FILTER (WHERE error IS NULL AND text <> ''), "
        "count(DISTINCT image_id) FILTER (WHERE error IS NOT NULL) FROM image_texts").fetchone()
    if not photos:
        return None
    line = f"text in photos: read {read} of {plural(photos, 'photo')}, {with_text} with text, {failed} failed"
    if read + failed < photos:
        line += " (clipdex ocr --all reads the rest)"
    return line


WATCHER_SILENT_SECONDS = 60   # a watcher beats every 10 s: this long without one, it is gone


@dataclass
class WatcherStatus:
    """One ``clipdex watch`` process, as its row in ``watchers`` says."""

    id: int
    host: str
    pid: int
    paths: list[str]
    mode: str
    started_at: datetime
    seen_at: datetime
    last_change_at: datetime | None
    last_rescan_at: datetime | None
    runs: int
    files: int
    stopped_at: datetime | None
    silent_seconds: float

    @property
    def state(self) -> str:
        if self.stopped_at is not None:
            return "stopped"
        return "watching" if self.silent_seconds < WATCHER_SILENT_SECONDS else "not answering"

    def line(self) -> str:
        when = (lambda t: t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "never")
        head = f"watch [{self.state}] {', '.join(self.paths)} on {self.host} (pid {self.pid}, {self.mode})"
        if self.state == "not answering":
            return f"{head}: no heartbeat for {duration(self.silent_seconds)} (killed, or its machine is down)"
        return (f"{head} since {when(self.started_at)}: last change {when(self.last_change_at)}, "
                f"last rescan {when(self.last_rescan_at)}, {plural(self.runs, 'run')}, "
                f"{plural(self.files, 'file')} indexed")


def list_watchers(conn: psycopg.Connection, limit: int = 5) -> list[WatcherStatus]:
    """The watchers running or silent, then those stopped in the last day, newest first."""
    rows = conn.execute(
        "SELECT id, host, pid, paths, mode, started_at, seen_at, last_change_at, last_rescan_at, runs, files, "
        "stopped_at, extract(epoch FROM now() - seen_at) FROM watchers "
        "WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 day' "
        "ORDER BY stopped_at IS NOT NULL, started_at DESC LIMIT %s", (limit,)).fetchall()
    return [WatcherStatus(*row[:-1], silent_seconds=float(row[-1])) for row in rows]


def plural(count: int, word: str, words: str | None = None) -> str:
    """'1 file', '2 files' (``words`` for irregular plurals)."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 04 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"

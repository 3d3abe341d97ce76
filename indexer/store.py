"""Every write the indexer makes, as parameterised SQL.

A batch is written in one transaction with one statement per table (arrays unnested server-side),
and every statement is an upsert keyed on natural keys: image SHA-256, (root, path), (image,
model). A batch that is written twice leaves the same rows. Rows are sorted by their key before
writing so two workers touching the same images lock them in the same order.

Text from files (names, sidecars, EXIF) goes through ``storable`` on its way in: PostgreSQL
refuses NUL and lone surrogates. Should a row still be refused, only its file fails: the batch is
then written file by file, each in its own savepoint.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
import psycopg
from pgvector import HalfVector

from clipdex import archives
from clipdex.roots import display_path
from clipdex.search.words import name_words
from clipdex.text import storable, storable_json
from indexer.metadata import ImageFacts
from indexer.sources import FileTask, decode_path
from indexer.thumbnail import Thumbnail

log = logging.getLogger(__name__)


def is_transient(exc: BaseException, conn: psycopg.Connection) -> bool:
    """An error worth retrying the whole batch for (the server went away, a deadlock, a lock
    timeout), as opposed to a row the database refuses, which will be refused again."""
    if conn.closed or conn.broken:
        return True
    return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.ProgramLimitExceeded)


# What a single row can make the database refuse: a value it cannot store or a constraint, an
# index entry too large (a very long path), text it cannot encode. Anything else is not about one
# file (a lost connection is retried; a bug fails the batch, with its error, as a whole).
ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded, UnicodeError)


def _refused_by_row(exc: BaseException, conn: psycopg.Connection) -> bool:
    return isinstance(exc, ROW_ERRORS) and not is_transient(exc, conn)


# --- runs and batches ---------------------------------------------------------------------------


def create_run(conn: psycopg.Connection, *, mode: str, root: str, path: bytes, source: str,
               model: str, defer_index: bool = False) -> int:
    return conn.execute(
        "INSERT INTO ingest_runs (mode, root, path, source, model, host, defer_index) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (mode, root, display_path(path), source, model, socket.gethostname(), defer_index),
    ).fetchone()[0]


def record_sources(conn: psycopg.Connection, run_id: int, rows: Iterable[tuple]) -> None:
    """rows: (source, path, seen, unchanged, skipped, queued, gone, failed_before), added to what is
    there."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ingest_sources (run_id, source, path, files_seen, files_unchanged, "
            "files_skipped, files_queued, files_gone, files_failed_before) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (run_id, source, path) DO UPDATE SET "
            "files_seen = ingest_sources.files_seen + EXCLUDED.files_seen, "
            "files_unchanged = ingest_sources.files_unchanged + EXCLUDED.files_unchanged, "
            "files_skipped = ingest_sources.files_skipped + EXCLUDED.files_skipped, "
            "files_queued = ingest_sources.files_queued + EXCLUDED.files_queued, "
            "files_gone = ingest_sources.files_gone + EXCLUDED.files_gone, "
            "files_failed_before = ingest_sources.files_failed_before + EXCLUDED.files_failed_before",
            [(run_id, *row) for row in rows],
        )


def add_batches(conn: psycopg.Connection, run_id: int, batches: list[tuple[int, str, list]]) -> None:
    """batches: (batch_no, source, payload of FileTask.to_json() lists)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ingest_batches (run_id, batch_no, source, files, payload) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(run_id, no, source, len(payload), json.dumps(payload)) for no, source, payload in batches],
        )


def batch_parts(conn: psycopg.Connection, run_id: int, batch_numbers: list[int]) -> dict[int, bytes | None]:
    """The tar part each batch reads (a batch holds members of one part, or none), by batch."""
    rows = conn.execute("SELECT batch_no, payload->0->0 FROM ingest_batches WHERE run_id = %s AND batch_no = ANY(%s)",
                        (run_id, batch_numbers))
    return {no: archives.tar_of(decode_path(first)) if first is not None else None for no, first in rows}


def delete_run(conn: psycopg.Connection, run_id: int) -> None:
    """Removes a run that found nothing to do (a watcher's quiet rescan), with its rows."""
    conn.execute("DELETE FROM ingest_runs WHERE id = %s", (run_id,))


def register_watcher(conn: psycopg.Connection, host: str, pid: int, paths: list[str], mode: str) -> int:
    return conn.execute("INSERT INTO watchers (host, pid, paths, mode) VALUES (%s, %s, %s, %s) RETURNING id",
                        (host, pid, paths, mode)).fetchone()[0]


def note_watcher(conn: psycopg.Connection, watcher_id: int, *, last_rescan: bool = False,
                 run_files: int | None = None) -> None:
    """The watcher's heartbeat, with what it just did: a whole rescan, or a run of run_files files."""
    conn.execute(
        "UPDATE watchers SET seen_at = now(), "
        "last_rescan_at = CASE WHEN %(rescan)s THEN now() ELSE last_rescan_at END, "
        "last_change_at = CASE WHEN %(ran)s THEN now() ELSE last_change_at END, "
        "runs = runs + CASE WHEN %(ran)s THEN 1 ELSE 0 END, files = files + coalesce(%(files)s, 0) "
        "WHERE id = %(id)s",
        {"rescan": last_rescan, "ran": run_files is not None, "files": run_files, "id": watcher_id})


def stop_watcher(conn: psycopg.Connection, watcher_id: int) -> None:
    conn.execute("UPDATE watchers SET stopped_at = now(), seen_at = now() WHERE id = %s", (watcher_id,))


def mark_enqueued(conn: psycopg.Connection, run_id: int) -> bool:
    """Marks the scan done; True when that finishes the run (the workers were quicker)."""
    conn.execute("UPDATE ingest_runs SET enqueued_at = now() WHERE id = %s", (run_id,))
    return finish_run_if_complete(conn, run_id)


def record_scan_problems(conn: psycopg.Connection, run_id: int, root: str,
                         problems: Iterable[tuple[bytes, str]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ingest_failures (run_id, root, relpath, relpath_bytes, stage, reason) "
            "VALUES (%s, %s, %s, %s, 'read', %s) ON CONFLICT (run_id, root, sha256(relpath_bytes)) DO NOTHING",
            [(run_id, root, display_path(p), p, reason) for p, reason in problems],
        )


@dataclass
class BatchWork:
    run_id: int
    batch_no: int
    root: str
    source: str
    model: str          # the model key the run asked for
    state: str
    payload: list | None
    defer_index: bool = False
    model_id: int | None = None


def load_batch(conn: psycopg.Connection, run_id: int, batch_no: int) -> BatchWork | None:
    row = conn.execute(
        "SELECT r.root, b.source, r.model, b.state, b.payload, r.defer_index FROM ingest_batches b "
        "JOIN ingest_runs r ON r.id = b.run_id WHERE b.run_id = %s AND b.batch_no = %s",
        (run_id, batch_no),
    ).fetchone()
    if row is None:
        return None
    return BatchWork(run_id, batch_no, *row)


def start_batch(conn: psycopg.Connection, run_id: int, batch_no: int, worker: str) -> None:
    conn.execute(
        "UPDATE ingest_batches SET attempts = attempts + 1, worker = %s, started_at = now(), "
        "error = NULL WHERE run_id = %s AND batch_no = %s", (worker, run_id, batch_no))


def batch_error(conn: psycopg.Connection, run_id: int, batch_no: int, error: str) -> None:
    """Why the last attempt of a batch stopped (it stays queued: a retry may succeed)."""
    conn.execute("UPDATE ingest_batches SET error = %s WHERE run_id = %s AND batch_no = %s",
                 (storable(error)[:2000], run_id, batch_no))


def claim_batch(conn: psycopg.Connection, run_id: int, batch_no: int) -> bool:
    """Locks a batch for writing its results (in the caller's transaction); False when it is no
    longer queued: another worker finished it meanwhile (a redelivered task)."""
    state = conn.execute("SELECT state FROM ingest_batches WHERE run_id = %s AND batch_no = %s FOR UPDATE",
                         (run_id, batch_no)).fetchone()
    return state is not None and state[0] == "queued"


def run_exists(conn: psycopg.Connection, run_id: int) -> bool:
    return conn.execute("SELECT 1 FROM ingest_runs WHERE id = %s", (run_id,)).fetchone() is not None


def register_root(conn: psycopg.Connection, name: str, path: str) -> None:
    """Remembers where a root was found (the first machine to index it decides)."""
    conn.execute("INSERT INTO roots (name, path) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, path))


def deferred_index_model(conn: psycopg.Connection, run_id: int) -> int | None:
    """The model whose HNSW index a finished bulk-load run still has to build, if any."""
    row = conn.execute("SELECT m.id FROM ingest_runs r JOIN models m ON m.name = r.model "
                       "WHERE r.id = %s AND r.defer_index AND r.finished_at IS NOT NULL", (run_id,)).fetchone()
    return row[0] if row else None


class FailedBatch(NamedTuple):
    files: int           # files the batch held (all of them count as failed)
    finished_run: bool   # this was the run's last open batch


def fail_batch(conn: psycopg.Connection, run_id: int, batch_no: int, error: str) -> FailedBatch:
    """Marks a batch that failed for good: its files become failures of stage 'batch' with the
    error, and the run can finish (`clipdex status` tells the truth; `clipdex resume` retries it)."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE ingest_batches SET state = 'failed', error = %s, failed = files, finished_at = now() "
            "WHERE run_id = %s AND batch_no = %s AND state = 'queued' RETURNING payload, source, files",
            (storable(error)[:2000], run_id, batch_no)).fetchone()
        if row is None:
            return FailedBatch(0, False)
        payload, source, files = row
        root = conn.execute("SELECT root FROM ingest_runs WHERE id = %s", (run_id,)).fetchone()[0]
        tasks = _readable_tasks(payload)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ingest_failures (run_id, root, relpath, relpath_bytes, source, stage, reason, "
                "byte_size, mtime_ns) VALUES (%s, %s, %s, %s, %s, 'batch', %s, %s, %s) "
                "ON CONFLICT (run_id, root, sha256(relpath_bytes)) DO NOTHING",
                [(run_id, root, display_path(t.relpath), t.relpath, source,
                  storable(f"its batch failed: {error}")[:2000], t.size, t.mtime_ns) for t in tasks])
        return FailedBatch(files, finish_run_if_complete(conn, run_id))


def _readable_tasks(payload: list | None) -> list[FileTask]:
    """The files of a stored batch that can still be read back (a damaged entry is left out)."""
    tasks = []
    for item in payload or []:
        try:
            tasks.append(FileTask.from_json(item))
        except (ValueError, TypeError, KeyError):
            continue
    return tasks


def pending_batches(conn: psycopg.Connection, run_id: int) -> list[int]:
    """The batches of a run that are not done; failed ones are queued again (their 'batch'
    failure rows go: the retry records its own)."""
    with conn.transaction():
        for (payload,) in conn.execute(
                "UPDATE ingest_batches SET state = 'queued', failed = 0, finished_at = NULL "
                "WHERE run_id = %s AND state = 'failed' RETURNING payload", (run_id,)).fetchall():
            paths = [task.relpath for task in _readable_tasks(payload)]
            conn.execute("DELETE FROM ingest_failures WHERE run_id = %s AND stage = 'batch' "
                         "AND relpath_bytes = ANY(%b)", (run_id, paths))
        # A run that finished with failed batches is running again.
        conn.execute("UPDATE ingest_runs r SET finished_at = NULL WHERE r.id = %s AND r.finished_at IS NOT NULL "
                     "AND EXISTS (SELECT 1 FROM ingest_batches b WHERE b.run_id = r.id AND b.state = 'queued')",
                     (run_id,))
        return [r[0] for r in conn.execute(
            "SELECT batch_no FROM ingest_batches WHERE run_id = %s AND state = 'queued' ORDER BY batch_no",
            (run_id,))]


def finish_run_if_complete(conn: psycopg.Connection, run_id: int) -> bool:
    """Sets finished_at once the scan is done and no batch is left queued (each is done, or failed
    for good); the row lock serialises workers. True when this call finished the run (exactly one
    caller sees True).

    NO KEY UPDATE, not UPDATE: every writer of the run already holds a KEY SHARE lock on this row
    (its locations and failures reference the run), and FOR UPDATE waits for those: two writers
    finishing batches of one run at once deadlocked there."""
    row = conn.execute(
        "SELECT enqueued_at, finished_at FROM ingest_runs WHERE id = %s FOR NO KEY UPDATE", (run_id,)
    ).fetchone()
    if row is None or row[0] is None or row[1] is not None:
        return False
    open_batches = conn.execute(
        "SELECT count(*) FROM ingest_batches WHERE run_id = %s AND state = 'queued'", (run_id,)
    ).fetchone()[0]
    if open_batches:
        return False
    conn.execute("UPDATE ingest_runs SET finished_at = now() WHERE id = %s", (run_id,))
    release_images(conn, run_id)
    # The run's model scores queries against a sample of its vectors (the match cut-off): drawn
    # again once the library has grown or shrunk by a tenth.
    conn.execute("SELECT clipdex_refresh_sample_if_due(m.id) FROM ingest_runs r JOIN models m ON m.name = r.model "
                 "WHERE r.id = %s", (run_id,))
    return True


# --- places -------------------------------------------------------------------------------------


PLACES_PER_PASS = 200_000


def fill_places(conn: psycopg.Connection, image_ids: list[int] | None = None) -> int:
    """Names where the photos with GPS and no place yet were taken (those of ``image_ids``, or up
    to PLACES_PER_PASS of the library: what an upgrade left unnamed). Returns how many it named."""
    from clipdex.places import country_names, nearest_places
    from clipdex.search.words import compact, quoted, text_words

    if image_ids is not None and not image_ids:
        return 0
    rows = conn.execute(
        "SELECT id, latitude, longitude FROM images WHERE latitude IS NOT NULL AND place_code IS NULL "
        "AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s)) ORDER BY id LIMIT %(limit)s",
        {"ids": image_ids, "limit": PLACES_PER_PASS}).fetchall()
    if not rows:
        return 0
    places = nearest_places([(float(lat), float(lon)) for _, lat, lon in rows])
    names = [(p.name, p.region, *country_names(p.country)) for p in places]
    conn.execute(
        "UPDATE images i SET place_name = n.name, place_region = n.region, place_country = n.country, "
        "place_code = n.code, place_words = n.words::tsvector, place_compact = n.compact "
        "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
        "AS n(id, name, region, country, code, words, compact) WHERE i.id = n.id",
        ([r[0] for r in rows], [storable(p.name) for p in places], [storable(p.region) for p in places],
         [n[2] if len(n) > 2 else None for n in names], [p.country or "" for p in places],
         [" ".join(quoted(w) for w in text_words(" ".join(n))) for n in names],
         ["|".join(compact(part) for part in n) for n in names]))
    return len(rows)


# --- what is already indexed ------------------------------------------------------------------


def indexed_files(conn: psycopg.Connection, root: str, model_id: int
                  ) -> dict[bytes, tuple[int, int, int | None]]:
    """relpath -> (size, mtime_ns, inode or None) of files that need no work: embedded with this
    model, or known not to be images."""
    known: dict[bytes, tuple[int, int, int | None]] = {}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT l.relpath_bytes, l.byte_size, l.mtime_ns, l.inode FROM locations l "
            "WHERE l.root = %s AND EXISTS (SELECT 1 FROM embeddings e "
            "WHERE e.image_id = l.image_id AND e.model_id = %s) "
            "UNION ALL SELECT relpath_bytes, byte_size, mtime_ns, NULL FROM skipped_files WHERE root = %s",
            (root, model_id, root),
        )
        for relpath, size, mtime_ns, inode in cur:
            known[bytes(relpath)] = (size, mtime_ns, inode)
    return known


def images_without_vector(conn: psycopg.Connection, root: str, model_id: int
                          ) -> dict[bytes, tuple[int, int, int | None, int]]:
    """relpath -> (size, mtime_ns, inode or None, image id) of files indexed as images that lack
    this model's vector: a second model's run re-reads their pixels and nothing else."""
    rows = conn.execute(
        "SELECT l.relpath_bytes, l.byte_size, l.mtime_ns, l.inode, l.image_id FROM locations l "
        "WHERE l.root = %s AND NOT EXISTS (SELECT 1 FROM embeddings e "
        "WHERE e.image_id = l.image_id AND e.model_id = %s)", (root, model_id))
    return {bytes(relpath): (size, mtime_ns, inode, image_id) for relpath, size, mtime_ns, inode, image_id in rows}


def unchanged(stored: tuple[int, int, int | None] | None, size: int, mtime_ns: int, inode: int) -> bool:
    """Same size and mtime, and the same inode when one was stored: a file swapped for another
    with the same size and time (a restored copy, a link) is read again."""
    return (stored is not None and stored[:2] == (size, mtime_ns)
            and (stored[2] is None or not inode or stored[2] == inode))


# Failures that come from a file's content: the same bytes fail the same way. A read failure
# depends on the moment (a file that vanished, a permission since fixed, which leaves the mtime
# as it was), and a batch failure on everything but the file: those are always tried again.
CONTENT_STAGES = ("decode", "embed", "write")


def failed_before(conn: psycopg.Connection, root: str) -> dict[bytes, tuple[int, int]]:
    """relpath -> (size, mtime_ns) of files whose latest failure came from their content: they fail
    again unless they change."""
    rows = conn.execute(
        "SELECT relpath_bytes, stage, byte_size, mtime_ns FROM (SELECT DISTINCT ON (sha256(relpath_bytes)) "
        "relpath_bytes, stage, byte_size, mtime_ns FROM ingest_failures WHERE root = %s "
        "ORDER BY sha256(relpath_bytes), created_at DESC, id DESC) latest "
        "WHERE stage = ANY(%s) AND byte_size IS NOT NULL AND mtime_ns IS NOT NULL", (root, list(CONTENT_STAGES)))
    return {bytes(path): (size, mtime) for path, _stage, size, mtime in rows}


def located_files(conn: psycopg.Connection, root: str, folder: bytes) -> list[tuple[bytes, str]]:
    """(relpath, source) of every location stored under ``folder`` of ``root`` (b"" = all)."""
    if not folder:
        rows = conn.execute("SELECT relpath_bytes, source FROM locations WHERE root = %s", (root,))
    else:
        # Everything whose path starts with b"folder/": the byte range [folder/, folder0), as '0'
        # follows '/', which the (root, relpath_bytes) index answers.
        rows = conn.execute(
            "SELECT relpath_bytes, source FROM locations WHERE root = %s "
            "AND relpath_bytes >= %b AND relpath_bytes < %b",
            (root, folder + b"/", folder + b"0"))
    return [(bytes(relpath), source) for relpath, source in rows]


def archive_listing(conn: psycopg.Connection, root: str, relpath: bytes, size: int, mtime_ns: int,
                    inode: int) -> tuple[bytes, str | None] | None:
    """(packed members, damage) of a tar part listed before as it is now; None when it changed
    or was never listed (clipdex/tarballs.py)."""
    row = conn.execute("SELECT members, damage FROM archive_listings WHERE root = %s AND relpath_bytes = %s "
                       "AND size = %s AND mtime_ns = %s AND inode = %s", (root, relpath, size, mtime_ns, inode)
                       ).fetchone()
    return (bytes(row[0]), row[1]) if row else None


def archive_identities(conn: psycopg.Connection, root: str, relpaths: list[bytes]) -> dict[bytes, tuple[int, int, int]]:
    """(size, mtime, inode) of each of these tar parts as it was last listed."""
    rows = conn.execute("SELECT relpath_bytes, size, mtime_ns, inode FROM archive_listings "
                        "WHERE root = %s AND relpath_bytes = ANY(%s)", (root, relpaths))
    return {bytes(r[0]): (r[1], r[2], r[3]) for r in rows}


def save_archive_listing(conn: psycopg.Connection, root: str, relpath: bytes, size: int, mtime_ns: int,
                         inode: int, members: bytes, texts: bytes, damage: str | None) -> None:
    conn.execute(
        "INSERT INTO archive_listings (root, relpath_bytes, size, mtime_ns, inode, members, texts, damage) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (root, relpath_bytes) DO UPDATE SET "
        "size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, inode = EXCLUDED.inode, members = EXCLUDED.members, "
        "texts = EXCLUDED.texts, damage = EXCLUDED.damage, listed_at = now()",
        (root, relpath, size, mtime_ns, inode, members, texts, storable(damage) if damage else None))


def archive_listed_at(conn: psycopg.Connection, root: str, relpath: bytes):
    """When a tar part was last listed (None: never): a worker's copy of its texts is that old."""
    row = conn.execute("SELECT listed_at FROM archive_listings WHERE root = %s AND relpath_bytes = %s",
                       (root, relpath)).fetchone()
    return row[0] if row else None


def archive_texts(conn: psycopg.Connection, root: str, relpath: bytes) -> bytes | None:
    """The packed small JSON members of a listed tar part (its sidecars and album files)."""
    row = conn.execute("SELECT texts FROM archive_listings WHERE root = %s AND relpath_bytes = %s",
                       (root, relpath)).fetchone()
    return bytes(row[0]) if row else None


def forget_archive_listings(conn: psycopg.Connection, root: str, folder: bytes, kept: list[bytes]) -> None:
    """Drops the listings of tar parts under ``folder`` (b"": all) that the scan did not list."""
    conn.execute("DELETE FROM archive_listings WHERE root = %s AND (%s = ''::bytea OR relpath_bytes = %s "
                 "OR (relpath_bytes >= %s AND relpath_bytes < %s)) AND NOT relpath_bytes = ANY(%s)",
                 (root, folder, folder, folder + b"/", folder + b"0", kept))


def forget_files(conn: psycopg.Connection, root: str, relpaths: list[bytes], *,
                 keep_images: bool = False) -> list[int]:
    """Removes the locations of files no longer on disk, then every image left with no location
    (its vectors and thumbnail go with it): a search must not offer a photo that exists nowhere.
    ``keep_images``: the images stay (files moved elsewhere: hold_images). Returns their ids."""
    removed: list[int] = []
    for start in range(0, len(relpaths), 10_000):
        chunk = relpaths[start:start + 10_000]
        images = [r[0] for r in conn.execute(
            "DELETE FROM locations WHERE root = %s AND relpath_bytes = ANY(%b) RETURNING image_id",
            (root, chunk))]
        if not keep_images:
            delete_orphan_images(conn, images)
        removed.extend(images)
    return removed


def hold_images(conn: psycopg.Connection, run_id: int, image_ids: list[int]) -> None:
    """Images a run keeps while their files move (held until the run ends)."""
    if image_ids:
        conn.execute("UPDATE ingest_runs SET held_images = %s WHERE id = %s", (sorted(set(image_ids)), run_id))


def release_images(conn: psycopg.Connection, run_id: int) -> None:
    """At a run's end: its held images that no file claimed leave the index."""
    row = conn.execute("UPDATE ingest_runs r SET held_images = NULL FROM ingest_runs old "
                       "WHERE r.id = %s AND old.id = r.id AND old.held_images IS NOT NULL "
                       "RETURNING old.held_images", (run_id,)).fetchone()
    if row is not None:
        delete_orphan_images(conn, row[0])


def release_abandoned_images(conn: psycopg.Connection, root: str) -> None:
    """Images held by runs of ``root`` that never finished (killed) and started over a day ago."""
    for (held,) in conn.execute(
            "UPDATE ingest_runs r SET held_images = NULL FROM ingest_runs old WHERE old.id = r.id "
            "AND r.root = %s AND old.held_images IS NOT NULL AND r.finished_at IS NULL "
            "AND r.started_at < now() - interval '1 day' RETURNING old.held_images", (root,)).fetchall():
        delete_orphan_images(conn, held)


def delete_orphan_images(conn: psycopg.Connection, image_ids: list[int]) -> None:
    """Deletes those of ``image_ids`` left with no location (vectors and thumbnail cascade)."""
    if image_ids:
        # The groups a deleted image founded are grouped again (indexer/lookalikes.py).
        conn.execute("WITH gone AS (DELETE FROM images i WHERE i.id = ANY(%s) AND NOT EXISTS "
                     "(SELECT 1 FROM locations l WHERE l.image_id = i.id) RETURNING i.id) "
                     "UPDATE images SET look_group = NULL WHERE look_group IN (SELECT id FROM gone) "
                     "AND id NOT IN (SELECT id FROM gone)",
                     (sorted(set(image_ids)),))


def lookup_image(conn: psycopg.Connection, sha256: bytes, model_id: int) -> tuple[int, bool] | None:
    """(image id, has a vector for this model) for known bytes, else None."""
    return conn.execute(
        "SELECT id, EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = images.id "
        "AND e.model_id = %s) FROM images WHERE sha256 = %s",
        (model_id, sha256),
    ).fetchone()


# --- writing a batch ----------------------------------------------------------------------------


@dataclass
class NewImage:
    sha256: bytes
    format: str
    width: int
    height: int
    exif_orientation: int | None
    byte_size: int
    facts: ImageFacts
    embedding: np.ndarray
    thumbnail: Thumbnail | None   # None: the image has one (a second model's vector)


@dataclass
class LocationRow:
    sha256: bytes
    relpath: bytes
    source: str
    album: str | None
    byte_size: int
    mtime_ns: int
    source_meta: dict[str, Any]
    inode: int | None = None
    caption: str | None = None       # the export's description of this copy: searchable by its words


@dataclass
class VectorRow:
    """This model's vector for an image another model's run stored (the file is unchanged)."""

    image_id: int
    embedding: np.ndarray
    relpath: bytes
    byte_size: int
    mtime_ns: int


Failure = tuple[bytes, str, str, "int | None", "int | None"]   # path, stage, reason, size, mtime


@dataclass
class BatchOutcome:
    new_images: list[NewImage] = field(default_factory=list)
    known_facts: list[tuple[int, ImageFacts]] = field(default_factory=list)  # (image id, facts)
    locations: list[LocationRow] = field(default_factory=list)
    known_ids: dict[bytes, int] = field(default_factory=dict)   # sha256 -> id, for known images
    vectors_only: list[VectorRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    ignored: list[tuple[bytes, int, int, str]] = field(default_factory=list)  # path, size, mtime, why
    timings: dict[str, float] = field(default_factory=dict)


# Merge rules for an image seen again (through another copy of its bytes). {n} is the incoming
# row, i the stored one: the more trusted capture time wins, a sidecar's place beats EXIF's, the
# first camera and description stay, a favourite anywhere is a favourite.
_MERGE = {
    "taken_at": "CASE WHEN {newer} THEN {n}.taken_at ELSE i.taken_at END",
    "taken_at_source": "CASE WHEN {newer} THEN {n}.taken_at_source ELSE i.taken_at_source END",
    "utc_offset_minutes": "CASE WHEN {newer} THEN coalesce({n}.utc_offset_minutes, i.utc_offset_minutes) "
                          "ELSE coalesce(i.utc_offset_minutes, {n}.utc_offset_minutes) END",
    "latitude": "CASE WHEN {sidecar_gps} OR i.latitude IS NULL THEN coalesce({n}.latitude, i.latitude) "
                "ELSE i.latitude END",
    "longitude": "CASE WHEN {sidecar_gps} OR i.latitude IS NULL THEN coalesce({n}.longitude, i.longitude) "
                 "ELSE i.longitude END",
    "camera_make": "coalesce(i.camera_make, {n}.camera_make)",
    "camera_model": "coalesce(i.camera_model, {n}.camera_model)",
    "description": "coalesce(i.description, {n}.description)",
    "favorite": "i.favorite OR {n}.favorite",
    "extra": "i.extra || {n}.extra",
}


def _merge_assignments(n: str, sidecar_gps: str) -> str:
    newer = f"clipdex_time_rank({n}.taken_at_source) > clipdex_time_rank(i.taken_at_source)"
    merged = {col: expr.format(n=n, newer=newer, sidecar_gps=sidecar_gps) for col, expr in _MERGE.items()}
    # A place moved (a sidecar's GPS beat the EXIF one): its name is looked up again (fill_places).
    merged["place_code"] = (f"CASE WHEN ({merged['latitude']}) IS DISTINCT FROM i.latitude OR "
                            f"({merged['longitude']}) IS DISTINCT FROM i.longitude THEN NULL ELSE i.place_code END")
    return ", ".join(f"{col} = {expr}" for col, expr in merged.items())


_FACT_COLUMNS = ("taken_at", "taken_at_source", "utc_offset_minutes", "latitude", "longitude",
                 "gps_from_sidecar", "camera_make", "camera_model", "description", "favorite", "extra")
_FACT_TYPES = ("timestamptz", "text", "smallint", "float8", "float8", "bool", "text", "text", "text",
               "bool", "jsonb")


def _fact_arrays(facts: list[ImageFacts]) -> list[list]:
    columns = []
    for name, typ in zip(_FACT_COLUMNS, _FACT_TYPES):
        values = [getattr(f, name) for f in facts]
        if typ == "jsonb":
            values = [json.dumps(storable_json(v)) for v in values]
        elif typ == "text":
            values = [_text(v) for v in values]
        columns.append(values)
    return columns


def _look_arrays(new: list[NewImage]) -> list[list]:
    """The look-alike columns (``_LOOK_COLUMNS``) of new images; none for those without a thumbnail."""
    looks = [n.thumbnail.look if n.thumbnail is not None else None for n in new]
    return [[getattr(look, part) if look is not None else None for look in looks]
            for part in ("hash", "detail", "share")]


def _unnest(columns: list[tuple[str, str]]) -> str:
    arrays = ", ".join(f"%s::{typ}[]" for _, typ in columns)
    names = ", ".join(name for name, _ in columns)
    return f"unnest({arrays}) AS n({names})"


# The look-alike hashes of the thumbnail; the run groups its new photos when it finishes
# (indexer/lookalikes.py).
_LOOK_COLUMNS = [("look", "bigint"), ("look_detail", "bytea"), ("picture_share", "real")]
_IMAGE_COLUMNS = [("sha256", "bytea"), ("format", "text"), ("width", "int"), ("height", "int"),
                  ("exif_orientation", "smallint"), ("byte_size", "bigint")] + list(zip(_FACT_COLUMNS, _FACT_TYPES)) \
                 + _LOOK_COLUMNS
_STORED = [c for c, _ in _IMAGE_COLUMNS if c != "gps_from_sidecar"]

# New bytes: insert; bytes another worker inserted meanwhile: merge (sidecar GPS is not known
# for EXCLUDED rows, so the stored place stays).
INSERT_IMAGES = (
    f"INSERT INTO images AS i ({', '.join(_STORED)}) "
    f"SELECT {', '.join('n.look::bit(64)' if c == 'look' else 'n.' + c for c in _STORED)} "
    f"FROM {_unnest(_IMAGE_COLUMNS)} "
    f"ON CONFLICT (sha256) DO UPDATE SET {_merge_assignments('EXCLUDED', 'false')} "
    "RETURNING i.id, i.sha256, (i.xmax = 0) AS inserted"
)

UPDATE_KNOWN_IMAGES = (
    f"UPDATE images AS i SET {_merge_assignments('n', 'n.gps_from_sidecar AND n.latitude IS NOT NULL')} "
    f"FROM {_unnest([('id', 'bigint')] + list(zip(_FACT_COLUMNS, _FACT_TYPES)))} WHERE i.id = n.id"
)


def _halfvec_binary(vector: np.ndarray) -> HalfVector:
    return HalfVector(vector.astype(np.float16))


def _text(value: str | None) -> str | None:
    return None if value is None else storable(value)


def _write_images(conn: psycopg.Connection, model_id: int, new: list[NewImage]) -> tuple[dict[bytes, int], int]:
    """Inserts new images with their vectors and thumbnails; (sha256 -> id, rows really inserted).
    Bytes another run inserted meanwhile are merged, and not counted as new by this one."""
    if not new:
        return {}, 0
    new = sorted(new, key=lambda n: n.sha256)
    rows = conn.execute(INSERT_IMAGES, [
        [n.sha256 for n in new], [n.format for n in new], [n.width for n in new],
        [n.height for n in new], [n.exif_orientation for n in new], [n.byte_size for n in new],
        *_fact_arrays([n.facts for n in new]),
        *_look_arrays(new)]).fetchall()
    ids = {bytes(sha): image_id for image_id, sha, _inserted in rows}
    conn.execute(
        "INSERT INTO embeddings (image_id, model_id, embedding) "
        "SELECT n.image_id, %s, n.embedding FROM unnest(%s::bigint[], %b::halfvec[]) "
        "AS n(image_id, embedding) ON CONFLICT DO NOTHING",
        (model_id, [ids[n.sha256] for n in new], [_halfvec_binary(n.embedding) for n in new]))
    thumbnailed = [n for n in new if n.thumbnail is not None]
    conn.execute(
        "INSERT INTO thumbnails (image_id, width, height, webp) "
        "SELECT * FROM unnest(%s::bigint[], %s::smallint[], %s::smallint[], %b::bytea[]) "
        "ON CONFLICT DO NOTHING",
        ([ids[n.sha256] for n in thumbnailed], [n.thumbnail.width for n in thumbnailed],
         [n.thumbnail.height for n in thumbnailed], [n.thumbnail.webp for n in thumbnailed]))
    return ids, sum(1 for row in rows if row[2])


def _write_vectors(conn: psycopg.Connection, model_id: int, rows: list[VectorRow]) -> int:
    """This model's vectors for images stored earlier (no image, thumbnail or location row changes);
    an image forgotten since the run was planned is passed over. Returns the vectors written."""
    if not rows:
        return 0
    rows = sorted(rows, key=lambda r: r.image_id)
    return conn.execute(
        "INSERT INTO embeddings (image_id, model_id, embedding) "
        "SELECT n.image_id, %s, n.embedding FROM unnest(%s::bigint[], %b::halfvec[]) AS n(image_id, embedding) "
        "WHERE EXISTS (SELECT 1 FROM images i WHERE i.id = n.image_id) ON CONFLICT DO NOTHING",
        (model_id, [r.image_id for r in rows], [_halfvec_binary(r.embedding) for r in rows])).rowcount


def _write_locations(conn: psycopg.Connection, work: BatchWork, locations: list[LocationRow],
                     ids: dict[bytes, int]) -> None:
    locations = sorted(locations, key=lambda loc: loc.relpath)
    paths = [loc.relpath for loc in locations]
    # Paths seen before with other bytes (the file was edited): their old image may be left
    # with no copy anywhere, and a search must not offer a photo that exists nowhere.
    previous = [r[0] for r in conn.execute(
        "SELECT image_id FROM locations WHERE root = %s AND relpath_bytes = ANY(%b)", (work.root, paths))]
    shown = [storable(display_path(p)) for p in paths]
    names = [name_words(_text(loc.caption), _text(loc.album), path) for loc, path in zip(locations, shown)]
    conn.execute(
        "INSERT INTO locations AS l (image_id, root, relpath, relpath_bytes, source, album, byte_size, "
        "mtime_ns, inode, source_meta, run_id, words, words_compact) "
        "SELECT n.image_id, %s, n.relpath, n.relpath_bytes, n.source, n.album, n.byte_size, n.mtime_ns, "
        "n.inode, n.source_meta, %s, n.words::tsvector, n.words_compact FROM unnest(%s::bigint[], %s::text[], "
        "%b::bytea[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::jsonb[], "
        "%s::text[], %s::text[]) AS n(image_id, relpath, relpath_bytes, source, album, byte_size, mtime_ns, "
        "inode, source_meta, words, words_compact) "
        "ON CONFLICT (root, relpath_bytes) DO UPDATE SET image_id = EXCLUDED.image_id, "
        "source = EXCLUDED.source, album = EXCLUDED.album, byte_size = EXCLUDED.byte_size, "
        "mtime_ns = EXCLUDED.mtime_ns, inode = EXCLUDED.inode, source_meta = EXCLUDED.source_meta, "
        "run_id = EXCLUDED.run_id, words = EXCLUDED.words, words_compact = EXCLUDED.words_compact, "
        "updated_at = now()",
        (work.root, work.run_id, [ids[loc.sha256] for loc in locations],
         shown, paths, [loc.source for loc in locations],
         [_text(loc.album) for loc in locations], [loc.byte_size for loc in locations],
         [loc.mtime_ns for loc in locations], [loc.inode for loc in locations],
         [json.dumps(storable_json(loc.source_meta)) for loc in locations],
         [w for w, _ in names], [c for _, c in names]))
    # A path that now holds an image is no longer a skipped non-image.
    conn.execute("DELETE FROM skipped_files WHERE root = %s AND relpath_bytes = ANY(%b)", (work.root, paths))
    delete_orphan_images(conn, previous)


def _write_content(conn: psycopg.Connection, work: BatchWork, part: BatchOutcome) -> tuple[dict[bytes, int], int]:
    """Images, vectors, thumbnails, merged facts and locations of (part of) a batch; returns the
    ids it learned and how many images it really inserted."""
    ids, inserted = _write_images(conn, work.model_id, part.new_images)
    ids.update(part.known_ids)
    known = sorted(part.known_facts, key=lambda item: item[0])
    if known:
        conn.execute(UPDATE_KNOWN_IMAGES, [[i for i, _ in known], *_fact_arrays([f for _, f in known])])
    if part.locations:
        _write_locations(conn, work, part.locations, ids)
    return ids, inserted


def split_by_file(outcome: BatchOutcome, ids: dict[bytes, int]) -> Iterator[tuple[LocationRow, BatchOutcome]]:
    """The batch's content as one small outcome per file, in order. A file carries the new image of
    its bytes unless an earlier file wrote it (``ids``, filled in by the caller as parts succeed)."""
    new_by_sha = {n.sha256: n for n in outcome.new_images}
    facts_by_id: dict[int, list[tuple[int, ImageFacts]]] = {}
    for image_id, facts in outcome.known_facts:
        facts_by_id.setdefault(image_id, []).append((image_id, facts))
    for loc in outcome.locations:
        part = BatchOutcome(locations=[loc])
        known_id = ids.get(loc.sha256, outcome.known_ids.get(loc.sha256))
        if known_id is not None:
            part.known_ids = {loc.sha256: known_id}
            part.known_facts = facts_by_id.pop(known_id, [])
        else:
            part.new_images = [new_by_sha[loc.sha256]]
        yield loc, part


def _write_file_by_file(conn: psycopg.Connection, work: BatchWork, outcome: BatchOutcome,
                        batch_error: Exception) -> tuple[int, int, list[Failure]]:
    """The slow path after the database refused the batch: each file in its own savepoint, so only
    the files it refuses fail (stage 'write'). Returns (inserted, locations and vectors written,
    failures)."""
    log.warning("run %s batch %s: the database refused the batch (%s); writing it file by file",
                work.run_id, work.batch_no, _first_line(batch_error))
    ids: dict[bytes, int] = {}
    inserted = written = 0
    failures: list[Failure] = []
    for loc, part in split_by_file(outcome, ids):
        try:
            with conn.transaction():
                learned, added = _write_content(conn, work, part)
        except Exception as exc:
            if not _refused_by_row(exc, conn):
                raise
            failures.append((loc.relpath, "write", f"the database refused it: {_first_line(exc)}", loc.byte_size,
                             loc.mtime_ns))
            continue
        ids.update(learned)
        inserted += added
        written += 1
    for row in outcome.vectors_only:
        try:
            with conn.transaction():
                written += _write_vectors(conn, work.model_id, [row])
        except Exception as exc:
            if not _refused_by_row(exc, conn):
                raise
            failures.append((row.relpath, "write", f"the database refused it: {_first_line(exc)}", row.byte_size,
                             row.mtime_ns))
    return inserted, written, failures


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _write_each(conn: psycopg.Connection, sql: str, rows: list[tuple], what: str) -> None:
    """executemany, and should one row be refused, the others one by one (that one is logged)."""
    if not rows:
        return
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(sql, rows)
        return
    except Exception as exc:
        if not _refused_by_row(exc, conn):
            raise
    for row in rows:
        try:
            with conn.transaction():
                conn.execute(sql, row)
        except Exception as exc:
            if not _refused_by_row(exc, conn):
                raise
            log.error("cannot record %s for %r: %s", what, row[3] if len(row) > 3 else row, exc)


def write_batch(conn: psycopg.Connection, work: BatchWork, outcome: BatchOutcome,
                worker: str) -> dict[str, int]:
    """Writes one batch's results and marks it done, in the caller's transaction.

    A row the database refuses (a value out of range, a path too long to index) costs only its
    file, which becomes a 'write' failure: the batch is then written again file by file.
    """
    failures = list(outcome.failures)
    ids: dict[bytes, int] = {}
    try:
        with conn.transaction():
            ids, inserted = _write_content(conn, work, outcome)
            written = len(outcome.locations) + _write_vectors(conn, work.model_id, outcome.vectors_only)
    except Exception as exc:
        if not _refused_by_row(exc, conn):
            raise
        inserted, written, refused = _write_file_by_file(conn, work, outcome, exc)
        failures += refused
    _write_each(conn,
                "INSERT INTO ingest_failures (run_id, root, relpath, relpath_bytes, source, stage, reason, "
                "byte_size, mtime_ns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (run_id, root, sha256(relpath_bytes)) DO UPDATE SET stage = EXCLUDED.stage, "
                "reason = EXCLUDED.reason, created_at = now()",
                [(work.run_id, work.root, storable(display_path(path)), path, work.source, stage,
                  storable(reason)[:2000], size, mtime) for path, stage, reason, size, mtime in failures],
                "a failure")
    _write_each(conn,
                "INSERT INTO skipped_files (root, relpath_bytes, relpath, byte_size, mtime_ns, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (root, relpath_bytes) DO UPDATE SET "
                "byte_size = EXCLUDED.byte_size, mtime_ns = EXCLUDED.mtime_ns, reason = EXCLUDED.reason, "
                "seen_at = now()",
                [(work.root, path, storable(display_path(path)), size, mtime, storable(why))
                 for path, size, mtime, why in outcome.ignored],
                "a skipped file")
    counts = {
        "images_new": inserted,
        "images_known": written - inserted,
        "ignored": len(outcome.ignored),
        "failed": len(failures),
    }
    conn.execute(
        "UPDATE ingest_batches SET state = 'done', payload = NULL, finished_at = now(), worker = %s, "
        "images_new = %s, images_known = %s, ignored = %s, failed = %s, timings = %s, error = NULL "
        "WHERE run_id = %s AND batch_no = %s",
        (worker, counts["images_new"], counts["images_known"], counts["ignored"], counts["failed"],
         json.dumps({k: round(v, 4) for k, v in outcome.timings.items()}), work.run_id, work.batch_no))
    counts["finished_run"] = finish_run_if_complete(conn, work.run_id)
    counts["image_ids"] = sorted(set(ids.values()))   # for the OCR queue (none when written file by file)
    return counts

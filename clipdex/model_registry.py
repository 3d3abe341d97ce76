"""The models whose vectors the database holds: registration, each model's HNSW index, and the
active model that psql's views and functions use.

Index changes take locks that any role able to connect can get in the way of (an advisory lock,
a table held open), so they wait at most a given time and then name the session in the way.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg

from clipdex.database import DatabaseError


class ModelMismatch(RuntimeError):
    """The database holds vectors of another size under this model's name."""


class LockedOut(DatabaseError):
    """Another session holds a lock clipdex needs; the message names it."""


class UnknownModel(LookupError):
    """No vectors are stored under this model's name."""


def lock_holders(conn: psycopg.Connection) -> str:
    """Who else holds locks in this database (advisory, or on clipdex's tables), in a few words."""
    rows = conn.execute(
        "SELECT DISTINCT a.pid, a.usename, a.application_name, a.state, left(a.query, 120) "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.pid <> pg_backend_pid() AND a.datname = current_database() "
        "AND (l.locktype = 'advisory' OR (l.locktype = 'relation' AND l.relation IN "
        "('embeddings'::regclass, 'images'::regclass, 'locations'::regclass, 'models'::regclass))) "
        "ORDER BY a.pid LIMIT 5").fetchall()
    if not rows:
        return "no session holds it any more; try again"
    return "; ".join(f"pid {pid} (role {user}, {app or 'no application name'}, {state}: {query!r})"
                     for pid, user, app, state, query in rows)


@contextmanager
def waiting_at_most(conn: psycopg.Connection, seconds: float, what: str) -> Iterator[None]:
    """A transaction whose lock waits end after ``seconds`` with the holders named, instead of
    hanging: any role that can connect can take an advisory lock or hold a table open."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {max(1, int(seconds * 1000))}")
            yield
    except psycopg.errors.LockNotAvailable:
        raise LockedOut(
            f"{what}: waited {seconds:g} s for a lock held by another session — {lock_holders(conn)}. "
            "End that session (as the database owner: SELECT pg_terminate_backend(pid)) and run again."
        ) from None


def register_model(conn: psycopg.Connection, key: str, dim: int, spec: dict[str, Any], *,
                   index: bool = True, lock_timeout: float = 30) -> int:
    """The model's id (created on first use), with its HNSW index in place unless a bulk load
    defers it (``index=False``)."""
    row = conn.execute(
        "INSERT INTO models (name, dim, spec) VALUES (%s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id, dim",
        (key, dim, json.dumps(spec)),
    ).fetchone()
    model_id, stored_dim = row
    if stored_dim != dim:
        raise ModelMismatch(
            f"model {key} produces {dim}-d vectors but the database stores {stored_dim}-d vectors "
            "under that name; refusing to mix them"
        )
    with waiting_at_most(conn, lock_timeout, f"cannot set up the vector index of model {key}"):
        if index:
            conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (model_id,))
        # The first model becomes the one psql's functions and `vectors` view use.
        conn.execute("SELECT clipdex_use_model(%s::smallint) WHERE NOT EXISTS (SELECT 1 FROM models WHERE active)",
                     (model_id,))
    return model_id


def drop_vector_index(conn: psycopg.Connection, model_id: int) -> None:
    """Before a bulk load: building the HNSW index once at the end is several times faster than
    inserting into it row by row (searches meanwhile sort exactly: slower, still right)."""
    conn.execute(f"DROP INDEX IF EXISTS embeddings_hnsw_model_{int(model_id)}")


def build_vector_index(conn: psycopg.Connection, model_id: int, lock_timeout: float = 30) -> str:
    with waiting_at_most(conn, lock_timeout, f"cannot build the vector index of model {model_id}"):
        return conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (model_id,)).fetchone()[0]


def embedded_images(conn: psycopg.Connection, model_id: int | None) -> int:
    if model_id is None:
        return 0
    return conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0]


def model_id(conn: psycopg.Connection, key: str) -> int | None:
    row = conn.execute("SELECT id FROM models WHERE name = %s", (key,)).fetchone()
    return row[0] if row else None


def build_missing_indexes(conn: psycopg.Connection, lock_timeout: float = 30
                          ) -> list[tuple[str, str, float | None]]:
    """(model name, index name, seconds it took to build, or None if it was there) for every model
    (after an interrupted bulk load, some may be missing)."""
    out = []
    for model_id, name in conn.execute("SELECT id, name FROM models ORDER BY id").fetchall():
        existed = conn.execute("SELECT to_regclass(format('embeddings_hnsw_model_%%s', %s::int)) IS NOT NULL",
                               (model_id,)).fetchone()[0]
        started = time.perf_counter()
        index = build_vector_index(conn, model_id, lock_timeout)
        out.append((name, index, None if existed else time.perf_counter() - started))
    return out


# A bulk load in this process holds pg_advisory_lock(BULK_LOAD_LOCK, run id) while it runs, so
# another command can tell a load that is going on from one that was interrupted.
BULK_LOAD_LOCK = 0x636C6478   # 'cldx'
# A Celery bulk load counts as going on while one of its batches started or finished this recently.
BULK_LOAD_QUIET_MINUTES = 15


@contextmanager
def holding_bulk_load(conn: psycopg.Connection, run_id: int) -> Iterator[None]:
    """Marks a bulk load in this process as alive for as long as the block runs."""
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (BULK_LOAD_LOCK, run_id))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (BULK_LOAD_LOCK, run_id))


def bulk_load_going_on(conn: psycopg.Connection, model_name: str) -> int | None:
    """The run id of a bulk load of this model that is still going on, if any: an unfinished run
    that deferred the index and whose process holds its lock (``clipdex index``), or whose batches
    moved in the last minutes (Celery workers)."""
    row = conn.execute(
        "SELECT r.id FROM ingest_runs r WHERE r.model = %s AND r.defer_index AND r.finished_at IS NULL AND ("
        " EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
        "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "   AND l.classid = %s::oid AND l.objid = r.id::oid AND l.objsubid = 2)"
        " OR (r.mode = 'celery' AND greatest(r.started_at, r.enqueued_at, (SELECT max(greatest(b.started_at, "
        "   b.finished_at)) FROM ingest_batches b WHERE b.run_id = r.id)) > now() - make_interval(mins => %s))"
        ") ORDER BY r.id DESC LIMIT 1",
        (model_name, BULK_LOAD_LOCK, BULK_LOAD_QUIET_MINUTES)).fetchone()
    return row[0] if row else None


def repair_missing_indexes(conn: psycopg.Connection, lock_timeout: float = 30,
                           say=None) -> list[tuple[str, float]]:
    """Builds the HNSW index of every model that has vectors but lost its index to an interrupted
    bulk load (a crash, Ctrl-C, a killed worker), unless that load is still going on: called by the
    commands that search, so a library is never left without its index past the next command.
    Returns (model name, seconds) of what it built; ``say(text)`` hears about it first."""
    built = []
    for model_id, name in conn.execute(
            "SELECT m.id, m.name FROM models m WHERE to_regclass('embeddings_hnsw_model_' || m.id) IS NULL "
            "AND EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = m.id) ORDER BY m.id").fetchall():
        if bulk_load_going_on(conn, name) is not None:
            continue
        if say is not None:
            say(f"the vector index of {name} is missing (an interrupted bulk load); building it now")
        started = time.perf_counter()
        build_vector_index(conn, model_id, lock_timeout)
        built.append((name, time.perf_counter() - started))
    return built


def activate(conn: psycopg.Connection, key: str, lock_timeout: float = 30) -> None:
    """Makes this model the one psql's `vectors` view and functions use."""
    found = model_id(conn, key)
    if found is None:
        raise UnknownModel(f"no image is indexed with {key} yet")
    with waiting_at_most(conn, lock_timeout, f"cannot make {key} the active model"):
        conn.execute("SELECT clipdex_use_model(%s::smallint)", (found,))

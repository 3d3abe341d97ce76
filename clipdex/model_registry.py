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


def activate(conn: psycopg.Connection, key: str, lock_timeout: float = 30) -> None:
    """Makes this model the one psql's `vectors` view and functions use."""
    found = model_id(conn, key)
    if found is None:
        raise UnknownModel(f"no image is indexed with {key} yet")
    with waiting_at_most(conn, lock_timeout, f"cannot make {key} the active model"):
        conn.execute("SELECT clipdex_use_model(%s::smallint)", (found,))

"""The models whose vectors the database holds: registration, each model's HNSW index, their
coverage, and the default model (`models.active`) that searches and psql's functions use.

Index changes take locks that any role able to connect can get in the way of (an advisory lock,
a table held open), so they wait at most a given time and then name the session in the way.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
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
        "ON CONFLICT (name) DO UPDATE SET spec = models.spec || EXCLUDED.spec RETURNING id, dim",
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
    conn.execute("SELECT clipdex_drop_vector_index(%s::smallint)", (model_id,))


def build_vector_index(conn: psycopg.Connection, model_id: int, lock_timeout: float = 30,
                       cells_from: int | None = None) -> str:
    """Builds what is missing of the model's HNSW index; returns its name. With ``cells_from``, a
    model of that many vectors and no index is first split into cells (clipdex.vector_cells)."""
    from clipdex import vector_cells

    with waiting_at_most(conn, lock_timeout, f"cannot build the vector index of model {model_id}"):
        if cells_from is not None and (cells := vector_cells.due(conn, model_id, cells_from)):
            vector_cells.draw(conn, model_id, cells)
        name = conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (model_id,)).fetchone()[0]
    if conn.autocommit:
        # After a bulk load the planner still counts the photos as they were before it, and the
        # new pages are not yet marked all-visible, until autovacuum comes (a minute or more
        # later): the first searches would weigh their filters by stale counts and read the
        # photos a filter keeps from the table instead of its index alone (migration 0016).
        # 6 s at a million photos (BENCHMARKS.md §4). A table another command holds (another
        # model's index being built) is left to autovacuum rather than waited for.
        conn.execute("VACUUM (ANALYZE, SKIP_LOCKED) images, embeddings")
    return name


def split_into_cells(conn: psycopg.Connection, model_id: int, lock_timeout: float = 30) -> str:
    """Draws the model's cells again, whatever its size, and builds their graphs (`clipdex db index
    --cells`): its index is dropped first, so searches sort exactly until the graphs are built."""
    from clipdex import vector_cells

    with waiting_at_most(conn, lock_timeout, f"cannot split the vectors of model {model_id} into cells"):
        drop_vector_index(conn, model_id)
        vectors = conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0]
        vector_cells.draw(conn, model_id, vector_cells.cells_for(vectors))
        return conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (model_id,)).fetchone()[0]


def embedded_images(conn: psycopg.Connection, model_id: int | None) -> int:
    if model_id is None:
        return 0
    return conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0]


def model_id(conn: psycopg.Connection, key: str) -> int | None:
    row = conn.execute("SELECT id FROM models WHERE name = %s", (key,)).fetchone()
    return row[0] if row else None


def build_missing_indexes(conn: psycopg.Connection, lock_timeout: float = 30, cells_from: int | None = None
                          ) -> list[tuple[str, str, float | None]]:
    """(model name, index name, seconds it took to build, or None if it was there) for every model
    (after an interrupted bulk load, some may be missing)."""
    out = []
    for model_id, name in conn.execute("SELECT id, name FROM models ORDER BY id").fetchall():
        existed = not conn.execute("SELECT clipdex_vector_index_missing(%s::smallint)", (model_id,)).fetchone()[0]
        started = time.perf_counter()
        index = build_vector_index(conn, model_id, lock_timeout, cells_from)
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
                           say=None, cells_from: int | None = None) -> list[tuple[str, float]]:
    """Builds the HNSW index of every model that has vectors but lost its index to an interrupted
    bulk load (a crash, Ctrl-C, a killed worker), unless that load is still going on: called by the
    commands that search, so a library is never left without its index past the next command.
    Returns (model name, seconds) of what it built; ``say(text)`` hears about it first."""
    built = []
    for model_id, name in conn.execute(
            "SELECT m.id, m.name FROM models m WHERE clipdex_vector_index_missing(m.id) "
            "AND EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = m.id) ORDER BY m.id").fetchall():
        if bulk_load_going_on(conn, name) is not None:
            continue
        if say is not None:
            say(f"the vector index of {name} is missing (an interrupted bulk load); building it now")
        started = time.perf_counter()
        build_vector_index(conn, model_id, lock_timeout, cells_from)
        built.append((name, time.perf_counter() - started))
    return built


# --- several models side by side -----------------------------------------------------------------


class PartialCoverage(RuntimeError):
    """The model has no vector for some photos: making it the default would hide them."""


@dataclass
class ModelCoverage:
    """A model whose vectors the database holds, and how much of the library they cover."""

    id: int
    name: str                   # the key vectors are stored under
    dim: int
    spec: dict[str, Any]        # how to load it again: open_clip name, weights tag, multilingual
    default: bool               # searches without model= use it (psql's functions too)
    images: int                 # photos with a vector of this model
    total: int                  # photos in the library
    sources: dict[str, tuple[int, int]] = field(default_factory=dict)   # source -> (embedded, photos)
    cells: int = 0              # k-means cells of its vectors, one HNSW graph each (0: one graph)

    @property
    def multilingual(self) -> bool:
        return bool(self.spec.get("multilingual"))

    @property
    def complete(self) -> bool:
        return self.images >= self.total

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "default": self.default, "multilingual": self.multilingual,
                "images": self.images, "total": self.total, "complete": self.complete, "cells": self.cells,
                "sources": {k: {"images": a, "total": b} for k, (a, b) in self.sources.items()},
                "open_clip": {"name": self.spec.get("name"), "pretrained": self.spec.get("pretrained")}}


def models_with_coverage(conn: psycopg.Connection, *, per_source: bool = True,
                         only: str | None = None) -> list[ModelCoverage]:
    """Every registered model (or ``only`` the one of that key), the default first. Counting
    reads every vector: for commands, not for searches."""
    total = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    out = []
    for model_id, name, dim, spec, active, images, cells in conn.execute(
            "SELECT m.id, m.name, m.dim, m.spec, m.active, (SELECT count(*) FROM embeddings e WHERE e.model_id = m.id), "
            "(SELECT count(*) FROM vector_cells v WHERE v.model_id = m.id) "
            "FROM models m WHERE %(only)s::text IS NULL OR m.name = %(only)s ORDER BY m.active DESC, m.id",
            {"only": only}).fetchall():
        coverage = ModelCoverage(model_id, name, dim, spec or {}, active, images, total, cells=cells)
        if per_source:
            coverage.sources = {source: (embedded, photos) for source, photos, embedded in conn.execute(
                "SELECT l.source, count(DISTINCT l.image_id), count(DISTINCT l.image_id) FILTER (WHERE EXISTS "
                "(SELECT 1 FROM embeddings e WHERE e.image_id = l.image_id AND e.model_id = %s)) "
                "FROM locations l GROUP BY l.source ORDER BY l.source", (model_id,))}
        out.append(coverage)
    return out


def model_named(conn: psycopg.Connection, name: str) -> str:
    """The key of the model a user means by ``name``: its key, its open_clip name, or the start of
    its key when only one model's starts so (from the models table alone: searches call it)."""
    models = conn.execute("SELECT name, spec->>'name' FROM models ORDER BY id").fetchall()
    for test in (lambda key, spec: key == name, lambda key, spec: spec == name,
                 lambda key, spec: key.startswith(name)):
        found = [key for key, spec in models if test(key, spec)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UnknownModel(f"{name!r} names {len(found)} models: " + ", ".join(found))
    known = ", ".join(key for key, _ in models) or "none yet"
    raise UnknownModel(f"no model {name!r} has vectors here; the models are: {known}")


def find_model(conn: psycopg.Connection, name: str) -> ModelCoverage:
    """The model a user means by ``name``, with its coverage."""
    return models_with_coverage(conn, per_source=False, only=model_named(conn, name))[0]


def set_default(conn: psycopg.Connection, name: str, *, force: bool = False, lock_timeout: float = 30
                ) -> ModelCoverage:
    """Makes ``name`` the model searches use unless they ask for another: only once it covers
    every photo (a switch mid-way would hide the rest), unless ``force``."""
    model = find_model(conn, name)
    if not model.complete and not force:
        raise PartialCoverage(
            f"{model.name} has vectors for {model.images} of {model.total} photos; searches with it would "
            f"miss the other {model.total - model.images}. Index them first (clipdex index PATH --model "
            f"{model.spec.get('name') or model.name}), or switch anyway with --force.")
    with waiting_at_most(conn, lock_timeout, f"cannot make {model.name} the default model"):
        conn.execute("SELECT clipdex_use_model(%s::smallint)", (model.id,))
    model.default = True
    return model


def drop_model(conn: psycopg.Connection, name: str, lock_timeout: float = 30) -> ModelCoverage:
    """Removes a model's vectors, its index and its cached query texts; never the default one."""
    model = find_model(conn, name)
    if model.default:
        raise PartialCoverage(f"{model.name} is the default model; make another one the default first "
                              "(clipdex models default NAME)")
    with waiting_at_most(conn, lock_timeout, f"cannot drop model {model.name}"):
        drop_vector_index(conn, model.id)
        conn.execute("DELETE FROM text_embeddings WHERE model_id = %s", (model.id,))
        conn.execute("DELETE FROM embeddings WHERE model_id = %s", (model.id,))
        conn.execute("DELETE FROM models WHERE id = %s", (model.id,))
    return model


def follow_library(settings, conn: psycopg.Connection):
    """The settings an indexer runs with: when no model was chosen (CLIPDEX_MODEL unset), the
    library's default model, so new photos get the vectors searches use; the model as chosen
    otherwise, or the built-in default for a library with no model yet."""
    if settings.model_named:
        return settings
    row = conn.execute("SELECT spec FROM models WHERE active").fetchone()
    spec = (row[0] or {}) if row else {}
    if not spec.get("name"):
        return settings
    return settings.replace(model=spec["name"], pretrained=spec.get("pretrained"), model_named=True)

"""Connections to PostgreSQL, the pgvector check, and the schema through Alembic.

``resolve_url`` is the one place that decides which server clipdex talks to: the configured URL,
or the embedded server (started on demand). ``open_database`` is what commands call first: it
checks the server, brings the schema to the newest revision on the embedded server (on an external
one it asks the user to run ``clipdex db upgrade``), and returns a ready :class:`Database`.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg

from clipdex.config import Settings

log = logging.getLogger(__name__)

MIN_PGVECTOR = (0, 7, 0)
ITERATIVE_SCAN_PGVECTOR = (0, 8, 0)
SCHEMA_LOCK_KEY = 0x636C6970  # 'clip': pg_advisory_lock key held while migrations run


class DatabaseError(RuntimeError):
    """The database cannot be used as configured; the message says what to do."""


def resolve_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from clipdex import embedded_postgres

    return embedded_postgres.server_url(settings.home)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def connect(url: str, *, autocommit: bool = False, register: bool = True) -> psycopg.Connection:
    try:
        conn = psycopg.connect(url, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL at {redact(url)}: {str(exc).strip()}") from None
    if register:
        try:
            from pgvector.psycopg import register_vector

            register_vector(conn)
        except psycopg.ProgrammingError:
            # The extension is not installed yet (before the first migration).
            conn.rollback()
    return conn


@dataclass(frozen=True)
class ServerInfo:
    server_version: str
    pgvector_available: str | None
    pgvector_installed: str | None

    @property
    def pgvector(self) -> str | None:
        return self.pgvector_installed or self.pgvector_available

    @property
    def iterative_scan(self) -> bool:
        return self.pgvector is not None and _version_tuple(self.pgvector) >= ITERATIVE_SCAN_PGVECTOR


def inspect_server(conn: psycopg.Connection) -> ServerInfo:
    version = conn.execute("SHOW server_version").fetchone()[0]
    row = conn.execute(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    return ServerInfo(version, row[0] if row else None, row[1] if row else None)


def check_server(info: ServerInfo, url: str) -> None:
    """Raises DatabaseError with a plain sentence when pgvector is missing or too old."""
    need = ".".join(map(str, MIN_PGVECTOR))
    if info.pgvector is None:
        raise DatabaseError(
            f"PostgreSQL {info.server_version} at {redact(url)} has no pgvector extension; "
            f"install pgvector >= {need} on that server "
            "(https://github.com/pgvector/pgvector#installation), "
            "or unset CLIPDEX_DATABASE_URL to use clipdex's embedded PostgreSQL."
        )
    if info.pgvector_installed and _version_tuple(info.pgvector_installed) < MIN_PGVECTOR:
        available = info.pgvector_available or "?"
        raise DatabaseError(
            f"pgvector {info.pgvector_installed} is installed in {redact(url)} but clipdex needs "
            f">= {need} (halfvec). "
            + (
                "Run ALTER EXTENSION vector UPDATE; as the database owner."
                if _version_tuple(available) >= MIN_PGVECTOR
                else f"The server only offers {available}: upgrade the pgvector package."
            )
        )
    if not info.pgvector_installed and _version_tuple(info.pgvector_available) < MIN_PGVECTOR:
        raise DatabaseError(
            f"The server at {redact(url)} offers pgvector {info.pgvector_available}; clipdex needs "
            f">= {need} (halfvec). Upgrade the pgvector package on that server."
        )


# --- schema (Alembic) ------------------------------------------------------------------------


def migrations_dir() -> Path:
    return Path(str(resources.files("clipdex.migrations")))


def _sqlalchemy_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # '%' would be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", _sqlalchemy_url(url).replace("%", "%%"))
    return config


_REVISION_LINE = re.compile(r'^(down_revision|revision) = (?:"([^"]*)"|None)$', re.M)


def head_revision() -> str:
    """The newest schema revision, read from the migration files' `revision` / `down_revision`
    lines: every command checks it, and importing Alembic (with SQLAlchemy) for that costs 0.6 s.
    Alembic decides whenever the files do not make one plain chain."""
    revisions, parents = set(), set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        found = dict((name, value) for name, value in _REVISION_LINE.findall(path.read_text()))
        if "revision" in found:
            revisions.add(found["revision"])
            if found.get("down_revision"):
                parents.add(found["down_revision"])
    heads = revisions - parents
    if len(heads) == 1:
        return heads.pop()
    return alembic_head_revision()


def alembic_head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def current_revision(conn: psycopg.Connection) -> str | None:
    exists = conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0]
    if exists is None:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


# --- the entry point commands use -------------------------------------------------------------


@dataclass
class Database:
    """A checked server at a known URL with the schema at head."""

    url: str
    info: ServerInfo

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.url, autocommit=autocommit)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A connection in one transaction: committed on success, rolled back on error."""
        with self.connect() as conn:
            with conn.transaction():
                yield conn


def open_database(settings: Settings, *, migrate: bool | None = None, repair_indexes: bool = True) -> Database:
    """Connects, checks pgvector and the schema revision.

    ``migrate=None`` upgrades the embedded server automatically and refuses an external server
    whose schema is behind (its owner decides when to migrate). ``repair_indexes`` builds a vector
    index that an interrupted bulk load left missing (the indexer, which defers it on purpose,
    passes False).
    """
    url = resolve_url(settings)
    with connect(url, register=False) as conn:
        info = inspect_server(conn)
        check_server(info, url)
        current = current_revision(conn)
    head = head_revision()
    if current != head:
        should_migrate = settings.uses_embedded_database if migrate is None else migrate
        if not should_migrate:
            state = "has no clipdex schema" if current is None else f"is at schema revision {current}"
            raise DatabaseError(
                f"The database at {redact(url)} {state}; run `clipdex db upgrade` to bring it to {head}."
            )
        log.info("upgrading the schema from %s to %s", current, head)
        upgrade(url)
        with connect(url, register=False) as conn:
            info = inspect_server(conn)
    if repair_indexes:
        from clipdex.model_registry import repair_missing_indexes

        with connect(url, autocommit=True, register=False) as conn:
            repair_missing_indexes(conn, settings.lock_timeout, say=log.warning, cells_from=settings.cells_from)
    return Database(url=url, info=info)

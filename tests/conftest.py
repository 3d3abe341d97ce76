"""Shared fixtures: a real embedded PostgreSQL, a tiny real open_clip model, a real Redis.

One embedded server serves the whole session. The schema is migrated once into a template
database; every test that writes gets its own copy (CREATE DATABASE … TEMPLATE), so tests are
isolated and still run the real migrations.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings

from clipdex import database, embedded_postgres
from clipdex.config import Settings
from tests.tiny_model import TINY_MODEL_CFG, write_model_folder, write_multilingual_model_folder

# The fuzz tests draw the same examples on every run, so a CI result says something about the commit,
# not about the dice. CLIPDEX_FUZZ=explore draws new ones (and remembers failures in .hypothesis/).
hypothesis_settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile("explore" if os.environ.get("CLIPDEX_FUZZ") == "explore" else "repeatable")

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "clipdex_template"
_db_counter = itertools.count()


def _with_database(url: str, name: str) -> str:
    return url.replace(f"/{embedded_postgres.DATABASE_NAME}?", f"/{name}?", 1)


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("clipdex-home")
    yield home
    embedded_postgres.stop(home)


@pytest.fixture(scope="session")
def pg_url(pg_home) -> str:
    """URL of the session's embedded server (its default `clipdex` database)."""
    return embedded_postgres.server_url(pg_home)


@pytest.fixture(scope="session")
def template_url(pg_url) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    url = _with_database(pg_url, TEMPLATE_DB)
    database.upgrade(url)
    return url


def fresh_database(pg_url: str, name: str) -> str:
    """Creates (or recreates) a migrated database on the session server; returns its URL.

    A copy made from a template does not inherit the template's database settings (the migrations'
    `ALTER DATABASE … SET hnsw.…` defaults for psql sessions), so they are copied too.
    """
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        settings = conn.execute(
            "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase = "
            "(SELECT oid FROM pg_database WHERE datname = %s)", (TEMPLATE_DB,)).fetchall()
        for (item,) in settings:
            key, value = item.split("=", 1)
            conn.execute(f"ALTER DATABASE {name} SET {key} = {value}")
    return _with_database(pg_url, name)


@pytest.fixture
def database_url(pg_url, template_url):
    """A fresh, migrated database for one test."""
    name = f"test_{os.getpid()}_{next(_db_counter)}"
    yield fresh_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight open_clip model (64-d) written as a real local-dir: folder."""
    return write_model_folder(tmp_path_factory.mktemp("models") / "tiny-clip", TINY_MODEL_CFG)


@pytest.fixture(scope="session")
def tiny_multilingual_dir(tmp_path_factory) -> Path:
    """A random-weight open_clip model (64-d) with a tiny XLM-RoBERTa text tower and a tokenizer
    trained on Chinese and English, as a local-dir: folder."""
    return write_multilingual_model_folder(tmp_path_factory.mktemp("models") / "tiny-multilingual")


@pytest.fixture
def settings(database_url, tiny_model_dir, tmp_path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        model=f"local-dir:{tiny_model_dir}",
        device="cpu",
        ocr=False,    # OCR costs about a second a photo here; tests/test_ocr.py turns it on
        # A tiny random model scores every photo alike, so none would count as a match: these
        # libraries are listed whole (by relevance). tests/test_matches.py plants matches and
        # tests the cut-off at its default.
        strictness=0.0,
    )


@pytest.fixture
def db(settings):
    return database.open_database(settings)


# --- Redis --------------------------------------------------------------------------------------

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def redis_available() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url():
    """A real Redis database of its own (flushed before and after the test). Each pytest-xdist
    worker takes its own database number, so two workers' Celery queues never meet."""
    if not redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (./bootstrap test starts it)")
    import redis

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")     # gw0, gw1, … (gw0 without xdist)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{7 + int(worker.removeprefix('gw'))}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


# --- running the CLI as a real process ----------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPDEX_")}
    full_env["CLIPDEX_OCR"] = "false"    # unless the test says otherwise: tests/test_ocr.py does
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "clipdex.cli", *args],
        env=full_env, capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"clipdex {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def library(pg_url, template_url, tiny_model_dir, tmp_path_factory):
    """A database with the generated Takeout, iPhone and QQ exports indexed (read-only for tests)."""
    from tests import libraries as L
    from indexer.in_process import index_folder

    tmp_path = tmp_path_factory.mktemp("library")
    settings = Settings(home=tmp_path / "home", database_url=fresh_database(pg_url, "library"),
                        model=f"local-dir:{tiny_model_dir}", device="cpu", ocr=False,
                        strictness=0.0)   # listed whole, as in the settings fixture
    db = database.open_database(settings)
    root = tmp_path / "lib"
    L.takeout_library(root / "export")
    L.iphone_library(root / "phone")
    L.qq_library(root / "chat")
    index_folder(settings, db, root, out=None)
    return settings, db, root


@contextlib.contextmanager
def read_only_role(url: str):
    """A role that may read every table and nothing more, as README's SQL makes one; yields its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS clipdex_reader_test")
        conn.execute("CREATE ROLE clipdex_reader_test LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA public TO clipdex_reader_test")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO clipdex_reader_test")
    try:
        yield url.replace("postgresql://postgres:@", "postgresql://clipdex_reader_test:@")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM clipdex_reader_test")
            conn.execute("REVOKE ALL ON SCHEMA public FROM clipdex_reader_test")
            conn.execute("DROP ROLE clipdex_reader_test")

import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from clipdex import database, embedded_postgres
from clipdex.database import DatabaseError, ServerInfo, check_server
from tests.conftest import run_cli

TABLES = {"images", "locations", "models", "embeddings", "thumbnails", "ingest_runs", "ingest_sources",
          "ingest_batches", "ingest_failures", "skipped_files", "text_embeddings", "roots"}


def _tables(url):
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade_round_trip(database_url):
    assert TABLES <= _tables(database_url)
    database.downgrade(database_url, "base")
    assert _tables(database_url) == {"alembic_version"}
    database.upgrade(database_url)
    assert TABLES <= _tables(database_url)
    with psycopg.connect(database_url) as conn:
        assert database.current_revision(conn) == database.head_revision()


def test_the_upgrade_makes_the_names_of_stored_photos_searchable(database_url):
    """Migration 0008 fills in the words of the locations indexed before it."""
    database.downgrade(database_url, "0007")
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO roots (name, path) VALUES ('r', '/r')")
        image_id = conn.execute(
            "INSERT INTO images (sha256, format, width, height, byte_size, description) "
            "VALUES (sha256('x'), 'jpeg', 1, 1, 1, '京都的日落') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO locations (image_id, root, relpath, relpath_bytes, source, album, byte_size, "
                     "mtime_ns) VALUES (%s, 'r', 'a/IMG_7.JPG', 'a/IMG_7.JPG', 'folder', 'Trip', 1, 1)", (image_id,))
    database.upgrade(database_url)
    with psycopg.connect(database_url) as conn:
        words, compact = conn.execute("SELECT words::text, words_compact FROM locations").fetchone()
    assert compact == "京都的日落|trip|img7"
    assert "'京都':1B" in words and "'trip':2C" in words and "'img':3 " in words   # D, the default weight, goes unprinted


def test_per_model_hnsw_index(database_url):
    with psycopg.connect(database_url) as conn:
        model_id = conn.execute("INSERT INTO models (name, dim) VALUES ('m', 3) RETURNING id").fetchone()[0]
        name = conn.execute("SELECT clipdex_ensure_vector_index(%s)", (model_id,)).fetchone()[0]
        assert conn.execute("SELECT clipdex_ensure_vector_index(%s)", (model_id,)).fetchone()[0] == name
        indexdef = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)).fetchone()[0]
        assert "USING hnsw" in indexdef and "halfvec_cosine_ops" in indexdef
        assert f"model_id = {model_id}" in indexdef
        # The index's cast rejects a vector of the wrong size for this model.
        image = conn.execute(
            "INSERT INTO images (sha256, format, width, height, byte_size) "
            "VALUES (sha256('x'), 'jpeg', 1, 1, 1) RETURNING id").fetchone()[0]
        with pytest.raises(psycopg.errors.DataException):
            conn.execute("INSERT INTO embeddings VALUES (%s, %s, '[1,2]')", (image, model_id))


def test_filter_columns_are_indexed(database_url):
    with psycopg.connect(database_url) as conn:
        defs = " ".join(r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname='public'"))
    for fragment in ["(taken_at DESC NULLS LAST, id DESC)", "(format)", "(orientation)", "(width)", "(height)",
                     "lower(camera_make)", "lower(camera_model)", "(latitude, longitude)", "WHERE favorite",
                     "(source, image_id)", "(album, image_id)", "text_pattern_ops"]:
        assert fragment in defs, fragment


def test_query_key_folds_whitespace(database_url):
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT clipdex_query_key(E'  pink \\t porsche\\n at  night ')").fetchone()[0] \
            == "pink porsche at night"


@pytest.mark.parametrize("info, words", [
    (ServerInfo("15.19", None, None), ["no pgvector", "install pgvector >= 0.7"]),
    (ServerInfo("16.1", "0.6.2", "0.6.2"), ["0.6.2 is installed", "needs >= 0.7"]),
    (ServerInfo("16.1", "0.7.4", "0.6.0"), ["ALTER EXTENSION vector UPDATE"]),
    (ServerInfo("16.1", "0.5.0", None), ["offers pgvector 0.5.0"]),
])
def test_pgvector_check_says_what_is_missing(info, words):
    with pytest.raises(DatabaseError) as err:
        check_server(info, "postgresql://u:secret@h/db")
    for word in words:
        assert word in str(err.value)
    assert "secret" not in str(err.value)


def test_pgvector_check_accepts_07_and_08():
    check_server(ServerInfo("16.1", "0.7.0", None), "x")
    check_server(ServerInfo("18.4", "0.8.5", "0.8.5"), "x")


def _system_postgres():
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        pytest.skip("no PostgreSQL service on 127.0.0.1:5432")
    return "postgresql://postgres@127.0.0.1:5432/postgres"


def test_a_server_without_pgvector_is_refused_in_one_sentence(tmp_path):
    url = _system_postgres()
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name='vector'").fetchone():
            pytest.skip("this PostgreSQL has pgvector")
    proc = run_cli("db", "url", env={"CLIPDEX_DATABASE_URL": url, "CLIPDEX_HOME": str(tmp_path)}, check=False)
    assert proc.returncode == 1
    assert "has no pgvector extension" in proc.stderr and "Traceback" not in proc.stderr


def test_external_database_behind_head_asks_for_upgrade(pg_url, tmp_path):
    name = "behind_head"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_url.replace("/clipdex?", f"/{name}?")
    env = {"CLIPDEX_DATABASE_URL": url, "CLIPDEX_HOME": str(tmp_path)}
    proc = run_cli("db", "url", env=env, check=False)
    assert proc.returncode == 1 and "run `clipdex db upgrade`" in proc.stderr
    assert f"schema at {database.head_revision()}" in run_cli("db", "upgrade", env=env).stdout
    assert run_cli("db", "url", env=env).stdout.strip() == url


def test_embedded_default_started_twice_in_parallel_gives_one_server(tmp_path):
    home = tmp_path / "home"
    env = {"CLIPDEX_HOME": str(home)}
    try:
        with ThreadPoolExecutor(2) as pool:
            procs = list(pool.map(lambda _: run_cli("db", "url", env=env, check=False), range(2)))
        assert [p.returncode for p in procs] == [0, 0], [p.stderr for p in procs]
        urls = {p.stdout.strip() for p in procs}
        assert len(urls) == 1
        url = urls.pop()
        postmasters = subprocess.run(["pgrep", "-f", f"postgres -D {home / 'pg'}"],
                                     capture_output=True, text=True).stdout.split()
        assert len(postmasters) == 1
        # psql "$(clipdex db url)" shows the schema and the HNSW index of a registered model.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO models (name, dim) VALUES ('m', 4)")
            conn.execute("SELECT clipdex_ensure_vector_index(1::smallint)")
        out = subprocess.run([str(embedded_postgres.psql_path()), url, "-c", r"\d embeddings"],
                             capture_output=True, text=True, check=True).stdout
        assert "embeddings_hnsw_model_1" in out and "hnsw" in out
        # Later commands reuse the running server.
        assert run_cli("db", "url", env=env).stdout.strip() == url
    finally:
        embedded_postgres.stop(home)


def test_a_lock_held_by_a_reader_is_reported_not_waited_on_forever(settings, db, tmp_path):
    """Once: a SELECT-only role blocked all indexing with pg_advisory_lock(...), and indexing hung
    without a word. Now indexing waits CLIPDEX_LOCK_TIMEOUT seconds and names the session."""
    from tests import libraries as L
    from tests.conftest import run_cli

    for i in range(3):
        L.write(tmp_path / "lib" / f"p{i}.png", L.png(1500 + i))
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS clipdex_blocker")
        conn.execute("CREATE ROLE clipdex_blocker LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA public TO clipdex_blocker")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO clipdex_blocker")
    blocker_url = db.url.replace("postgresql://postgres:@", "postgresql://clipdex_blocker:@")
    try:
        with psycopg.connect(blocker_url, autocommit=True, application_name="mischief") as blocker:
            pid = blocker.execute("SELECT pg_backend_pid()").fetchone()[0]
            blocker.execute("SELECT pg_advisory_lock(hashtext('embeddings_hnsw_model_1'))")
            proc = run_cli("index", str(tmp_path / "lib"), env={**settings.to_environ(), "CLIPDEX_LOCK_TIMEOUT": "2"},
                           check=False, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"pid {pid} (role clipdex_blocker, mischief" in proc.stderr
        assert "waited 2 s for a lock" in proc.stderr and "pg_terminate_backend" in proc.stderr
        with psycopg.connect(db.url) as conn:
            error = conn.execute("SELECT error FROM ingest_batches").fetchone()[0]
        assert "clipdex_blocker" in error
        # With the lock gone, the same command goes on.
        again = run_cli("index", str(tmp_path / "lib"), env=settings.to_environ())
        assert "indexed 3 new images" in again.stdout
    finally:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM clipdex_blocker")
            conn.execute("REVOKE ALL ON SCHEMA public FROM clipdex_blocker")
            conn.execute("DROP ROLE clipdex_blocker")


def test_the_schema_speaks_the_vocabulary(db, template_url):
    """Each word is defined once (clipdex.vocabulary); the migrations write them as literals, and this
    checks that a migrated database says exactly the same."""
    import re

    from clipdex import vocabulary as v

    def check_values(table: str, column: str) -> tuple[str, ...]:
        with psycopg.connect(db.url) as conn:
            definition = conn.execute(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_attribute a "
                "ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
                "WHERE c.conrelid = %s::regclass AND c.contype = 'c' AND a.attname = %s", (table, column)).fetchone()[0]
        return tuple(re.findall(r"'([a-z_]+)'::text", definition))

    assert check_values("images", "format") == v.IMAGE_FORMATS
    assert check_values("locations", "source") == check_values("ingest_sources", "source") == v.SOURCE_KINDS
    assert check_values("ingest_batches", "state") == v.BATCH_STATES
    assert check_values("ingest_failures", "stage") == v.FAILURE_STAGES
    assert check_values("ingest_runs", "mode") == v.RUN_MODES
    assert set(check_values("images", "taken_at_source")) == set(v.CAPTURE_TIME_SOURCES)   # order: the rank below
    with psycopg.connect(db.url) as conn:
        assert [conn.execute("SELECT clipdex_time_rank(%s)", (s,)).fetchone()[0] for s in v.CAPTURE_TIME_SOURCES] \
            == [1, 2, 3, 4]
    # Database defaults (for psql sessions) stay with the database the migrations ran on; copies made
    # from it as a template do not inherit them.
    with psycopg.connect(template_url) as conn:
        defaults = dict(item.split("=", 1) for item in conn.execute(
            "SELECT setconfig FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()[0])
    assert int(defaults["hnsw.ef_search"]) == v.EF_SEARCH
    assert int(defaults["hnsw.max_scan_tuples"]) == v.MAX_SCAN_TUPLES
    with psycopg.connect(db.url) as conn:
        orientation = conn.execute("SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
                                   "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
                                   "WHERE d.adrelid = 'images'::regclass AND a.attname = 'orientation'").fetchone()[0]
    assert set(re.findall(r"'([a-z]+)'::text", orientation)) == set(v.ORIENTATIONS)


def test_the_quick_head_revision_is_alembic_s():
    """Every command compares the schema with the newest migration; it reads the files' revision
    lines instead of importing Alembic, and must agree with Alembic."""
    from clipdex.database import alembic_head_revision, head_revision

    assert head_revision() == alembic_head_revision()

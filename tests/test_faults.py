"""Faults during a distributed run, with real processes: a broker that loses its queue, a database
that restarts, files that change or vanish after the scan, a producer that dies. After recovery
every image is indexed exactly once, failures carry reasons, and `clipdex status` tells the truth."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psycopg
import pytest

from clipdex import embedded_postgres
from clipdex.config import Settings
from clipdex.database import open_database, upgrade
from indexer.producer import enqueue, plan_run
from tests import libraries as L
from tests.conftest import run_cli
from tests.workers import run_finished, wait_for, workers

pytestmark = pytest.mark.celery
FILES = 2000


def small_library(root, n: int = FILES):
    """A few thousand small photos in a few folders."""
    for i in range(n):
        L.write(root / f"day{i % 20:02}" / f"p{i:04}.png", L.png(1000 + i, (48, 32)))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, folder) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise AssertionError("redis-server did not start")


def counts(url: str, run_id: int) -> dict:
    with psycopg.connect(url) as conn:
        images, distinct = conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone()
        locations, paths = conn.execute("SELECT count(*), count(DISTINCT relpath_bytes) FROM locations").fetchone()
        embeddings = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        failures = dict(conn.execute("SELECT relpath, reason FROM ingest_failures WHERE run_id = %s", (run_id,)))
        batches = conn.execute("SELECT count(*), sum(attempts) FROM ingest_batches WHERE run_id = %s",
                               (run_id,)).fetchone()
    assert images == distinct and locations == paths, "a duplicate row"
    return {"images": images, "locations": locations, "embeddings": embeddings, "failures": failures,
            "batches": batches[0], "attempts": batches[1]}


def batches_done(url: str, run_id: int, at_least: int):
    def check():
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) >= %s FROM ingest_batches WHERE run_id = %s AND state = 'done'",
                                (at_least, run_id)).fetchone()[0]
    return check


def status_line(settings: Settings, run_id: int) -> str:
    return run_cli("status", str(run_id), env=settings.to_environ()).stdout


def test_broker_loses_its_queue_and_one_command_resumes(settings, tmp_path):
    library = small_library(tmp_path / "lib")
    port = free_port()
    redis = start_redis(port, tmp_path)
    broker = f"redis://127.0.0.1:{port}/0"
    producer = settings.replace(broker_url=broker, task_files=40, task_timeout=10, decode_threads=1)
    db = open_database(producer)
    logs = tmp_path / "logs"
    logs.mkdir()
    plan = plan_run(producer, db, library, mode="celery")
    try:
        with workers(producer, {"w1": {}}, logs):
            enqueue(producer, db, plan.run_id, plan.batches)
            wait_for(batches_done(db.url, plan.run_id, 5), 120, "some batches", log_dir=logs)
            redis.kill()                      # the broker dies and forgets every queued batch
            redis.wait()
            redis = start_redis(port, tmp_path)
            with psycopg.connect(db.url) as conn:
                pending = conn.execute("SELECT count(*) FROM ingest_batches WHERE run_id = %s AND state = 'queued'",
                                       (plan.run_id,)).fetchone()[0]
            assert pending > 0
            assert "[running]" in status_line(producer, plan.run_id)
            out = run_cli("resume", str(plan.run_id), env=producer.to_environ()).stdout
            assert "batches queued again" in out
            wait_for(run_finished(db.url, plan.run_id), 300, "the resumed run to finish", log_dir=logs)
    finally:
        redis.kill()
    got = counts(db.url, plan.run_id)
    assert (got["images"], got["locations"], got["embeddings"], got["failures"]) == (FILES, FILES, FILES, {})
    text = status_line(producer, plan.run_id)
    assert "[done]" in text and f"new {FILES}, duplicates 0" in text and "failed 0" in text


def test_database_restart_is_waited_out(tiny_model_dir, redis_url, tmp_path):
    home = tmp_path / "pg-home"
    url = embedded_postgres.server_url(home)           # a server of this test's own, to restart freely
    settings = Settings(home=home, database_url=url, model=f"local-dir:{tiny_model_dir}", device="cpu",
                        broker_url=redis_url, task_files=40, task_timeout=10, decode_threads=1)
    try:
        upgrade(url)
        library = small_library(tmp_path / "lib")
        db = open_database(settings)
        logs = tmp_path / "logs"
        logs.mkdir()
        plan = plan_run(settings, db, library, mode="celery")
        with workers(settings, {"w1": {}}, logs):
            enqueue(settings, db, plan.run_id, plan.batches)
            wait_for(batches_done(url, plan.run_id, 5), 120, "some batches", log_dir=logs)
            embedded_postgres.stop(home)               # PostgreSQL goes away mid-run…
            time.sleep(4)
            assert embedded_postgres.server_url(home) == url   # …and comes back
            wait_for(run_finished(url, plan.run_id), 300, "the run to finish after the restart", log_dir=logs)
        got = counts(url, plan.run_id)
        assert (got["images"], got["locations"], got["embeddings"], got["failures"]) == (FILES, FILES, FILES, {})
        # The outage reached the worker (its pool waited for the server to come back).
        assert "error connecting in 'clipdex-indexer'" in (logs / "worker-w1.log").read_text()
    finally:
        embedded_postgres.stop(home)


def test_files_changed_or_deleted_after_the_scan(settings, redis_url, tmp_path):
    library = small_library(tmp_path / "lib", 300)
    producer = settings.replace(broker_url=redis_url, task_files=50, task_timeout=10)
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    for i in range(0, 30):
        (library / f"day{i % 20:02}" / f"p{i:04}.png").unlink()                       # deleted
    for i in range(30, 40):
        L.write(library / f"day{i % 20:02}" / f"p{i:04}.png", L.png(90_000 + i, (64, 64)))  # new content
    (library / "day05" / "p0045.png").write_bytes(b"")                                # emptied
    logs = tmp_path / "logs"
    logs.mkdir()
    with workers(producer, {"w1": {}}, logs):
        enqueue(producer, db, plan.run_id, plan.batches)
        wait_for(run_finished(db.url, plan.run_id), 180, "the run", log_dir=logs)
    got = counts(db.url, plan.run_id)
    assert set(got["failures"].values()) == {"file vanished before it was read", "empty file (0 bytes)"}
    assert len(got["failures"]) == 31 and got["images"] == got["locations"] == 269
    with psycopg.connect(db.url) as conn:
        width, size = conn.execute(
            "SELECT i.width, l.byte_size FROM locations l JOIN images i ON i.id = l.image_id "
            "WHERE l.relpath = 'day10/p0030.png'").fetchone()
    assert width == 64 and size == (library / "day10" / "p0030.png").stat().st_size   # what was read, not scanned
    assert "failed 31" in status_line(producer, plan.run_id)
    # Put the deleted files back: the next run indexes exactly those. The emptied file, still empty,
    # would only fail again: it is left out as failed before (until it changes, or --retry-failed).
    for i in range(0, 30):
        L.write(library / f"day{i % 20:02}" / f"p{i:04}.png", L.png(1000 + i, (48, 32)))
    again = plan_run(producer, db, library, mode="local")
    assert again.files == 30 and sum(c.failed_before for c in again.sources.values()) == 1
    assert plan_run(producer, db, library, mode="local", retry_failed=True).files == 31


def test_a_killed_local_index_resumes_without_redoing_work(settings, tmp_path):
    library = small_library(tmp_path / "lib")
    env = settings.replace(task_files=50).to_environ()
    proc = subprocess.Popen([sys.executable, "-m", "clipdex.cli", "index", str(library)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: psycopg.connect(settings.database_url).execute(
            "SELECT count(*) >= 5 FROM ingest_batches WHERE state = 'done'").fetchone()[0], 120, "five batches")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with psycopg.connect(settings.database_url) as conn:
        done_before = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    assert 0 < done_before < FILES
    out = run_cli("index", str(library), env=env).stdout
    assert f"indexed {FILES - done_before} new images, 0 already known" in out
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone() == (FILES, FILES)
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == FILES
        # The first run is shown as it is: interrupted, not done.
        first = conn.execute("SELECT min(id) FROM ingest_runs").fetchone()[0]
    assert "[running]" in status_line(settings, first)


def test_a_producer_that_died_while_sending_is_resumed(settings, redis_url, tmp_path):
    library = small_library(tmp_path / "lib", 400)
    producer = settings.replace(broker_url=redis_url, task_files=40, task_timeout=10)
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    from indexer.worker import QUEUE, make_celery

    app = make_celery(producer)
    for batch_no in plan.batches[:3]:      # it sent three messages, then died
        app.send_task("clipdex.embed_batch", args=(plan.run_id, batch_no), queue=QUEUE)
    logs = tmp_path / "logs"
    logs.mkdir()
    with workers(producer, {"w1": {}}, logs):
        wait_for(batches_done(db.url, plan.run_id, 3), 120, "the three sent batches", log_dir=logs)
        run_cli("resume", str(plan.run_id), env=producer.to_environ())
        wait_for(run_finished(db.url, plan.run_id), 180, "the resumed run", log_dir=logs)
    got = counts(db.url, plan.run_id)
    assert (got["images"], got["embeddings"]) == (400, 400) and got["attempts"] == got["batches"]


def test_an_indexer_connection_the_server_dropped_is_replaced_before_use(settings, db):
    """Each file's lookup borrows a pooled connection; one back in the pool for less than a second
    is lent again without a round trip (indexer/runtime.py), so the check must still catch a
    connection the server dropped while it sat idle for longer."""
    from indexer.runtime import RECENT_SECONDS, Runtime

    rt = Runtime(settings, db)
    try:
        with rt.pool.connection() as conn:
            dropped = conn.info.backend_pid
        with psycopg.connect(db.url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (dropped,)).fetchone()[0]
        time.sleep(RECENT_SECONDS + 0.2)
        with rt.pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != dropped
    finally:
        rt.close()

"""The distributed path: a producer, real Celery worker processes, real Redis, embedded PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import psycopg
import pytest

from clipdex.database import open_database
from indexer.in_process import index_folder
from indexer.producer import enqueue, plan_run
from tests import libraries as L
from tests.conftest import fresh_database, run_cli
from indexer.worker import make_celery
from tests.workers import run_finished, start_worker, stop_worker, wait_for, wait_ready, workers

pytestmark = pytest.mark.celery


def mixed_library(base):
    L.takeout_library(base / "export")
    L.iphone_library(base / "phone")
    L.qq_library(base / "chat")
    # A Takeout part also kept as its zip: read in place, its photos are new locations only.
    (base / "zipped").mkdir()
    L.zip_folder(base / "export" / "takeout-20240712T112341Z-002", base / "zipped" / "takeout-002.zip")
    # And the other part as a .tgz, its sidecars first: one worker reads its batches in one chain.
    L.tar_folder(base / "export" / "takeout-20240712T112341Z-001", base / "zipped" / "takeout-001.tgz",
                 json_first=True)
    return base


def snapshot(url: str) -> dict:
    """Everything a run stores, keyed by path, without ids and timestamps of the run itself."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT l.relpath, l.root, l.source, l.album, l.byte_size, l.mtime_ns, l.source_meta, "
            "encode(i.sha256, 'hex'), i.format, i.width, i.height, i.exif_orientation, i.taken_at, "
            "i.taken_at_source, i.utc_offset_minutes, i.latitude, i.longitude, i.camera_make, "
            "i.camera_model, i.description, i.favorite, i.extra, t.width, t.height, length(t.webp) > 0 "
            "FROM locations l JOIN images i ON i.id = l.image_id JOIN thumbnails t ON t.image_id = i.id").fetchall()
        vectors = {sha: np.array(vec) for sha, vec in conn.execute(
            "SELECT encode(i.sha256, 'hex'), e.embedding::vector::float4[] FROM embeddings e "
            "JOIN images i ON i.id = e.image_id")}
        totals = conn.execute(
            "SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM locations), "
            "(SELECT count(*) FROM embeddings), (SELECT count(*) FROM thumbnails)").fetchone()
    return {"rows": {r[0]: r[1:] for r in rows}, "vectors": vectors, "totals": totals}


def test_two_workers_with_different_mounts_index_once_like_local_mode(settings, redis_url, tmp_path,
                                                                       pg_url, template_url):
    library = mixed_library(tmp_path / "nas" / "photos")
    # Three machines, three mount points of the same library (symlinks stand in for mounts).
    for view in ("producer-view", "mount-a", "mount-b"):
        os.symlink(library, tmp_path / view)
    # Redis hands an unacknowledged batch to another worker after task_timeout even when its worker
    # is alive: keep it well above a slow batch (the first one loads the model) on a busy machine.
    producer = settings.replace(broker_url=redis_url, task_files=4, task_timeout=120,
                                roots={"photos": tmp_path / "producer-view"})
    db = open_database(producer)
    plan = plan_run(producer, db, tmp_path / "producer-view", mode="celery")
    assert plan.root == "photos" and len(plan.batches) >= 6
    logs = tmp_path / "logs"
    logs.mkdir()
    worker_settings = producer.replace(roots={})
    with workers(worker_settings, {"a": {"CLIPDEX_ROOTS": f"photos={tmp_path / 'mount-a'}"},
                                   "b": {"CLIPDEX_ROOTS": f"photos={tmp_path / 'mount-b'}"}}, logs) as procs:
        enqueue(producer, db, plan.run_id, plan.batches)
        wait_for(run_finished(db.url, plan.run_id), 180, "the run to finish", procs, logs)
    with psycopg.connect(db.url) as conn:
        used = {r[0].split("@")[0] for r in conn.execute(
            "SELECT DISTINCT b.worker FROM ingest_batches b WHERE run_id = %s", (plan.run_id,))}
        attempts = conn.execute("SELECT max(attempts) FROM ingest_batches WHERE run_id = %s",
                                (plan.run_id,)).fetchone()[0]
    assert len(used) == 2 and attempts == 1      # both workers worked, no batch ran twice
    distributed = snapshot(db.url)

    # The same tree, indexed in one process into another database, gives the same rows.
    local_url = fresh_database(pg_url, "local_compare")
    local_settings = settings.replace(database_url=local_url, roots={"photos": library})
    index_folder(local_settings, open_database(local_settings), library, out=None)
    local = snapshot(local_url)
    assert distributed["totals"] == local["totals"] == (24, 38, 24, 24)
    assert distributed["rows"].keys() == local["rows"].keys()
    for path, row in local["rows"].items():
        assert distributed["rows"][path] == row, path
    for sha, vector in local["vectors"].items():
        assert float(vector @ distributed["vectors"][sha]) > 0.999


def test_killed_worker_loses_nothing_and_duplicates_nothing(settings, redis_url, tmp_path):
    library = tmp_path / "lib"
    # Large enough that a batch takes a while, so the kill lands inside one.
    for i in range(48):
        L.write(library / f"day{i % 3}" / f"p{i:02}.png", L.png(100 + i, (900, 700)))
    producer = settings.replace(broker_url=redis_url, task_files=12, task_timeout=4, defer_index_files=10)
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    assert plan.defer_index   # a bulk load: the worker that finishes it has the index built
    logs = tmp_path / "logs"
    logs.mkdir()
    first = start_worker(producer, "doomed", logs)
    try:
        enqueue(producer, db, plan.run_id, plan.batches)

        def batch_in_progress():
            with psycopg.connect(db.url) as conn:
                return conn.execute(
                    "SELECT batch_no FROM ingest_batches WHERE run_id = %s AND state = 'queued' "
                    "AND started_at IS NOT NULL", (plan.run_id,)).fetchone()

        killed_batch = wait_for(batch_in_progress, 120, "a batch to start", log_dir=logs)[0]
        stop_worker(first, signal.SIGKILL)
    finally:
        stop_worker(first, signal.SIGKILL)
    with psycopg.connect(db.url) as conn:
        state = conn.execute("SELECT state FROM ingest_batches WHERE run_id = %s AND batch_no = %s",
                             (plan.run_id, killed_batch)).fetchone()[0]
    assert state == "queued"   # the kill interrupted it
    second = start_worker(producer, "survivor", logs)
    try:
        wait_for(run_finished(db.url, plan.run_id), 180, "the run to finish after the kill", log_dir=logs)

        def index_built():
            with psycopg.connect(db.url) as conn:
                return conn.execute("SELECT to_regclass('embeddings_hnsw_model_' || id) FROM models").fetchone()[0]

        wait_for(index_built, 60, "the vector index to be built after the bulk load", log_dir=logs)
    finally:
        stop_worker(second)
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT relpath) FROM locations").fetchone() == (48, 48)
        assert conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone() == (48, 48)
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 48
        assert conn.execute("SELECT count(*) FROM ingest_failures").fetchone()[0] == 0
        attempts, state, worker = conn.execute(
            "SELECT attempts, state, worker FROM ingest_batches WHERE run_id = %s AND batch_no = %s",
            (plan.run_id, killed_batch)).fetchone()
    # The killed batch was delivered again and written once, by the survivor. It may have been
    # started more than twice: on a slow machine a batch outlasts the 4 s visibility timeout and
    # the broker hands it to the survivor's other thread too; the counts above show that the
    # later writer found it done and wrote nothing.
    assert attempts >= 2 and state == "done" and worker.endswith(f":{second.pid}")
    out = run_cli("status", str(plan.run_id), env=producer.to_environ()).stdout
    assert f"run {plan.run_id} [done]" in out and "new 48, duplicates 0" in out and "failed 0" in out


def test_a_worker_holds_two_batches_so_one_is_written_while_the_other_is_computed(settings, redis_url, tmp_path):
    """`clipdex worker` runs two batches at once on two threads sharing one model: the device does
    not wait while a batch is written. Each batch still runs once, and the rows are whole."""
    library = tmp_path / "lib"
    for i in range(60):
        L.write(library / f"day{i % 4}" / f"p{i:02}.png", L.png(300 + i, (600, 400)))
    producer = settings.replace(broker_url=redis_url, task_files=10, task_timeout=120)
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = start_worker(producer, "lanes", logs)
    try:
        wait_ready(producer, ["lanes"])
        enqueue(producer, db, plan.run_id, plan.batches)
        wait_for(run_finished(db.url, plan.run_id), 180, "the run to finish", log_dir=logs)
    finally:
        stop_worker(worker)
    with psycopg.connect(db.url) as conn:
        spans = conn.execute("SELECT started_at, finished_at, attempts, worker FROM ingest_batches "
                             "WHERE run_id = %s ORDER BY started_at", (plan.run_id,)).fetchall()
        assert conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone() == (60, 60)
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 60
        assert conn.execute("SELECT count(*) FROM thumbnails").fetchone()[0] == 60
    assert len(spans) == 6 and {s[2] for s in spans} == {1} and len({s[3] for s in spans}) == 1
    # Some batch started before the one before it had finished: two were in hand at once.
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_enqueue_command_needs_a_broker(settings, tmp_path):
    L.write(tmp_path / "lib" / "a.jpg", L.jpeg(1))
    proc = run_cli("enqueue", str(tmp_path / "lib"), env=settings.to_environ(), check=False)
    assert proc.returncode == 1 and "CLIPDEX_BROKER_URL is not set" in proc.stderr


def test_rabbitmq_works_as_the_broker_too(settings, tmp_path):
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    library = tmp_path / "lib"
    for i in range(30):
        L.write(library / f"p{i:02}.png", L.png(500 + i))
    producer = settings.replace(broker_url=broker, task_files=10)
    from indexer.worker import make_celery

    make_celery(producer).control.purge()          # a queue of its own, emptied
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    logs = tmp_path / "logs"
    logs.mkdir()
    with workers(producer, {"rabbit": {}}, logs):
        enqueue(producer, db, plan.run_id, plan.batches)
        wait_for(run_finished(db.url, plan.run_id), 120, "the run over RabbitMQ", log_dir=logs)
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone() == (30, 30)


def test_a_task_that_fails_for_good_marks_its_batch_and_the_run_finishes(settings, redis_url, tmp_path,
                                                                          tiny_model_dir):
    """Once: a failing task left `ingest_batches.error` empty and the run at `[running] 0/1` forever.
    Here the only worker runs another model than the run asks for: each batch fails for good, is
    marked failed with the reason, and the run finishes; `clipdex resume` with the right worker
    then indexes everything."""
    import shutil

    library = tmp_path / "lib"
    for i in range(20):
        L.write(library / f"p{i:02}.png", L.png(1700 + i))
    producer = settings.replace(broker_url=redis_url, task_files=10, task_timeout=10)
    other_model = tmp_path / "other-clip"
    shutil.copytree(tiny_model_dir, other_model)
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    logs = tmp_path / "logs"
    logs.mkdir()
    with workers(producer, {"wrong": {"CLIPDEX_MODEL": f"local-dir:{other_model}"}}, logs):
        enqueue(producer, db, plan.run_id, plan.batches)
        wait_for(run_finished(db.url, plan.run_id), 120, "the run with failed batches", log_dir=logs)
    status = run_cli("status", str(plan.run_id), env=producer.to_environ()).stdout
    assert "[done]" in status and "batches 0/2 (2 failed)" in status and "failed 20" in status
    assert "WrongModel: this worker runs model local-dir:other-clip" in status
    with psycopg.connect(db.url) as conn:
        stages = conn.execute("SELECT stage, count(*) FROM ingest_failures WHERE run_id = %s GROUP BY 1",
                              (plan.run_id,)).fetchall()
    assert stages == [("batch", 20)]
    with workers(producer, {"right": {}}, logs):
        assert "2 batches queued again" in run_cli("resume", str(plan.run_id), env=producer.to_environ()).stdout
        wait_for(run_finished(db.url, plan.run_id), 120, "the resumed run", log_dir=logs)
    status = run_cli("status", str(plan.run_id), env=producer.to_environ()).stdout
    assert "batches 2/2" in status and "new 20" in status and "failed 0" in status
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM ingest_failures WHERE run_id = %s", (plan.run_id,)).fetchone()[0] == 0


def test_one_worker_process_per_gpu_under_one_supervisor(settings, redis_url, tmp_path):
    """`clipdex worker --gpus 0,1`: two real worker processes, each with its own node name and only
    its GPU visible (this machine has none: they run on the CPU), sharing the run's batches; one
    killed is started again; SIGTERM to the parent stops both."""
    from indexer.gpus import chosen_gpus, per_gpu_args

    assert per_gpu_args(("--hostname", "worker@%h"), "1") == ["--hostname", "worker-gpu1@%h"]
    assert per_gpu_args(("-nw@%h", "--loglevel", "INFO"), "0") == ["-nw-gpu0@%h", "--loglevel", "INFO"]
    assert per_gpu_args((), "3") == ["--hostname", "embed-gpu3@%h"]
    assert chosen_gpus("0,2") == ["0", "2"]
    with pytest.raises(ValueError, match="device numbers"):
        chosen_gpus("0,x")

    library = tmp_path / "lib"
    for i in range(16):
        L.write(library / f"p{i:02}.png", L.png(2400 + i))
    producer = settings.replace(broker_url=redis_url, task_files=2)
    db = open_database(producer)
    plan = plan_run(producer, db, library, mode="celery")
    log = open(tmp_path / "supervisor.log", "wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "clipdex.cli", "worker", "--gpus", "0,1", "-n", "w@%h", "--without-gossip",
         "--without-mingle", "--without-heartbeat"],
        env=producer.child_environ(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(producer, ["w-gpu0", "w-gpu1"])
        os.killpg(worker_on_gpu(parent.pid, "1"), signal.SIGKILL)      # the supervisor starts it again
        wait_for(lambda: "the worker on GPU 1 exited" in (tmp_path / "supervisor.log").read_text(), 30,
                 "the supervisor to see its worker die")
        wait_ready(producer, ["w-gpu0", "w-gpu1"])
        enqueue(producer, db, plan.run_id, plan.batches)
        wait_for(run_finished(db.url, plan.run_id), 180, "the run to finish")
        with psycopg.connect(db.url) as conn:
            used = {r[0].split("@")[0] for r in conn.execute(
                "SELECT DISTINCT worker FROM ingest_batches WHERE run_id = %s", (plan.run_id,))}
        assert len(used) == 2 and counts_of(db.url)["images"] == 16     # two processes shared the run
    finally:
        os.killpg(parent.pid, signal.SIGTERM)
        parent.wait(timeout=120)
    assert parent.returncode == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    assert "GPU 0:" in (tmp_path / "supervisor.log").read_text()
    answered = {n.split("@")[0] for reply in make_celery(producer).control.ping(timeout=1.0) or [] for n in reply}
    assert not answered & {"w-gpu0", "w-gpu1"}          # both children stopped with their parent


def worker_on_gpu(supervisor: int, gpu: str) -> int:
    """The pid of the supervisor's child that sees only this GPU."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if parent == supervisor and f"CUDA_VISIBLE_DEVICES={gpu}".encode() in environ:
            return int(entry)
    raise AssertionError(f"no worker on GPU {gpu} under process {supervisor}")


def counts_of(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {"images": conn.execute("SELECT count(*) FROM images").fetchone()[0]}

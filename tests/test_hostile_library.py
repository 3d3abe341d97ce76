"""Libraries that fight back, from an outside check of clipdex: one bad file must never poison a
batch, stall a worker, reach outside the library, or make the status lie."""

from __future__ import annotations

import json
import os
import random
import string
import threading

import psycopg

from clipdex.config import Settings
from clipdex.status import get_run
from indexer.in_process import index_folder, index_planned
from indexer.batch import run_files
from indexer.prepare import read_file
from indexer.runtime import Runtime
from indexer.producer import plan_run
from indexer import store
from indexer.sources import FileTask
from tests import libraries as L
from tests.conftest import run_cli


def rows(url: str) -> dict[str, tuple]:
    with psycopg.connect(url) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT l.relpath, i.description, i.extra, l.source_meta, i.taken_at_source FROM locations l "
            "JOIN images i ON i.id = l.image_id")}


def failures(url: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT relpath, stage, reason FROM ingest_failures")}


def in_thread(fn, timeout: float = 120):
    """Runs ``fn``; fails (instead of hanging the suite) if it does not return in time."""
    result, error = [], []
    thread = threading.Thread(target=lambda: _capture(fn, result, error), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout:.0f} s: a read that never returns"
    if error:
        raise error[0]
    return result[0]


def _capture(fn, result, error):
    try:
        result.append(fn())
    except BaseException as exc:   # noqa: BLE001 - handed back to the test thread
        error.append(exc)


PHOTOS = "Takeout/Google Photos/Photos from 2021"


def test_a_nul_in_a_sidecar_costs_nothing(settings, tmp_path):
    """Once: `store.write_batch` raised psycopg.DataError, `clipdex index` exited 1 with a traceback,
    and all ten photos of the batch were lost on every re-run."""
    root = tmp_path / "lib"
    folder = root / PHOTOS
    for i in range(10):
        L.write(folder / f"IMG_{i}.jpg", L.jpeg(300 + i))
        L.write(folder / f"IMG_{i}.jpg.json", json.dumps({"title": f"IMG_{i}.jpg"}))
    # JSON escapes that PostgreSQL refuses: NUL in text and in a key, a lone surrogate, NaN.
    L.write(folder / "IMG_3.jpg.json",
            '{"title": "IMG_3.jpg", "description": "before\\u0000after", "people": [{"name": "\\ud800Ann"}],'
            ' "odd\\u0000key": 1, "photoTakenTime": {"timestamp": "1600000000"}, "score": NaN}')
    proc = run_cli("index", str(root), env=settings.to_environ(), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "indexed 10 new images" in proc.stdout
    got = rows(settings.database_url)
    assert len(got) == 10
    description, extra, meta, source = got[f"{PHOTOS}/IMG_3.jpg"]
    assert description == "beforeafter" and extra["people"] == ["\ufffdAnn"] and source == "sidecar"
    assert meta["json"]["oddkey"] == 1 and meta["json"]["score"] is None


def _long_incompressible_path(root, seed: int) -> bytes:
    """A 2,900-byte relative path: more than a B-tree entry of PostgreSQL can hold (2,704 bytes),
    made of names that do not compress."""
    rng = random.Random(seed)
    names = ["".join(rng.choice(string.ascii_letters + string.digits) for _ in range(230)) for _ in range(13)]
    rel = os.path.join(*names[:-1], names[-1][:120] + ".png").encode()
    os.makedirs(os.path.join(os.fsencode(root), os.path.dirname(rel)), exist_ok=True)
    with open(os.path.join(os.fsencode(root), rel), "wb") as handle:
        handle.write(L.png(seed))
    return rel


def test_a_row_the_database_refuses_fails_alone(settings, db, tmp_path):
    """Whatever the database refuses after cleaning (here a path too long for its indexes), only
    that file fails, as a 'write' failure with the reason; the rest of the batch is written."""
    root = tmp_path / "lib"
    for i in range(6):
        L.write(root / f"ok{i}.png", L.png(400 + i))
    long_rel = _long_incompressible_path(root, 9)
    assert len(long_rel) > 2800
    result = index_folder(settings.replace(task_files=50), db, root, out=None)
    assert result.counts["images_new"] == 6 and result.counts["failed"] == 1
    with psycopg.connect(db.url) as conn:
        stage, reason, stored = conn.execute(
            "SELECT stage, reason, relpath_bytes FROM ingest_failures WHERE run_id = %s", (result.plan.run_id,)).fetchone()
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 6
        assert conn.execute("SELECT state FROM ingest_batches WHERE run_id = %s", (result.plan.run_id,)).fetchone()[0] == "done"
    assert stage == "write" and reason.startswith("the database refused it:") and bytes(stored) == long_rel


def test_a_batch_that_fails_for_good_is_marked_and_the_run_finishes(settings, db, tmp_path):
    """An unexpected error in one batch (here its stored work list was damaged) must neither end
    `clipdex index` nor stay silent: that batch is failed with the error, its files are failures of
    stage 'batch', the other batches are indexed, and `clipdex status` says so."""
    root = tmp_path / "lib"
    for i in range(30):
        L.write(root / f"p{i:02}.png", L.png(500 + i))
    settings = settings.replace(task_files=10)
    plan = plan_run(settings, db, root)
    with psycopg.connect(db.url) as conn:
        conn.execute("UPDATE ingest_batches SET payload = jsonb_set(payload, '{0}', '[\"only-a-name\"]') "
                     "WHERE run_id = %s AND batch_no = 2", (plan.run_id,))
    result = index_planned(settings, db, plan, out=None)
    assert result.counts["images_new"] == 20
    with psycopg.connect(db.url) as conn:
        states = dict(conn.execute("SELECT batch_no, state FROM ingest_batches WHERE run_id = %s", (plan.run_id,)))
        run = get_run(conn, plan.run_id)
        stages = [r[0] for r in conn.execute("SELECT stage FROM ingest_failures WHERE run_id = %s", (plan.run_id,))]
    assert states == {1: "done", 2: "failed", 3: "done"} and run.state == "done"
    assert run.batches_failed == 1 and run.errors and "ValueError" in run.errors[0]
    assert stages == ["batch"] * 9     # the damaged entry names no file; the nine others are listed
    text = run_cli("status", str(plan.run_id), env=settings.to_environ()).stdout
    assert "[done]" in text and "(1 failed)" in text and "error: ValueError" in text


def test_fifo_and_device_in_place_of_a_photo(settings, db, tmp_path):
    """Once: a file replaced by a FIFO after the scan hung `clipdex index` (and every Celery worker
    the batch was redelivered to); a link to /dev/zero grew one process to 4.4 GB in 11 s."""
    root = tmp_path / "lib"
    for seed, name in enumerate(("a", "fifo", "zero", "b")):
        L.write(root / f"{name}.jpg", L.jpeg(20 + seed))
    plan = plan_run(settings, db, root)
    (root / "fifo.jpg").unlink()
    os.mkfifo(root / "fifo.jpg")
    (root / "zero.jpg").unlink()
    os.symlink("/dev/zero", root / "zero.jpg")
    result = in_thread(lambda: index_planned(settings, db, plan, out=None))
    assert result.counts["images_new"] == 2
    got = failures(db.url)
    assert got["fifo.jpg"] == ("read", "not a regular file: a named pipe (FIFO)")
    assert got["zero.jpg"][1].startswith("symbolic link leads outside the library (to /dev/zero)")
    # Allowed to follow links out of the library, the device is still refused, without reading it.
    data, failure = in_thread(lambda: read_file(os.fsencode(root / "zero.jpg"), 1 << 20, None), 10)
    assert failure == ("read", "not a regular file: a device")


def test_every_read_is_capped_whatever_size_the_file_claims(tmp_path):
    """/proc files say they are 0 bytes long and are not: the cap bounds the read, not st_size."""
    os.symlink("/proc/self/status", tmp_path / "status.jpg")
    read, failure = read_file(os.fsencode(tmp_path / "status.jpg"), 16, None)
    assert failure == ("read", "file grew over the 0 KiB cap while being read")
    read, failure = read_file(os.fsencode(tmp_path / "status.jpg"), 1 << 20, None)
    assert failure is None and read[0].startswith(b"Name:")


def test_links_out_of_the_library_are_not_followed(settings, db, tmp_path):
    """Once: a link to /etc walked 1,019 files, and images outside the root were indexed and their
    originals served."""
    outside = tmp_path / "elsewhere"
    for i in range(3):
        L.write(outside / "private" / f"secret{i}.png", L.png(600 + i))
    root = tmp_path / "lib"
    L.write(root / "mine.png", L.png(610))
    os.symlink(outside / "private", root / "linked-folder")
    os.symlink(outside / "private" / "secret0.png", root / "linked-file.png")
    os.symlink(root / "mine.png", root / "alias.png")                # inside: followed as before
    result = index_folder(settings, db, root, out=None)
    assert result.counts["images_new"] == 1 and result.plan.problems == 2
    reasons = {path: reason for path, (_stage, reason) in failures(db.url).items()}
    assert set(reasons) == {"linked-folder", "linked-file.png"}
    assert all(r.startswith(f"symbolic link leads outside the library (to {outside}/private") for r in reasons.values())
    assert set(rows(db.url)) == {"mine.png", "alias.png"}
    # Another library root is not "outside": a link into it is followed.
    other = settings.replace(roots={"lib": root, "elsewhere": outside})
    again = index_folder(other, db, root, out=None)
    assert again.counts["images_new"] == 3 and again.plan.problems == 0
    # And the setting lets a user follow links anywhere.
    assert Settings.from_env({"CLIPDEX_FOLLOW_EXTERNAL_LINKS": "true"}).follow_external_links


def test_a_huge_sidecar_says_so(settings, db, tmp_path):
    folder = tmp_path / "lib" / PHOTOS
    L.write(folder / "big.jpg", L.jpeg(700))
    L.write(folder / "big.jpg.json", '{"title": "big.jpg", "description": "' + "x" * (5 << 20) + '"}')
    index_folder(settings, db, tmp_path / "lib", out=None)
    meta = rows(db.url)[f"{PHOTOS}/big.jpg"][2]
    assert meta["sidecar_error"] == "sidecar not read: file is 5 MiB, over the 4 MiB cap"


def test_two_runs_that_race_count_only_what_each_inserted(settings, db, tmp_path):
    """Once: two concurrent `clipdex index` runs of one folder each counted the shared images as new
    (1,951 new for 1,000 images). Run B prepares its batch (and embeds) before run A writes."""
    root = tmp_path / "lib"
    for i in range(12):
        L.write(root / f"p{i:02}.png", L.png(800 + i))
    plan_a = plan_run(settings, db, root)
    plan_b = plan_run(settings, db, root)
    rt = Runtime(settings, db)
    try:
        with psycopg.connect(db.url) as conn:
            work_b = store.load_batch(conn, plan_b.run_id, 1)
        work_b.model_id = rt.model_id()
        outcome_b = run_files(rt, work_b, [FileTask.from_json(item) for item in work_b.payload])
        assert len(outcome_b.new_images) == 12                     # B believes they are all new…
        result_a = index_planned(settings, db, plan_a, out=None, runtime=rt)
        with db.connect() as conn, conn.transaction():
            counts_b = store.write_batch(conn, work_b, outcome_b, "test")
    finally:
        rt.close()
    assert result_a.counts["images_new"] == 12
    assert (counts_b["images_new"], counts_b["images_known"]) == (0, 12)   # …but A inserted them first
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone() == (12, 12)


def test_a_creation_takes_its_source_photos_time(settings, db, tmp_path):
    folder = tmp_path / "lib" / PHOTOS
    L.write(folder / "IMG_5.jpg", L.jpeg(900))
    L.write(folder / "IMG_5.jpg.json", L.sidecar("IMG_5.jpg", "2021-05-01T10:00:00+00:00"))
    L.write(folder / "IMG_5-COLLAGE.jpg", L.jpeg(901))
    index_folder(settings, db, tmp_path / "lib", out=None)
    with psycopg.connect(db.url) as conn:
        got = {r[0]: r[1:] for r in conn.execute(
            "SELECT l.relpath, i.taken_at, i.taken_at_source, i.extra, l.source_meta->>'match' "
            "FROM locations l JOIN images i ON i.id = l.image_id")}
    source, creation = got[f"{PHOTOS}/IMG_5.jpg"], got[f"{PHOTOS}/IMG_5-COLLAGE.jpg"]
    assert creation[0] == source[0] and creation[1] == "sidecar"
    assert creation[2]["creation"] is True and creation[2]["derived_from"] == "IMG_5.jpg"
    assert creation[3] == "creation" and "creation" not in source[2]

"""`clipdex watch`: real inotify events through watchdog, the real indexer and model, the real
database. A photo copied in slowly is read once, whole; moves and renames cost no model work;
deletions are forgotten; a watched folder that empties (an unmount) forgets nothing; a watcher
started again catches up; Celery workers take the runs when a broker is set."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from clipdex import status
from indexer.watch import Watcher
from tests import libraries as L
from tests.test_ingest import counts, failures, located
from tests.workers import wait_for, workers


@contextmanager
def watching(settings, db, *paths: Path, **changed):
    settings = settings.replace(**{"watch_settle": 0.5, "watch_rescan": 3600.0, **changed})
    watcher = Watcher(settings, db, list(paths), out=None)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


def paths_become(url: str, expected: set[str], timeout: float = 60) -> dict:
    def check():
        rows = located(url)
        return rows if set(rows) == expected else None
    try:
        return wait_for(check, timeout, f"the locations to become {sorted(expected)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; they are {sorted(located(url))}") from None


def encoded(watcher: Watcher) -> int:
    return watcher._runtime.images_encoded if watcher._runtime is not None else 0


def test_copies_moves_renames_and_deletions_are_followed(settings, db, tmp_path):
    library = tmp_path / "library"
    for n in range(2):
        L.write(library / "a" / f"p{n}.jpg", L.jpeg(600 + n), L.MTIME)
    with watching(settings, db, library) as watcher:
        assert watcher.caught_up.wait(120)
        rows = paths_become(db.url, {"a/p0.jpg", "a/p1.jpg"})                   # caught up at start
        before = watcher.totals.files

        # A photo copied in slowly, in pieces with pauses shorter than the settle time: read once.
        data = L.jpeg(610, size=(640, 480))
        (library / "b").mkdir()
        with open(library / "b" / "new.jpg", "wb") as handle:
            for start in range(0, len(data), len(data) // 5 + 1):
                handle.write(data[start:start + len(data) // 5 + 1])
                handle.flush()
                time.sleep(0.3)
        rows = paths_become(db.url, {"a/p0.jpg", "a/p1.jpg", "b/new.jpg"})
        wait_for(lambda: watcher.totals.files - before == 1, 30, "the watcher to count the run")
        # A read of the half-copied file would have left a failure row (a truncated JPEG).
        assert failures(db.url) == {}
        assert rows["b/new.jpg"]["width"] == 640

        # A move and a folder rename: new locations of known bytes, no model work.
        work, image = encoded(watcher), rows["a/p0.jpg"]["id"]
        os.rename(library / "a" / "p0.jpg", library / "b" / "p0.jpg")
        rows = paths_become(db.url, {"a/p1.jpg", "b/new.jpg", "b/p0.jpg"})
        assert rows["b/p0.jpg"]["id"] == image
        os.rename(library / "b", library / "c")
        rows = paths_become(db.url, {"a/p1.jpg", "c/new.jpg", "c/p0.jpg"})
        assert rows["c/p0.jpg"]["id"] == image and encoded(watcher) == work
        assert counts(db.url)["embeddings"] == 3

        # A deletion: the photo leaves the index with its only copy.
        (library / "a" / "p1.jpg").unlink()
        paths_become(db.url, {"c/new.jpg", "c/p0.jpg"})
        assert counts(db.url)["images"] == 2


# watchdog warns when a folder moved back in gets the inotify watch it had before; harmless.
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
def test_an_emptied_mount_forgets_nothing_and_a_restarted_watcher_catches_up(settings, db, tmp_path):
    library, elsewhere = tmp_path / "nas", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for n in range(3):
        L.write(library / "2024" / f"p{n}.jpg", L.jpeg(620 + n), L.MTIME)
    expected = {f"2024/p{n}.jpg" for n in range(3)}
    with watching(settings, db, library, watch_rescan=1.0) as watcher:
        paths_become(db.url, expected)
        # The share goes away: its mount point stays, empty. Events and rescans see no file at all.
        os.rename(library / "2024", elsewhere / "2024")
        gone_at = datetime.now(timezone.utc)
        wait_for(lambda: _rescanned_after(db.url, gone_at + timedelta(seconds=1)), 30,
                 "a rescan of the empty mount point")
        assert set(located(db.url)) == expected
        os.rename(elsewhere / "2024", library / "2024")
        back_at = datetime.now(timezone.utc)
        wait_for(lambda: _rescanned_after(db.url, back_at + timedelta(seconds=1)), 30,
                 "a rescan after the share came back")
        assert set(located(db.url)) == expected
        assert watcher.totals.forgotten == 0

    # Stopped: a photo arrives and another leaves; the next watcher catches up when it starts.
    (library / "2024" / "p0.jpg").unlink()
    L.write(library / "2025" / "late.jpg", L.jpeg(630), L.MTIME)
    with watching(settings, db, library):
        paths_become(db.url, {"2024/p1.jpg", "2024/p2.jpg", "2025/late.jpg"})


def _rescanned_after(url: str, moment: datetime) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT last_rescan_at > %s FROM watchers WHERE stopped_at IS NULL",
                            (moment,)).fetchone()[0]


def test_the_command_runs_until_sigterm_and_status_shows_it(settings, tmp_path):
    library = tmp_path / "pictures"
    L.write(library / "x.jpg", L.jpeg(640), L.MTIME)
    env = {**settings.child_environ(), "CLIPDEX_WATCH_SETTLE": "0.5", "CLIPDEX_OCR": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "clipdex.cli", "watch", str(library)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        paths_become(settings.database_url, {"x.jpg"}, timeout=120)
        L.write(library / "y.jpg", L.jpeg(641), L.MTIME)
        paths_become(settings.database_url, {"x.jpg", "y.jpg"})

        def counted():
            with psycopg.connect(settings.database_url) as conn:
                found = status.list_watchers(conn)
            return found if found and found[0].files == 2 else None
        (watcher,) = wait_for(counted, 30, "the watcher's row to count both runs")
        assert watcher.state == "watching" and watcher.paths == [str(library)] and watcher.mode == "local"
        shown = subprocess.run([sys.executable, "-m", "clipdex.cli", "status"], env=env, capture_output=True,
                               text=True, timeout=120)
        assert f"watch [watching] {library} on " in shown.stdout
        assert "2 files indexed" in shown.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped watching: 2 runs, 2 files indexed, 0 forgotten" in out
    with psycopg.connect(settings.database_url) as conn:
        (watcher,) = status.list_watchers(conn)
    assert watcher.state == "stopped"


@pytest.mark.celery
def test_with_a_broker_the_celery_workers_index_what_changes(settings, db, redis_url, tmp_path):
    library = tmp_path / "shared"
    L.write(library / "first.jpg", L.jpeg(650), L.MTIME)
    queued = settings.replace(broker_url=redis_url)
    logs = tmp_path / "logs"
    logs.mkdir()
    with workers(queued, {"w": {}}, logs), watching(queued, db, library) as watcher:
        paths_become(db.url, {"first.jpg"}, timeout=120)
        L.write(library / "second.jpg", L.jpeg(651), L.MTIME)
        paths_become(db.url, {"first.jpg", "second.jpg"}, timeout=120)
        assert watcher._runtime is None                      # no model in the watcher: the worker embedded
    with psycopg.connect(db.url) as conn:
        modes = {r[0] for r in conn.execute("SELECT mode FROM ingest_runs")}
    assert modes == {"celery"}


def test_a_watcher_that_died_is_shown_as_not_answering(settings, db):
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("INSERT INTO watchers (host, pid, paths, mode, started_at, seen_at) "
                     "VALUES ('nas', 4242, '{/photos}', 'celery', now() - interval '2 hours', now() - interval '5 minutes')")
        (watcher,) = status.list_watchers(conn)
    assert watcher.state == "not answering"
    from webapp import create_app

    page = create_app(settings).test_client().get("/status").get_data(as_text=True)
    with psycopg.connect(db.url) as conn:
        (later,) = status.list_watchers(conn)
    # The page counted the silence at its own moment, between the two readings (starting the app
    # takes over a second here: once the page said 5 min 01 s where the first reading said 00 s).
    shown = [dataclasses.replace(watcher, silent_seconds=float(s)).line()
             for s in range(int(watcher.silent_seconds), int(later.silent_seconds) + 1)]
    assert any(line in page for line in shown) and 'class="watcher-not-answering"' in page
    assert watcher.line() == ("watch [not answering] /photos on nas (pid 4242, celery): no heartbeat for "
                              f"{status.duration(watcher.silent_seconds)} (killed, or its machine is down)")

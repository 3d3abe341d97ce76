"""How soon a new photo is searchable with `clipdex watch`, against re-running `clipdex index`
from cron.

    python -m bench.watch [--library 5000] [--photos 20] [--cron 60] [--smoke] [--json OUT]

A library of --library small photos is indexed first; a watcher (default settings: 2 s settle)
then runs in this process with the tiny random-weight model while --photos new photos are
written one at a time, 0.5 s apart, into different folders. Latency is from the moment a photo's
file is closed to the moment its location is in the database (polled every 20 ms). Then one
photo is moved to another folder (no model work: the figure is the move's latency).

Baseline: a cron job running `clipdex index` every --cron seconds. A photo waits half the
interval on average for the next run, then the run itself: a rescan of the same library with one
new photo, measured here (scan, plan, read and embed the photo), so the baseline is
cron / 2 + that run, in the same units.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from bench.report import Report, fresh_database, percentile
from clipdex import embedded_postgres
from clipdex.config import Settings
from tests.libraries import jpeg
from tests.tiny_model import TINY_MODEL_CFG, write_model_folder


def stored(url: str, relpath: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM locations WHERE relpath = %s", (relpath,)).fetchone() is not None


def wait_stored(url: str, relpath: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stored(url, relpath):
            return time.perf_counter()
        time.sleep(0.02)
    raise SystemExit(f"{relpath} was not indexed within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> Report:
    from clipdex.database import open_database
    from indexer.in_process import index_folder
    from indexer.watch import Watcher

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=int, default=5000, help="photos already indexed")
    parser.add_argument("--photos", type=int, default=20, help="new photos written while watching")
    parser.add_argument("--cron", type=float, default=60.0, help="the baseline's cron interval, seconds")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.library, args.photos = 50, 3
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-watch-"))
    home = work / "home"
    try:
        library = work / "library"
        for n in range(args.library):
            folder = library / f"{2000 + n // 500}" / f"{n // 50 % 10:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"p{n:06d}.jpg").write_bytes(jpeg(n, size=(64, 48)))
        model = write_model_folder(work / "model", TINY_MODEL_CFG)
        settings = Settings(home=home, database_url=fresh_database(embedded_postgres.server_url(home), "watch"),
                            model=f"local-dir:{model}", device="cpu", ocr=False)
        db = open_database(settings)
        index_folder(settings, db, library, out=None)

        # The baseline's run: the same library again with one new photo.
        (library / "cron").mkdir()
        (library / "cron" / "new.jpg").write_bytes(jpeg(10_000_000, size=(640, 480)))
        start = time.perf_counter()
        index_folder(settings, db, library, out=None)
        cron_run = time.perf_counter() - start

        watcher = Watcher(settings, db, [library], out=None)
        stop = threading.Event()
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        if not watcher.caught_up.wait(300):
            raise SystemExit("the watcher did not finish its start-up scan")
        latencies: list[float] = []
        for n in range(args.photos):
            relpath = f"new/{n % 4}/w{n:03d}.jpg"
            (library / relpath).parent.mkdir(parents=True, exist_ok=True)
            with open(library / relpath, "wb") as handle:
                handle.write(jpeg(20_000_000 + n, size=(640, 480)))
            written = time.perf_counter()
            latencies.append(wait_stored(settings.database_url, relpath) - written)
            time.sleep(0.5)
        encoded = watcher._runtime.images_encoded
        os.rename(library / "new" / "0" / "w000.jpg", library / "cron" / "moved.jpg")
        moved_at = time.perf_counter()
        move_latency = wait_stored(settings.database_url, "cron/moved.jpg") - moved_at
        time.sleep(0.5)
        stop.set()
        thread.join(60)
        if watcher._runtime is not None and watcher._runtime.images_encoded != encoded:
            raise SystemExit("the move cost model work")

        report = Report(f"clipdex watch: {args.photos} new photos into a library of {args.library:,}",
                        f"cron running clipdex index every {args.cron:g} s")
        report.facts.update({"settle": f"{settings.watch_settle:g} s",
                             "one clipdex index run (library + 1 photo)": f"{cron_run:.2f} s"})
        baseline = args.cron / 2 + cron_run
        report.add("new photo searchable after, p50", percentile(latencies, 50), baseline, "s",
                   higher_is_better=False, note="baseline: half the interval + one run")
        report.add("new photo searchable after, p95", percentile(latencies, 95), args.cron + cron_run, "s",
                   higher_is_better=False, note="baseline: the whole interval + one run")
        report.add("moved photo at its new place after", move_latency, baseline, "s", higher_is_better=False,
                   note="no model work")
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(home)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The producer on a million-file export: walk (stat only), plan (Takeout sidecar matching, iPhone
pairing), leave out what is indexed, store the batches, send the messages. Baseline: the tutorial
producer, os.walk + os.stat + one Celery message per file, timed on a slice and scaled.

    python -m bench.enqueue [--files 1000000] [--json OUT] [--smoke]

The files are empty: the producer never opens one, so their content does not matter here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import Report, fresh_database, peak_rss_mib
from clipdex import embedded
from clipdex.config import Settings


def make_tree(root: Path, files: int) -> None:
    """60 % iPhone DCIM (100 per folder), 40 % Takeout (half media, half JSON sidecars)."""
    phone, takeout = int(files * 0.6), files - int(files * 0.6)
    for i in range(phone):
        if i % 100 == 0:
            folder = root / "DCIM" / f"{100 + i // 100}APPLE"
            folder.mkdir(parents=True)
        (folder / f"IMG_{i % 10000:04}.HEIC").touch()
    for i in range(takeout // 2):
        if i % 500 == 0:
            folder = root / "Takeout" / "Google Photos" / f"Album {i // 500}"
            folder.mkdir(parents=True)
        (folder / f"PXL_2023{i:09}.jpg").touch()
        (folder / f"PXL_2023{i:09}.jpg.supplemental-metadata.json").touch()


def naive_rate(root: Path, broker: str, limit: int) -> float:
    """Files per second of os.walk + os.stat + one message per file, over the first `limit` files."""
    from indexer.worker import make_celery

    app = make_celery(Settings(broker_url=broker))
    sent = 0
    start = time.perf_counter()
    with app.connection_for_write() as connection:
        for folder, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                st = os.stat(path)
                app.send_task("naive.embed_file", args=(path, st.st_size, st.st_mtime_ns), queue="naive",
                              connection=connection)
                sent += 1
                if sent >= limit:
                    return sent / (time.perf_counter() - start)
    return sent / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> Report:
    from clipdex.database import open_database
    from indexer.producer import enqueue, plan_run

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    files = 3000 if args.smoke else args.files
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-enqueue-"))
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    broker = f"redis://127.0.0.1:{port}/0"
    try:
        start = time.perf_counter()
        make_tree(work / "export", files)
        made = time.perf_counter() - start
        base = embedded.server_url(work / "home")
        settings = Settings(home=work / "home", database_url=fresh_database(base, "enqueue"), broker_url=broker)
        db = open_database(settings)
        start = time.perf_counter()
        plan = plan_run(settings, db, work / "export", mode="celery")
        planned = time.perf_counter() - start
        start = time.perf_counter()
        enqueue(settings, db, plan.run_id, plan.batches)
        sent = time.perf_counter() - start
        rss = peak_rss_mib()
        naive = naive_rate(work / "export", broker, min(files, 50_000))
        report = Report(f"Producer: {files:,} files (60 % DCIM, 40 % Takeout with sidecars)",
                        "os.walk + stat + a message per file")
        report.facts.update({"files": f"{files:,}", "tree created in": f"{made:.0f} s",
                             "to index": f"{plan.files:,} in {len(plan.batches):,} batches"})
        total = planned + sent
        report.add("whole producer (scan, plan, store batches, send), files/s", files / total, naive, "files/s",
                   note=f"{total:.1f} s for all; the baseline timed on {min(files, 50_000):,} files")
        report.add("  scan + plan + store the batches", planned, unit="s")
        report.add("  send the messages", sent, unit="s", note=f"{len(plan.batches):,} messages")
        report.add("peak RSS of the producer", rss, unit="MiB", higher_is_better=False)
        report.emit(args.json)
        return report
    finally:
        redis.terminate()
        embedded.stop(work / "home")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

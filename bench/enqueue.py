"""The producer on a million-file export: walk (stat only), plan (Takeout sidecar matching, iPhone
pairing), leave out what is indexed, store the batches, send the messages. Baseline: the tutorial
producer, os.walk + os.stat + one Celery message per file, timed on a slice and scaled.

Then the re-run a user makes later: every photo stored as indexed, 1 % of the files deleted from
disk, the same folder planned again (nothing to queue, the deleted files forgotten).

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
from clipdex import embedded_postgres, model_registry
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


def mark_indexed(db, run_id: int, model_key: str) -> int:
    """Stores every file the run queued as indexed (image, location, a 2-d vector), as if its
    batches had all been done; returns the number of locations."""
    with db.transaction() as conn:
        model_id = model_registry.register_model(conn, model_key, 2, {}, index=False)
        conn.execute(
            "CREATE TEMP TABLE planned ON COMMIT DROP AS SELECT r.root, b.source, convert_to(f->>0, 'UTF8') AS path, "
            "(f->>1)::bigint AS size, (f->>2)::bigint AS mtime FROM ingest_batches b "
            "JOIN ingest_runs r ON r.id = b.run_id, jsonb_array_elements(b.payload) AS f WHERE b.run_id = %s",
            (run_id,))
        conn.execute("INSERT INTO images (sha256, format, width, height, byte_size) "
                     "SELECT sha256(root::bytea || path), 'jpeg', 4, 3, 1 FROM planned")
        located = conn.execute(
            "INSERT INTO locations (image_id, root, relpath, relpath_bytes, source, byte_size, mtime_ns) "
            "SELECT i.id, p.root, convert_from(p.path, 'UTF8'), p.path, p.source, p.size, p.mtime FROM planned p "
            "JOIN images i ON i.sha256 = sha256(p.root::bytea || p.path)").rowcount
        conn.execute("INSERT INTO embeddings (image_id, model_id, embedding) "
                     "SELECT id, %s, '[1,0]'::halfvec FROM images", (model_id,))
        conn.execute("UPDATE ingest_batches SET state = 'done', payload = NULL WHERE run_id = %s", (run_id,))
    return located


def delete_every_hundredth_photo(root: Path) -> int:
    deleted = 0
    for i, path in enumerate(sorted((root / "DCIM").rglob("*.HEIC"))):
        if i % 100 == 0:
            path.unlink()
            deleted += 1
    return deleted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> Report:
    from clipdex.database import open_database
    from clipdex.model import ModelSpec
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
        base = embedded_postgres.server_url(work / "home")
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

        located = mark_indexed(db, plan.run_id, ModelSpec.from_settings(settings).key())
        deleted = delete_every_hundredth_photo(work / "export")
        start = time.perf_counter()
        again = plan_run(settings, db, work / "export", mode="celery")
        replanned = time.perf_counter() - start
        rss_again = peak_rss_mib()   # before the report, whose machine facts import torch
        forgotten = sum(c.gone for c in again.sources.values())
        if again.files or forgotten != deleted:
            raise SystemExit(f"re-run planned {again.files} files and forgot {forgotten}, expected 0 and {deleted}")
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
        report.add("re-run, everything indexed, 1 % deleted: scan + compare + forget", replanned, unit="s",
                   note=f"{located:,} stored locations, {forgotten:,} forgotten, nothing queued")
        report.add("peak RSS after the re-run", rss_again, unit="MiB", higher_is_better=False)
        report.emit(args.json)
        return report
    finally:
        redis.terminate()
        embedded_postgres.stop(work / "home")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

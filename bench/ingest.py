"""Ingest end to end: files -> rows in PostgreSQL, in local mode and with N Celery workers.

Figures: images/s, seconds per stage (read, hash, lookup, decode, thumbnail, preprocess on the
decode threads; model on the main thread, write on the writer thread while the next batch is
computed), peak RSS. Baseline: the naive pipeline a
tutorial would write (walk, full Pillow decode, the model one image at a time, INSERT row by row
with a commit each), measured in the same run on the same corpus.

    python -m bench.ingest [--corpus DIR] [--scale 1] [--workers 2] [--smoke] [--json OUT]

Without a GPU it runs the tiny random-weight model (the pipeline around the model is what is
measured); pass --model/--pretrained to use another (e.g. ViT-B-32 --pretrained none).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.corpus import make_corpus
from bench.report import Report, fresh_database, peak_rss_mib, server_versions
from clipdex import database, embedded_postgres
from clipdex.config import Settings
from tests.tiny_model import TINY_MODEL_CFG, write_model_folder

SMOKE_COUNTS = {"camera_jpeg": 2, "phone_heic": 1, "screenshot_png": 1, "chat_jpeg": 2, "chat_gif": 1,
                "chat_webp": 1}


def library_from(corpus: list[Path], folder: Path, scale: int) -> Path:
    """The corpus `scale` times over, each copy's pixels nudged so every file is a new image."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    if folder.exists():
        return folder
    building = folder.with_name(folder.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    for copy in range(scale):
        target = building / f"copy{copy:02}"
        target.mkdir(parents=True)
        for path in corpus:
            if copy == 0:
                shutil.copy(path, target / path.name)
                continue
            with Image.open(path) as im:   # a different first pixel: different bytes, same work
                im.load()
                exif = im.info.get("exif")
                im = im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()
                im.putpixel((0, 0), (copy * 7 % 256,) * (3 if im.mode == "RGB" else 1))
                fmt = {".jpg": "JPEG", ".heic": "HEIF", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP"}[path.suffix]
                kwargs = {"quality": 90} if fmt in ("JPEG", "HEIF", "WEBP") else {}
                if exif and fmt in ("JPEG", "HEIF"):
                    kwargs["exif"] = exif
                if fmt == "HEIF":
                    kwargs.update(quality=80, enc_params={"preset": "ultrafast"}, thumbnails=[320])
                im.save(target / path.name, fmt, **kwargs)
    building.rename(folder)
    return folder


def local_run(settings: Settings, library: Path) -> dict:
    from clipdex.model import load_model
    from indexer.in_process import index_folder

    db = database.open_database(settings)
    load_model(settings)              # start-up (torch import, weights) is not what is measured
    start = time.perf_counter()
    result = index_folder(settings, db, library, out=None)
    seconds = time.perf_counter() - start
    images = result.counts["images_new"] + result.counts["images_known"]
    return {"seconds": seconds, "images": images, "timings": result.timings,
            "indexing_seconds": result.timings.get("total", 0) + result.timings.get("write", 0)}


def naive_run(settings: Settings, library: Path) -> dict:
    """Walk, full decode, one image per forward pass, an INSERT and a commit per row."""
    import hashlib

    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from PIL import Image, ImageOps

    from clipdex.model import load_model

    model = load_model(settings)      # loaded before the clock starts, as for clipdex
    url = database.resolve_url(settings)
    start = time.perf_counter()
    images = 0
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        model_id = conn.execute("INSERT INTO models (name, dim) VALUES ('naive', %s) RETURNING id",
                                (model.dim,)).fetchone()[0]
        conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (model_id,))
        for folder, _dirs, files in os.walk(library):
            for name in sorted(files):
                data = Path(folder, name).read_bytes()
                with Image.open(Path(folder, name)) as im:
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    vector = model.encode_images([im])[0]
                    width, height = im.size
                image_id = conn.execute(
                    "INSERT INTO images (sha256, format, width, height, byte_size) VALUES (%s, 'jpeg', %s, %s, %s) "
                    "RETURNING id", (hashlib.sha256(data).digest(), width, height, len(data))).fetchone()[0]
                conn.execute("INSERT INTO embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                             (image_id, model_id, HalfVector(vector)))
                images += 1
    return {"seconds": time.perf_counter() - start, "images": images}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_finished(url: str, run_id: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT finished_at FROM ingest_runs WHERE id = %s", (run_id,)).fetchone()[0] is None:
            time.sleep(0.1)


def celery_run(settings: Settings, library: Path, workers: int, logs: Path, warmup: Path,
               pin: bool = False) -> dict:
    """With `pin`, worker n runs on CPU n alone (taskset), so N workers measure N cores."""
    from indexer.producer import enqueue, plan_run
    from indexer.worker import make_celery

    db = database.open_database(settings)
    plan = plan_run(settings, db, library, mode="celery")
    warm = plan_run(settings.replace(task_files=1), db, warmup, mode="celery")
    procs = []
    for n in range(workers):
        log = open(logs / f"worker-{workers}-{n}.log", "wb")
        pinning = ["taskset", "-c", str(n % (os.cpu_count() or 1))] if pin else []
        procs.append(subprocess.Popen(
            [*pinning, sys.executable, "-m", "clipdex.cli", "worker", "-n", f"bench{n}@%h", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            env=settings.child_environ(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        control = make_celery(settings).control
        while len(control.ping(timeout=1.0) or []) < workers:
            time.sleep(0.2)
        # Warm up: each worker loads the model on its first task; that is not what is measured.
        enqueue(settings, db, warm.run_id, warm.batches)
        _wait_finished(db.url, warm.run_id)
        start = time.perf_counter()
        enqueue(settings, db, plan.run_id, plan.batches)
        _wait_finished(db.url, plan.run_id)
        seconds = time.perf_counter() - start
        with psycopg.connect(db.url) as conn:
            images = conn.execute("SELECT sum(images_new + images_known) FROM ingest_batches WHERE run_id = %s",
                                  (plan.run_id,)).fetchone()[0]
        rss = max(vm_hwm_mib(p.pid) for p in procs)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
    return {"seconds": seconds, "images": images, "rss": rss}


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--scale", type=int, default=2, help="copies of the corpus (each a new image)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", help="open_clip model (default: a tiny random-weight local-dir model)")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-ingest-"))
    home = work / "home"
    redis = None
    try:
        base = embedded_postgres.server_url(home)
        corpus_dir = args.corpus or Path(tempfile.gettempdir()) / "clipdex-bench" / (
            "corpus-smoke" if args.smoke else "corpus")
        corpus = make_corpus(corpus_dir, SMOKE_COUNTS if args.smoke else None)
        scale = 1 if args.smoke else args.scale
        library = library_from(corpus, corpus_dir.parent / f"{corpus_dir.name}-library-x{scale}", scale)
        files = sum(len(f) for _, _, f in os.walk(library))
        if args.model:
            model, pretrained = args.model, args.pretrained
        else:
            model, pretrained = f"local-dir:{write_model_folder(work / 'tiny-clip', TINY_MODEL_CFG)}", None
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL)
        broker = f"redis://127.0.0.1:{port}/0"
        common = dict(home=home, model=model, pretrained=pretrained, device="cpu", broker_url=broker,
                      task_files=16 if args.smoke else 32)

        report = Report(f"Ingest end to end: {files} files ({'smoke' if args.smoke else 'photo export mix'})",
                        "naive pipeline")
        local_url = fresh_database(base, "ingest_local")
        local = local_run(Settings(database_url=local_url, **common), library)
        local_rss = peak_rss_mib()
        naive = naive_run(Settings(database_url=fresh_database(base, "ingest_naive"), **common), library)
        with psycopg.connect(local_url) as conn:
            report.facts.update(server_versions(conn))
        report.facts.update({"model": model if args.model else "tiny random-weight open_clip (64-d, 64 px)",
                             "files": str(files), "decode threads": str(os.cpu_count())})
        report.add("local mode (clipdex index), images/s", local["images"] / local["seconds"],
                   naive["images"] / naive["seconds"], "img/s", note="wall clock incl. scan and start-up")
        timings = local["timings"]
        for stage in ("read", "hash", "lookup", "decode", "thumbnail", "preprocess", "model", "write"):
            if stage in timings:
                report.add(f"  stage {stage}", timings[stage], unit="s",
                           note={"model": "main thread", "write": "writer thread, beside the next batch"}.get(
                               stage, "thread-seconds on the decode threads"))
        report.add("peak RSS, local mode", local_rss, unit="MiB", higher_is_better=False)

        logs = work / "logs"
        logs.mkdir()
        warmup = work / "warmup"
        for n in range(max(2, args.workers) * 2):   # one small image per warm-up batch
            from PIL import Image

            warmup.mkdir(exist_ok=True)
            Image.new("RGB", (64, 48), (n * 20, 90, 160)).save(warmup / f"w{n}.png")
        one = celery_run(Settings(database_url=fresh_database(base, "ingest_c1"), decode_threads=1, **common),
                         library, 1, logs, warmup, pin=True)
        many = celery_run(Settings(database_url=fresh_database(base, "ingest_cn"), decode_threads=1, **common),
                          library, args.workers, logs, warmup, pin=True)
        report.add(f"Celery, {args.workers} workers vs 1, each pinned to its own core, images/s",
                   many["images"] / many["seconds"], one["images"] / one["seconds"], "img/s",
                   note=f"target >= 1.8× with 2; PostgreSQL shares the {os.cpu_count()} cores")
        rss = [one["rss"], many["rss"]]
        if not args.smoke:
            full = celery_run(Settings(database_url=fresh_database(base, "ingest_c1full"), **common), library, 1,
                              logs, warmup)
            report.add("Celery, 1 worker using every core, images/s", full["images"] / full["seconds"],
                       naive["images"] / naive["seconds"], "img/s")
            rss.append(full["rss"])
        report.add("peak RSS of a worker", max(rss), unit="MiB", higher_is_better=False)
        report.emit(args.json)
        return report
    finally:
        if redis is not None:
            redis.terminate()
        embedded_postgres.stop(home)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Bulk write: how fast a worker's batch write stores images with their vectors, against
row-by-row INSERTs of the same rows (the tutorial way), on a table with its HNSW index.

    python -m bench.write [--rows 20000] [--batch 256] [--dim 512] [--smoke] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from bench.report import Report, fresh_database, server_versions
from bench.synthetic import clustered_vectors
from clipdex import embedded_postgres, model_registry
from clipdex.likeness import Look
from indexer import store
from indexer.thumbnail import Thumbnail


def _batches(rows: int, batch: int, dim: int, seed: int):
    """BatchOutcome objects holding `rows` new images in batches of `batch`."""
    rng = np.random.default_rng(seed)
    look = Look(int(rng.integers(-2**63, 2**63 - 1)), rng.bytes(32), 1.0)
    thumbnail = Thumbnail(bytes(rng.integers(0, 255, 9000, dtype=np.uint8)), 256, 192, look)
    vectors, _ = clustered_vectors(rows, dim, 200, rng)   # shaped like photo embeddings
    for start in range(0, rows, batch):
        outcome = store.BatchOutcome()
        for i in range(start, min(rows, start + batch)):
            sha = hashlib.sha256(f"{seed}-{i}".encode()).digest()
            outcome.new_images.append(store.NewImage(
                sha256=sha, format="jpeg", width=4032, height=3024, exif_orientation=1, byte_size=3_500_000,
                facts=store.ImageFacts(taken_at=None, camera_make="Apple", camera_model="iPhone 12", extra={}),
                embedding=vectors[i], thumbnail=thumbnail))
            outcome.locations.append(store.LocationRow(sha, f"DCIM/100APPLE/IMG_{i:06}.JPG".encode(), "iphone",
                                                       None, 3_500_000, 1_700_000_000_000_000_000, {}))
        yield outcome


def _prepare(conn: psycopg.Connection, dim: int, index: bool = True) -> tuple[int, int]:
    model_id = model_registry.register_model(conn, f"bench-write-{dim}", dim, {}, index=index)
    conn.execute("INSERT INTO roots (name, path) VALUES ('bench', '/bench') ON CONFLICT DO NOTHING")
    run_id = store.create_run(conn, mode="local", root="bench", path=b"", source="iphone", model=f"bench-write-{dim}")
    return model_id, run_id


def clipdex_write(url: str, rows: int, batch: int, dim: int, *, defer_index: bool = False) -> float:
    """The worker's path: one transaction per batch, one statement per table (arrays unnested).
    With defer_index, a bulk load: no HNSW index during the writes, one build at the end
    (included in the time)."""
    from pgvector.psycopg import register_vector

    with psycopg.connect(url) as conn:
        register_vector(conn)
        model_id, run_id = _prepare(conn, dim, index=not defer_index)
        conn.commit()
        batches = list(_batches(rows, batch, dim, seed=1))
        store.add_batches(conn, run_id, [(n + 1, "iphone", []) for n in range(len(batches))])
        conn.commit()
        start = time.perf_counter()
        for n, outcome in enumerate(batches):
            work = store.BatchWork(run_id, n + 1, "bench", "iphone", f"bench-write-{dim}", "queued", None,
                                   defer_index, model_id)
            with conn.transaction():
                store.write_batch(conn, work, outcome, "bench")
        if defer_index:
            conn.execute("SET maintenance_work_mem = '1GB'")
            model_registry.build_vector_index(conn, model_id)
            conn.commit()
        return time.perf_counter() - start


def rowwise_write(url: str, rows: int, batch: int, dim: int, commit_each_row: bool) -> float:
    """The baseline: an INSERT per row and table (images, embeddings, thumbnails, locations)."""
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector

    with psycopg.connect(url, autocommit=commit_each_row) as conn:
        register_vector(conn)
        model_id, run_id = _prepare(conn, dim)
        if not commit_each_row:
            conn.commit()
        batches = list(_batches(rows, batch, dim, seed=2))
        start = time.perf_counter()
        for outcome in batches:
            for image, location in zip(outcome.new_images, outcome.locations):
                image_id = conn.execute(
                    "INSERT INTO images (sha256, format, width, height, exif_orientation, byte_size, camera_make, "
                    "camera_model) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (image.sha256, image.format, image.width, image.height, image.exif_orientation,
                     image.byte_size, image.facts.camera_make, image.facts.camera_model)).fetchone()[0]
                conn.execute("INSERT INTO embeddings (image_id, model_id, embedding) VALUES (%s, %s, %s)",
                             (image_id, model_id, HalfVector(image.embedding)))
                conn.execute("INSERT INTO thumbnails (image_id, width, height, webp) VALUES (%s, %s, %s, %s)",
                             (image_id, image.thumbnail[1], image.thumbnail[2], image.thumbnail[0]))
                conn.execute("INSERT INTO locations (image_id, root, relpath, relpath_bytes, source, byte_size, "
                             "mtime_ns, run_id) VALUES (%s, 'bench', %s, %s, %s, %s, %s, %s)",
                             (image_id, location.relpath.decode(), location.relpath, location.source,
                              location.byte_size, location.mtime_ns, run_id))
            if not commit_each_row:
                conn.commit()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="a few hundred rows, to keep this program working")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = 600 if args.smoke else args.rows
    home = Path(tempfile.mkdtemp(prefix="clipdex-bench-write-"))
    try:
        base = embedded_postgres.server_url(home)
        report = Report("Bulk write: images + vectors + thumbnails + locations into PostgreSQL",
                        "row-by-row INSERT")
        ours = clipdex_write(fresh_database(base, "bench_clipdex"), rows, args.batch, args.dim)
        bulk = clipdex_write(fresh_database(base, "bench_bulk"), rows, args.batch, args.dim, defer_index=True)
        one_tx = rowwise_write(fresh_database(base, "bench_rowwise"), rows, args.batch, args.dim, commit_each_row=False)
        autocommit_rows = max(200, rows // 10)
        per_row = rowwise_write(fresh_database(base, "bench_autocommit"), autocommit_rows, args.batch, args.dim,
                                commit_each_row=True)
        with psycopg.connect(fresh_database(base, "bench_versions")) as conn:
            report.facts.update(server_versions(conn))
        report.facts.update({"rows": str(rows), "batch": str(args.batch), "dim": str(args.dim),
                             "rows written": "images + halfvec embeddings + 9 KB thumbnails + locations"})
        report.add("images written per second (one transaction per batch)", rows / ours, rows / one_tx, "rows/s",
                   note="HNSW index updated by every insert, both sides")
        report.add("bulk load: batches without the index, then one build", rows / bulk, rows / one_tx, "rows/s",
                   note="what a run of >= CLIPDEX_DEFER_INDEX_FILES images does; build time included")
        report.add("vs row-by-row with a commit per row", rows / ours, autocommit_rows / per_row, "rows/s",
                   note=f"baseline measured on {autocommit_rows} rows")
        report.add("time for the batch size", ours / (rows / args.batch) * 1000,
                   one_tx / (rows / args.batch) * 1000, "ms/batch", higher_is_better=False)
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

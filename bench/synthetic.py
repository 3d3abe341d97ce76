"""A synthetic library straight into PostgreSQL: clustered unit vectors with realistic metadata.

Used by bench/search.py (100k and 1M rows) and by the search tests (a few thousand). Filters of
known selectivity come from the data itself:

    format = 'png'                 50 %
    camera_make = 'Make-5'          5 %
    camera_make = 'Make-1'          1 %
    camera_make = 'Make-0.5'        0.5 %
    camera_make = 'Make-0.05'       0.05 %
    taken 2019-2020 (20 %) x source iphone (25 %) x orientation portrait (7/16)    about 2.2 %

Every image has one location (root 'synthetic'), its source drawn as takeout 45 %, iphone 25 %,
qq 20 %, folder 10 %.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
from pgvector import HalfVector

SELECTIVITY_FILTERS = {
    "50%": {"format": ["png"]},
    "5%": {"camera_make": ["Make-5"]},
    "1%": {"camera_make": ["Make-1"]},
    "0.5%": {"camera_make": ["Make-0.5"]},
    "0.05%": {"camera_make": ["Make-0.05"]},
    "combined ~2%": {"taken_from": ["2019-01-01"], "taken_to": ["2020-12-31"], "source": ["iphone"],
                     "orientation": ["portrait"]},
}
SOURCES, SOURCE_SHARES = ("takeout", "iphone", "qq", "folder"), (0.45, 0.25, 0.2, 0.1)


@dataclass
class Synthetic:
    model_key: str
    model_id: int
    dim: int
    ids: np.ndarray        # image ids, in the order of `vectors`
    vectors: np.ndarray    # float32 unit vectors as stored (rounded through float16)
    centers: np.ndarray


MODALITY_GAP_SEED = 12345


def modality_gap(dim: int) -> np.ndarray:
    """The unit direction that separates a text tower's outputs from every image (CLIP's
    modality gap): the same for every query, and orthogonal to every photo, as the gap is found
    to be (arXiv 2603.29080; driven by a few dimensions, arXiv 2404.07983). Added to a query, it
    shifts every photo's cosine alike and leaves the ranking to the rest of the query."""
    gap = np.random.default_rng(MODALITY_GAP_SEED).normal(size=dim)
    return gap / np.linalg.norm(gap)


def clustered_vectors(n: int, dim: int, clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three levels, like a photo library: topics (clusters), scenes within a topic (25 each,
    cosine about 0.8 to their topic), moments within a scene (bursts of about ten photos, cosine
    about 0.95 to the scene) and the photos of a moment (cosine about 0.95 to it). The number of
    moments grows with n, so a query's nearest neighbours stay a handful of photos at any size
    instead of hundreds of near-ties. Every vector is orthogonal to modality_gap(dim). Returns
    the vectors and the moments (to aim queries at)."""
    gap = modality_gap(dim)

    def unit(x: np.ndarray) -> np.ndarray:
        x = x - np.outer(x @ gap, gap)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    topics = unit(rng.normal(size=(clusters, dim)))
    scenes = unit(np.repeat(topics, 25, axis=0) + rng.normal(scale=0.75 / np.sqrt(dim), size=(clusters * 25, dim)))
    moments = unit(scenes[rng.integers(0, len(scenes), max(1, n // 10))]
                   + rng.normal(scale=0.33 / np.sqrt(dim), size=(max(1, n // 10), dim)))
    labels = rng.integers(0, len(moments), n)
    vectors = unit(moments[labels] + rng.normal(scale=0.33 / np.sqrt(dim), size=(n, dim)))
    return vectors.astype(np.float16).astype(np.float32), moments


def create(conn: psycopg.Connection, n: int, dim: int = 512, *, seed: int = 0, clusters: int = 200,
           model_key: str = "synthetic", build_index: bool = True, vectors: np.ndarray | None = None) -> Synthetic:
    """Inserts n images with vectors under `model_key` (binary COPY), then builds the HNSW index.
    ``vectors``: these unit vectors instead of clustered ones (n and dim follow them)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    rng = np.random.default_rng(seed)
    if vectors is None:
        vectors, centers = clustered_vectors(n, dim, clusters, rng)
    else:
        (n, dim), centers = vectors.shape, vectors[:0]
        vectors = vectors.astype(np.float16).astype(np.float32)
    u = rng.random(n)
    makes = np.select([u < 0.0005, u < 0.0055, u < 0.0555, u < 0.0655],
                      ["Make-0.05", "Make-0.5", "Make-5", "Make-1"], "Other")
    formats = np.where(rng.random(n) < 0.5, "png", "jpeg")
    start = datetime(2015, 1, 1, tzinfo=timezone.utc)
    seconds = rng.integers(0, 10 * 365 * 86400, n)
    widths = rng.choice([640, 1080, 3024, 4032], n)
    heights = rng.choice([480, 1920, 3024, 4032], n)
    favorite = rng.random(n) < 0.02
    sources = rng.choice(SOURCES, n, p=SOURCE_SHARES)
    model_id = conn.execute(
        "INSERT INTO models (name, dim) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET dim = EXCLUDED.dim "
        "RETURNING id", (model_key, dim)).fetchone()[0]
    first_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM images").fetchone()[0]
    ids = np.arange(first_id, first_id + n)
    with conn.cursor().copy(
            "COPY images (id, sha256, format, width, height, byte_size, taken_at, taken_at_source, "
            "camera_make, favorite) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["bigint", "bytea", "text", "int4", "int4", "bigint", "timestamptz", "text", "text", "bool"])
        for i in range(n):
            copy.write_row((int(ids[i]), hashlib.sha256(f"{model_key}-{seed}-{i}".encode()).digest(),
                            str(formats[i]), int(widths[i]), int(heights[i]), 2_000_000 + i,
                            start + timedelta(seconds=int(seconds[i])), "exif", str(makes[i]),
                            bool(favorite[i])))
    with conn.cursor().copy("COPY embeddings (image_id, model_id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["bigint", "int2", "halfvec"])
        for i in range(n):
            copy.write_row((int(ids[i]), model_id, HalfVector(vectors[i])))
    conn.execute("INSERT INTO roots (name, path) VALUES ('synthetic', '/synthetic') ON CONFLICT DO NOTHING")
    with conn.cursor().copy("COPY locations (image_id, root, relpath, relpath_bytes, source, byte_size, mtime_ns) "
                            "FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["bigint", "text", "text", "bytea", "text", "bigint", "int8"])
        for i in range(n):
            relpath = f"{model_key}-{seed}/{sources[i]}/{i:08d}.jpg"
            copy.write_row((int(ids[i]), "synthetic", relpath, relpath.encode(), str(sources[i]),
                            2_000_000 + i, 1_600_000_000_000_000_000 + i))
    conn.execute("SELECT setval(pg_get_serial_sequence('images', 'id'), %s)", (int(ids[-1]),))
    if build_index:
        conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (model_id,))
    conn.execute("SELECT clipdex_use_model(%s::smallint)", (model_id,))
    conn.execute("SELECT clipdex_refresh_sample(%s::smallint)", (model_id,))
    conn.execute("ANALYZE images")
    conn.execute("ANALYZE locations")
    conn.execute("ANALYZE embeddings")
    return Synthetic(model_key, model_id, dim, ids, vectors, centers)

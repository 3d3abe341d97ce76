"""The query vector: each text (through the text cache), indexed image and uploaded image as a
unit vector, weighted, summed and normalised."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import psycopg
from pgvector import HalfVector

from clipdex.search.errors import NotFound, QueryError
from clipdex.search.request import check_image_id


def _is_unit(vector: np.ndarray, dim: int | None) -> bool:
    return ((dim is None or vector.shape == (dim,)) and bool(np.all(np.isfinite(vector)))
            and abs(float(np.linalg.norm(vector)) - 1.0) <= 0.01)


def text_vectors(conn: psycopg.Connection, model, model_id: int, texts: Sequence[str],
                 dim: int | None = None) -> np.ndarray:
    """Unit vectors of query texts, from the text cache or the model (which then fills the cache)."""
    rows = conn.execute(
        "SELECT query, embedding FROM text_embeddings WHERE model_id = %s AND query = ANY("
        "SELECT clipdex_query_key(t) FROM unnest(%s::text[]) t)", (model_id, list(texts))).fetchall()
    # Another role may have written the cache: a vector that is not a unit vector of this model's
    # size is ignored, embedded again and replaced.
    cached = {q: vector for q, v in rows if _is_unit(vector := np.asarray(v.to_numpy(), dtype=np.float32), dim)}
    keys = [conn.execute("SELECT clipdex_query_key(%s)", (t,)).fetchone()[0] for t in texts]
    missing = sorted({k for k in keys if k not in cached})
    if missing:
        # Rounded as the cache keeps them (halfvec): a query's first search and every later one,
        # in psql too, then rank and cut with the very same vector.
        fresh = np.asarray(model.encode_texts(missing), dtype=np.float16).astype(np.float32)
        for key, vector in zip(missing, fresh):
            cached[key] = vector
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO text_embeddings (model_id, query, embedding) "
                    "SELECT %s, q, e FROM unnest(%s::text[], %b::halfvec[]) AS n(q, e) "
                    "ON CONFLICT (model_id, query) DO UPDATE SET embedding = EXCLUDED.embedding, used_at = now()",
                    (model_id, missing, [HalfVector(v) for v in fresh]))
        except psycopg.errors.InsufficientPrivilege:
            pass  # a read-only role searches fine; it just cannot fill the cache for psql
    return np.stack([cached[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def image_vectors(conn: psycopg.Connection, model_id: int, ids: Sequence[int]) -> np.ndarray:
    for image_id in ids:
        check_image_id(image_id)
    rows = dict(conn.execute("SELECT image_id, embedding FROM embeddings WHERE model_id = %s "
                             "AND image_id = ANY(%s)", (model_id, list(ids))).fetchall())
    for image_id in ids:
        if image_id not in rows:
            raise NotFound(f"image {image_id} does not exist or has no vector for this model")
    return np.stack([np.asarray(rows[i].to_numpy(), dtype=np.float32) for i in ids])


def upload_vectors(model, uploads: Sequence[bytes], max_pixels: int, budget=None) -> np.ndarray:
    from clipdex.imaging import DecodeFailure, NotAnImage, decode

    images = []
    for data in uploads:
        try:
            images.append(decode(data, min_side=max(model.image_size), max_pixels=max_pixels, budget=budget).image)
        except NotAnImage as exc:
            raise QueryError(f"the uploaded file is not an image (it looks like {exc})", field="image") from None
        except DecodeFailure as exc:
            raise QueryError(f"cannot use the uploaded image: {exc}", field="image") from None
    return model.encode_images(images)


def combine(parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    total = sum(weight * vector for vector, weight in parts)
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise QueryError("the positive and negative parts cancel out: nothing left to search for")
    return (total / norm).astype(np.float32)


def as_halfvec(vector: np.ndarray) -> HalfVector:
    return HalfVector(np.asarray(vector, dtype=np.float32))

"""A library with planted matches, to measure and test the match cut-off (clipdex.search.matches).

Vectors shaped like CLIP's: every photo shares a common direction (photos resemble each other
more than random vectors do: cosine about 0.36 between unrelated ones), the rest is a topic
(300 topics) plus noise. Planted sets: for each (size, tightness) a concept, its relevant photos
(cosine ``tightness`` to the concept before the common part) and as many hard negatives (around
a concept halfway to it). Text-like queries sit far from every photo (a "modality gap" direction
shared by all queries), aim at their concept, and differ in how photo-like they are, so each
query scores the whole library at its own level: the reason a fixed cosine threshold fails.
Queries with no planted set should match (almost) nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIZES = (3, 20, 100, 500, 2000)
TIGHTNESS = (0.55, 0.8)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class PlantedQuery:
    vector: np.ndarray          # a text-like query vector
    relevant: np.ndarray        # row numbers of the photos that should match
    hard: np.ndarray            # row numbers of the hard negatives (similar, not relevant)
    size: int
    tightness: float


def planted_vectors(n: int, dim: int = 512, *, seed: int = 1, sizes=SIZES, tightness=TIGHTNESS,
                    empty: int = 4) -> tuple[np.ndarray, list[PlantedQuery]]:
    """n unit vectors (float32, rounded through float16 as stored) and the planted queries."""
    rng = np.random.default_rng(seed)
    common, gap = unit(rng.normal(size=dim)), unit(rng.normal(size=dim))
    topics = unit(rng.normal(size=(300, dim)))
    parts = unit(topics[rng.integers(0, 300, n)] * 0.75 + rng.normal(size=(n, dim)) / math.sqrt(dim) * 0.9)
    order = rng.permutation(n)
    used, planted = 0, []
    for size in sizes:
        for tight in tightness:
            if used + size + max(20, size) > n // 2:
                continue
            concept = unit(rng.normal(size=dim))
            near = unit(0.5 * concept + math.sqrt(0.75) * unit(rng.normal(size=dim)))
            relevant = order[used:used + size]
            used += size
            hard = order[used:used + max(20, size)]
            used += max(20, size)
            for rows, centre in ((relevant, concept), (hard, near)):
                noise = unit(rng.normal(size=(len(rows), dim)))
                parts[rows] = unit(tight * centre + math.sqrt(1 - tight ** 2) * noise)
            planted.append((concept, relevant, hard, size, tight))
    for _ in range(empty):
        planted.append((unit(rng.normal(size=dim)), order[:0], order[:0], 0, 0.0))
    vectors = unit(0.6 * common + 0.8 * parts).astype(np.float16).astype(np.float32)
    queries = []
    for concept, relevant, hard, size, tight in planted:
        photo_like, aim = rng.uniform(0.15, 0.45), rng.uniform(0.25, 0.4)
        q = unit(photo_like * common + aim * concept + 0.8 * gap + 0.3 * unit(rng.normal(size=dim)))
        queries.append(PlantedQuery(q.astype(np.float16).astype(np.float32), relevant, hard, size, tight))
    return vectors, queries


def f1(matched: set, relevant: set) -> tuple[float, float, float]:
    """(F1, precision, recall) of a match set; a query with nothing relevant scores 1 when it
    matches nothing and 0 otherwise."""
    if not relevant:
        return (1.0, 1.0, 1.0) if not matched else (0.0, 0.0, 1.0)
    hit = len(matched & relevant)
    precision = hit / len(matched) if matched else 1.0
    recall = hit / len(relevant)
    return (2 * precision * recall / (precision + recall) if hit else 0.0), precision, recall


def load_planted(conn, n: int, dim: int = 512, **kwargs):
    """The planted library into PostgreSQL (model "planted", the default), each query's vector
    cached as the text "planted <n>" as a searched text's vector would be: every surface (the
    service, the API, the CLI, psql) then searches exactly that vector, without a model.
    Returns (bench.synthetic.Synthetic, queries)."""
    from pgvector.psycopg import register_vector

    from bench import synthetic

    register_vector(conn)
    vectors, queries = planted_vectors(n, dim, **kwargs)
    data = synthetic.create(conn, len(vectors), vectors=vectors, model_key="planted")
    for number, query in enumerate(queries):
        cache_query(conn, data.model_id, f"planted {number}", query.vector)
    return data, queries


def cache_query(conn, model_id: int, text: str, vector: np.ndarray) -> None:
    conn.execute("INSERT INTO text_embeddings (model_id, query, embedding) VALUES (%s, clipdex_query_key(%s), "
                 "%s::halfvec)", (model_id, text, vector.tolist()))

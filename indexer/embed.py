"""The model's part: new images' pixels, a group at a time, to unit vectors."""

from __future__ import annotations

import logging
import time

from indexer import store
from indexer.prepare import New, VectorOnly
from indexer.runtime import Runtime

log = logging.getLogger(__name__)


def embed(rt: Runtime, items: list[New | VectorOnly], outcome: store.BatchOutcome) -> list[New | VectorOnly]:
    """Runs the model on a group of images; returns those that got a vector (all of them, or
    none: a model error fails the group's files at stage 'embed')."""
    import torch

    if not items:
        return []
    started = time.perf_counter()
    try:
        vectors = rt.model.encode_images(torch.stack([p.pixels for p in items]))
    except Exception as exc:
        log.exception("model failed on a batch of %d images", len(items))
        for p in items:
            outcome.failures.append((p.task.relpath, "embed", f"model error: {exc}", p.file.size, p.file.mtime_ns))
        return []
    finally:
        outcome.timings["model"] = outcome.timings.get("model", 0.0) + time.perf_counter() - started
    rt.images_encoded += len(items)
    for p, vector in zip(items, vectors):
        p.take_vector(vector)
    return items

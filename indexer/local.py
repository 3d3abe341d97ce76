"""``clipdex index``: the whole pipeline in one process, no broker, with a progress line."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from clipdex.config import Settings
from clipdex.database import Database
from indexer import store
from indexer.pipeline import Runtime, process_batch, stage_totals
from indexer.producer import RunPlan, plan_run


class Progress:
    """One line, rewritten at most twice a second: files/s, images/s and the time left."""

    def __init__(self, total: int, out: TextIO | None = sys.stderr) -> None:
        self.total, self.out = total, out
        self.files = self.images = 0
        self.started = self._shown = time.monotonic()

    def file_done(self, is_image: bool) -> None:
        self.files += 1
        self.images += is_image
        self._show()

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.out is None or (not force and now - self._shown < 0.5):
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.files / elapsed
        left = (self.total - self.files) / rate if rate > 0 else 0
        self.out.write(f"\r{self.files}/{self.total} files · {rate:.1f} files/s · "
                       f"{self.images / elapsed:.1f} images/s · ETA {int(left) // 60}m{int(left) % 60:02d}s ")
        self.out.flush()

    def finish(self) -> None:
        self._show(force=True)
        if self.out is not None:
            self.out.write("\n")


@dataclass
class LocalResult:
    plan: RunPlan
    seconds: float
    images_encoded: int
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def index_folder(settings: Settings, database: Database, path: Path, *, source: str = "auto",
                 out: TextIO | None = sys.stderr, runtime: Runtime | None = None) -> LocalResult:
    started = time.perf_counter()
    plan = plan_run(settings, database, path, source=source, mode="local")
    with database.transaction() as conn:
        store.mark_enqueued(conn, plan.run_id)
    own_runtime = runtime is None
    rt = runtime or Runtime(settings, database)
    before = rt.images_encoded
    if plan.batches:
        _ = rt.model  # load it now, so the progress line measures indexing, not start-up
    progress = Progress(plan.files, out)
    results = []
    try:
        try:
            for batch_no in plan.batches:
                result = process_batch(rt, plan.run_id, batch_no, on_file=progress.file_done)
                if result is not None:
                    results.append(result)
        finally:
            if plan.files:
                progress.finish()
        if plan.defer_index and plan.batches:
            if out is not None:
                out.write("building the vector index once for the whole run…\n")
            with database.connect(autocommit=True) as conn:
                store.build_vector_index(conn, rt.model_id())
    finally:
        if own_runtime:
            rt.close()
    counts = {k: sum(r[k] for r in results) for k in ("images_new", "images_known", "ignored", "failed")}
    return LocalResult(plan, time.perf_counter() - started, rt.images_encoded - before, counts,
                       stage_totals(results))

"""``clipdex index``: the whole pipeline in one process, no broker, with a progress line."""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psycopg

from clipdex import model_registry
from clipdex.config import Settings
from clipdex.database import Database, DatabaseError
from indexer import store
from indexer.batch import Computed, compute_batch, stage_totals, write_batch
from indexer.prepare import EarlierWrite
from indexer.lookalikes import group_new_images
from indexer.runtime import Runtime
from indexer.producer import RunPlan, plan_run

log = logging.getLogger(__name__)


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
    """``clipdex index``: plans a run of ``path`` and indexes it in this process."""
    started = time.perf_counter()
    plan = plan_run(settings, database, path, source=source, mode="local")
    return index_planned(settings, database, plan, out=out, runtime=runtime, started=started)


def index_planned(settings: Settings, database: Database, plan: RunPlan, *, out: TextIO | None = sys.stderr,
                  runtime: Runtime | None = None, started: float | None = None) -> LocalResult:
    """Runs the batches of a planned run in this process, one after the other."""
    started = time.perf_counter() if started is None else started
    with database.transaction() as conn:
        store.mark_enqueued(conn, plan.run_id)
    own_runtime = runtime is None
    rt = runtime or Runtime(settings, database)
    before = rt.images_encoded
    if plan.batches:
        _ = rt.model  # load it now, so the progress line measures indexing, not start-up
    progress = Progress(plan.files, out)
    answers: list = []   # per batch: its counts, None (done before), or the number of its files if it failed
    alive = ExitStack()
    if plan.defer_index:
        # Other commands see this load going on and leave its index alone; if this process
        # dies, the lock goes with its connection and the next command builds the index.
        lock_conn = alive.enter_context(database.connect(autocommit=True))
        alive.enter_context(model_registry.holding_bulk_load(lock_conn, plan.run_id))
    try:
        try:
            # A batch is written on the writer thread while the next one is computed: the model
            # never waits for the database. One write at a time, in order.
            with ThreadPoolExecutor(1, thread_name_prefix="clipdex-write") as writer:
                writing: tuple[int, EarlierWrite] | None = None
                for batch_no in plan.batches:
                    computed = _batch_step(database, plan.run_id, batch_no, compute_batch, rt, plan.run_id,
                                           batch_no, progress.file_done, writing and writing[1])
                    if writing is not None:
                        answers.append(_batch_step(database, plan.run_id, writing[0], writing[1].write.result))
                        writing = None
                    if isinstance(computed, Computed):
                        writing = batch_no, computed.writing(writer.submit(write_batch, rt, computed))
                    else:
                        answers.append(computed)
                if writing is not None:
                    answers.append(_batch_step(database, plan.run_id, writing[0], writing[1].write.result))
        finally:
            if plan.files:
                progress.finish()
        if plan.defer_index and plan.batches:
            if out is not None:
                out.write("building the vector index once for the whole run…\n")
            with database.connect(autocommit=True) as conn:
                model_registry.build_vector_index(conn, rt.model_id(), settings.lock_timeout, settings.cells_from)
        _group_lookalikes(database, out)
    finally:
        alive.close()
        if own_runtime:
            rt.close()
    results = [a for a in answers if isinstance(a, dict)]
    counts = {k: sum(r[k] for r in results) for k in ("images_new", "images_known", "ignored", "failed")}
    counts["failed"] += sum(a for a in answers if isinstance(a, int))
    return LocalResult(plan, time.perf_counter() - started, rt.images_encoded - before, counts,
                       stage_totals(results))


def _batch_step(database: Database, run_id: int, batch_no: int, step, *args):
    """One step of a batch (compute, or the end of its write): its answer, or the number of the
    batch's files when it failed. One batch must not end the run: it is marked failed with the
    error (its files show as failures of stage 'batch') and the next batches go on; a database
    outage stops the run, which the same command resumes."""
    try:
        return step(*args)
    except (psycopg.OperationalError, DatabaseError) as exc:
        raise DatabaseError(f"run {run_id} stopped: {str(exc).strip()}. Run the same command "
                            "again to go on where it stopped.") from None
    except Exception as exc:
        log.exception("run %s batch %s failed", run_id, batch_no)
        return _fail(database, run_id, batch_no, exc)


def _group_lookalikes(database: Database, out: TextIO | None) -> None:
    """The run's new photos into look-alike groups. A failure here costs no photo: they stay
    searchable, ungrouped, until the next run or `clipdex dupes` groups them."""
    try:
        with database.connect(autocommit=True) as conn:
            grouped = group_new_images(conn)
    except psycopg.Error as exc:
        log.warning("cannot group look-alikes now: %s", exc)
        if out is not None:
            out.write(f"could not group look-alikes now ({str(exc).strip()}); the next run or clipdex dupes will\n")
        return
    if grouped and out is not None:
        out.write(f"looked for look-alikes of {grouped} new photos\n")


def _fail(database: Database, run_id: int, batch_no: int, exc: Exception) -> int:
    """Marks the batch failed; returns how many files it held."""
    with database.connect(autocommit=True) as conn:
        return store.fail_batch(conn, run_id, batch_no, f"{type(exc).__name__}: {exc}").files

"""One batch of files, from paths to rows: prepare each file on the decode threads, embed new
images in groups as they come, write everything in one transaction.

Threads read and decode while the main thread runs the model: Pillow, hashlib and the resize
kernels release the GIL, so the model's forward pass and the decoding of the next images overlap.
A file that fails becomes a failure row with its stage and reason, and the batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import psycopg

from clipdex import archives, model_registry
from clipdex.files import allowed_roots
from clipdex.roots import RootError, absolute, local_root
from indexer import store
from indexer.embed import finish_previews, land, launch
from indexer.metadata import image_facts
from indexer.prepare import BatchContext, EarlierWrite, Failed, Known, New, Prepared, Skipped, VectorOnly, prepare, read_file
from indexer.runtime import Runtime
from indexer.sources import FileTask, side_files

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 3


class WrongModel(RuntimeError):
    """This worker runs another model than the run asked for: it must not write its vectors."""


def _location(p: Known | New, source: str) -> store.LocationRow:
    meta = dict(p.info.source_meta)
    if p.task.hints.get("hash_mismatch"):
        meta["hash_mismatch"] = True
    return store.LocationRow(p.file.sha256, p.task.relpath, source, p.info.album, p.file.size, p.file.mtime_ns,
                             meta, p.file.inode, p.info.description)


def run_files(rt: Runtime, work: store.BatchWork, tasks: list[FileTask],
              on_file: Callable[[bool], None] | None = None, earlier: EarlierWrite | None = None) -> store.BatchOutcome:
    """Prepares every file on the thread pool and embeds new images in groups as they come; a
    window of prepared files bounds the memory. ``earlier``: the batch being written meanwhile."""
    outcome = store.BatchOutcome()
    registered = rt.registered_roots()
    root_path = local_root(rt.settings, None, work.root, registered=registered)
    ctx = BatchContext(work, root_path, allowed_roots(rt.settings, registered, root_path), earlier=earlier)
    settings = rt.settings
    window = 2 * settings.batch_size + settings.effective_decode_threads
    futures: list[Future | None] = []
    pending: list[New | VectorOnly] = []
    embedded: list[New | VectorOnly] = []
    in_flight = None                         # the group launched last, not landed yet
    previews: list = []                      # previews of the device's JPEGs, being encoded
    seen_new: set[bytes] = set()
    task_iter = iter(tasks)
    _keep_side_texts(rt, ctx, tasks)
    device_jpegs = rt.device_decoder is not None if tasks else False
    options = dict(max_file_bytes=settings.max_file_bytes, max_pixels=settings.max_pixels,
                   budget=rt.decode_budget, device_jpegs=device_jpegs)

    def submit_next() -> None:
        task = next(task_iter, None)
        if task is not None:
            if archives.tar_of(task.relpath) is None:
                futures.append(rt.threads.submit(prepare, task, ctx, rt.model, rt.pool, **options))
                return
            # A tar part reads forward only: its members are read in order on one thread, a few
            # files ahead of the decode threads (each read holds a slot until its file is prepared).
            preread = rt.stream_reader.submit(_read_ahead, rt, absolute(root_path, task.relpath),
                                              settings.max_file_bytes, ctx.inside)
            futures.append(rt.threads.submit(_prepare_read, rt, task, ctx, preread, options))

    for _ in range(window):
        submit_next()
    index = 0
    while index < len(futures):
        p: Prepared = futures[index].result()
        futures[index] = None  # let the result go once handled
        index += 1
        submit_next()
        for stage, seconds in p.timings.items():
            outcome.timings[stage] = outcome.timings.get(stage, 0.0) + seconds
        match p:
            case Failed():
                outcome.failures.append((p.task.relpath, p.stage, p.reason, p.size, p.mtime_ns))
            case Skipped():
                outcome.ignored.append((p.task.relpath, p.size, p.mtime_ns, p.reason))
            case Known():
                outcome.known_ids[p.file.sha256] = p.image_id
                facts = image_facts(p.info)
                if facts.taken_at or facts.latitude is not None or facts.description or facts.favorite or facts.extra:
                    outcome.known_facts.append((p.image_id, facts))
                outcome.locations.append(_location(p, work.source))
            case New() if p.file.sha256 in seen_new:   # the same new bytes twice: one image, two places
                outcome.locations.append(_location(p, work.source))
            case New() | VectorOnly():
                if isinstance(p, New):
                    seen_new.add(p.file.sha256)
                    outcome.locations.append(_location(p, work.source))
                pending.append(p)
                if len(pending) >= settings.batch_size:
                    # The next group is queued before the last one's vectors are read: the device
                    # is never idle waiting for the host between groups.
                    launched = launch(rt, pending, outcome)
                    embedded += land(rt, in_flight, outcome, previews)
                    in_flight, pending = launched, []
        if on_file is not None:
            on_file(isinstance(p, (Known, New, VectorOnly)))
    launched = launch(rt, pending, outcome)
    embedded += land(rt, in_flight, outcome, previews)
    embedded += land(rt, launched, outcome, previews)
    no_preview = finish_previews(previews, outcome)
    embedded = [p for p in embedded if not (isinstance(p, New) and p.file.sha256 in no_preview)]
    failed = {f[0] for f in outcome.failures}
    dropped = seen_new - {p.file.sha256 for p in embedded if isinstance(p, New)}
    outcome.locations = [loc for loc in outcome.locations if loc.relpath not in failed and loc.sha256 not in dropped]
    outcome.new_images = [p.image for p in embedded if isinstance(p, New)]
    outcome.vectors_only = [store.VectorRow(p.image_id, p.vector, p.task.relpath, p.file.size, p.file.mtime_ns)
                            for p in embedded if isinstance(p, VectorOnly)]
    return outcome


def _read_ahead(rt: Runtime, path: bytes, max_bytes: int, inside):
    rt.stream_slots.acquire()
    return read_file(path, max_bytes, inside)


def _prepare_read(rt: Runtime, task: FileTask, ctx: BatchContext, preread: Future, options: dict) -> Prepared:
    try:
        return prepare(task, ctx, rt.model, rt.pool, preread=preread, **options)
    finally:
        rt.stream_slots.release()


def _keep_side_texts(rt: Runtime, ctx: BatchContext, tasks: list[FileTask]) -> None:
    """Puts in the batch's cache the sidecars and album files that lie in tar parts, from the
    parts' listings: reaching them in the stream could mean inflating a part again."""
    wanted: dict[bytes, list[bytes]] = defaultdict(list)
    for task in tasks:
        for path in side_files(task):
            part = archives.tar_of(path)
            if part is not None:
                wanted[part].append(path)
    for part, paths in wanted.items():
        texts = rt.archive_texts(ctx.work.root, part)
        for path in paths:
            text = texts.get(archives.split_member(path)[1])
            if text is not None:
                ctx.cache[("file", path)] = text


def process_batch(rt: Runtime, run_id: int, batch_no: int,
                  on_file: Callable[[bool], None] | None = None) -> dict[str, Any] | None:
    """Indexes one batch and marks it done; a batch that is done (or failed for good) is left alone.

    ``on_file(is_image)`` is called as each file is handled (the local progress line).
    """
    computed = compute_batch(rt, run_id, batch_no, on_file)
    return None if computed is None else write_batch(rt, computed)


@dataclass
class Computed:
    """A batch read, decoded and embedded, not written yet."""

    work: store.BatchWork
    outcome: store.BatchOutcome

    def writing(self, write: Future) -> EarlierWrite:
        return EarlierWrite(frozenset(n.sha256 for n in self.outcome.new_images), write)


def compute_batch(rt: Runtime, run_id: int, batch_no: int, on_file: Callable[[bool], None] | None = None,
                  earlier: EarlierWrite | None = None) -> Computed | None:
    """Everything of a batch but its write: the model's part. None when the batch is not queued
    (done, or failed for good). ``write_batch`` may run on another thread while the next batch
    is computed (``earlier``), so that the device never waits for the database
    (indexer/in_process.py)."""
    with rt.pool.connection() as conn:
        work = store.load_batch(conn, run_id, batch_no)
        if work is None or work.state != "queued":
            return None
        if work.model != rt.model.key:
            message = (f"this worker runs model {rt.model.key} but run {run_id} embeds with "
                       f"{work.model}; start workers with the run's CLIPDEX_MODEL")
            store.batch_error(conn, run_id, batch_no, message)
            raise WrongModel(message)
        store.start_batch(conn, run_id, batch_no, rt.worker_name)
    try:
        work.model_id = rt.model_id(defer_index=work.defer_index)
    except model_registry.LockedOut as exc:
        with rt.pool.connection() as conn:
            store.batch_error(conn, run_id, batch_no, str(exc))
        raise
    tasks = [FileTask.from_json(item) for item in work.payload or []]
    started = time.perf_counter()
    # A tar part's members are read ahead on the one stream-reader thread, and their prepares wait
    # for those reads: two such batches at once (a Celery worker's two threads) could hold every
    # decode thread waiting on reads queued behind each other. One at a time, then.
    turn = rt.tar_turn if any(archives.tar_of(t.relpath) is not None for t in tasks) else nullcontext()
    try:
        with turn:
            outcome = run_files(rt, work, tasks, on_file, earlier)
    except RootError as exc:
        # The library is not mounted here: every file fails with the reason (none is lost; the
        # next run retries them).
        outcome = store.BatchOutcome(failures=[(t.relpath, "read", str(exc), t.size, t.mtime_ns) for t in tasks])
    outcome.timings["total"] = time.perf_counter() - started
    return Computed(work, outcome)


def write_batch(rt: Runtime, computed: Computed) -> dict[str, Any] | None:
    """Writes a computed batch and marks it done; None when another worker finished it meanwhile."""
    work, outcome = computed.work, computed.outcome
    write_started = time.perf_counter()
    counts = _write(rt, work, outcome)
    if counts is None:
        return None
    outcome.timings["write"] = time.perf_counter() - write_started
    log.info("run %s batch %s: %s", work.run_id, work.batch_no, counts)
    # The batch that finishes a bulk load says so: its HNSW index is then built once. The one that
    # finishes any run has its new photos put in look-alike groups (indexer/lookalikes.py).
    finished = counts.pop("finished_run")
    counts["build_index"] = work.model_id if finished and work.defer_index else None
    counts["group_lookalikes"] = finished
    return {**counts, "timings": outcome.timings}


def _write(rt: Runtime, work: store.BatchWork, outcome: store.BatchOutcome) -> dict[str, int] | None:
    """Writes the batch in one transaction; None when another worker finished it meanwhile (a
    redelivered task). A deadlock with a concurrent run is tried again, a few times."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with rt.pool.connection() as conn:
                with conn.transaction():
                    if not store.claim_batch(conn, work.run_id, work.batch_no):
                        return None
                    counts = store.write_batch(conn, work, outcome, rt.worker_name)
                _name_places(conn, work, None if counts["finished_run"] else counts["image_ids"])
                return counts
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            if attempt == WRITE_ATTEMPTS:
                raise
            log.warning("run %s batch %s: %s; writing again", work.run_id, work.batch_no, exc)
    return None


def _name_places(conn: psycopg.Connection, work: store.BatchWork, image_ids: list[int] | None) -> None:
    """Where the batch's photos were taken; the run's last batch also names any photo of the
    library still unnamed (after an upgrade, or a batch whose naming failed). After the batch's
    commit, in a transaction of its own: inside it, the naming ran while the batch held its run's
    row (the last-batch check), so every other writer of the run waited for it. A place is a
    nicety: never worth the batch."""
    try:
        with conn.transaction():
            store.fill_places(conn, image_ids)
    except Exception as exc:
        log.warning("run %s batch %s: cannot name the photos' places now (the run's last batch will): %s",
                    work.run_id, work.batch_no, exc)


def stage_totals(results: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for result in results:
        for stage, seconds in result.get("timings", {}).items():
            totals[stage] += seconds
    return dict(totals)

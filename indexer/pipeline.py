"""One batch of files, from paths to rows: read → hash → (known? add the location) → decode →
metadata → thumbnail → preprocess → model → one write.

Threads read and decode while the main thread runs the model: Pillow, hashlib and the resize
kernels release the GIL, so the model's forward pass and the decoding of the next images overlap.
Each file is read once; every stage after it works on those bytes. A file that fails becomes a
failure row with its stage and reason, and the batch goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg

from clipdex.config import Settings
from clipdex.database import Database, open_database
from clipdex.files import FileRefused, allowed_roots, open_regular, read_capped
from clipdex.model import ClipModel, load_model
from clipdex.roots import RootError, absolute, local_root
from indexer import store
from clipdex.imaging import DecodeBudget, DecodeFailure, NotAnImage, decode
from indexer.metadata import read_embedded_metadata, resolve_capture_time
from indexer.sources import FileTask, SourceInfo, extension, get_source
from indexer.thumbnail import make_thumbnail

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "heic", "heif",
                              "hif", "avif", "bmp", "dib", "tif", "tiff"})
RAW_EXTENSIONS = frozenset({"dng", "cr2", "cr3", "nef", "nrw", "arw", "srf", "sr2", "orf", "rw2",
                            "raf", "pef", "srw", "x3f", "3fr", "iiq", "erf", "kdc", "mrw"})


class WrongModel(RuntimeError):
    """This worker runs another model than the run asked for: it must not write its vectors."""


@dataclass
class Prepared:
    """One file after the threaded stages."""

    task: FileTask
    size: int = 0
    mtime_ns: int = 0
    inode: int | None = None
    sha256: bytes | None = None
    info: SourceInfo | None = None
    known_id: int | None = None            # bytes already embedded with this model
    image: store.NewImage | None = None    # new bytes: everything but the embedding
    pixels: Any = None                     # preprocessed tensor for the model
    failure: tuple[str, str] | None = None  # (stage, reason)
    ignored: str | None = None             # not an image: why
    timings: dict[str, float] = field(default_factory=dict)


class Runtime:
    """What a process needs to index, built once: settings, database, model, threads.

    The model is loaded on the first batch that needs it, in the process that runs the batches
    (never in a Celery parent before it forks).
    """

    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        from psycopg_pool import ConnectionPool

        self.settings = settings
        self.database = database or open_database(settings)
        threads = settings.effective_decode_threads
        self.pool = ConnectionPool(
            self.database.url, min_size=1, max_size=threads + 1, open=True,
            kwargs={"autocommit": True}, configure=_register_vector,
            check=ConnectionPool.check_connection, name="clipdex-indexer")
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="clipdex-decode")
        self.decode_budget = DecodeBudget(settings.decode_memory)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._model: ClipModel | None = None
        self._model_id: int | None = None
        self._lock = threading.Lock()
        self.images_encoded = 0   # model work done by this process, for status and tests

    @property
    def model(self) -> ClipModel:
        with self._lock:
            if self._model is None:
                self._model = load_model(self.settings)
            return self._model

    def model_id(self, defer_index: bool = False) -> int:
        if self._model_id is None:
            model = self.model
            with self.pool.connection() as conn:
                self._model_id = store.register_model(conn, model.key, model.dim, model.describe(),
                                                      index=not defer_index,
                                                      lock_timeout=self.settings.lock_timeout)
        return self._model_id

    def close(self) -> None:
        self.threads.shutdown(wait=True)
        self.pool.close()


def _register_vector(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def _timed(timings: dict[str, float], stage: str, started: float) -> float:
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - started
    return now


def _describe(work: store.BatchWork, task: FileTask, root_path: Path, cache: dict) -> SourceInfo:
    try:
        return get_source(work.source).describe(task, root_path, cache)
    except Exception as exc:  # an export's own metadata must never cost us the photo
        log.warning("cannot read %s metadata for %r: %s", work.source, task.name, exc)
        return SourceInfo(album=task.album, source_meta={"source_error": str(exc)})


def _facts(info: SourceInfo, decoded=None, capture=None) -> store.ImageFacts:
    meta = decoded.inspected if decoded is not None else None
    extra = dict(info.image_extra)
    if meta is not None:
        extra.update(meta.extra)
        extra.update({k: v for k, v in (("lens", meta.lens_model), ("software", meta.software)) if v})
        if meta.screenshot:
            extra["screenshot"] = True
    gps_from_sidecar = info.latitude is not None
    latitude = info.latitude if gps_from_sidecar else (meta.latitude if meta else None)
    longitude = info.longitude if gps_from_sidecar else (meta.longitude if meta else None)
    if capture is None and info.sidecar_time is not None:
        capture = resolve_capture_time(None, sidecar_utc=info.sidecar_time)
    return store.ImageFacts(
        taken_at=capture.instant if capture else None,
        taken_at_source=capture.source if capture else None,
        utc_offset_minutes=capture.utc_offset_minutes if capture else None,
        latitude=latitude, longitude=longitude, gps_from_sidecar=gps_from_sidecar,
        camera_make=meta.camera_make if meta else None,
        camera_model=meta.camera_model if meta else None,
        description=info.description, favorite=info.favorite, extra=extra,
    )


def prepare(rt: Runtime, work: store.BatchWork, root_path: Path, task: FileTask, cache: dict,
            inside: Sequence[bytes] | None = None) -> Prepared:
    """The threaded part of the pipeline for one file. Never raises: any surprise becomes a
    failure of this file (a database error is re-raised: the whole batch must be retried)."""
    try:
        return _prepare(rt, work, root_path, task, cache, inside)
    except psycopg.Error:
        raise
    except Exception as exc:
        log.exception("unexpected error on %r", task.name)
        p = Prepared(task, size=task.size, mtime_ns=task.mtime_ns)
        p.failure = ("decode", f"unexpected error: {type(exc).__name__}: {exc}")
        return p


def read_file(path: bytes, max_bytes: int, inside: Sequence[bytes] | None = None
              ) -> tuple[tuple[bytes, os.stat_result] | None, tuple[str, str] | None]:
    """The file's bytes and stat, read once; or why not, as a failure (stage, reason).

    ``inside``: the resolved library roots the file must be in (None: follow links anywhere).
    A named pipe, a device or a link out of the library is refused without blocking or reading.
    """
    try:
        handle, st = open_regular(path, inside)
    except FileNotFoundError:
        return None, ("read", "file vanished before it was read")
    except FileRefused as exc:
        return None, ("read", str(exc))
    except OSError as exc:
        return None, ("read", f"cannot read: {exc.strerror or exc}")
    with handle:
        try:
            return (read_capped(handle, st, max_bytes), st), None
        except FileRefused as exc:
            return (b"", st), ("read", str(exc))
        except OSError as exc:
            return None, ("read", f"cannot read: {exc.strerror or exc}")


def _prepare(rt: Runtime, work: store.BatchWork, root_path: Path, task: FileTask, cache: dict,
             inside: Sequence[bytes] | None) -> Prepared:
    p = Prepared(task)
    t = time.perf_counter()
    settings = rt.settings
    read, p.failure = read_file(absolute(root_path, task.relpath), settings.max_file_bytes, inside)
    if read is None:
        p.size, p.mtime_ns = task.size, task.mtime_ns
        return p
    data, st = read
    p.size, p.mtime_ns, p.inode = st.st_size, st.st_mtime_ns, st.st_ino
    if p.failure:
        return p
    t = _timed(p.timings, "read", t)
    p.sha256 = hashlib.sha256(data).digest()
    if task.hints.get("md5") and hashlib.md5(data).hexdigest() != task.hints["md5"]:
        task.hints["hash_mismatch"] = True  # a QQ NT original whose bytes do not match its name
    t = _timed(p.timings, "hash", t)
    p.info = _describe(work, task, root_path, cache)
    with rt.pool.connection() as conn:
        known = store.lookup_image(conn, p.sha256, work.model_id)
    t = _timed(p.timings, "lookup", t)
    if known is not None and known[1]:
        p.known_id = known[0]
        return p
    if extension(task.name) in RAW_EXTENSIONS:
        p.failure = ("decode", f"unsupported format: camera RAW (.{extension(task.name)})")
        return p
    try:
        decoded, thumbnail, p.pixels = decode_for_model(data, rt.model, settings.max_pixels, p.timings,
                                                        rt.decode_budget)
    except NotAnImage as exc:
        if extension(task.name) in IMAGE_EXTENSIONS:
            # Named like a photo: the user expects it indexed, so say why it is not.
            p.failure = ("decode", f"named like an image but the content is {exc}")
        else:
            p.ignored = f"not an image: {exc}"
        return p
    except DecodeFailure as exc:
        p.failure = ("decode", str(exc))
        return p
    capture = resolve_capture_time(decoded.inspected, sidecar_utc=p.info.sidecar_time,
                                   filename=task.name, mtime_ns=p.mtime_ns)
    p.image = store.NewImage(
        sha256=p.sha256, format=decoded.format, width=decoded.width, height=decoded.height,
        exif_orientation=decoded.inspected.exif_orientation, byte_size=p.size,
        facts=_facts(p.info, decoded, capture), embedding=None, thumbnail=thumbnail)
    return p


def decode_for_model(data: bytes, model: ClipModel, max_pixels: int, timings: dict[str, float] | None = None,
                     budget: DecodeBudget | None = None):
    """The CPU work on a new image's bytes: decode (with its EXIF), thumbnail, the model's own
    preprocessing. Returns (decoded, thumbnail, pixels); raises NotAnImage or DecodeFailure."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    decoded = decode(data, min_side=max(model.image_size), max_pixels=max_pixels, inspect=read_embedded_metadata,
                     budget=budget)
    t = _timed(timings, "decode", t)
    thumbnail = make_thumbnail(decoded.image)
    t = _timed(timings, "thumbnail", t)
    try:
        pixels = model.preprocess(decoded.image)
    except Exception as exc:  # open_clip transforms on odd images
        raise DecodeFailure(f"cannot prepare pixels for the model: {exc}") from None
    _timed(timings, "preprocess", t)
    return decoded, thumbnail, pixels


def _embed(rt: Runtime, items: list[Prepared], outcome: store.BatchOutcome) -> list[Prepared]:
    """Runs the model on a group of prepared images; returns those that got a vector."""
    import torch

    if not items:
        return []
    started = time.perf_counter()
    try:
        vectors = rt.model.encode_images(torch.stack([p.pixels for p in items]))
    except Exception as exc:
        log.exception("model failed on a batch of %d images", len(items))
        for p in items:
            outcome.failures.append((p.task.relpath, "embed", f"model error: {exc}", p.size, p.mtime_ns))
        return []
    finally:
        _timed(outcome.timings, "model", started)
    rt.images_encoded += len(items)
    for p, vector in zip(items, vectors):
        p.image.embedding = vector
        p.pixels = None
    return items


def _location(p: Prepared, source: str) -> store.LocationRow:
    meta = dict(p.info.source_meta) if p.info else {}
    if p.task.hints.get("hash_mismatch"):
        meta["hash_mismatch"] = True
    return store.LocationRow(p.sha256, p.task.relpath, source, p.info.album if p.info else p.task.album,
                             p.size, p.mtime_ns, meta, p.inode)


def run_files(rt: Runtime, work: store.BatchWork, tasks: list[FileTask],
              on_file: Callable[[bool], None] | None = None) -> store.BatchOutcome:
    """Prepares every file on the thread pool and embeds new images in groups as they come."""
    outcome = store.BatchOutcome()
    registered = _registered_roots(rt)
    root_path = local_root(rt.settings, None, work.root, registered=registered)
    inside = allowed_roots(rt.settings, registered, root_path)
    cache: dict = {}
    window = 2 * rt.settings.batch_size + rt.settings.effective_decode_threads
    futures: list[Future] = []
    pending: list[Prepared] = []
    embedded: list[Prepared] = []
    seen_new: set[bytes] = set()
    task_iter = iter(tasks)

    def submit_next() -> None:
        task = next(task_iter, None)
        if task is not None:
            futures.append(rt.threads.submit(prepare, rt, work, root_path, task, cache, inside))

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
        if p.failure:
            outcome.failures.append((p.task.relpath, *p.failure, p.size or None, p.mtime_ns or None))
        elif p.ignored:
            outcome.ignored.append((p.task.relpath, p.size, p.mtime_ns, p.ignored))
        elif p.known_id is not None:
            outcome.known_ids[p.sha256] = p.known_id
            facts = _facts(p.info)
            if facts.taken_at or facts.latitude is not None or facts.description or facts.favorite or facts.extra:
                outcome.known_facts.append((p.known_id, facts))
            outcome.locations.append(_location(p, work.source))
        elif p.sha256 in seen_new:  # the same new bytes twice in one batch: one image, two places
            outcome.locations.append(_location(p, work.source))
        else:
            seen_new.add(p.sha256)
            pending.append(p)
            outcome.locations.append(_location(p, work.source))
            if len(pending) >= rt.settings.batch_size:
                embedded += _embed(rt, pending, outcome)
                pending = []
        if on_file is not None:
            on_file(p.failure is None and p.ignored is None)
    embedded += _embed(rt, pending, outcome)
    failed = {f[0] for f in outcome.failures}
    outcome.locations = [loc for loc in outcome.locations if loc.relpath not in failed]
    dropped = seen_new - {p.sha256 for p in embedded}
    outcome.locations = [loc for loc in outcome.locations if loc.sha256 not in dropped]
    outcome.new_images = [p.image for p in embedded]
    return outcome


def _registered_roots(rt: Runtime) -> dict:
    with rt.pool.connection() as conn:
        from clipdex.roots import known_roots

        return known_roots(conn)


def process_batch(rt: Runtime, run_id: int, batch_no: int,
                  on_file: Callable[[bool], None] | None = None) -> dict[str, Any] | None:
    """Indexes one batch and marks it done; a batch that is done (or failed for good) is left alone.

    ``on_file(is_image)`` is called as each file is handled (the local progress line).
    """
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
    except store.LockedOut as exc:
        with rt.pool.connection() as conn:
            store.batch_error(conn, run_id, batch_no, str(exc))
        raise
    tasks = [FileTask.from_json(item) for item in work.payload or []]
    started = time.perf_counter()
    try:
        outcome = run_files(rt, work, tasks, on_file)
    except RootError as exc:
        # The library is not mounted here: every file fails with the reason (none is lost; the
        # next run retries them).
        outcome = store.BatchOutcome(failures=[(t.relpath, "read", str(exc), t.size, t.mtime_ns) for t in tasks])
    outcome.timings["total"] = time.perf_counter() - started
    write_started = time.perf_counter()
    counts = _write(rt, work, outcome)
    if counts is None:
        return None
    outcome.timings["write"] = time.perf_counter() - write_started
    log.info("run %s batch %s: %s", run_id, batch_no, counts)
    # The batch that finishes a bulk load says so: its HNSW index is then built once.
    counts["build_index"] = work.model_id if counts.pop("finished_run") and work.defer_index else None
    return {**counts, "timings": outcome.timings}


WRITE_ATTEMPTS = 3


def _write(rt: Runtime, work: store.BatchWork, outcome: store.BatchOutcome) -> dict[str, int] | None:
    """Writes the batch in one transaction; None when another worker finished it meanwhile (a
    redelivered task). A deadlock with a concurrent run is tried again, a few times."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with rt.pool.connection() as conn:
                with conn.transaction():
                    if not store.claim_batch(conn, work.run_id, work.batch_no):
                        return None
                    return store.write_batch(conn, work, outcome, rt.worker_name)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            if attempt == WRITE_ATTEMPTS:
                raise
            log.warning("run %s batch %s: %s; writing again", work.run_id, work.batch_no, exc)
    return None


def stage_totals(results: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for result in results:
        for stage, seconds in result.get("timings", {}).items():
            totals[stage] += seconds
    return dict(totals)

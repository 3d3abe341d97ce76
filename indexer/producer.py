"""Plans an ingest run: walk the folder (stat only), let each source pick its files, leave out
what is already indexed, forget what was indexed under the folder and is gone from it, and store
the work as batches of a few hundred files.

The batches live in ``ingest_batches``: the database is the work list. ``clipdex enqueue`` then
sends one small Celery message per batch (run id, batch number); ``clipdex index`` runs the same
batches in-process. Nothing here opens a photo, so a million-file library is planned in minutes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import groupby, repeat
from dataclasses import dataclass, field
from pathlib import Path

from clipdex import archives, model_registry, tarballs
from clipdex.config import Settings
from clipdex.database import Database
from clipdex.files import allowed_roots
from clipdex.model import ModelSpec
from clipdex.roots import display_path
from indexer import store
from indexer.scan import ScannedFile, ScannedFolder, ScanProblem, TarLister, list_archives, walk
from clipdex.roots import known_roots
from clipdex.vocabulary import SOURCE_KINDS
from indexer.placement import Placement, place
from indexer.sources import FileTask, VirtualFolder, detect, get_source, path_components

log = logging.getLogger(__name__)


@dataclass
class SourceCount:
    path: str | None = None   # the shallowest folder of this source, relative to the root
    seen: int = 0
    unchanged: int = 0
    failed_before: int = 0   # failed in an earlier run and unchanged since: not queued
    skipped: int = 0
    queued: int = 0
    gone: int = 0        # indexed before, no longer on disk: forgotten
    vectors_only: int = 0   # of queued: known images that need only this model's vector


@dataclass
class RunPlan:
    run_id: int
    root: str
    batches: list[int]
    files: int
    sources: dict[str, SourceCount] = field(default_factory=dict)
    problems: int = 0
    defer_index: bool = False   # a bulk load: the model's HNSW index is built when it ends
    missing_kept: int = 0       # gone from disk, yet kept (CLIPDEX_FORGET_MISSING off, or nothing found)


def _components(path: Path) -> tuple[str, ...]:
    return tuple(p for p in path.parts if p != os.sep)


def group_folders(placement: Placement, source: str,
                  folders: list[ScannedFolder]) -> list[VirtualFolder]:
    """Groups scanned folders into each source's virtual folders (merging Takeout parts)."""
    root_components = _components(placement.root_path)
    groups: dict[tuple[str, tuple[str, ...]], VirtualFolder] = {}
    for folder in folders:
        components = root_components + path_components(folder.relpath)
        kind = source if source != "auto" else detect(components)
        key = get_source(kind).folder_key(components, len(root_components))
        group = groups.get((kind, key))
        if group is None:
            group = groups[(kind, key)] = VirtualFolder(kind, key, root_components)
        group.parts.append(folder)
    return list(groups.values())


def missing_files(located: list[tuple[bytes, str]], folders: list[ScannedFolder],
                  problems: list[tuple[bytes, str]]) -> list[tuple[bytes, str]]:
    """The stored (relpath, source) pairs the scan no longer found.

    A path under a folder the scan could not read (or the unreadable path itself) is not missing:
    nothing is known about it, and an unmounted or unreadable share must never empty the index.
    """
    by_folder: dict[bytes, list[tuple[bytes, bytes, str]]] = defaultdict(list)
    for relpath, kind in located:
        parent = archives.folder_of(relpath)
        by_folder[parent].append((relpath[len(parent):].lstrip(b"/"), relpath, kind))
    missing: list[tuple[bytes, str]] = []
    for folder in folders:
        stored = by_folder.pop(folder.relpath, None)
        if stored:
            names = {f.name for f in folder.files}
            missing.extend((relpath, kind) for name, relpath, kind in stored if name not in names)
    for stored in by_folder.values():   # folders the scan did not meet: deleted, or unreadable
        missing.extend((relpath, kind) for _name, relpath, kind in stored)
    blind = {p for p, _ in problems}
    blind_folders = tuple(p + b"/" for p in blind)
    return [(relpath, kind) for relpath, kind in missing
            if relpath not in blind and not relpath.startswith(blind_folders)]


def tar_lister(database: Database, root: str, listed: list[bytes]) -> TarLister:
    """Lists a tar part, from the database when it has not changed since it was last listed
    (listing a .tgz inflates all of it); appends each part's relpath to ``listed``."""
    def list_tar(relpath: bytes, handle, st) -> archives.Listing:
        listed.append(relpath)
        identity = (st.st_size, st.st_mtime_ns, st.st_ino)
        with database.connect(autocommit=True) as conn:
            kept = store.archive_listing(conn, root, relpath, *identity)
        if kept is not None:
            listing = tarballs.unpack_entries(kept[0])
            listing.damage = kept[1]
            return listing
        started = time.perf_counter()
        listing, texts = tarballs.list_tar(handle)
        log.info("listed %s: %d members in %.1f s", display_path(relpath), len(listing.entries),
                 time.perf_counter() - started)
        with database.connect(autocommit=True) as conn:
            store.save_archive_listing(conn, root, relpath, *identity, tarballs.pack_entries(listing),
                                       tarballs.pack_texts(texts), listing.damage)
        return listing
    return list_tar


def list_new_parts(database: Database, root: str, root_path: bytes, folders: list[ScannedFolder],
                   inside) -> None:
    """Lists the tar parts whose listing the database lacks (or holds for another version) on
    one process per core, before the scan takes them in order: a first run over a 47-part .tgz
    Takeout inflates its parts side by side, not one after the other. (Threads do not help:
    ``gzip`` takes the GIL back every 8 KiB.)"""
    parts = {folder.file_relpath(f.name): (f.size, f.mtime_ns, f.inode)
             for folder in folders for f in folder.files if archives.is_tar(f.name)}
    if len(parts) < 2:
        return
    with database.connect(autocommit=True) as conn:
        known = store.archive_identities(conn, root, list(parts))
    new = [relpath for relpath, identity in parts.items() if known.get(relpath) != identity]
    if len(new) < 2:
        return   # one part: the scan lists it in this process
    started = time.perf_counter()
    paths = [os.path.join(root_path, relpath) for relpath in new]
    # Spawned, not forked: a forked child inherits the parent's connections (kombu's after-fork
    # hook then blocked on the Celery broker's socket). A spawned one imports the caller's main
    # module again, which must keep its work under `if __name__ == "__main__"` (clipdex's
    # commands, Celery and pytest do); when the pool breaks, the scan lists the parts here.
    try:
        with ProcessPoolExecutor(min(len(new), os.cpu_count() or 1),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            for relpath, found in zip(new, pool.map(tarballs.list_tar_file, paths, repeat(inside))):
                if found is not None:
                    with database.connect(autocommit=True) as conn:
                        store.save_archive_listing(conn, root, relpath, *found[0], *found[1:])
    except (BrokenProcessPool, OSError) as exc:   # no processes to be had: the scan lists them here
        log.warning("cannot list archive parts in other processes (%s); listing them one by one", exc)
    log.info("listed %d archive parts in %.1f s", len(new), time.perf_counter() - started)


def in_batches(tasks: list[FileTask], size: int) -> list[list[FileTask]]:
    """Batches of ``size`` files; the members of a tar part go last, in the order they lie in it,
    in batches of their own, so a worker reads the part forward, once (clipdex/tarballs.py)."""
    parts = [(archives.tar_of(t.relpath), t) for t in tasks]
    loose = [t for part, t in parts if part is None]
    streamed = sorted(((part, t) for part, t in parts if part is not None), key=lambda p: (p[0], p[1].inode))
    batches = [loose[start:start + size] for start in range(0, len(loose), size)]
    for _part, group in groupby(streamed, key=lambda p: p[0]):
        members = [t for _, t in group]
        batches += [members[start:start + size] for start in range(0, len(members), size)]
    return batches


def plan_run(settings: Settings, database: Database, path: Path, *, source: str = "auto",
             mode: str = "local", retry_failed: bool = False) -> RunPlan:
    """Scans ``path`` and records a run with its batches; returns what was planned.

    A file that failed in an earlier run and has not changed since would fail again: it is left
    out (counted as failed before) unless ``retry_failed``.
    """
    if source != "auto" and source not in SOURCE_KINDS:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCE_KINDS)} or auto")
    model_key = ModelSpec.from_settings(settings).key()
    # One archive named on its own: its folder is placed, and only the archive is listed.
    archive_file = path.is_file() and archives.is_archive(os.fsencode(path.name))
    with database.transaction() as conn:
        placement = place(settings, conn, path.parent if archive_file else path)
        registered = known_roots(conn)
        model_id = model_registry.model_id(conn, model_key)
        indexed = store.indexed_files(conn, placement.root, model_id if model_id is not None else -1)
        without_vector = store.images_without_vector(conn, placement.root, model_id if model_id is not None else -1)
        failed = {} if retry_failed else store.failed_before(conn, placement.root)
        already = model_registry.embedded_images(conn, model_id)
        scanned = placement.relpath
        if archive_file:
            scanned = os.path.join(scanned, os.fsencode(path.name)) if scanned else os.fsencode(path.name)
        located = store.located_files(conn, placement.root, scanned)

    folders: list[ScannedFolder] = []
    problems: list[tuple[bytes, str]] = []
    inside = allowed_roots(settings, registered, placement.root_path)
    if archive_file:
        st = path.stat()
        folders.append(ScannedFolder(placement.relpath, [ScannedFile(os.fsencode(path.name), st.st_size,
                                                                     st.st_mtime_ns, st.st_ino)]))
    else:
        for item in walk(os.fsencode(placement.root_path), placement.relpath, inside):
            if isinstance(item, ScanProblem):
                problems.append((item.relpath, item.reason))
            else:
                folders.append(item)
    listed_tars: list[bytes] = []
    list_new_parts(database, placement.root, os.fsencode(placement.root_path), folders, inside)
    folders, unlisted = list_archives(os.fsencode(placement.root_path), folders, inside,
                                      tar_lister(database, placement.root, listed_tars))
    problems.extend((item.relpath, item.reason) for item in unlisted)

    counts: dict[str, SourceCount] = defaultdict(SourceCount)
    per_source: dict[str, list[FileTask]] = defaultdict(list)
    revectored: set[int] = set()   # each known image is read once, whatever its number of copies
    for folder in sorted(group_folders(placement, source, folders), key=lambda g: (g.source, g.key)):
        plan = get_source(folder.source).plan(folder)
        count = counts[folder.source]
        shallowest = min((part.relpath for part in folder.parts), key=len)
        if count.path is None or len(shallowest) < len(count.path.encode()):
            count.path = display_path(shallowest)
        count.seen += sum(len(part.files) for part in folder.parts)
        count.skipped += plan.skipped
        for task in plan.tasks:
            stored = without_vector.get(task.relpath)
            if store.unchanged(indexed.get(task.relpath), task.size, task.mtime_ns, task.inode):
                count.unchanged += 1
            elif stored is not None and store.unchanged(stored[:3], task.size, task.mtime_ns, task.inode):
                if stored[3] in revectored:   # another copy of the same bytes brings the vector
                    count.unchanged += 1
                    continue
                revectored.add(stored[3])
                task.indexed_image = stored[3]
                per_source[folder.source].append(task)
                count.queued += 1
                count.vectors_only += 1
            elif failed.get(task.relpath) == (task.size, task.mtime_ns):
                count.failed_before += 1
            else:
                per_source[folder.source].append(task)
                count.queued += 1

    batches: list[tuple[int, str, list]] = []
    for kind in sorted(per_source):
        for chunk in in_batches(per_source[kind], settings.task_files):
            batches.append((len(batches) + 1, kind, [t.to_json() for t in chunk]))

    gone = missing_files(located, folders, problems)
    forget = settings.forget_missing and any(folder.files for folder in folders)
    if gone and not forget:
        log.warning("%d indexed files are no longer under %s; kept (%s)", len(gone), placement.root_path,
                    "CLIPDEX_FORGET_MISSING is off" if not settings.forget_missing
                    else "the scan found no file at all: is the disk mounted?")
    if forget:
        for _relpath, kind in gone:
            counts[kind].gone += 1

    files = sum(len(b[2]) for b in batches)
    defer_index = files >= max(settings.defer_index_files, already)
    with database.connect() as conn, model_registry.waiting_at_most(conn, settings.lock_timeout,
                                                           f"cannot start a run for {path}"):
        run_id = store.create_run(conn, mode=mode, root=placement.root, path=scanned,
                                  source=source, model=model_key, defer_index=defer_index)
        if defer_index and model_id is not None:
            model_registry.drop_vector_index(conn, model_id)
        store.release_abandoned_images(conn, placement.root)
        store.forget_archive_listings(conn, placement.root, scanned, listed_tars)
        if forget and gone:
            # A file gone from one place whose size and time the scan met at another was moved
            # (its inode too within a disk; not across disks, where `mv` copies the file and keeps
            # its time): its image waits for the run to reach it there (no model work) instead of
            # leaving with its last location; the run's end lets go of what no file claimed.
            moved = {(t.size, t.mtime_ns) for tasks in per_source.values() for t in tasks}
            stored = {**{k: v[:2] for k, v in without_vector.items()}, **{k: v[:2] for k, v in indexed.items()}}
            held = [relpath for relpath, _ in gone if stored.get(relpath) in moved]
            store.forget_files(conn, placement.root, [relpath for relpath, _ in gone if stored.get(relpath)
                                                      not in moved])
            store.hold_images(conn, run_id, store.forget_files(conn, placement.root, held, keep_images=True))
        store.record_sources(conn, run_id, [(kind, c.path or "", c.seen, c.unchanged, c.skipped, c.queued,
                                             c.gone, c.failed_before) for kind, c in counts.items()])
        store.add_batches(conn, run_id, batches)
        store.record_scan_problems(conn, run_id, placement.root, problems)
    return RunPlan(run_id, placement.root, [b[0] for b in batches], files, dict(counts), len(problems),
                   defer_index, 0 if forget else len(gone))


def chains(batch_numbers: list[int], parts: dict[int, bytes | None]) -> list[list[int]]:
    """The batches as Celery messages: consecutive batches of one tar part form one chain (one
    worker reads the part forward once), every other batch is a chain of its own."""
    found: list[tuple[list[int], bytes | None]] = []
    for batch_no in sorted(batch_numbers):
        part = parts.get(batch_no)
        if part is not None and found and found[-1][1] == part and found[-1][0][-1] == batch_no - 1:
            found[-1][0].append(batch_no)
        else:
            found.append(([batch_no], part))
    return [numbers for numbers, _part in found]


def enqueue(settings: Settings, database: Database, run_id: int, batch_numbers: list[int]) -> int:
    """Sends one Celery message per batch, then marks the run enqueued. Returns messages sent."""
    from indexer.worker import make_celery, send_batches, send_index_build

    with database.connect() as conn:
        parts = store.batch_parts(conn, run_id, batch_numbers)
    app = make_celery(settings)
    send_batches(app, run_id, chains(batch_numbers, parts))
    with database.transaction() as conn:
        finished = store.mark_enqueued(conn, run_id)
        deferred = store.deferred_index_model(conn, run_id) if finished else None
    if deferred is not None:   # the workers finished before this call did: build the index now
        send_index_build(app, deferred)
    return len(batch_numbers)


def resume(settings: Settings, database: Database, run_id: int) -> int:
    """Sends again every batch of a run that is not done (after a broker lost its queue, or after
    the cause of a failed batch was fixed)."""
    with database.connect() as conn:
        if not store.run_exists(conn, run_id):
            raise ValueError(f"there is no run {run_id}")
        pending = store.pending_batches(conn, run_id)
    return enqueue(settings, database, run_id, pending)

"""``clipdex watch PATH…``: keeps the index of folders current.

Filesystem events (watchdog: inotify on Linux) mark the folders where something changed. A
folder is indexed again once nothing under it has changed for ``CLIPDEX_WATCH_SETTLE`` seconds
and the files the events named keep their size between two looks, so a photo still being copied
is read once, whole. Indexing a folder is the run ``clipdex index`` makes of it: a stat-only scan,
only new or changed files read. A moved or renamed file is bytes already known at a new place (a
new location, no model work) and its old place is forgotten; a deleted file is forgotten with the
rules ``clipdex index`` has (a folder that cannot be read, or a watched folder that vanished or
holds no file at all, as an unmounted share does, forgets nothing).

A whole scan every ``CLIPDEX_WATCH_RESCAN`` seconds catches what no event announced (network
shares often send none); the first one, at start, catches up with what changed while no watcher
ran. With a broker (``CLIPDEX_BROKER_URL``) the runs are queued for the Celery workers; without,
they run here, with the model loaded once. Each watcher keeps a row in ``watchers`` (what it
watches, a heartbeat, its last change and rescan) for ``clipdex status``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from clipdex.config import Settings
from clipdex.database import Database
from clipdex.roots import RootError
from indexer import store

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


@dataclass
class _Pending:
    """Changes seen under one folder, not yet settled."""

    last_event: float
    sizes: dict[str, int | None] = field(default_factory=dict)   # files the events named -> size seen


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Changes:
    """The folders where events say something changed, and when; fed by watchdog's thread and
    read by the watcher's loop."""

    def __init__(self, roots: list[str], settle: float, clock=time.monotonic) -> None:
        self.roots, self.settle, self.clock = roots, settle, clock
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    def dispatch(self, event) -> None:
        """watchdog's handler entry point: every event marks the folder holding its path (and, for
        a move, the folder it went to). A folder's own event marks its parent: the run over the
        parent covers the whole folder, whether it appeared, went or was renamed."""
        paths = [event.src_path, getattr(event, "dest_path", None) or None]
        now = self.clock()
        with self._lock:
            for path in filter(None, paths):
                path = os.fsdecode(path)
                folder = os.path.dirname(path)
                if not any(_within(folder, root) for root in self.roots):
                    folder = path    # the watched folder itself: its own run, not its parent's
                pending = self._pending.setdefault(folder, _Pending(now))
                pending.last_event = now
                if not event.is_directory:
                    pending.sizes[path] = _size(path)

    def due(self) -> list[str]:
        """The folders whose changes have settled (taken off the list), outermost only: a run
        over a folder covers its subfolders, so it also waits for every unsettled folder below
        it. A file whose size moved since its last event keeps its folder waiting."""
        now = self.clock()
        with self._lock:
            unsettled: list[str] = []
            for folder, pending in self._pending.items():
                if now - pending.last_event < self.settle:
                    unsettled.append(folder)
                    continue
                now_sizes = {path: _size(path) for path in pending.sizes}
                if now_sizes != pending.sizes:
                    pending.sizes = now_sizes
                    pending.last_event = now
                    unsettled.append(folder)
            ready = sorted(folder for folder in self._pending if folder not in unsettled
                           and not any(_within(other, folder) for other in unsettled))
            outermost: list[str] = []
            for folder in ready:
                if not any(_within(folder, kept) for kept in outermost):
                    outermost.append(folder)
            for folder in ready:
                del self._pending[folder]
        return outermost

    def waiting(self) -> int:
        with self._lock:
            return len(self._pending)


@dataclass
class WatchTotals:
    runs: int = 0          # runs that found something to do
    files: int = 0         # files they queued
    forgotten: int = 0     # locations they forgot
    last_change: float | None = None


class Watcher:
    """Watches ``paths`` until ``stop`` is set: events, settled folders indexed, periodic rescans."""

    def __init__(self, settings: Settings, database: Database, paths: list[Path], *,
                 out: TextIO | None = sys.stderr, clock=time.monotonic) -> None:
        self.settings, self.database, self.out, self.clock = settings, database, out, clock
        self.paths = [Path(os.path.abspath(p)) for p in paths]
        self.changes = Changes([str(p) for p in self.paths], settings.watch_settle, clock)
        self.totals = WatchTotals()
        self.celery = bool(settings.broker_url)
        self._runtime = None
        self._ocr = None
        self._watcher_id: int | None = None
        self._next_rescan = 0.0
        self._first_scan = True
        self.caught_up = threading.Event()   # set once the start-up rescan is done

    # --- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> WatchTotals:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        handler = FileSystemEventHandler()
        handler.dispatch = self.changes.dispatch
        observer = Observer()
        for path in self.paths:
            try:
                observer.schedule(handler, str(path), recursive=True)
            except OSError as exc:   # not mounted yet, or out of inotify watches: rescans still run
                log.warning("no filesystem events for %s (%s); relying on rescans every %gs",
                            path, exc.strerror or exc, self.settings.watch_rescan)
        observer.start()
        try:
            self._register()
            self.rescan()
            self.caught_up.set()
            beat = self.clock()
            while not stop.wait(min(0.25, self.settings.watch_settle / 2)):
                for folder in self.changes.due():
                    self.index(Path(folder))
                now = self.clock()
                if now >= self._next_rescan:
                    self.rescan()
                if now - beat >= HEARTBEAT_SECONDS:
                    beat = now
                    self._note()
                self._show()
        finally:
            observer.stop()
            observer.join(timeout=5)
            self._unregister()
            if self._runtime is not None:
                self._runtime.close()
            if self.out is not None:
                self.out.write("\n")
        return self.totals

    def rescan(self) -> None:
        """Every watched folder, whole."""
        for path in self.paths:
            self.index(path)
        self._first_scan = False
        self._next_rescan = self.clock() + self.settings.watch_rescan
        self._note(last_rescan=True)

    def index(self, folder: Path) -> None:
        """One run over ``folder`` (or its nearest ancestor still there, inside a watched path)."""
        target = self._existing(folder)
        if target is None:
            log.warning("%s is gone or not mounted; nothing forgotten, waiting for it", folder)
            return
        try:
            plan = self._plan_and_run(target)
        except RootError as exc:
            log.warning("cannot index %s now: %s", target, exc)
            return
        except Exception:   # one folder's run must not end the watch; the next rescan retries
            log.exception("run over %s failed", target)
            return
        forgotten = sum(c.gone for c in plan.sources.values())
        # A run that changed nothing leaves no row behind (a rescan every 15 minutes would bury
        # the runs that did); what the scan could not read is kept from the watcher's first scan.
        if not plan.files and not forgotten and not (plan.problems and self._first_scan):
            with self.database.connect(autocommit=True) as conn:
                store.delete_run(conn, plan.run_id)
            return
        self.totals.runs += 1
        self.totals.files += plan.files
        self.totals.forgotten += forgotten
        self.totals.last_change = self.clock()
        self._note(run_files=plan.files)

    def _plan_and_run(self, folder: Path):
        from indexer.producer import enqueue, plan_run

        if self.celery:
            plan = plan_run(self.settings, self.database, folder, mode="celery")
            enqueue(self.settings, self.database, plan.run_id, plan.batches)
            return plan
        from indexer.in_process import index_planned
        from indexer.runtime import Runtime

        plan = plan_run(self.settings, self.database, folder, mode="local")
        if self._runtime is None:   # the model loads with the first batch, then stays
            self._runtime = Runtime(self.settings, self.database)
        index_planned(self.settings, self.database, plan, out=None, runtime=self._runtime)
        if self.settings.ocr and plan.files:
            self._read_texts(plan)
        return plan

    def _read_texts(self, plan) -> None:
        """The OCR pass over the run's photos, as `clipdex index` makes it (Celery workers hand
        theirs to the OCR queue themselves)."""
        from clipdex.roots import known_roots
        from indexer.ocr import OcrEngine
        from indexer.ocr_run import Scope, read_texts

        if self._ocr is None:
            self._ocr = OcrEngine(device=self.settings.device)
        with self.database.connect(autocommit=True) as conn:
            path = conn.execute("SELECT path FROM ingest_runs WHERE id = %s", (plan.run_id,)).fetchone()[0]
            read_texts(self.settings, conn, self._ocr, known_roots(conn), Scope(plan.root, os.fsencode(path)),
                       run_id=plan.run_id, out=None)

    def _existing(self, folder: Path) -> Path | None:
        """``folder`` or its nearest existing ancestor, without leaving the watched path it is in;
        None when the watched path itself is gone (unmounted: nothing may be forgotten)."""
        watched = next((p for p in self.paths if folder == p or p in folder.parents), None)
        if watched is None:
            return None
        while not folder.is_dir():
            if folder == watched:
                return None
            folder = folder.parent
        return folder

    # --- what others see ---------------------------------------------------------------------

    def _register(self) -> None:
        with self.database.connect(autocommit=True) as conn:
            self._watcher_id = store.register_watcher(conn, socket.gethostname(), os.getpid(),
                                                      [str(p) for p in self.paths],
                                                      "celery" if self.celery else "local")

    def _note(self, *, last_rescan: bool = False, run_files: int | None = None) -> None:
        if self._watcher_id is None:
            return
        try:
            with self.database.connect(autocommit=True) as conn:
                store.note_watcher(conn, self._watcher_id, last_rescan=last_rescan, run_files=run_files)
        except Exception as exc:   # the database away for a moment: the next heartbeat says it
            log.warning("cannot update the watcher's row: %s", exc)

    def _unregister(self) -> None:
        if self._watcher_id is None:
            return
        try:
            with self.database.connect(autocommit=True) as conn:
                store.stop_watcher(conn, self._watcher_id)
        except Exception as exc:
            log.warning("cannot mark the watcher stopped: %s", exc)

    def _show(self) -> None:
        if self.out is None:
            return
        waiting = self.changes.waiting()
        last = ("no change yet" if self.totals.last_change is None
                else f"last change {int(self.clock() - self.totals.last_change)}s ago")
        line = (f"\rwatching {len(self.paths)} folder{'s' if len(self.paths) != 1 else ''} · {last} · "
                f"{self.totals.files} files indexed, {self.totals.forgotten} forgotten · "
                f"{waiting} folder{'s' if waiting != 1 else ''} settling · "
                f"rescan in {max(0, int(self._next_rescan - self.clock()))}s ")
        self.out.write(line)
        self.out.flush()

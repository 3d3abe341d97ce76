"""What a process needs to index, built once: settings, a database pool, decode threads, the decode
budget and the model.

The model is loaded on the first batch that needs it, in the process that runs the batches (never
in a Celery parent before it forks).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from clipdex import model_registry, tarballs
from clipdex.config import Settings
from clipdex.database import Database, open_database
from clipdex.imaging import DecodeBudget
from clipdex.model import ClipModel, load_model
from clipdex.roots import known_roots
from indexer import store
from indexer.device_decode import DeviceDecoder

_TEXTS_KEPT = 4
SWITCH_INTERVAL = 0.0005   # seconds a thread may hold the GIL while another waits (Python's default: 0.005)


class Runtime:
    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        from psycopg_pool import ConnectionPool

        self.settings = settings
        # A decode thread whose C code let the GIL go must win it back from threads running
        # Python; at the default 5 ms a turn that wait, many times a photo, was the indexer's
        # limit on many cores (bench/gil.py: two threads decoding 12 MP photos beside a thread
        # running Python). Set while this runtime is open, as an indexing process runs nothing else.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.database = database or open_database(settings, repair_indexes=False)
        threads = settings.effective_decode_threads
        self.pool = ConnectionPool(
            self.database.url, min_size=1, max_size=threads + 2, open=True,   # + the main and writer threads
            kwargs={"autocommit": True}, configure=_register_vector,
            check=_check_unless_just_used, reset=_note_return, name="clipdex-indexer")
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="clipdex-decode")
        self.decode_budget = DecodeBudget(settings.decode_memory)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self._model: ClipModel | None = None
        self._model_id: int | None = None
        self._lock = threading.Lock()
        self._registering = threading.Lock()
        self.images_encoded = 0   # model work done by this process, for status and tests
        self.device_decoded = self.device_refused = 0   # JPEGs the device decoded / left to Pillow
        self.stream_reader = ThreadPoolExecutor(1, thread_name_prefix="clipdex-tar")   # tar members, in order
        self.stream_slots = threading.Semaphore(2 * threads + 2)   # tar members read, not yet prepared
        self._texts: OrderedDict[tuple, dict[bytes, bytes]] = OrderedDict()
        self._device_decoder: DeviceDecoder | None | bool = False   # False: not decided yet
        self._staging = threading.local()     # per thread: a Celery worker runs two batches at once
        self.tar_turn = threading.Lock()      # one batch of tar members at a time (indexer/batch.py)

    @property
    def model(self) -> ClipModel:
        with self._lock:
            if self._model is None:
                self._model = load_model(self.settings)
            return self._model

    @property
    def device_decoder(self) -> DeviceDecoder | None:
        """The JPEG decoder of the model's device when CLIPDEX_GPU_DECODE asks for one (None:
        Pillow decodes every file on the decode threads)."""
        if self._device_decoder is False:
            model, wanted = self.model, self.settings.gpu_decode
            on = wanted == "on" or (wanted == "auto" and model.device.startswith("cuda"))
            self._device_decoder = DeviceDecoder.for_model(model) if on else None
        return self._device_decoder

    def staging(self, rows: int, shape: tuple[int, ...]):
        """A page-locked host buffer for a group's pixels, which CUDA copies without blocking the
        host. Each thread has two that take turns: a group lands before the group after next is
        launched, so the buffer a queued copy may still read is never the one written
        (indexer/embed.py)."""
        import torch

        mine = self._staging
        if not hasattr(mine, "buffers"):
            mine.buffers, mine.turn = [None, None], 0
        mine.turn ^= 1
        buffer = mine.buffers[mine.turn]
        if buffer is None or buffer.shape[0] < rows or tuple(buffer.shape[1:]) != shape:
            buffer = torch.empty((max(rows, self.settings.batch_size), *shape), pin_memory=True)
            mine.buffers[mine.turn] = buffer
        return buffer[:rows]

    def model_id(self, defer_index: bool = False) -> int:
        """The model's id in the database, registered (with its HNSW index unless a bulk load
        defers it) on first use."""
        with self._registering:   # a Celery worker's two threads register it once
            if self._model_id is None:
                model = self.model
                with self.pool.connection() as conn:
                    self._model_id = model_registry.register_model(
                        conn, model.key, model.dim, model.describe(), index=not defer_index,
                        lock_timeout=self.settings.lock_timeout)
            return self._model_id

    def archive_texts(self, root: str, part: bytes) -> dict[bytes, bytes]:
        """The small JSON members of a listed tar part (member name -> bytes); the last few parts
        stay in memory, as a worker reads one part batch after batch (until it is listed again)."""
        with self.pool.connection() as conn:
            key = (root, part, store.archive_listed_at(conn, root, part))
            with self._lock:
                if key in self._texts:
                    self._texts.move_to_end(key)
                    return self._texts[key]
            packed = store.archive_texts(conn, root, part)
        texts = tarballs.unpack_texts(packed) if packed else {}
        with self._lock:
            self._texts[key] = texts
            while len(self._texts) > _TEXTS_KEPT:
                self._texts.popitem(last=False)
        return texts

    def registered_roots(self) -> dict[str, Path]:
        with self.pool.connection() as conn:
            return known_roots(conn)

    def close(self) -> None:
        self.threads.shutdown(wait=True)
        self.stream_reader.shutdown(wait=True)
        self.pool.close()
        sys.setswitchinterval(self._switch_interval)


# A connection back in the pool within this many seconds is handed out again without a round
# trip to the server: each file's lookup takes one from the pool, and the check's empty query was
# a tenth of the Python that a file costs with its GIL held (bench/gil.py), the part that bounds
# one process's files/s on a many-core GPU machine (BENCHMARKS.md §15). A connection idle longer
# (a worker waiting for work while the server restarts) is still checked.
RECENT_SECONDS = 1.0


def _note_return(conn: psycopg.Connection) -> None:
    conn._clipdex_returned_at = time.monotonic()


def _check_unless_just_used(conn: psycopg.Connection) -> None:
    from psycopg_pool import ConnectionPool

    if time.monotonic() - getattr(conn, "_clipdex_returned_at", float("-inf")) > RECENT_SECONDS or conn.broken:
        ConnectionPool.check_connection(conn)


def _register_vector(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)

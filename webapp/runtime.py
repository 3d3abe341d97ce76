"""Per-process resources of the web app: a database pool, the search service (and its model),
the decode budget; built on first use, in the process that serves requests."""

from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager
from functools import cached_property
from typing import Iterator

import psycopg
from flask import current_app

from clipdex.config import Settings
from clipdex.database import Database, DatabaseError, open_database
from clipdex.imaging import DecodeBudget
from clipdex.model import LazyModel
from clipdex.search import SearchService
from webapp.uploads import UploadStore


# How long a request waits for a database connection: after a restart or a network cut the
# page says so within seconds (503) instead of hanging, and recovers when the server is back.
CONNECTION_WAIT_SECONDS = 5


class AppRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._database: Database | None = None
        self._pool = None
        self._lock = threading.Lock()
        # Uploaded query images and previews share one budget of decoded pixels per process.
        self.decode_budget = DecodeBudget(settings.decode_memory)
        self.uploads = UploadStore(max_bytes=max(64 << 20, 2 * settings.upload_max_bytes))
        self.model = LazyModel(settings)   # torch is imported when a search first needs it
        self._model_state = "not loaded"

    @property
    def database(self) -> Database:
        self._start()
        return self._database

    def _start(self) -> None:
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool
                from pgvector.psycopg import register_vector

                self._database = open_database(self.settings, repair_indexes=False)
                if not self.settings.model_named and not self.model.loaded:
                    # Searches use the library's default model: preload that one, not the built-in default.
                    from clipdex.model_registry import follow_library

                    with self._database.connect() as conn:
                        self.settings = follow_library(self.settings, conn)
                    self.model = LazyModel(self.settings)
                self._pool = ConnectionPool(
                    self._database.url, min_size=1, max_size=16, open=True, name="clipdex-web",
                    kwargs={"autocommit": True, "connect_timeout": CONNECTION_WAIT_SECONDS},
                    configure=register_vector, check=ConnectionPool.check_connection,
                    timeout=CONNECTION_WAIT_SECONDS, reconnect_timeout=0)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        from psycopg_pool import PoolTimeout

        self._start()
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self._pool.connection())
            except PoolTimeout:
                raise DatabaseError("The database is not answering right now; try again in a moment.") from None
            yield conn

    def preload_model(self) -> None:
        """Loads the model in the background (`clipdex serve` calls it at start), so the first search
        does not wait for it silently; /healthz tells the page how it goes."""
        def load() -> None:
            try:
                self._start()
                self.model.load()
                self._model_state = "ready"
            except Exception as exc:   # the first search will say why, as any search would
                self._model_state = f"failed: {exc}"

        self._model_state = "loading"
        threading.Thread(target=load, name="clipdex-model-preload", daemon=True).start()

    @property
    def model_state(self) -> str:
        """'ready', 'loading', 'failed: …', or 'not loaded' (loaded by the first search that needs it)."""
        if self._model_state in ("not loaded", "loading") and self.model.loaded:
            return "ready"
        return self._model_state

    @cached_property
    def search(self) -> SearchService:
        """The search service every page and API endpoint calls (one model per process)."""
        database = self.database   # first: it settles which model the library searches with
        return SearchService(self.settings, database, model=self.model, decode_budget=self.decode_budget)


def runtime() -> AppRuntime:
    return current_app.extensions["clipdex"]

"""Per-process resources of the web app: a database pool and the model, both built on first use."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import psycopg
from flask import current_app

from clipdex.config import Settings
from clipdex.database import Database, open_database


class AppRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._database: Database | None = None
        self._pool = None
        self._lock = threading.Lock()

    @property
    def database(self) -> Database:
        self._start()
        return self._database

    def _start(self) -> None:
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool
                from pgvector.psycopg import register_vector

                self._database = open_database(self.settings)
                self._pool = ConnectionPool(
                    self._database.url, min_size=1, max_size=16, open=True, name="clipdex-web",
                    kwargs={"autocommit": True}, configure=register_vector,
                    check=ConnectionPool.check_connection)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        self._start()
        with self._pool.connection() as conn:
            yield conn

    def model(self):
        from clipdex.model import load_model

        return load_model(self.settings)

    @property
    def model_key(self) -> str:
        from clipdex.model import ModelSpec

        return ModelSpec.from_settings(self.settings).key()


def runtime() -> AppRuntime:
    return current_app.extensions["clipdex"]

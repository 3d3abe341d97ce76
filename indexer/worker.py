"""The Celery side of indexing: an app made from Settings, its tasks, and the worker.

Run one worker process per GPU with ``clipdex worker``: it consumes the ``embed`` queue on two
threads of one process (Celery's threads pool), so the model lives in the process that runs the
batches (CUDA must not be initialised in a parent that forks children), is loaded lazily on the
first task, and one batch is written while the other runs on the model. Each batch written sends
the ids of its photos to the ``ocr`` queue, which ``clipdex worker --queues ocr`` consumes on
as many CPU machines as needed (``--queues embed,ocr`` does both). Nothing here runs at
import: the app exists once ``make_celery(settings)`` is called (``indexer.celery_app`` does it
from the environment for Celery's own command line, e.g. Flower).
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from celery.signals import worker_shutdown

from clipdex.config import Settings

QUEUE = "embed"
OCR_QUEUE = "ocr"           # reading text: CPU work, so its workers scale apart from the GPU ones
EMBED_TASK = "clipdex.embed_batch"
INDEX_TASK = "clipdex.build_vector_index"
OCR_TASK = "clipdex.read_texts"
GROUP_TASK = "clipdex.group_lookalikes"
log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for long, idempotent batches that must survive a killed worker."""
    app = Celery("clipdex", broker=settings.broker_url or "redis://127.0.0.1:6379/0")
    restore_every = max(1, min(10, settings.task_timeout // 10))
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,               # ack after the batch is written, not when received
        task_reject_on_worker_lost=True,   # a killed worker's batch goes back to the queue
        worker_prefetch_multiplier=1,      # a worker holds one batch per thread
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis: an unacknowledged batch returns to the queue after this many seconds.
            "visibility_timeout": settings.task_timeout,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
    )
    app.conf.clipdex_settings = settings
    _register_tasks(app)
    return app


def send_batches(app: Celery, run_id: int, chains: list[list[int]]) -> None:
    """One small message per chain of batches: the run id and batch numbers, never the files
    themselves. A chain is one batch, or the batches of one tar part, which a single worker
    reads forward in one go (clipdex/tarballs.py)."""
    with app.connection_for_write() as connection:
        for first, *then in chains:
            send_chain(app, run_id, first, then, connection=connection)


def send_chain(app: Celery, run_id: int, first: int, then: list[int], **options) -> None:
    app.send_task(EMBED_TASK, args=(run_id, first), kwargs={"then": then} if then else {}, queue=QUEUE, **options)


def send_index_build(app: Celery, model_id: int) -> None:
    app.send_task(INDEX_TASK, args=(model_id,), queue=QUEUE)


def send_lookalike_grouping(app: Celery) -> None:
    """A finished run's new photos, into look-alike groups (one pass over whatever is ungrouped)."""
    app.send_task(GROUP_TASK, queue=QUEUE)


def send_text_reading(app: Celery, run_id: int, image_ids: list[int]) -> None:
    """The photos a batch wrote, for an OCR worker (ids only; photos already read are skipped)."""
    app.send_task(OCR_TASK, args=(run_id, image_ids), queue=OCR_QUEUE)


EMBED_LANES = 2   # batches an embed worker holds: one is written while the other runs on the model


def worker_argv(celery_args: tuple[str, ...] = (), queues: str = QUEUE) -> list[str]:
    """The queues (embed, ocr or both) and a pool that never forks (the model stays in this
    process: CUDA must not be initialised in a parent that forks). An embed worker runs two
    batches on two threads, so the device does not wait while a batch is written; a worker that
    also reads text keeps one task at a time (its OCR engine reads one photo at a time). Then
    the caller's Celery options."""
    if queues == QUEUE:
        return ["worker", "-Q", queues, "--pool", "threads", "--concurrency", str(EMBED_LANES), *celery_args]
    return ["worker", "-Q", queues, "--pool", "solo", "--concurrency", "1", *celery_args]


def run_worker(settings: Settings, celery_args: tuple[str, ...] = (), queues: str = QUEUE) -> None:
    """A worker in this process, on an app made from these settings."""
    make_celery(settings).worker_main(worker_argv(celery_args, queues))


_runtime = None
_runtime_lock = threading.Lock()


def _worker_runtime(settings: Settings):
    """The process's indexing runtime (database pool, threads, model), built on the first task;
    the worker's threads share it."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from indexer.runtime import Runtime

            if not settings.model_named:   # `celery -A indexer.celery_app worker` with CLIPDEX_MODEL unset
                from clipdex.database import open_database
                from clipdex.model_registry import follow_library

                with open_database(settings, repair_indexes=False).connect() as conn:
                    settings = follow_library(settings, conn)
            _runtime = Runtime(settings)
        return _runtime


_ocr = None


def _ocr_engine(settings: Settings):
    """The process's OCR engine, loaded on the first photo it reads."""
    global _ocr
    if _ocr is None:
        from indexer.ocr import OcrEngine

        _ocr = OcrEngine(device=settings.device)
    return _ocr


@worker_shutdown.connect
def _close_runtime(**_kwargs) -> None:
    if _runtime is not None:
        _runtime.close()


def _register_tasks(app: Celery) -> None:
    import psycopg

    from clipdex.database import DatabaseError

    class BatchTask(app.Task):
        """A batch whose task fails for good (not a database outage, which is retried) is marked
        failed with the error: `clipdex status` shows it and the run can finish."""

        def on_failure(self, exc, task_id, args, kwargs, einfo):
            run_id, batch_no = args
            _mark_failed(run_id, batch_no, exc)
            then = list(kwargs.get("then") or [])
            if then:   # the rest of the part's chain still needs a worker
                send_chain(app, run_id, then[0], then[1:])

    def _mark_failed(run_id: int, batch_no: int, exc: BaseException) -> None:
        from clipdex.database import open_database
        from indexer import store

        try:
            with open_database(app.conf.clipdex_settings, repair_indexes=False).connect(autocommit=True) as conn:
                if store.fail_batch(conn, run_id, batch_no, f"{type(exc).__name__}: {exc}").finished_run:
                    model_id = store.deferred_index_model(conn, run_id)
                    if model_id is not None:
                        send_index_build(app, model_id)
                    send_lookalike_grouping(app)
        except Exception:
            log.exception("cannot mark run %s batch %s as failed", run_id, batch_no)

    # The database going away (restart, network) is waited out: the batch is retried with backoff
    # until it can be written. Nothing was written before the error, so a retry is safe.
    @app.task(name=EMBED_TASK, bind=True, base=BatchTask,
              autoretry_for=(psycopg.OperationalError, DatabaseError),
              retry_backoff=True, retry_backoff_max=30, retry_jitter=False, max_retries=None)
    def embed_batch(self, run_id: int, batch_no: int, then: list[int] = ()) -> dict | None:
        """Indexes one stored batch, then the batches ``then`` of the same tar part while the part's
        stream is open. Safe to run twice: a batch that is done is skipped. Past half the broker's
        visibility timeout, the rest of the chain goes back to the queue as a message of its own."""
        started = time.monotonic()
        result = _embed_one(run_id, batch_no)
        for at, following in enumerate(then):
            if time.monotonic() - started > app.conf.clipdex_settings.task_timeout / 2:
                send_chain(app, run_id, following, list(then[at + 1:]))
                break
            try:
                _embed_one(run_id, following)
            except (psycopg.OperationalError, DatabaseError):
                raise   # retried whole: the batches done are skipped
            except Exception as exc:
                log.exception("run %s batch %s failed", run_id, following)
                _mark_failed(run_id, following, exc)
        return result

    def _embed_one(run_id: int, batch_no: int) -> dict | None:
        from indexer.batch import process_batch

        settings = app.conf.clipdex_settings
        result = process_batch(_worker_runtime(settings), run_id, batch_no)
        if result is not None:
            result.pop("timings", None)
            image_ids = result.pop("image_ids", [])
            if settings.ocr and image_ids:
                send_text_reading(app, run_id, image_ids)
            if result["build_index"] is not None:
                send_index_build(app, result["build_index"])
            if result["group_lookalikes"]:
                send_lookalike_grouping(app)
        return result

    @app.task(name=OCR_TASK, autoretry_for=(psycopg.OperationalError, DatabaseError),
              retry_backoff=True, retry_backoff_max=30, max_retries=None)
    def read_texts(run_id: int, image_ids: list[int]) -> dict:
        """Reads the text of these photos (those not read yet); a photo that cannot be read is a
        failure of stage 'ocr' in the run's list. Safe to run twice: rows are per (photo, engine)."""
        from clipdex.database import open_database
        from clipdex.roots import known_roots
        from indexer.ocr_run import Scope, read_texts as read

        settings = app.conf.clipdex_settings
        with open_database(settings, repair_indexes=False).connect(autocommit=True) as conn:
            summary = read(settings, conn, _ocr_engine(settings), known_roots(conn), Scope(image_ids=tuple(image_ids)),
                           run_id=run_id, out=None)
        return {"read": summary.read, "with_text": summary.with_text, "failed": summary.failed}

    @app.task(name=GROUP_TASK, autoretry_for=(psycopg.OperationalError, DatabaseError),
              retry_backoff=True, retry_backoff_max=30, max_retries=None)
    def group_lookalikes() -> int:
        """Puts every photo not yet grouped in its look-alike group (safe to run twice, or
        beside another pass: one waits for the other, then finds nothing left)."""
        from clipdex.database import open_database
        from indexer.lookalikes import group_new_images

        settings = app.conf.clipdex_settings
        with open_database(settings, repair_indexes=False).connect(autocommit=True) as conn:
            return group_new_images(conn)

    @app.task(name=INDEX_TASK, autoretry_for=(psycopg.OperationalError, DatabaseError),
              retry_backoff=True, retry_backoff_max=30, max_retries=None)
    def build_vector_index(model_id: int) -> str:
        """Builds a model's HNSW index after a bulk load (idempotent: IF NOT EXISTS)."""
        from clipdex import model_registry
        from clipdex.database import open_database

        settings = app.conf.clipdex_settings
        with open_database(settings, repair_indexes=False).connect(autocommit=True) as conn:
            return model_registry.build_vector_index(conn, model_id, settings.lock_timeout, settings.cells_from)

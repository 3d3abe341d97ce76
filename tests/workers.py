"""Real Celery worker processes (`clipdex worker`) for tests, and waiting on the database for a run
to finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg

from clipdex.config import Settings


def start_worker(settings: Settings, name: str, log_dir: Path, extra_env: dict[str, str] | None = None,
                 queues: str = "embed") -> subprocess.Popen:
    env = settings.child_environ()
    env.update(extra_env or {})
    log = open(log_dir / f"worker-{name}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "clipdex.cli", "worker", "--queues", queues, "-n", f"{name}@%h", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_ready(settings: Settings, names: list[str], timeout: float = 120) -> None:
    """Until every named worker answers a ping through the broker (it consumes from then on)."""
    from indexer.worker import make_celery

    control = make_celery(settings).control
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answered = {name.split("@")[0] for reply in control.ping(timeout=1.0) or [] for name in reply}
        if set(names) <= answered:
            return
    raise AssertionError(f"workers {names} did not come up within {timeout:.0f} s")


@contextmanager
def workers(settings: Settings, names_env: dict[str, dict[str, str]], log_dir: Path):
    procs = {name: start_worker(settings, name, log_dir, env) for name, env in names_env.items()}
    try:
        wait_ready(settings, list(procs))
        yield procs
    finally:
        for proc in procs.values():
            stop_worker(proc)


def wait_for(predicate, timeout: float, what: str, procs=None, log_dir: Path | None = None):
    """Polls ``predicate`` (a database query) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    logs = ""
    if log_dir is not None:
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(log_dir.glob("worker-*.log")))
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def run_finished(url: str, run_id: int):
    def check():
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT finished_at FROM ingest_runs WHERE id = %s", (run_id,)).fetchone()[0]
    return check

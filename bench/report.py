"""Shared by the benchmarks: machine facts, timing helpers and the result table.

Every benchmark prints the same kind of table (figure, clipdex, baseline, ratio) after the facts
of the machine it ran on, and can write the same rows as JSON for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator


def machine_facts() -> dict[str, str]:
    facts = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpus": str(os.cpu_count()),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "python": platform.python_version(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        facts["gpu"] = "unknown"
    try:
        import PIL

        facts["pillow"] = PIL.__version__
    except ImportError:
        pass
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def server_versions(conn) -> dict[str, str]:
    return {
        "postgresql": conn.execute("SHOW server_version").fetchone()[0],
        "pgvector": conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0],
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(fn: Callable[[], object], repeat: int = 1) -> list[float]:
    """Wall-clock seconds of each call."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def peak_rss_mib(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


@dataclass
class Row:
    figure: str
    clipdex: float | str
    baseline: float | str | None = None
    unit: str = ""
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> str:
        if not isinstance(self.clipdex, (int, float)) or not isinstance(self.baseline, (int, float)):
            return ""
        if self.baseline == 0 or self.clipdex == 0:
            return ""
        value = self.clipdex / self.baseline if self.higher_is_better else self.baseline / self.clipdex
        return f"{value:.1f}×"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


@dataclass
class Report:
    title: str
    baseline_name: str
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=machine_facts)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def text(self) -> str:
        lines = [f"# {self.title}", ""]
        lines += [f"- {k}: {v}" for k, v in self.facts.items()]
        lines += ["", f"| figure | clipdex | {self.baseline_name} | ratio | note |", "|---|---:|---:|---:|---|"]
        for r in self.rows:
            unit = f" {r.unit}" if r.unit else ""
            baseline = f"{_fmt(r.baseline)}{unit}" if r.baseline is not None else ""
            lines.append(f"| {r.figure} | {_fmt(r.clipdex)}{unit} | {baseline} | {r.ratio} | {r.note} |")
        return "\n".join(lines)

    def emit(self, json_path: str | None = None) -> None:
        print(self.text(), flush=True)
        self.save(json_path)

    def save(self, json_path: str | None) -> None:
        if json_path:
            Path(json_path).write_text(json.dumps({
                "title": self.title, "facts": self.facts, "baseline": self.baseline_name,
                "rows": [{**r.__dict__, "ratio": r.ratio} for r in self.rows]}, indent=2))


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def fresh_database(base_url: str, name: str) -> str:
    """A new database next to the embedded server's own, with clipdex's migrations applied."""
    import psycopg

    from clipdex import database, embedded_postgres

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base_url.replace(f"/{embedded_postgres.DATABASE_NAME}?", f"/{name}?", 1)
    database.upgrade(url)
    return url


@contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder for a benchmark's library; on the way out, the embedded PostgreSQL
    started in its ``home`` is stopped and the folder removed."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        try:
            from clipdex import embedded_postgres

            embedded_postgres.stop(work / "home")
        finally:
            shutil.rmtree(work, ignore_errors=True)

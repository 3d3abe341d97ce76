"""Each benchmark runs in its smoke size, so the programs in bench/ keep working.
(Timings are never asserted: these only check that a table comes out.) They run two at a time:
most of a smoke run is starting processes, a database and PyTorch, which one core alone idles on."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = ["decode", "write", "ingest", "search", "enqueue", "memory", "decode_memory", "cli", "ocr", "hybrid", "models",
              "matches", "dupes", "archives", "watch", "gpu", "gil"]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")

    def run(name: str):
        out = folder / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke", "--json", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        return proc, out

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(BENCHMARKS, pool.map(run, BENCHMARKS)))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke(name, smoke_runs):
    proc, out = smoke_runs[name]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| figure | clipdex |" in proc.stdout
    report = json.loads(out.read_text())
    assert report["rows"] and report["facts"]["cpus"]
    assert all(row["clipdex"] not in (None, "") for row in report["rows"])

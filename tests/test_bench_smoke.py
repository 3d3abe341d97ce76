"""Each benchmark runs in its smoke size, so the programs in bench/ keep working.
(Timings are never asserted: these only check that a table comes out.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["decode", "write", "ingest", "search", "enqueue", "memory",
                                  "decode_memory"])
def test_benchmark_smoke(name, tmp_path):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| figure | clipdex |" in proc.stdout
    report = json.loads(out.read_text())
    assert report["rows"] and report["facts"]["cpus"]
    assert all(row["clipdex"] not in (None, "") for row in report["rows"])

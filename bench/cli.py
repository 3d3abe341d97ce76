"""Cold `clipdex search` wall time, as a user at a terminal pays it: a text already in the cache
(no PyTorch, no model) against a new text (PyTorch imported, the model loaded, the text embedded),
each a fresh process, on a small library indexed with the tiny model on the embedded database.

    python -m bench.cli [--runs 5] [--smoke] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Report


def _time(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipdex.cli", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> Report:
    from clipdex import embedded_postgres
    from clipdex.config import Settings
    from tests import libraries as L
    from tests.tiny_model import TINY_MODEL_CFG, write_model_folder

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one run each, a smaller library")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    runs = 1 if args.smoke else args.runs
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-cli-"))
    try:
        for i in range(8 if args.smoke else 40):
            L.write(work / "lib" / f"p{i:02}.png", L.png(7000 + i))
        settings = Settings(home=work / "home", model=f"local-dir:{write_model_folder(work / 'model', TINY_MODEL_CFG)}",
                            device="cpu")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLIPDEX_")}, **settings.to_environ()}
        subprocess.run([sys.executable, "-m", "clipdex.cli", "index", str(work / "lib")], env=env, check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "clipdex.cli", "embed-text", "a quiet lake"], env=env, check=True,
                       capture_output=True)
        cached = [_time(["search", "a quiet lake", "--limit", "5"], env) for _ in range(runs)]
        new = [_time(["search", f"a new text number {i}", "--limit", "5"], env) for i in range(runs)]
        browse = [_time(["search", "-f", "format=png", "--limit", "5"], env) for _ in range(runs)]
        help_ = [_time(["--help"], env) for _ in range(runs)]
        report = Report(f"Cold `clipdex search` wall time ({runs} fresh processes each, embedded PostgreSQL "
                        "already running, tiny model)", "new text (loads the model)")
        new_median = statistics.median(new)
        report.add("cached text", statistics.median(cached), new_median, unit="s", higher_is_better=False,
                   note="no PyTorch imported")
        report.add("filters only (newest first)", statistics.median(browse), new_median, unit="s",
                   higher_is_better=False)
        report.add("new text", new_median, unit="s", note="imports PyTorch, loads the model, embeds the text")
        report.add("clipdex --help", statistics.median(help_), new_median, unit="s", higher_is_better=False)
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(work / "home")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

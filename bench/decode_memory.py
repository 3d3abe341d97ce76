"""Peak memory of indexing images that decode to far more than they weigh: N PNGs of 99.98 MP
(a few hundred KB each), with 2 decode threads, under the default decode budget
(CLIPDEX_DECODE_MEMORY) and without one (the baseline, measured in the same run). Each variant runs
in a process of its own so that its peak RSS is its own.

    python -m bench.decode_memory [--images 8] [--smoke] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import Report

WIDTH, HEIGHT = 10_000, 9_998          # 99.98 MP, as in the outside check

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from clipdex import database
from clipdex.config import Settings
from clipdex.model import load_model
from indexer.in_process import index_folder
url, model, root, budget = sys.argv[1:5]
settings = Settings(database_url=url, model=model, device="cpu", decode_threads=2,
                    decode_memory=int(budget), max_pixels=250_000_000)
load_model(settings)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
result = index_folder(settings, database.open_database(settings), Path(root), out=None)
print(json.dumps({"before": before, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start, "new": result.counts["images_new"]}))
"""


def make_images(folder: Path, count: int, size: tuple[int, int]) -> int:
    """Flat-coloured PNGs: tiny files, 300 MB of RGB pixels each once decoded (at full size)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(count):
        path = folder / f"huge-{i}.png"
        Image.new("RGB", size, (20 * i % 256, 90, 160)).save(path, "PNG", compress_level=9)
        total += path.stat().st_size
    return total


def run_variant(url: str, model: str, root: Path, budget: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, url, model, str(root), str(budget)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> Report:
    from clipdex import database, embedded_postgres
    from clipdex.config import Settings
    from tests.tiny_model import TINY_MODEL_CFG, write_model_folder

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="1 image of 1000×1000")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    size = (1000, 1000) if args.smoke else (WIDTH, HEIGHT)
    if args.smoke:
        args.images = 1
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-decode-memory-"))
    try:
        bytes_on_disk = make_images(work / "lib", args.images, size)
        model = f"local-dir:{write_model_folder(work / 'model', TINY_MODEL_CFG)}"
        results = {}
        for name, budget in (("no budget (baseline)", 1 << 50), ("default budget", Settings().decode_memory)):
            home = work / f"home-{len(results)}"
            url = embedded_postgres.server_url(home)
            database.upgrade(url)
            try:
                results[name] = run_variant(url, model, work / "lib", budget)
            finally:
                embedded_postgres.stop(home)
        base, bounded = results["no budget (baseline)"], results["default budget"]
        report = Report(f"Decode memory: {args.images} PNGs of {size[0]}×{size[1]} ({bytes_on_disk / 2**20:.1f} MiB "
                        "on disk), 2 decode threads; clipdex = default CLIPDEX_DECODE_MEMORY", "no budget")
        report.add("growth of RSS while indexing", bounded["peak"] - bounded["before"], base["peak"] - base["before"],
                   unit="MiB", higher_is_better=False,
                   note=f"over {bounded['before']:.0f} MiB with PyTorch and the model loaded")
        report.add("peak RSS", bounded["peak"], base["peak"], unit="MiB", higher_is_better=False)
        report.add("seconds", bounded["seconds"], base["seconds"], unit="s", higher_is_better=False,
                   note=f"{bounded['new']} and {base['new']} images indexed")
        report.emit(args.json)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Peak memory of `clipdex index` over hostile and ordinary input: the bad-input library of the
tests, thousands of small PNGs and the benchmark corpus of 12 MP photos, in one run.

    python -m bench.memory [--small 2000] [--smoke] [--json OUT]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.corpus import make_corpus
from bench.report import Report
from clipdex import database, embedded_postgres
from clipdex.config import Settings
from clipdex.model import load_model
from tests.tiny_model import TINY_MODEL_CFG, write_model_folder


def main(argv: list[str] | None = None) -> Report:
    from indexer.in_process import index_folder
    from tests import libraries as L
    from tests.test_bad_input import bad_library

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="100 small PNGs and the small corpus")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.small = 100
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-memory-"))
    try:
        root = work / "lib"
        bad_library(root / "bad")
        for i in range(args.small):
            L.write(root / "small" / f"d{i % 20:02}" / f"p{i:04}.png", L.png(5000 + i, (48, 32)))
        from bench.decode import SMOKE_COUNTS

        corpus_dir = Path(tempfile.gettempdir()) / "clipdex-bench" / ("corpus-smoke" if args.smoke else "corpus")
        corpus = make_corpus(corpus_dir, SMOKE_COUNTS if args.smoke else None)
        shutil.copytree(corpus[0].parent, root / "photos")
        url = embedded_postgres.server_url(work / "home")
        database.upgrade(url)
        settings = Settings(home=work / "home", database_url=url, device="cpu",
                            model=f"local-dir:{write_model_folder(work / 'model', TINY_MODEL_CFG)}")
        load_model(settings)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        result = index_folder(settings, database.open_database(settings), root, out=None)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        report = Report(f"Memory: clipdex index over {result.plan.files} files (bad input, small PNGs, 12 MP photos)",
                        "—")
        report.add("peak RSS", peak, unit="MiB")
        report.add("growth while indexing", peak - before, unit="MiB",
                   note=f"{before:.0f} MiB before the first image: PyTorch and the model loaded")
        report.add("files indexed / failed", f"{result.counts['images_new']} / {result.counts['failed']}")
        report.add("seconds", time.perf_counter() - start, unit="s")
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(work / "home")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

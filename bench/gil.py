"""How many files/s one indexing process can reach, whatever its cores: the time per file that
its threads hold Python's GIL, sampled by py-spy.

On a 16-core H200 machine `clipdex index` reached 118-179 images/s with the GPU idle over 90 %
of the time (BENCHMARKS.md §15): the decode threads release the GIL inside Pillow, hashlib and
the resize kernels, but every file also costs Python that holds it, and that part runs on one
core at a time. This bench measures that part on any machine, GPU or not. `clipdex index` (tiny
model, CPU) runs twice: plainly, for its seconds, then under ``py-spy record --gil``, which
samples only the thread holding the GIL, for the share of the time the indexing threads (not the
model's loading) hold it. py-spy stops the process at each sample, which slows it, so the share
comes from the sampled run and the seconds from the plain one. Share × seconds / files is the
GIL's milliseconds a file, and 1000 / that the ceiling of one process on any number of cores.
The baseline is the plain run's wall time a file on this machine. The functions that hold the
GIL longest are listed (the innermost clipdex function of each sample).

    python -m bench.gil [--files 800] [--smoke] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.corpus import camera_and_chat, distinct_copies
from bench.report import Report, fresh_database, scratch_folder
from clipdex import embedded_postgres

RATE = 250   # samples a second
REPO = Path(__file__).resolve().parent.parent
KEEP = ("clipdex/", "indexer/")
SETUP = ("load_model", "Runtime.__init__", "Runtime.close")    # once a run, not a file


def py_spy() -> str | None:
    """py-spy beside this Python (a virtual environment's bin/), else on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def index_in_child(folder: Path, home: Path, name: str, model_dir: Path) -> None:
    """The run that is sampled (this module run with --child)."""
    from clipdex.config import Settings
    from clipdex.database import open_database
    from indexer.in_process import index_folder

    settings = Settings(home=home, database_url=fresh_database(embedded_postgres.server_url(home), name),
                        model=f"local-dir:{model_dir}", device="cpu", ocr=False, gpu_decode="off")
    result = index_folder(settings, open_database(settings), folder, out=None)
    print(f"indexed {result.images_encoded} images in {result.seconds:.1f} s", flush=True)


def child_command(folder: Path, home: Path, name: str, model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bench.gil", "--child", str(folder), str(home), name, str(model_dir)]


def indexing_seconds(proc: subprocess.CompletedProcess) -> float:
    """The child's own figure: seconds of ``index_folder``, without its start-up."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("indexed ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the indexing run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return float(lines[-1].split(" in ")[1].split()[0])


def plain_run(folder: Path, home: Path, name: str, model_dir: Path) -> float:
    proc = subprocess.run(child_command(folder, home, name, model_dir), capture_output=True, text=True,
                          timeout=1800, cwd=REPO)
    return indexing_seconds(proc)


def sampled_run(folder: Path, home: Path, name: str, model_dir: Path) -> tuple[float, Counter]:
    """(share of the run's wall time that the indexing threads held the GIL, samples per clipdex
    function). py-spy stops the process at each sample, which slows it: the share holds, the
    run's seconds do not (the plain run gives those)."""
    raw = home.parent / f"{name}.txt"
    command = [py_spy(), "record", "--gil", "--rate", str(RATE), "--format", "raw", "--output", str(raw), "--"]
    proc = subprocess.run(command + child_command(folder, home, name, model_dir), capture_output=True, text=True,
                          timeout=1800, cwd=REPO)
    seconds = indexing_seconds(proc)
    samples, functions = 0, Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        indexing = any("index_planned" in f or "_worker (concurrent/futures/thread.py" in f for f in frames)
        if not indexing or any(setup in f for f in frames for setup in SETUP):
            continue
        samples += int(count)
        # The innermost clipdex function holding the GIL is where the time is charged.
        own = [f for f in frames if any(k in f for k in KEEP)]
        if own:
            functions[own[-1].rsplit(":", 1)[0] + ")"] += int(count)      # "name (file:line)" -> "name (file)"
    return samples / (RATE * seconds), functions


def decodes_beside_python(data: bytes, whole: bool, switch_interval: float, seconds: float) -> float:
    """Photos/s that two threads decode with clipdex.imaging.decode while a third runs Python
    the whole time, as an indexing process's threads do on many cores: each time the decoder
    has let the GIL go, its thread must win it back from the busy one. ``whole``: the decoder
    takes the file in one piece (clipdex) or in Pillow's 64 KiB pieces (its default)."""
    import threading
    import time

    from clipdex import imaging

    kept_pieces, kept_interval = imaging.WHOLE_READ_BYTES, sys.getswitchinterval()
    imaging.WHOLE_READ_BYTES = kept_pieces if whole else 0
    sys.setswitchinterval(switch_interval)
    stop, done = threading.Event(), []

    def python() -> None:
        spins = 0
        while not stop.is_set():
            spins += 1

    def decoding() -> None:
        while not stop.is_set():
            imaging.decode(data, min_side=224, max_pixels=250_000_000)
            done.append(1)

    threads = [threading.Thread(target=python)] + [threading.Thread(target=decoding) for _ in range(2)]
    try:
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        return len(done) / (time.perf_counter() - start)
    finally:
        imaging.WHOLE_READ_BYTES = kept_pieces
        sys.setswitchinterval(kept_interval)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=800, help="files of each library")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        folder, home, name, model_dir = args.child
        index_in_child(Path(folder), Path(home), name, Path(model_dir))
        return Report("", "")
    if py_spy() is None:
        raise SystemExit("bench.gil needs py-spy (pip install py-spy; it is in clipdex's dev extras)")
    from tests.tiny_model import TINY_MODEL_CFG, write_model_folder

    files = 8 if args.smoke else args.files
    with scratch_folder("clipdex-bench-gil-") as work:
        home = work / "home"
        camera, chat = camera_and_chat(args.smoke)
        libraries = {"12 MP camera JPEGs": camera, "chat files and screenshots": chat}
        model_dir = write_model_folder(work / "model", TINY_MODEL_CFG)
        report = Report("One indexing process: time a file holding the GIL (py-spy)", "wall time a file here")
        report.facts.update({"files": str(files), "model": "tiny (64-d, random weights), CPU", "sampling": f"{RATE}/s"})
        for n, (label, kind) in enumerate(libraries.items()):
            folder = distinct_copies(kind, work / f"library{n}", files)
            seconds = plain_run(folder, home, f"plain{n}", model_dir)
            share, functions = sampled_run(folder, home, f"gil{n}", model_dir)
            per_file = share * seconds / files * 1000
            top = ", ".join(f"{name} {count / sum(functions.values()) * per_file:.2f}"
                            for name, count in functions.most_common(6))
            report.add(f"{label}: GIL held, ms a file", per_file, seconds / files * 1000, "ms", higher_is_better=False,
                       note=f"{files} files in {seconds:.1f} s on {os.cpu_count()} cores; GIL held {share:.0%} of "
                            f"the time; most (ms): {top}")
            report.add(f"{label}: one process's ceiling, files/s", 1000 / per_file if per_file else float("inf"),
                       None, "files/s")
        photo = libraries["12 MP camera JPEGs"][0].read_bytes()
        seconds = 1.0 if args.smoke else 10.0
        pieces = decodes_beside_python(photo, False, 0.005, seconds)
        report.add("12 MP JPEG decodes on 2 threads beside a thread running Python, photos/s",
                   decodes_beside_python(photo, True, 0.005, seconds), pieces, "photos/s",
                   note="clipdex: the file to the decoder in one piece; baseline: Pillow's 64 KiB pieces")
        report.add("the same, Python's switch interval 0.5 ms (the indexer's)",
                   decodes_beside_python(photo, True, 0.0005, seconds), pieces, "photos/s",
                   note="baseline: 64 KiB pieces at the default 5 ms")
        report.emit(args.json)
        return report


if __name__ == "__main__":
    main()

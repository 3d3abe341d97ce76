"""The GPU path, as one prepared script for a lent device (issue 16): it fits 10 minutes on one
GPU with 16 cores, and runs on CPU in its smoke size so it keeps working.

    python -m bench.gpu [--models ViT-B-32,ViT-L-14] [--photos 400] [--smoke] [--json OUT]

Real-size open_clip models with random weights (``pretrained=none``: the architecture and
preprocessing are real, the vectors mean nothing), loaded through clipdex's own loader: fp16
weights and inputs on CUDA, fp32 on CPU.

1. Model only: the image tower on preprocessed batches already on the device, a batch-size
   sweep (images/s after warm-up, peak device memory).
2. Decode: clipdex's CPU decode + preprocess on every core (a process pool, as workers would)
   against torchvision's nvJPEG decode on the GPU (``decode_jpeg(device="cuda")`` on batches of
   file bytes, then resize and normalize on the GPU), on the bench corpus's 12 MP camera JPEGs and
   its chat JPEGs. On CPU only the first runs (the second is reported as not run).
3. End to end: ``clipdex index`` in this process (read, hash, decode, thumbnail, model, rows in
   the embedded PostgreSQL) over --photos camera JPEGs and --photos chat/screenshot files, per
   model; GPU utilisation sampled by nvidia-smi while it runs, where there is one.

Baselines, measured in the same run: the model-only rate at batch 1 (what a loop over single
photos would get), and the CPU decode for the GPU decode.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.corpus import make_corpus
from bench.report import Report, fresh_database
from clipdex import embedded_postgres
from clipdex.config import Settings

SWEEP = (1, 32, 128, 256, 512, 1024)
SMOKE_SWEEP = (1, 4)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_only(model_name: str, sweep: tuple[int, ...], seconds: float) -> dict[int, float]:
    """Images/s of the image tower per batch size, inputs already on the device."""
    import torch

    from clipdex.model import load_model

    model = load_model(Settings(model=model_name, pretrained="none", device=device()))
    side = max(model.image_size)
    rates: dict[int, float] = {}
    for batch in sweep:
        pixels = torch.randn(batch, 3, side, side)
        try:
            model.encode_images(pixels)            # warm-up (and cuDNN's choice of kernels)
            if device() == "cuda":
                torch.cuda.synchronize()
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model.encode_images(pixels)
                done += batch
            if device() == "cuda":
                torch.cuda.synchronize()
            rates[batch] = done / (time.perf_counter() - start)
        except torch.OutOfMemoryError:
            break
    return rates


def _cpu_decode(path: str) -> int:
    from clipdex.imaging import decode

    decoded = decode(Path(path).read_bytes(), min_side=224, max_pixels=250_000_000)
    return decoded.width


def cpu_decode_rate(paths: list[Path]) -> float:
    """clipdex's decode (draft() to the model's scale) on every core, in processes."""
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_cpu_decode, map(str, paths[:4])))         # start the workers
        start = time.perf_counter()
        list(pool.map(_cpu_decode, map(str, paths), chunksize=4))
        return len(paths) / (time.perf_counter() - start)


def gpu_decode_rate(paths: list[Path], batch: int = 64) -> float | None:
    """nvJPEG through torchvision on batches of file bytes, resized to 224 and normalized on the
    GPU; None without CUDA."""
    import torch
    import torchvision
    from torchvision.transforms.v2 import functional as F

    if device() != "cuda":
        return None
    blobs = [torchvision.io.read_file(str(p)) for p in paths]
    mean = torch.tensor([0.481, 0.458, 0.408], device="cuda").view(3, 1, 1)
    std = torch.tensor([0.269, 0.261, 0.276], device="cuda").view(3, 1, 1)

    def run() -> None:
        for start in range(0, len(blobs), batch):
            images = torchvision.io.decode_jpeg(blobs[start:start + batch], device="cuda")
            for image in images:
                small = F.resize(image, [224], antialias=True)
                ((F.center_crop(small, [224, 224]).half() / 255 - mean) / std)
        torch.cuda.synchronize()

    run()
    start = time.perf_counter()
    run()
    return len(paths) / (time.perf_counter() - start)


class GpuSampler:
    """nvidia-smi's utilisation every 0.5 s while a run goes on (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> "GpuSampler":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def end_to_end(model_name: str, folder: Path, home: Path, name: str) -> tuple[float, int, float | None]:
    """(images/s, images, mean GPU utilisation) of `clipdex index` over ``folder``."""
    from clipdex.database import open_database
    from indexer.in_process import index_folder

    settings = Settings(home=home, database_url=fresh_database(embedded_postgres.server_url(home), name),
                        model=model_name, pretrained="none", device=device(), ocr=False)
    db = open_database(settings)
    with GpuSampler() as sampler:
        start = time.perf_counter()
        result = index_folder(settings, db, folder, out=None)
        seconds = time.perf_counter() - start
    return result.images_encoded / seconds, result.images_encoded, sampler.mean()


def distinct_copies(corpus: list[Path], folder: Path, count: int) -> Path:
    """``count`` files cycling through ``corpus``, each made new bytes by a few bytes after the
    image's end (decoders ignore them; the decode work is the original's), so every file is a new
    image to the indexer. Re-encoding 12 MP photos instead would cost minutes of the device's time."""
    folder.mkdir(parents=True)
    for n in range(count):
        source = corpus[n % len(corpus)]
        (folder / f"{n:05d}_{source.name}").write_bytes(source.read_bytes() + b"\0copy" + str(n).encode())
    return folder


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--photos", type=int, default=400, help="photos of each kind end to end")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per batch size")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sweep = SMOKE_SWEEP if args.smoke else SWEEP
    if args.smoke:
        args.models, args.photos, args.seconds = "ViT-B-32", 4, 0.5
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-gpu-"))
    home = work / "home"
    try:
        corpus_dir = Path(tempfile.gettempdir()) / "clipdex-bench" / ("corpus-smoke" if args.smoke else "corpus")
        corpus = make_corpus(corpus_dir, {"camera_jpeg": 2, "chat_jpeg": 2, "screenshot_png": 1}
                             if args.smoke else None)
        camera = [p for p in corpus if p.name.startswith("camera_jpeg")]
        chat = [p for p in corpus if p.name.startswith(("chat_", "screenshot_"))]
        camera_lib = distinct_copies(camera, work / "camera", args.photos)
        chat_lib = distinct_copies(chat, work / "chat", args.photos)
        camera_files = sorted(camera_lib.rglob("*.jpg"))
        chat_jpegs = sorted(chat_lib.rglob("*.jpg"))

        report = Report(f"GPU path on {device()}: model only, decode, end to end", "batch 1 / CPU decode")
        report.facts.update({"device": device(), "models": args.models + " (random weights, pretrained=none)"})
        for model_name in args.models.split(","):
            rates = model_only(model_name, sweep, args.seconds)
            best = max(rates, key=rates.get)
            for batch, rate in rates.items():
                if batch != 1:
                    report.add(f"{model_name} model only, batch {batch}, images/s", rate, rates.get(1), "img/s",
                               note="best" if batch == best else "")
        for label, paths in (("12 MP camera JPEG", camera_files), ("chat JPEG", chat_jpegs)):
            gpu = gpu_decode_rate(paths)
            report.add(f"decode + resize, {label}, images/s", gpu if gpu is not None else "not run (no CUDA)",
                       cpu_decode_rate(paths), "img/s" if gpu is not None else "",
                       note=f"{len(paths)} files; baseline: clipdex's CPU decode on {os.cpu_count()} cores")
        for model_name in args.models.split(","):
            for label, folder in (("12 MP camera JPEGs", camera_lib), ("chat and screenshots", chat_lib)):
                rate, images, busy = end_to_end(model_name, folder, home, f"e2e_{len(report.rows)}")
                report.add(f"{model_name} end to end, {label}, images/s", rate, None, "img/s",
                           note=f"{images} images; GPU busy {busy:.0f} %" if busy is not None else f"{images} images")
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(home)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

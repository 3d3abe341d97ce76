"""The GPU path, as one prepared script for a lent device (issue 16): it fits 10 minutes on one
GPU with 16 cores, and runs on CPU in its smoke size so it keeps working.

    python -m bench.gpu [--models ViT-B-32,ViT-L-14] [--photos 400] [--smoke] [--json OUT]

Real-size open_clip models with random weights (``pretrained=none``: the architecture and
preprocessing are real, the vectors mean nothing), loaded through clipdex's own loader: fp16
weights and inputs on CUDA, fp32 on CPU.

1. Model only: the image tower on preprocessed batches already on the device, a batch-size
   sweep (images/s after warm-up, peak device memory).
2. Decode: clipdex's device path (indexer/device_decode.py: torchvision's ``decode_jpeg`` on
   batches of file bytes, nvJPEG on CUDA, then reduce, preview and the model's preprocessing on
   the device) against clipdex's CPU decode + preprocess on every core (a process pool, as
   workers would), on the bench corpus's 12 MP camera JPEGs and its chat JPEGs; and how far the
   two paths' vectors are apart (cosine, the first model).
3. End to end: ``clipdex index`` in this process (read, hash, decode, thumbnail, model, rows in
   the embedded PostgreSQL) over --photos camera JPEGs and --photos chat/screenshot files, per
   model, with the device decode on and off (``CLIPDEX_GPU_DECODE``); then the first model at
   the best batch size of the sweep. GPU utilisation sampled by nvidia-smi while it runs, where
   there is one; each run's seconds per stage in the log (and the device decode's in the table,
   so a run where the device decoded nothing shows).

Baselines, measured in the same run: the model-only rate at batch 1 (what a loop over single
photos would get), the CPU decode for the device decode, and the end-to-end run with Pillow
decoding for the one with the device decoding.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.corpus import camera_and_chat, distinct_copies
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
        pixels = torch.randn(batch, 3, side, side, device=device())
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


def device_decode_rate(model_name: str, paths: list[Path], batch: int = 64) -> float:
    """clipdex's own device path (indexer/device_decode.py): batched ``decode_jpeg`` on the model's
    device (nvJPEG on CUDA), reduce, orient, preview pixels and the model's preprocessing there."""
    import torch

    from clipdex.imaging import jpeg_header
    from clipdex.model import load_model
    from indexer.device_decode import DeviceDecoder, DeviceJpeg

    decoder = DeviceDecoder.for_model(load_model(Settings(model=model_name, pretrained="none", device=device())))
    blobs = [p.read_bytes() for p in paths]
    jpegs = [DeviceJpeg.of(data, jpeg_header(data, max_pixels=250_000_000), True) for data in blobs]

    def run() -> None:
        for start in range(0, len(jpegs), batch):
            decoder.decode(jpegs[start:start + batch])
        if device() == "cuda":
            torch.cuda.synchronize()

    run()
    start = time.perf_counter()
    run()
    return len(paths) / (time.perf_counter() - start)


def agreement(model_name: str, paths: list[Path]) -> tuple[float, float]:
    """(lowest, mean) cosine between each photo's vector through the device path and through
    Pillow's, with this real-size model (random weights)."""
    import numpy as np
    import torch

    from clipdex.imaging import jpeg_header
    from clipdex.model import load_model
    from indexer.device_decode import DeviceDecoder, DeviceJpeg
    from indexer.prepare import decode_for_model

    model = load_model(Settings(model=model_name, pretrained="none", device=device()))
    decoder = DeviceDecoder.for_model(model)
    cosines = []
    for path in paths:
        data = path.read_bytes()
        header = jpeg_header(data, max_pixels=250_000_000)
        on_device = decoder.decode([DeviceJpeg.of(data, header, False)])[0].pixels
        by_pillow = decode_for_model(data, model, 250_000_000, with_thumbnail=False)[2]
        a, b = model.encode_images(torch.stack([on_device.cpu().float(), by_pillow]))
        cosines.append(float(np.dot(a, b)))
    return min(cosines), sum(cosines) / len(cosines)


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


def end_to_end(model_name: str, folder: Path, home: Path, name: str, gpu_decode: str,
               batch_size: int = 64) -> tuple[float, int, float | None, dict[str, float]]:
    """(images/s, images, mean GPU utilisation, seconds per stage summed over the threads) of
    `clipdex index` over ``folder``; the stages also go to the log."""
    from clipdex.database import open_database
    from indexer.in_process import index_folder

    settings = Settings(home=home, database_url=fresh_database(embedded_postgres.server_url(home), name),
                        model=model_name, pretrained="none", device=device(), ocr=False,
                        gpu_decode=gpu_decode, batch_size=batch_size)
    db = open_database(settings)
    with GpuSampler() as sampler:
        start = time.perf_counter()
        result = index_folder(settings, db, folder, out=None)
        seconds = time.perf_counter() - start
    print(f"  {name}: {result.images_encoded} images in {seconds:.1f} s; stages "
          + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()), flush=True)
    return result.images_encoded / seconds, result.images_encoded, sampler.mean(), result.timings


def section(report: Report, json_path: str | None, name: str, work: Callable[[], None]) -> None:
    """Runs one part of the bench. A part that fails is printed and recorded, and the parts after
    it still run: a device lease is minutes long, too short to lose a whole run to one part. The
    figures so far are written to the JSON file after each part, so a run cut off still has them."""
    print(f"[{name}] starting", flush=True)
    start = time.perf_counter()
    try:
        work()
    except Exception as error:          # noqa: BLE001 - reported in the table and the log, then the next part
        traceback.print_exc()
        report.add(f"{name}: failed", f"{type(error).__name__}: {error}"[:200])
    print(f"[{name}] {time.perf_counter() - start:.1f} s", flush=True)
    report.save(json_path)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--photos", type=int, default=400, help="photos of each kind end to end")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per batch size")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--parts", default="sweep,decode,e2e",
                        help="which parts to run (a lease is short): sweep, decode, e2e")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    sweep = SMOKE_SWEEP if args.smoke else SWEEP
    if args.smoke:
        args.models, args.photos, args.seconds = "ViT-B-32", 4, 0.5
    models = args.models.split(",")
    first = models[0]
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-gpu-"))
    home = work / "home"
    report = Report(f"GPU path on {device()}: model only, decode, end to end", "batch 1 / CPU decode")
    report.facts.update({"device": device(), "models": args.models + " (random weights, pretrained=none)"})
    sweeps: dict[str, dict[int, float]] = {}
    libraries: dict[str, Path] = {}

    def sweep_model(model_name: str) -> None:
        rates = sweeps[model_name] = model_only(model_name, sweep, args.seconds)
        best = max(rates, key=rates.get)
        for batch, rate in rates.items():
            if batch != 1:
                report.add(f"{model_name} model only, batch {batch}, images/s", rate, rates.get(1), "img/s",
                           note="best" if batch == best else "")

    def libraries_on_disk() -> None:
        camera, chat = camera_and_chat(args.smoke)
        libraries["12 MP camera JPEGs"] = distinct_copies(camera, work / "camera", args.photos)
        libraries["chat and screenshots"] = distinct_copies(chat, work / "chat", args.photos)

    def decode(label: str, paths: list[Path]) -> None:
        report.add(f"decode + resize on the {device()}, {label}, images/s", device_decode_rate(first, paths),
                   cpu_decode_rate(paths), "img/s",
                   note=f"{len(paths)} files; baseline: clipdex's CPU decode on {os.cpu_count()} cores")
        low, mean = agreement(first, paths[:2] if args.smoke else paths[:40])
        report.add(f"{first} vectors, device decode against Pillow's, {label}, lowest cosine", low, None, "",
                   note=f"mean {mean:.4f}")

    def indexing(model_name: str, label: str, folder: Path) -> None:
        rates: dict = {}
        for mode in ("on", "off"):
            rates[mode], images, busy, stages = end_to_end(model_name, folder, home,
                                                           f"e2e_{len(report.rows)}_{mode}", mode)
            rates[mode, "note"] = (f"{images} images" + (f"; GPU busy {busy:.0f} %" if busy is not None else "")
                                   + f"; device decoded {stages.get('device_decode', 0):.1f} s")
        report.add(f"{model_name} end to end, {label}, images/s", rates["on"], rates["off"], "img/s",
                   note=f"device decode / Pillow decode; {rates['on', 'note']} / {rates['off', 'note']}")

    def indexing_at_best_batch() -> None:
        # The sweep's best batch, up to 512: a group's JPEG bytes wait in memory until the device
        # decodes them (2 × batch + threads files in flight).
        best = max((b for b in sweeps[first] if b <= 512), key=sweeps[first].get)
        if best != 64 and not args.smoke:
            rate, images, busy, _stages = end_to_end(first, libraries["12 MP camera JPEGs"], home, "e2e_best_batch",
                                                     "on", batch_size=best)
            report.add(f"{first} end to end, 12 MP camera JPEGs, batch {best}, images/s", rate, None, "img/s",
                       note=f"{images} images" + (f"; GPU busy {busy:.0f} %" if busy is not None else ""))

    try:
        for model_name in models if "sweep" in parts else ():
            section(report, args.json, f"{model_name} model only", lambda m=model_name: sweep_model(m))
        section(report, args.json, "test libraries", libraries_on_disk)
        if libraries:
            camera_files = sorted(libraries["12 MP camera JPEGs"].rglob("*.jpg"))
            chat_jpegs = sorted(libraries["chat and screenshots"].rglob("*.jpg"))
            for label, paths in (("12 MP camera JPEG", camera_files), ("chat JPEG", chat_jpegs)):
                if "decode" in parts:
                    section(report, args.json, f"decode, {label}", lambda l=label, p=paths: decode(l, p))
            for model_name in models if "e2e" in parts else ():
                for label, folder in libraries.items():
                    section(report, args.json, f"{model_name} end to end, {label}",
                            lambda m=model_name, l=label, f=folder: indexing(m, l, f))
            if first in sweeps and "e2e" in parts:
                section(report, args.json, f"{first} end to end at the best batch", indexing_at_best_batch)
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(home)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

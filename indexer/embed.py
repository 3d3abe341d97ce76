"""The model's part: new images' pixels, a group at a time, to unit vectors.

A group is launched, then landed after the next group is launched: on CUDA the forward pass
runs while the main thread gathers and launches the next group, so the device does not wait for
the host between groups. On the CPU a launch is the whole forward pass and the order changes
nothing. JPEGs the decode threads left for the device (indexer/device_decode.py) are decoded at
launch; their previews are encoded to WebP on the decode threads while the model runs.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from clipdex.imaging import DecodeFailure, NotAnImage
from clipdex.model import vectors_of
from indexer import store
from indexer.device_decode import Decoded, DeviceJpeg
from indexer.prepare import New, VectorOnly, decode_for_model
from indexer.runtime import Runtime
from indexer.thumbnail import make_thumbnail

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

Item = New | VectorOnly


@dataclass
class InFlight:
    """A group whose forward pass is queued; its vectors are read when it lands."""

    items: list[Item]
    features: Any
    previews: list[tuple[New, Future]] = field(default_factory=list)


def launch(rt: Runtime, items: list[Item], outcome: store.BatchOutcome) -> InFlight | None:
    """Decodes the group's device JPEGs and queues its forward pass; None when nothing is left to
    embed (a model error fails the group's files at stage 'embed')."""
    if not items:
        return None
    items, previews = _device_pixels(rt, items, outcome)
    if not items:
        return None
    started = time.perf_counter()
    try:
        features = rt.model.start_encoding(_batch(rt, [p.pixels for p in items]))
    except Exception as exc:
        _model_failed(items, exc, outcome)
        return None
    finally:
        _add_time(outcome, "model", started)
    return InFlight(items, features, previews)


def land(rt: Runtime, flight: InFlight | None, outcome: store.BatchOutcome,
         previews: list[tuple[New, Future]]) -> list[Item]:
    """Waits for a launched group's vectors; returns the items that got one (all, or none). Its
    previews still being encoded join ``previews`` (``finish_previews`` waits for them)."""
    if flight is None:
        return []
    started = time.perf_counter()
    try:
        vectors = vectors_of(flight.features)
    except Exception as exc:
        _model_failed(flight.items, exc, outcome)
        return []
    finally:
        _add_time(outcome, "model", started)
    rt.images_encoded += len(flight.items)
    for p, vector in zip(flight.items, vectors):
        p.take_vector(vector)
    previews += flight.previews
    return flight.items


def finish_previews(previews: list[tuple[New, Future]], outcome: store.BatchOutcome) -> set[bytes]:
    """Puts the encoded previews in their images; returns the images whose preview failed (each
    recorded as a failure: a photo is never stored without its preview)."""
    failed: set[bytes] = set()
    for p, future in previews:
        try:
            p.image.thumbnail = future.result()
        except Exception as exc:
            outcome.failures.append((p.task.relpath, "thumbnail", f"cannot make the preview: {exc}",
                                     p.file.size, p.file.mtime_ns))
            failed.add(p.file.sha256)
    return failed


def _model_failed(items: list[Item], exc: Exception, outcome: store.BatchOutcome) -> None:
    log.error("model failed on a batch of %d images: %s", len(items), exc, exc_info=exc)
    for p in items:
        outcome.failures.append((p.task.relpath, "embed", f"model error: {exc}", p.file.size, p.file.mtime_ns))


def _add_time(outcome: store.BatchOutcome, stage: str, started: float) -> None:
    outcome.timings[stage] = outcome.timings.get(stage, 0.0) + time.perf_counter() - started


def _device_pixels(rt: Runtime, items: list[Item], outcome: store.BatchOutcome
                   ) -> tuple[list[Item], list[tuple[New, Future]]]:
    """Decodes the group's JPEGs on the device in one call; a file the device refuses is decoded
    by Pillow on the decode threads instead, and fails only if Pillow refuses it too. Returns the
    items with pixels, and the previews being encoded."""
    waiting = [p for p in items if isinstance(p.pixels, DeviceJpeg)]
    if not waiting:
        return items, []
    started = time.perf_counter()
    answers = rt.device_decoder.decode([p.pixels for p in waiting])
    _add_time(outcome, "device_decode", started)
    previews: list[tuple[New, Future]] = []
    fallbacks: list[tuple[Item, Future]] = []
    for p, answer in zip(waiting, answers):
        jpeg: DeviceJpeg = p.pixels
        if isinstance(answer, Decoded):
            rt.device_decoded += 1
            p.pixels = answer.pixels
            if answer.thumbnail is not None and isinstance(p, New):
                previews.append((p, rt.threads.submit(_preview, answer.thumbnail)))
            continue
        log.info("the device cannot decode %r (%s): Pillow decodes it", p.task.name, answer)
        rt.device_refused += 1
        fallbacks.append((p, rt.threads.submit(
            decode_for_model, jpeg.data.numpy().tobytes(), rt.model, rt.settings.max_pixels,
            budget=rt.decode_budget, with_thumbnail=jpeg.with_thumbnail)))
    refused: set[int] = set()
    for p, future in fallbacks:
        try:
            _decoded, thumbnail, p.pixels = future.result()
        except (NotAnImage, DecodeFailure) as exc:
            outcome.failures.append((p.task.relpath, "decode", str(exc), p.file.size, p.file.mtime_ns))
            refused.add(id(p))
            continue
        if thumbnail is not None and isinstance(p, New):
            p.image.thumbnail = thumbnail
    return [p for p in items if id(p) not in refused], previews


def _preview(pixels) -> Any:
    return make_thumbnail(Image.fromarray(pixels))


def _batch(rt: Runtime, pixels: list["torch.Tensor"]) -> "torch.Tensor":
    """One input tensor for the group. Pixels made on the host are stacked into a page-locked
    buffer and copied without blocking (CUDA), those decoded on the device stay there."""
    import torch

    model = rt.model
    on_host = [i for i, x in enumerate(pixels) if x.device.type == "cpu"]
    if model.device == "cpu" or len(on_host) == 0:
        return torch.stack([x.to(model.device, model.dtype) for x in pixels])
    staged = rt.staging(len(on_host), tuple(pixels[on_host[0]].shape))
    torch.stack([pixels[i] for i in on_host], out=staged)
    if len(on_host) == len(pixels):
        return staged
    batch = torch.empty((len(pixels), *staged.shape[1:]), device=model.device, dtype=model.dtype)
    batch[on_host] = staged.to(model.device, model.dtype, non_blocking=True)
    host = set(on_host)
    on_device = [i for i in range(len(pixels)) if i not in host]
    batch[on_device] = torch.stack([pixels[i] for i in on_device])
    return batch

"""A generated set of look-alike photos with known answers: which files are one picture.

Each scene is a wide photo-like canvas (bench/corpus.photo). Its *original* is a window on it
saved as a camera JPEG. Copies of the same picture, which belong in the original's group:

    jpeg      re-saved at quality 30-95 (a chat app's recompression), often shrunk by a third
    resized   shrunk to 25-60 %
    cropped   up to 10 % cut from the edges in all
    webp      re-encoded as WebP at quality 40-90
    screenshot the photo shown on a phone: 1170×2532, black or white bars, a status bar's clock
    burst     the window moved 0.5-2 % with fresh sensor grain, a second later

Hard negatives, which must stay apart: *another shot* of the same scene (the window moved by a
quarter or more, or zoomed, minutes later), and of course every other scene.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from PIL import Image, ImageDraw

from bench.corpus import photo

COPY_KINDS = ("jpeg", "resized", "cropped", "webp", "screenshot", "burst")
SHOT_SIZE = (1200, 900)     # a scene is 1.5 times as wide and high
PHONE_SCREEN = (1170, 2532)


@dataclass
class Lookalike:
    name: str        # file name: <scene>_<kind>_<n>.<ext>
    data: bytes
    group: int       # the picture it shows (the answer); another shot is its own picture
    kind: str        # original, one of COPY_KINDS, or other_shot
    taken: datetime


def _shot(scene: Image.Image, rng: np.random.Generator, x: float, y: float, zoom: float = 1.0) -> Image.Image:
    """A window two thirds of the scene wide at (x, y) (shares of the free room), ``zoom`` times closer."""
    size = (round(scene.width / 1.5), round(scene.height / 1.5))
    w, h = size[0] / zoom, size[1] / zoom
    left, top = x * (scene.width - w), y * (scene.height - h)
    window = scene.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    grain = rng.normal(0, 4, (size[1], size[0], 1))
    return Image.fromarray((np.asarray(window, dtype=np.float32) + grain).clip(0, 255).astype(np.uint8))


def _encode(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format, **options)
    return out.getvalue()


def _screenshot(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = image.width / SHOT_SIZE[0]
    canvas_w, canvas_h = round(PHONE_SCREEN[0] * scale), round(PHONE_SCREEN[1] * scale)
    dark = rng.random() < 0.5
    canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0) if dark else (255, 255, 255))
    shown = image.resize((canvas_w, round(image.height * canvas_w / image.width)), Image.Resampling.BILINEAR)
    canvas.paste(shown, (0, (canvas_h - shown.height) // 2 + round(rng.integers(-200, 200) * scale)))
    draw = ImageDraw.Draw(canvas)
    ink = (255, 255, 255) if dark else (0, 0, 0)
    draw.text((60 * scale, 30 * scale), "9:41", fill=ink, font_size=max(8, round(48 * scale)))  # the clock
    draw.rectangle((1000 * scale, 40 * scale, 1090 * scale, 75 * scale), outline=ink,
                   width=max(1, round(4 * scale)))                                        # the battery
    return canvas


def _copy(kind: str, original: Image.Image, scene: Image.Image, rng: np.random.Generator,
          x: float, y: float) -> tuple[bytes, str]:
    if kind == "jpeg":
        image = original
        if rng.random() < 0.6:   # shrunk as a chat app does (a 1920 px photo sent at 1280 px)
            image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.Resampling.BILINEAR)
        return _encode(image, "JPEG", quality=int(rng.integers(30, 96))), "jpg"
    if kind == "resized":
        share = rng.uniform(0.25, 0.6)
        image = original.resize((round(original.width * share), round(original.height * share)),
                                Image.Resampling.LANCZOS)
        return _encode(image, "JPEG", quality=85), "jpg"
    if kind == "cropped":
        cut = rng.uniform(0.02, 0.10)           # the share of each dimension cut off, split over both edges
        w, h = original.size
        first = rng.uniform(0, 1)
        box = (round(w * cut * first), round(h * cut * (1 - first)),
               round(w - w * cut * (1 - first)), round(h - h * cut * first))
        return _encode(original.crop(box), "JPEG", quality=90), "jpg"
    if kind == "webp":
        return _encode(original, "WEBP", quality=int(rng.integers(40, 91))), "webp"
    if kind == "screenshot":
        return _encode(_screenshot(original, rng), "PNG"), "png"
    if kind == "burst":
        dx, dy = rng.uniform(0.005, 0.02, 2) * rng.choice([-1, 1], 2)
        return _encode(_shot(scene, rng, min(1, max(0, x + dx)), min(1, max(0, y + dy))), "JPEG",
                       quality=90), "jpg"
    raise ValueError(kind)


def lookalike_set(scenes: int, *, copies: int = 4, other_shots: int = 1, seed: int = 0,
                  size: tuple[int, int] = SHOT_SIZE) -> list[Lookalike]:
    """``scenes`` scenes, each with an original of ``size`` pixels, ``copies`` copies (of every
    kind in turn when there are as many, else of random kinds), and ``other_shots`` different
    shots of it (each its own picture)."""
    rng = np.random.default_rng(seed)
    items: list[Lookalike] = []
    group = 0
    start = datetime(2021, 5, 1, 9, 0, 0)
    for s in range(scenes):
        scene = photo(rng, round(size[0] * 1.5), round(size[1] * 1.5))
        x, y = rng.uniform(0.2, 0.8, 2)
        taken = start + timedelta(hours=int(s) * 7)
        original = _shot(scene, rng, x, y)
        items.append(Lookalike(f"s{s}_original.jpg", _encode(original, "JPEG", quality=92), group, "original", taken))
        for c in range(copies):
            kind = COPY_KINDS[int(rng.integers(len(COPY_KINDS)))] if copies < len(COPY_KINDS) \
                else COPY_KINDS[c % len(COPY_KINDS)]
            data, ext = _copy(kind, original, scene, rng, x, y)
            when = taken + timedelta(seconds=c + 1) if kind == "burst" else taken
            items.append(Lookalike(f"s{s}_{kind}_{c}.{ext}", data, group, kind, when))
        for o in range(other_shots):
            group += 1
            # Another framing: moved at least a quarter of the shot, or zoomed in by 1.4-2x.
            if rng.random() < 0.5:
                ox = x + rng.choice([-1, 1]) * rng.uniform(0.25, 0.6)
                oy = y + rng.uniform(-0.3, 0.3)
                shot = _shot(scene, rng, float(np.clip(ox, 0, 1)), float(np.clip(oy, 0, 1)))
            else:
                shot = _shot(scene, rng, x, y, zoom=rng.uniform(1.4, 2.0))
            items.append(Lookalike(f"s{s}_other_shot_{o}.jpg", _encode(shot, "JPEG", quality=92), group,
                                   "other_shot", taken + timedelta(minutes=int(rng.integers(2, 30)))))
        group += 1
    return items

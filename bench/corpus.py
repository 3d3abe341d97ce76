"""A synthetic photo export for the decode benchmark: the formats and sizes a real library mixes.

Decode speed depends on what is in the file, not only its size: flat colour compresses to almost
nothing and white noise to far more than a photo, and a JPEG's entropy decoding costs what its
bytes cost. So the pictures mix smooth gradients, hard-edged shapes, texture that comes and goes
and film grain, which gives 12 MP camera JPEGs of 3-4 MB at quality 90, like a phone's.

Files are named ``<kind>_<n>.<ext>`` (the kind is the name before the last ``_``), each drawn from
its own seed, and kept: a second call only writes the files that are missing.
"""

from __future__ import annotations

import io
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# kind -> (file extension, width, height)
KINDS = {
    "camera_jpeg": (".jpg", 4032, 3024),
    "phone_heic": (".heic", 4032, 3024),
    "screenshot_png": (".png", 1170, 2532),
    "chat_jpeg": (".jpg", 1280, 960),
    "chat_gif": (".gif", 400, 300),
    "chat_webp": (".webp", 1080, 810),
}
DEFAULT_COUNTS = {"camera_jpeg": 24, "phone_heic": 8, "screenshot_png": 12,
                  "chat_jpeg": 24, "chat_gif": 12, "chat_webp": 12}
CAMERAS = [("Apple", "iPhone 13 Pro"), ("samsung", "SM-S911B"), ("Google", "Pixel 7"),
           ("Xiaomi", "2201123G")]
GIF_FRAMES = 4

EXIF_IFD = 0x8769
MAKE, MODEL, ORIENTATION, DATE_TIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x010F, 0x0110, 0x0112, 0x9003, 0x9011


def kind_of(path: Path) -> str:
    return path.name.rsplit("_", 1)[0]


def make_corpus(folder: Path, counts: dict[str, int] | None = None, seed: int = 0) -> list[Path]:
    """Writes the files of ``counts`` (default DEFAULT_COUNTS) that ``folder`` lacks; all their paths.

    Missing files are drawn in parallel, one process per core: a 12 MP HEIC takes seconds to encode.
    """
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(kind, n) for kind, count in (counts or DEFAULT_COUNTS).items() for n in range(count)]
    paths = [folder / f"{kind}_{n:03d}{KINDS[kind][0]}" for kind, n in jobs]
    missing = [(path, kind, n, seed) for path, (kind, n) in zip(paths, jobs) if not path.exists()]
    if missing:
        with ProcessPoolExecutor(min(len(missing), os.cpu_count() or 1)) as pool:
            list(pool.map(_write, *zip(*missing)))
    return paths


def camera_and_chat(smoke: bool = False) -> tuple[list[Path], list[Path]]:
    """The shared corpus's 12 MP camera JPEGs, and its chat files and screenshots (the GPU and GIL
    benches' two libraries); a few of each for a smoke run."""
    folder = Path(tempfile.gettempdir()) / "clipdex-bench" / ("corpus-smoke" if smoke else "corpus")
    corpus = make_corpus(folder, {"camera_jpeg": 2, "chat_jpeg": 2, "screenshot_png": 1} if smoke else None)
    return ([p for p in corpus if p.name.startswith("camera_jpeg")],
            [p for p in corpus if p.name.startswith(("chat_", "screenshot_"))])


def distinct_copies(corpus: list[Path], folder: Path, count: int) -> Path:
    """``count`` files cycling through ``corpus``, each made new bytes without new decode work,
    so every file is a new image to the indexer. Re-encoding 12 MP photos instead would cost
    minutes of the device's time. A JPEG gets a comment segment after its APPn segments (EXIF
    stays where readers look); other formats a few bytes after the image's end. Bytes after a
    JPEG's end would send it to Pillow: the device decodes only JPEGs that end with their EOI
    marker (clipdex.imaging.jpeg_header), which is how the first H200 run (2026-12-04) measured
    Pillow twice instead of the device decode once."""
    folder.mkdir(parents=True)
    for n in range(count):
        source = corpus[n % len(corpus)]
        data, mark = source.read_bytes(), f"copy {n}".encode()
        if data.startswith(b"\xff\xd8"):
            at = 2
            while data[at] == 0xFF and 0xE0 <= data[at + 1] <= 0xEF:     # APP0 (JFIF) ... APP15
                at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
            copy = data[:at] + b"\xff\xfe" + (len(mark) + 2).to_bytes(2, "big") + mark + data[at:]
        else:
            copy = data + b"\0" + mark
        (folder / f"{n:05d}_{source.name}").write_bytes(copy)
    return folder


def _write(path: Path, kind: str, n: int, seed: int) -> None:
    """Draws and encodes one file; written under a temporary name of this process's own, so a cut-off
    run leaves no stub and two runs drawing the same file at once (the smoke tests) never mix."""
    rng = np.random.default_rng([seed, list(KINDS).index(kind), n])
    _, width, height = KINDS[kind]
    data = WRITERS[kind](rng, n, width, height)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB picture: a lit backdrop, shapes with edges, patchy texture and grain."""
    top, bottom = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[:, None, None]
    backdrop = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (64, 64, 3)).astype(np.uint8)
    image = Image.fromarray(backdrop).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(40, 80)):
        x, y = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        size = width * rng.uniform(0.01, 0.3)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [x, y, x + size * rng.uniform(0.3, 1.5), y + size * rng.uniform(0.3, 1.5)]
        shape = rng.integers(0, 4)
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        elif shape == 2:
            end = (x + rng.uniform(-size, size), y + rng.uniform(-size, size))
            draw.line([(x, y), end], fill=colour, width=int(rng.integers(2, 12)))
        else:
            corners = [(x + rng.uniform(0, size), y + rng.uniform(0, size)) for _ in range(rng.integers(3, 7))]
            draw.polygon(corners, fill=colour)
    pixels = np.asarray(image.filter(ImageFilter.BoxBlur(1))).astype(np.int16)  # a lens is never pixel-sharp
    pixels += _smooth_noise(rng, 10, width, height, 3, 30, Image.Resampling.BILINEAR)  # light and tint
    texture = _smooth_noise(rng, width // 32, width, height, 1, 30)  # coarse texture (ground, clouds)
    texture += _smooth_noise(rng, width // 6, width, height, 1, 50)  # fine texture (foliage, fabric)
    patches = (_smooth_noise(rng, 5, width, height, 1, 60) + 128).astype(np.float32) / 255
    luma = (texture * patches).astype(np.int16)  # smooth regions next to detailed ones
    luma += _smooth_noise(rng, width // 2, width, height, 1, 10, Image.Resampling.BILINEAR)  # grain
    pixels += luma[:, :, None]  # detail lives in brightness, colour stays smooth, as in photos
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _smooth_noise(rng: np.random.Generator, cells: int, width: int, height: int, channels: int,
                  amplitude: float, resample=Image.Resampling.BICUBIC) -> np.ndarray:
    """Gaussian noise drawn on a grid ``cells`` wide, scaled up to the picture: int16, around 0."""
    rows = max(2, round(cells * height / width))
    shape = (rows, cells, channels) if channels > 1 else (rows, cells)
    grid = (rng.standard_normal(shape, dtype=np.float32) * amplitude + 128).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), resample)).astype(np.int16) - 128


def _camera_exif(rng: np.random.Generator, n: int) -> Image.Exif:
    """What a phone writes: make, model, capture time with offset; every third photo held upright
    (the first of each kind, so that even a one-file corpus has a rotated one)."""
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = CAMERAS[n % len(CAMERAS)]
    exif[ORIENTATION] = 6 if n % 3 == 0 else 1
    taken = datetime(2018, 1, 1) + timedelta(seconds=int(rng.integers(0, 6 * 365 * 86400)))
    details = exif.get_ifd(EXIF_IFD)
    details[DATE_TIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
    details[OFFSET_TIME_ORIGINAL] = "+02:00"
    return exif


def _encode(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format, **options)
    return out.getvalue()


def camera_jpeg(rng: np.random.Generator, n: int, width: int, height: int) -> bytes:
    return _encode(photo(rng, width, height), "JPEG", quality=90, exif=_camera_exif(rng, n))


def phone_heic(rng: np.random.Generator, n: int, width: int, height: int) -> bytes:
    """x265's ultrafast preset: the default one takes ~13 s per 12 MP picture on one core.
    Like an iPhone's, the file carries a 320 px thumbnail beside the full image."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _encode(photo(rng, width, height), "HEIF", quality=80, exif=_camera_exif(rng, n),
                   enc_params={"preset": "ultrafast"}, thumbnails=[320])


def screenshot_png(rng: np.random.Generator, n: int, width: int, height: int) -> bytes:
    """A chat or feed app: flat background, bars, rows of text with avatars, a few photos."""
    dark = n % 2 == 1
    background, ink, bar = ((18, 18, 18), (230, 230, 230), (38, 38, 38)) if dark else \
        ((255, 255, 255), (20, 20, 20), (246, 246, 246))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=38)
    draw.rectangle([0, 0, width, 140], fill=bar)
    draw.text((40, 40), "9:41", fill=ink, font=font)
    draw.rectangle([0, height - 200, width, height], fill=bar)
    y = 180
    while y < height - 320:
        if rng.random() < 0.2:  # a photo in the feed
            photo_height = int(rng.integers(400, 800))
            image.paste(photo(rng, width - 80, photo_height), (40, y))
            y += photo_height + 40
            continue
        image.paste(photo(rng, 96, 96), (40, y))  # avatar
        for line in range(int(rng.integers(1, 4))):
            words = " ".join(_word(rng) for _ in range(rng.integers(3, 9)))
            draw.text((170, y + line * 50), words, fill=ink, font=font)
        y += 200
    return _encode(image, "PNG")


def _word(rng: np.random.Generator) -> str:
    return "".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, rng.integers(2, 10)))


def chat_jpeg(rng: np.random.Generator, n: int, width: int, height: int) -> bytes:
    """Chat apps recompress and strip EXIF."""
    return _encode(photo(rng, width, height), "JPEG", quality=75)


def chat_gif(rng: np.random.Generator, n: int, width: int, height: int) -> bytes:
    """A short animation: a picture panning, reduced to one palette per frame."""
    scene = photo(rng, width + 40 * GIF_FRAMES, height)
    frames = [scene.crop((40 * i, 0, 40 * i + width, height)).quantize(256) for i in range(GIF_FRAMES)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)


def chat_webp(rng: np.random.Generator, n: int, width: int, height: int) -> bytes:
    return _encode(photo(rng, width, height), "WEBP", quality=80)


WRITERS = {"camera_jpeg": camera_jpeg, "phone_heic": phone_heic, "screenshot_png": screenshot_png,
           "chat_jpeg": chat_jpeg, "chat_gif": chat_gif, "chat_webp": chat_webp}

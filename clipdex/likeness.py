"""Is this the same picture in other bytes? Perceptual hashes of what a photo looks like.

Chat apps recompress and shrink, editors crop a little, phones save a screenshot of a photo with
bars around it, and bursts shoot one moment ten times: different bytes, so different SHA-256,
but one picture to the person looking. A hash keeps only the picture's coarse shapes: the
brightness of a small shrink, its lowest spatial frequencies (a cosine transform), one bit each
for above or below their median. Recompression, resizing and colour shifts barely move those; a
different picture flips about half of them. Flat bars (a screenshot's letterbox, a chat app's
frame) are trimmed first, so a screenshot of a photo hashes like the photo.

Two hashes: 64 bits (8×8 frequencies of a 32×32 shrink), compared with every group, and 256
bits (16×16 of 64×64), which confirms a match. Unrelated photos whose coarsest shapes agree
(two chat screenshots, two photos of a bright sky over dark ground) are common enough in a
large library to make the 64 bits alone join them (bench/dupes.py); their finer shapes differ.

It is computed from the thumbnail the indexer makes anyway (256 px), so a library indexed before
hashes existed gets them from its stored thumbnails without reading a single original.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
from PIL import Image

BAR_SHARE = 0.9          # an edge line starts a bar when this share of it is one colour
BAR_CONTINUES = 0.6      # and the bar goes on while this share of each next line has that colour
                         # (a status bar's clock and battery sit on it)
_BAR_TOLERANCE = 10      # grey levels a bar's pixel may differ from its colour (JPEG ringing)
_MIN_KEPT = 0.3          # never trim away more than this share of a side leaves
FLAT_SPREAD = 4.0        # a picture whose shrink varies less than this (grey levels) has no shape to hash


def _cosine_basis(n: int, keep: int) -> np.ndarray:
    """The orthonormal DCT-II rows for the first ``keep`` frequencies of ``n`` samples."""
    k = np.arange(keep)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis.astype(np.float64)


_COARSE_BASIS = _cosine_basis(32, 8)     # 8×8 frequencies of a 32×32 shrink
_DETAIL_BASIS = _cosine_basis(64, 16)    # 16×16 of a 64×64 shrink


def trim_bars(gray: np.ndarray) -> np.ndarray:
    """The picture without flat bars along its edges (rows or columns nearly all one colour,
    small text on them allowed: a status bar's clock)."""
    height, width = gray.shape

    def flat(lines: np.ndarray, colour: float, share: float) -> np.ndarray:
        """Per line (the last axis): whether at least ``share`` of it is within tolerance of ``colour``."""
        close = np.count_nonzero(np.abs(lines.astype(np.int16) - colour) <= _BAR_TOLERANCE, axis=-1)
        return close >= share * lines.shape[-1]

    def edge(lines: np.ndarray) -> int:
        """How many leading lines form a bar of the first line's colour. The lines after the
        first are tried 16 at a time: a sky or a wall can make a bar of half the picture before
        it is found too tall to trim, and numpy's cost is per call, not per line."""
        colour = float(np.median(lines[0]))
        if not flat(lines[0], colour, BAR_SHARE):
            return 0
        count = 1
        while count < len(lines):
            chunk = lines[count:count + 16]
            broken = np.flatnonzero(~flat(chunk, colour, BAR_CONTINUES))
            if broken.size:
                return count + int(broken[0])
            count += len(chunk)
        return count

    top, bottom = edge(gray), edge(gray[::-1])
    if height - top - bottom < _MIN_KEPT * height:
        top = bottom = 0
    gray = gray[top:height - bottom]
    left, right = edge(gray.T), edge(gray.T[::-1])
    if width - left - right < _MIN_KEPT * width:
        left = right = 0
    return gray[:, left:width - right]


class Look(NamedTuple):
    hash: int | None      # 64 bits as a signed integer; None for a picture with no shape (one colour)
    detail: bytes | None  # 256 bits
    share: float          # of the frame that is picture, bars trimmed (a screenshot's photo: about 0.4)


def _shrunk(picture: Image.Image, side: int) -> np.ndarray:
    return np.asarray(picture.resize((side, side), Image.Resampling.BOX), dtype=np.float64)


def _bits(shrunk: np.ndarray, basis: np.ndarray) -> bytes:
    coefficients = (basis @ shrunk @ basis.T).flatten()
    # The DC term (overall brightness) sets no threshold.
    return np.packbits(coefficients > np.median(coefficients[1:])).tobytes()


def look_of(image: Image.Image) -> Look:
    """The picture's hashes and the share of the frame it fills. A blank picture gets none:
    every blank picture would look alike."""
    gray = np.asarray(image.convert("L"))
    trimmed = trim_bars(gray)
    share = trimmed.size / max(1, gray.size)
    picture = Image.fromarray(np.ascontiguousarray(trimmed))
    coarse = _shrunk(picture, 32)
    if coarse.std() < FLAT_SPREAD:
        return Look(None, None, share)
    value = int.from_bytes(_bits(coarse, _COARSE_BASIS), "big")
    detail = _bits(_shrunk(picture, 64), _DETAIL_BASIS)
    return Look(value - (1 << 64) if value >= 1 << 63 else value, detail, share)


def look_of_thumbnail(data: bytes) -> Look:
    """The look of a stored WebP thumbnail (a library indexed before hashes existed)."""
    with Image.open(io.BytesIO(data)) as image:
        return look_of(image)


def distance(a: int, b: int) -> int:
    """How many of the 64 bits differ."""
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def detail_distance(a: bytes, b: bytes) -> int:
    """How many of the 256 bits differ."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()

"""Small WebP previews, stored in the database so the web app never needs the originals, and
the perceptual hash of what they show (look-alike groups: clipdex/likeness.py)."""

from __future__ import annotations

import io
from typing import NamedTuple

from PIL import Image

from clipdex.likeness import Look, look_of

THUMBNAIL_SIDE = 256   # longest side in pixels: sharp in a grid of ~200 px tiles
WEBP_QUALITY = 75


class Thumbnail(NamedTuple):
    webp: bytes
    width: int
    height: int
    look: Look         # the perceptual hash of the preview, and the share of it that is picture


def make_thumbnail(image: Image.Image) -> Thumbnail:
    """WebP bytes, width and height of a preview that fits in THUMBNAIL_SIDE², and its hash."""
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    thumb.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return Thumbnail(out.getvalue(), thumb.width, thumb.height, look_of(thumb))

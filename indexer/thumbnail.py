"""Small WebP previews, stored in the database so the web app never needs the originals."""

from __future__ import annotations

import io

from PIL import Image

THUMBNAIL_SIDE = 256   # longest side in pixels: sharp in a grid of ~200 px tiles
WEBP_QUALITY = 75


def make_thumbnail(image: Image.Image) -> tuple[bytes, int, int]:
    """WebP bytes, width and height of a preview that fits in THUMBNAIL_SIDE²."""
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    thumb.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue(), thumb.width, thumb.height

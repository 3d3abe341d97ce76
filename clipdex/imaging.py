"""From an image file's bytes to upright RGB pixels at the scale a model needs.

Shared by the indexer (every photo) and the web app (query images people upload), so both accept
and refuse exactly the same files.

The format comes from the bytes, never the name. JPEGs are decoded through ``draft()`` straight
to the smallest DCT scale (1/2, 1/4, 1/8) that still covers what the model needs, and a HEIC
from a phone through the scaled copy it carries: a 12 MP photo is never decoded in full for a
224 px model. EXIF orientation is applied
(HEIC through pillow-heif arrives upright already), transparency is flattened on white, the first
frame of an animation is used, and 16-bit images are scaled down, not clipped. Headers that claim
more pixels than the cap are refused before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_VIDEO_BRANDS = {b"isom", b"iso2", b"mp41", b"mp42", b"qt  ", b"3gp4", b"3gp5", b"m4v ", b"avc1", b"dash"}

# Formats we decode, as Pillow names them.
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "heif": "HEIF",
               "avif": "AVIF", "bmp": "BMP", "tiff": "TIFF"}


class NotAnImage(Exception):
    """The bytes are something else (video, document, text): skipped, not a failure."""


class DecodeFailure(Exception):
    """The bytes are (or claim to be) an image we cannot use; the message is the reason."""


def sniff(head: bytes) -> str:
    """The format of a file from its first bytes: one of PIL_FORMATS, else raises."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "heif"
        if brand in _AVIF_BRANDS:
            return "avif"
        if brand in _VIDEO_BRANDS or brand.startswith(b"3g"):
            raise NotAnImage("a video (MP4/MOV)")
        raise DecodeFailure(f"unsupported ISO media brand {brand.decode('latin-1')!r}")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        raise NotAnImage("a video (QuickTime)")
    if head[:4] in (b"\x07\x08V1", b"\x07\x08V2") or head[:4] == b"wxgf":
        raise DecodeFailure("WeChat encrypted image; decrypt it first")
    if not head:
        raise DecodeFailure("empty file (0 bytes)")
    if head.startswith(b"8BPS"):
        raise DecodeFailure("unsupported format: Photoshop PSD")
    if head[:4] == b"\x00\x00\x01\x00":
        raise DecodeFailure("unsupported format: Windows icon")
    raise NotAnImage(_describe_other(head))


def _describe_other(head: bytes) -> str:
    """A few words on what a non-image file holds, for the failure report."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith((b"<?xml", b"<plist")):
        return "an XML document"
    if text.startswith((b"{", b"[")):
        return "JSON text"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognised binary data"


@dataclass
class DecodedImage:
    image: Image.Image          # RGB, upright, at least ``min_side`` on its short side when possible
    format: str                 # key of PIL_FORMATS
    width: int                  # full size as displayed (after orientation)
    height: int
    inspected: Any = None       # what ``inspect`` returned (the indexer reads EXIF there)


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB with transparency flattened on white and high bit depths scaled, not clipped."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        pixels = np.asarray(im, dtype=np.float64)
        top = float(pixels.max()) if pixels.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        im = Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "PA", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _shrink(im: Image.Image, min_side: int) -> Image.Image:
    """Box-averages a large image down by an integer factor, keeping at least min_side: what
    draft() does for JPEG, for every other format, so later resizes start from fewer pixels."""
    factor = min(im.size) // min_side
    return im.reduce(factor) if factor >= 2 else im


_heif_ready = False


def _register_heif() -> None:
    """Teaches Pillow HEIC/HEIF (once per process; repeating it is harmless)."""
    global _heif_ready
    if not _heif_ready:
        import pillow_heif

        # Thumbnails on: draft() can then decode a phone's embedded 320 px copy instead of 12 MP.
        pillow_heif.register_heif_opener(thumbnails=True)
        _heif_ready = True


def decode(data: bytes, *, min_side: int, max_pixels: int,
           inspect: Callable[[Image.Image], Any] | None = None) -> DecodedImage:
    """Decodes an image's bytes; raises NotAnImage or DecodeFailure with a readable reason.

    ``inspect`` sees the opened image after the size check and before any pixel is decoded.
    """
    fmt = sniff(data[:32])
    if fmt == "heif":
        _register_heif()
    # Pillow's own guard errors at twice this; ours below refuses anything over it with a reason.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
            width, height = im.size
            if width <= 0 or height <= 0:
                raise DecodeFailure(f"{fmt.upper()} header gives an empty size {width}×{height}")
            if width * height > max_pixels:
                raise DecodeFailure(
                    f"{fmt.upper()} header claims {width}×{height} pixels "
                    f"({width * height / 1e6:.0f} MP), over the cap of {max_pixels / 1e6:.0f} MP"
                )
            inspected = inspect(im) if inspect is not None else None
            if fmt in ("jpeg", "heif"):
                # JPEG: decode at 1/2, 1/4 or 1/8 scale in the DCT; HEIF: an embedded thumbnail
                # that is a faithful scaled copy. Either way at least min_side on each side.
                im.draft("RGB", (min_side, min_side))
            im.seek(0)  # first frame of GIF / animated WebP
            im.load()
            orientation = im.getexif().get(0x0112) if fmt != "heif" else None
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            im = ImageOps.exif_transpose(im) if orientation and orientation != 1 else im
            rgb = _shrink(_to_rgb(im), min_side)
    except (DecodeFailure, NotAnImage):
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeFailure(f"refused as a decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise DecodeFailure(f"bytes start like {fmt.upper()} but Pillow cannot read them") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, MemoryError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise DecodeFailure(f"truncated {fmt.upper()}: {text}") from None
        raise DecodeFailure(f"cannot decode {fmt.upper()}: {text}") from None
    return DecodedImage(rgb, fmt, width, height, inspected)

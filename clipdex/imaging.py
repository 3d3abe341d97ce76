"""From an image file's bytes to upright RGB pixels at the scale a model needs.

Shared by the indexer (every photo) and the web app (query images people upload), so both accept
and refuse exactly the same files.

The format comes from the bytes, never the name. JPEGs are decoded through ``draft()`` straight
to the smallest DCT scale (1/2, 1/4, 1/8) that still covers what the model needs, and a HEIC
from a phone through the scaled copy it carries: a 12 MP photo is never decoded in full for a
224 px model. EXIF orientation is applied
(HEIC through pillow-heif arrives upright already), transparency is flattened on white, the first
frame of an animation is used, and 16-bit images are scaled down, not clipped. Headers that claim
more pixels than the cap are refused before any pixel is decoded, and the pixels of images being
decoded at once share a memory budget (a 300 KB PNG can decode to 100 MP).
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

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


class DecodeBudget:
    """How many bytes of decoded pixels may exist at once across the threads of a process.

    A decode reserves its estimate before it decodes and gives it back once the image is reduced;
    one that needs more than the whole budget waits until it can have all of it, and runs alone.
    """

    def __init__(self, limit_bytes: int) -> None:
        _return_freed_pixels()
        self.limit = max(1, limit_bytes)
        self.used = 0
        self.peak = 0          # the most ever reserved at once (tests and benchmarks read it)
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = max(1, min(nbytes, self.limit))
        with self._changed:
            while self.used + nbytes > self.limit:
                self._changed.wait()
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._changed:
                self.used -= nbytes
                self._changed.notify_all()


PIXEL_BLOCK_BYTES = 64 << 20


def _return_freed_pixels() -> None:
    """Pillow allocates large images in blocks (16 MiB by default). glibc keeps freed blocks of
    that size in each thread's heap, so after decoding one huge image per thread, every decode
    thread holds hundreds of MB that it no longer uses, and a budget of live pixels no longer
    bounds the process. Blocks over glibc's largest mmap threshold (32 MiB) are mapped for
    themselves and given back to the system when freed."""
    if Image.core.get_block_size() < PIXEL_BLOCK_BYTES:
        Image.core.set_block_size(PIXEL_BLOCK_BYTES)


_BYTES_PER_BAND = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


def decoded_bytes(im: Image.Image) -> int:
    """Peak memory of decoding ``im`` at its current (drafted) size: the frame, one transposed or
    converted copy of it, and the RGB result."""
    pixels = im.size[0] * im.size[1]
    frame = pixels * len(im.getbands()) * _BYTES_PER_BAND.get(im.mode, 1)
    return 2 * frame + 3 * pixels


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


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the ISO-BMFF boxes in data[start:end]."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1 and at + 16 <= end:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


def heif_primary_is_transformed(data: bytes) -> bool | None:
    """Whether the HEIF's primary image carries a rotation or mirror property (irot, imir), which
    the decoder applies itself; None when the boxes cannot be read."""
    try:
        meta = next(((s, e) for kind, s, e in _boxes(data, 0, len(data)) if kind == b"meta"), None)
        if meta is None:
            return None
        children = {kind: (s, e) for kind, s, e in _boxes(data, meta[0] + 4, meta[1])}  # FullBox
        pitm, iprp = children.get(b"pitm"), children.get(b"iprp")
        if pitm is None or iprp is None:
            return None
        primary = (struct.unpack_from(">H", data, pitm[0] + 4)[0] if data[pitm[0]] == 0
                   else struct.unpack_from(">I", data, pitm[0] + 4)[0])
        parts = {kind: (s, e) for kind, s, e in _boxes(data, *iprp)}
        properties = [kind for kind, _s, _e in _boxes(data, *parts[b"ipco"])]
        at = parts[b"ipma"][0]
        version, flags = data[at], int.from_bytes(data[at + 1:at + 4], "big")
        (entries,), at = struct.unpack_from(">I", data, at + 4), at + 8
        for _ in range(entries):
            item, at = ((struct.unpack_from(">H", data, at)[0], at + 2) if version < 1
                        else (struct.unpack_from(">I", data, at)[0], at + 4))
            count, at = data[at], at + 1
            indexes = []
            for _ in range(count):
                if flags & 1:
                    indexes.append(struct.unpack_from(">H", data, at)[0] & 0x7FFF)
                    at += 2
                else:
                    indexes.append(data[at] & 0x7F)
                    at += 1
            if item == primary:
                return any(0 < i <= len(properties) and properties[i - 1] in (b"irot", b"imir")
                           for i in indexes)
        return False
    except (KeyError, IndexError, struct.error):
        return None


def _orientation_to_apply(im: Image.Image, fmt: str, data: bytes) -> int | None:
    """The EXIF orientation still to apply after decoding.

    pillow-heif applies a HEIF's own irot/imir and then resets EXIF Orientation to 1 (keeping the
    old value in ``original_orientation``). A HEIF rotated only by EXIF (an iPhone 7, a Galaxy photo
    edited on Windows) has no irot, so that EXIF value must still be applied; irot stays
    authoritative when it is there.
    """
    if fmt != "heif":
        return im.getexif().get(0x0112)
    original = im.info.get("original_orientation")
    if original in (2, 3, 4, 5, 6, 7, 8) and heif_primary_is_transformed(data) is False:
        return original
    return None


_pillow_limit_lock = threading.Lock()


def _raise_pillow_limit(max_pixels: int) -> None:
    """Pillow's own guard (it errors at twice MAX_IMAGE_PIXELS) must not refuse what our cap
    allows. It is only ever raised, never lowered, so callers with different caps in one process
    (the web app's 100 MP uploads, the indexer's setting) cannot undo each other; each call's own
    cap is checked against the header below."""
    with _pillow_limit_lock:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


_PILLOW_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


def decode(data: bytes, *, min_side: int, max_pixels: int,
           inspect: Callable[[Image.Image], Any] | None = None,
           budget: DecodeBudget | None = None) -> DecodedImage:
    """Decodes an image's bytes; raises NotAnImage or DecodeFailure with a readable reason.

    ``inspect`` sees the opened image after the size check and before any pixel is decoded;
    ``budget`` bounds the memory of decodes running at once in this process.
    """
    fmt = sniff(data[:32])
    with _reading(fmt, max_pixels):
        im, width, height = _open_checked(data, fmt, max_pixels)
        scaled = fmt in ("jpeg", "heif")
        inspected = inspect(im) if inspect is not None and scaled else None
        if scaled:
            # JPEG: decode at 1/2, 1/4 or 1/8 scale in the DCT; HEIF: an embedded thumbnail
            # that is a faithful scaled copy. Either way at least min_side on each side.
            im.draft("RGB", (min_side, min_side))
        with budget.reserve(decoded_bytes(im)) if budget is not None else _no_budget():
            if inspect is not None and not scaled:
                inspected = inspect(im)   # may decode: a PNG's EXIF can follow its pixels
            im.seek(0)  # first frame of GIF / animated WebP
            im.load()
            orientation = _orientation_to_apply(im, fmt, data)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            if orientation and orientation != 1:
                im = ImageOps.exif_transpose(im) if fmt != "heif" else _transpose(im, orientation)
            rgb = _shrink(_to_rgb(im), min_side)
            del im
    return DecodedImage(rgb, fmt, width, height, inspected)


@dataclass
class JpegHeader:
    """What a JPEG's header says, read without decoding a pixel: for decoders other than Pillow's
    (nvJPEG on the GPU, indexer/device_decode.py)."""

    width: int                  # full size as displayed (after orientation)
    height: int
    orientation: int | None     # EXIF orientation still to apply to the decoded pixels
    inspected: Any              # what ``inspect`` returned
    plain: bool                 # baseline YCbCr or grayscale, whole (ends with its EOI marker)
    format: str = "jpeg"        # as DecodedImage's


def jpeg_header(data: bytes, *, max_pixels: int,
                inspect: Callable[[Image.Image], Any] | None = None) -> JpegHeader | None:
    """A JPEG's header, checked as ``decode`` checks it (same failures); None for other formats.

    ``plain`` is what every JPEG decoder reads alike. Progressive, CMYK and YCCK files, and bytes
    that do not end with the end-of-image marker (a file cut short, or data appended after the
    picture) are left to Pillow, whose handling of them the rest of clipdex is built on."""
    fmt = sniff(data[:32])
    if fmt != "jpeg":
        return None
    with _reading(fmt, max_pixels):
        im, width, height = _open_checked(data, fmt, max_pixels)
        inspected = inspect(im) if inspect is not None else None
        orientation = im.getexif().get(0x0112)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        plain = (im.mode in ("RGB", "L") and not im.info.get("progressive") and not im.info.get("progression")
                 and data.rstrip(b"\0").endswith(b"\xff\xd9"))
    return JpegHeader(width, height, orientation if orientation in range(2, 9) else None, inspected, plain)


WHOLE_READ_BYTES = 64 << 20    # a larger file is handed to its decoder in pieces of this size


def _open_checked(data: bytes, fmt: str, max_pixels: int) -> tuple[Image.Image, int, int]:
    """The image opened (header only), its size checked against the cap."""
    if fmt == "heif":
        _register_heif()
    _raise_pillow_limit(max_pixels)
    im = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
    # The bytes are in memory: the decoder takes them in one piece, not Pillow's 64 KiB at a time.
    # The decoder lets the GIL go for each piece and must win it back after; among busy indexing
    # threads each win can wait for Python's switch interval (5 ms), which for a 3.5 MB photo
    # in 55 pieces cost more than the decode (bench/gil.py, BENCHMARKS.md §15).
    im.decodermaxblock = max(im.decodermaxblock, min(len(data), WHOLE_READ_BYTES))
    width, height = im.size
    if width <= 0 or height <= 0:
        raise DecodeFailure(f"{fmt.upper()} header gives an empty size {width}×{height}")
    if width * height > max_pixels:
        raise DecodeFailure(_over_cap(fmt, width * height, max_pixels, f"{width}×{height} pixels "))
    return im, width, height


@contextmanager
def _reading(fmt: str, max_pixels: int) -> Iterator[None]:
    """Pillow's errors while reading an image of format ``fmt``, as DecodeFailure with a reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except (DecodeFailure, NotAnImage):
        raise
    except Image.DecompressionBombError as exc:
        claimed = _PILLOW_BOMB_SIZE.search(str(exc))
        raise DecodeFailure(_over_cap(fmt, int(claimed[1]) if claimed else None, max_pixels, "")) from None
    except Image.UnidentifiedImageError:
        raise DecodeFailure(f"bytes start like {fmt.upper()} but Pillow cannot read them") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, MemoryError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise DecodeFailure(f"truncated {fmt.upper()}: {text}") from None
        raise DecodeFailure(f"cannot decode {fmt.upper()}: {text}") from None


def _over_cap(fmt: str, pixels: int | None, max_pixels: int, size: str) -> str:
    if pixels is None:
        claimed = "more pixels"
    else:
        claimed = f"{size}({pixels / 1e6:,.0f} MP)" if size else f"{pixels / 1e6:,.0f} MP"
    return (f"refused as a decompression bomb: {fmt.upper()} header claims {claimed}, over the cap of "
            f"{max_pixels / 1e6:,.0f} MP (CLIPDEX_MAX_PIXELS)")


@contextmanager
def _no_budget() -> Iterator[None]:
    yield


_TRANSPOSE = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
              4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE],
              6: [Image.Transpose.ROTATE_270], 7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_90]}


def _transpose(im: Image.Image, orientation: int) -> Image.Image:
    """EXIF orientation applied by hand (for HEIF, whose EXIF Orientation pillow-heif already reset)."""
    for step in _TRANSPOSE[orientation]:
        im = im.transpose(step)
    return im

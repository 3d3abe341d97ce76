"""clipdex.imaging: the format from the bytes, and never more pixels decoded than needed."""

import io

import pytest
from PIL import Image

from clipdex.imaging import DecodeFailure, NotAnImage, decode, sniff
from tests import libraries as L


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def test_jpeg_is_decoded_at_a_reduced_scale_but_reports_its_full_size():
    data = encode(L.picture(1, (2000, 1500)), "JPEG", quality=90)
    decoded = decode(data, min_side=224, max_pixels=10**9)
    assert (decoded.width, decoded.height) == (2000, 1500)
    assert decoded.image.size == (500, 375)        # 1/4 in the DCT: the largest cut that keeps both sides >= 224
    assert min(decode(data, min_side=400, max_pixels=10**9).image.size) >= 375


def test_heic_uses_its_embedded_thumbnail_when_large_enough():
    import pillow_heif

    pillow_heif.register_heif_opener()
    data = encode(L.picture(2, (1600, 1200)), "HEIF", quality=60, thumbnails=[320])
    decoded = decode(data, min_side=224, max_pixels=10**9)
    assert (decoded.format, decoded.width, decoded.height) == ("heif", 1600, 1200)
    assert decoded.image.size == (320, 240)
    full = decode(data, min_side=400, max_pixels=10**9)      # the thumbnail is too small for this
    assert min(full.image.size) >= 400


def test_other_formats_are_box_reduced_to_what_is_needed():
    data = encode(L.picture(3, (1170, 2532)), "PNG")
    decoded = decode(data, min_side=224, max_pixels=10**9)
    assert (decoded.width, decoded.height) == (1170, 2532) and decoded.image.size == (234, 507)


def test_orientation_and_transparency():
    exif = Image.Exif()
    exif[0x0112] = 8
    rotated = decode(encode(L.picture(4, (120, 80)), "JPEG", exif=exif.tobytes()), min_side=32, max_pixels=10**9)
    assert (rotated.width, rotated.height) == (80, 120) and rotated.image.size[0] < rotated.image.size[1]
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    flat = decode(encode(clear, "PNG"), min_side=16, max_pixels=10**9).image
    assert flat.mode == "RGB" and flat.getpixel((5, 5)) == (255, 255, 255)   # transparent -> white


@pytest.mark.parametrize("head, kind", [(b"\xff\xd8\xff\xe0", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"),
                                        (b"GIF89a", "gif"), (b"RIFF\0\0\0\0WEBP", "webp"),
                                        (b"\0\0\0\x18ftypheic", "heif"), (b"\0\0\0\x18ftypavif", "avif"),
                                        (b"II*\x00", "tiff"), (b"BM" + b"\0" * 30, "bmp")])
def test_sniff_by_content(head, kind):
    assert sniff(head) == kind


@pytest.mark.parametrize("head, error, words", [
    (b"", DecodeFailure, "empty file"), (b"\0\0\0\x18ftypmp42", NotAnImage, "video"),
    (b"<!DOCTYPE html><html>", NotAnImage, "HTML"), (b"%PDF-1.7", NotAnImage, "PDF"),
    (b"\x07\x08V2\x08\x07", DecodeFailure, "WeChat"), (b"8BPS", DecodeFailure, "PSD"),
])
def test_sniff_refusals(head, error, words):
    with pytest.raises(error, match=words):
        sniff(head)

"""clipdex.imaging: the format from the bytes, and never more pixels decoded than needed."""

import io

import numpy as np

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


def _left_column_colour(image: Image.Image) -> tuple:
    return image.getpixel((0, image.size[1] // 2))


@pytest.mark.parametrize("orientation, size", [(6, (64, 96)), (8, (64, 96)), (3, (96, 64))])
def test_heif_rotated_only_by_exif_is_stored_upright(orientation, size):
    """An iPhone 7 HEIC, or a Galaxy HEIC edited in Windows Photos, carries EXIF Orientation and no
    `irot` box: galleries show it upright, so clipdex must rotate it itself."""
    from clipdex.imaging import heif_primary_is_transformed

    data = L.heic_rotated_by_exif_only(5, (96, 64), orientation)
    assert heif_primary_is_transformed(data) is False
    decoded = decode(data, min_side=16, max_pixels=10**9)
    assert (decoded.width, decoded.height) == size and decoded.image.size[0] / decoded.image.size[1] == size[0] / size[1]
    # The same picture with an irot box (how an iPhone 8 and later write it) comes out identical:
    # irot stays authoritative, and is never applied twice.
    with_irot = L.heic(5, (96, 64), orientation=orientation)
    assert heif_primary_is_transformed(with_irot) is True
    reference = decode(with_irot, min_side=16, max_pixels=10**9)
    assert (reference.width, reference.height) == size
    first, second = decoded.image.convert("L"), reference.image.convert("L")
    assert first.size == second.size
    difference = float(np.abs(np.asarray(first, float) - np.asarray(second, float)).mean())
    assert difference < 12, difference      # same orientation (a wrong one differs by ~40 a pixel)


def test_heif_without_rotation_is_left_alone():
    from clipdex.imaging import heif_primary_is_transformed

    plain = L.heic(6, (96, 64))
    assert heif_primary_is_transformed(plain) is False
    assert decode(plain, min_side=16, max_pixels=10**9).width == 96
    assert heif_primary_is_transformed(b"\0\0\0\x18ftypheic" + b"\0" * 40) is None   # unreadable boxes


def test_a_200_megapixel_phone_photo_is_under_the_default_cap():
    """Samsung Galaxy Ultra: 12240×16320. The header check lets it through (the data here is cut
    short, so it fails later, on decoding) while a 65535×65535 header is still refused as a bomb."""
    from clipdex.config import Settings

    cap = Settings().max_pixels
    galaxy = L.bomb_png(12240, 16320)
    with pytest.raises(DecodeFailure) as failure:
        decode(galaxy, min_side=224, max_pixels=cap)
    assert "decompression bomb" not in str(failure.value) and "over the cap" not in str(failure.value)
    with pytest.raises(DecodeFailure, match=r"decompression bomb: PNG header claims 4,295 MP, over the cap of 250 MP"):
        decode(L.bomb_png(65535, 65535), min_side=224, max_pixels=cap)


def test_the_bomb_reason_quotes_clipdex_limit_not_pillows():
    """Pillow refuses at twice its limit and says so in its own words; the reason names ours."""
    with pytest.raises(DecodeFailure) as failure:
        decode(L.bomb_png(60000, 60000), min_side=224, max_pixels=1_000_000)
    assert "over the cap of 1 MP" in str(failure.value) and "2000000" not in str(failure.value)


def test_concurrent_decodes_stay_within_the_memory_budget():
    """A 300 KB PNG can decode to 100 MP: decodes running at once reserve their estimated memory
    from one budget; one larger than the whole budget runs alone."""
    import threading

    from clipdex.imaging import DecodeBudget, decoded_bytes

    flat = encode(Image.new("RGB", (3000, 2000), (90, 120, 200)), "PNG")      # 6 MP in 20 KB
    with Image.open(io.BytesIO(flat)) as probe:
        need = decoded_bytes(probe)
    budget = DecodeBudget(int(need * 1.5))          # room for one at a time
    results, errors = [], []

    def work():
        try:
            results.append(decode(flat, min_side=224, max_pixels=10**9, budget=budget).image.size)
        except Exception as exc:                   # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 6
    assert need <= budget.peak <= budget.limit and budget.used == 0
    small = DecodeBudget(need // 4)                 # an image larger than the whole budget still decodes
    assert decode(flat, min_side=224, max_pixels=10**9, budget=small).image.size[0] >= 224
    assert small.peak == small.limit and small.used == 0

"""JPEGs decoded on the model's device (indexer/device_decode.py: nvJPEG on a GPU worker), run
here on the CPU through the very same code: a library gets the rows, previews and vectors of the
Pillow path, a JPEG the device refuses goes back to Pillow (and fails only with Pillow's reason),
and a photo's EXIF orientation is applied as Pillow applies it."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image, ImageOps

from clipdex.imaging import jpeg_header
from indexer.device_decode import orient
from indexer.in_process import index_folder
from indexer.runtime import Runtime
from indexer.thumbnail import THUMBNAIL_SIDE
from tests import libraries as L
from tests.test_archives import second_database
from tests.test_ingest import counts, failures, located


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_orientation_is_applied_as_pillow_applies_it(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    tagged = io.BytesIO()
    Image.fromarray(pixels).save(tagged, "PNG", exif=L.exif_bytes(orientation=orientation))
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(tagged.getvalue()))))
    import torch

    got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape and (got == want).all()


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def camera_folder(base: Path) -> Path:
    """JPEGs of every kind a phone or a chat app leaves: turned by EXIF (large enough to be reduced
    before resizing), progressive, CMYK, grayscale, with data after the picture, and one whose
    scan is damaged (its header is fine: only decoding finds it)."""
    big = L.picture(7, (1200, 900))
    scan = _jpeg(L.picture(8, (400, 300)))
    start = scan.index(b"\xff\xda") + 20     # into the scan's entropy-coded data
    files = {
        "turned_6.jpg": L.jpeg(1, (1200, 900), orientation=6, taken="2023:05:01 10:00:00", make="Apple"),
        "turned_3.jpg": L.jpeg(2, (640, 480), orientation=3),
        "turned_8.jpg": L.jpeg(3, (480, 640), orientation=8),
        "mirrored_5.jpg": L.jpeg(4, (300, 200), orientation=5),
        "progressive.jpg": _jpeg(big, progressive=True),
        "cmyk.jpg": _jpeg(L.picture(9, (200, 150)).convert("CMYK")),
        "gray.jpg": _jpeg(L.picture(10, (300, 400), mode="L")),
        "trailer.jpg": L.jpeg(11, (320, 240)) + b"appended by an editor",
        "damaged_scan.jpg": scan[:start] + b"\xff\xff" * 60 + scan[start:],
        "tiny.jpg": L.jpeg(12, (3, 2)),
    }
    for name, data in files.items():
        L.write(base / name, data, L.MTIME)
    return base


def library(base: Path) -> Path:
    L.takeout_library(base / "takeout")
    L.iphone_library(base / "iphone")
    L.bad_files(base / "bad")
    camera_folder(base / "camera")
    return base


def vectors(url: str) -> dict[str, np.ndarray]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT l.relpath, e.embedding::real[] FROM locations l "
                            "JOIN embeddings e ON e.image_id = l.image_id").fetchall()
    return {path: np.asarray(v, dtype=np.float32) for path, v in rows}


def previews(url: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT l.relpath, t.width, t.height FROM locations l "
                            "JOIN thumbnails t ON t.image_id = l.image_id").fetchall()
    return {path: (w, h) for path, w, h in rows}


def plain_jpegs(base: Path, relpaths) -> set[bytes]:
    """The distinct contents among these files that the device is given: plain JPEGs, by their
    header."""
    found = set()
    for relpath in relpaths:
        data = (base / relpath).read_bytes()
        header = jpeg_header(data, max_pixels=10**9)
        if header is not None and header.plain:
            found.add(hashlib.sha256(data).digest())
    return found


def test_a_library_decoded_on_the_device_gives_the_rows_of_the_pillow_path(settings, db, pg_url, tmp_path):
    photos = library(tmp_path / "library")
    on = dataclasses.replace(settings, gpu_decode="on", task_files=7)   # batches written while the next is computed
    rt = Runtime(on, db)
    try:
        result = index_folder(on, db, photos, out=None, runtime=rt)
    finally:
        rt.close()
    # Every plain JPEG went to the device; only the damaged scan came back to Pillow.
    assert rt.device_refused == 1
    assert rt.device_decoded == len(plain_jpegs(photos, located(db.url))) > 10
    assert result.timings["device_decode"] > 0

    off_settings, off_db = second_database(dataclasses.replace(settings, gpu_decode="off"), pg_url,
                                           f"test_device_{os.getpid()}")
    off = index_folder(off_settings, off_db, photos, out=None)
    assert "device_decode" not in off.timings
    assert result.images_encoded == off.images_encoded

    rows, twins = located(db.url), located(off_db.url)
    assert set(rows) == set(twins)
    for path, row in rows.items():
        for field in ("source", "album", "source_meta", "format", "width", "height", "exif_orientation",
                      "taken_at", "utc_offset_minutes", "latitude", "longitude", "camera_make",
                      "camera_model", "description", "favorite", "extra"):
            assert row[field] == twins[path][field], (path, field)
    assert rows["camera/turned_6.jpg"]["width"] == 900 and rows["camera/turned_6.jpg"]["height"] == 1200
    assert failures(db.url) == failures(off_db.url)
    assert failures(db.url)["camera/damaged_scan.jpg"][0] == "decode"
    assert counts(db.url) == counts(off_db.url)
    # The device's previews are made from its reduced decode, upright, as large as a preview is
    # (Pillow's come from draft()'s scale for this 64-pixel model: smaller, same shape).
    made, twin_previews = previews(db.url), previews(off_db.url)
    assert set(made) == set(twin_previews)
    for path, (width, height) in made.items():
        if not plain_jpegs(photos, [path]):
            assert (width, height) == twin_previews[path], path     # Pillow's, on both runs
            continue
        full = rows[path]["width"], rows[path]["height"]
        scale = min(1.0, THUMBNAIL_SIDE / max(full))
        assert abs(width - full[0] * scale) <= 1 and abs(height - full[1] * scale) <= 1, path
        assert (width >= height) == (twin_previews[path][0] >= twin_previews[path][1]), path
    assert made["camera/turned_6.jpg"] == (192, 256)

    # The vectors are the same photo's: resampled on the device from the full decode, by Pillow
    # from draft()'s DCT scaling, they differ only in the last bits of the pixels.
    device, pillow = vectors(db.url), vectors(off_db.url)
    cosines = {p: float(device[p] @ pillow[p] / np.linalg.norm(device[p]) / np.linalg.norm(pillow[p]))
               for p in device}
    assert set(device) == set(pillow) and min(cosines.values()) >= 0.99, sorted(cosines.items(), key=lambda kv: kv[1])[:3]


def test_a_second_model_reads_its_pixels_on_the_device(settings, db, tiny_multilingual_dir, tmp_path):
    """Known photos that need another model's vectors (no preview, no facts): the device decodes
    them too, and nothing of the stored images changes."""
    photos = camera_folder(tmp_path / "camera")
    first = index_folder(settings, db, photos, out=None)
    before = located(db.url), previews(db.url)
    other = dataclasses.replace(settings, model=f"local-dir:{tiny_multilingual_dir}", gpu_decode="on")
    rt = Runtime(other, db)
    try:
        second = index_folder(other, db, photos, out=None, runtime=rt)
    finally:
        rt.close()
    assert second.images_encoded == first.images_encoded
    assert rt.device_decoded == len(plain_jpegs(photos, located(db.url)))   # the damaged scan is not tried again
    assert (located(db.url), previews(db.url)) == before
    with psycopg.connect(db.url) as conn:
        per_model = conn.execute("SELECT model_id, count(*) FROM embeddings GROUP BY 1 ORDER BY 1").fetchall()
    assert [n for _m, n in per_model] == [first.images_encoded] * 2

"""Every kind of bad input either indexes correctly or becomes a failure with a readable reason,
and none of them stops the run."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
import psycopg
import pytest
from PIL import Image

from indexer.in_process import index_folder
from tests import libraries as L


def huge_jpeg() -> bytes:
    """A real small JPEG whose SOF header claims 65000×65000 pixels."""
    data = bytearray(L.jpeg(5, (16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def huge_gif() -> bytes:
    data = bytearray(L.gif(6, (16, 16)))
    data[6:10] = struct.pack("<HH", 65535, 65535)          # logical screen
    start = data.index(b"\x2c")                             # first image descriptor
    data[start + 5:start + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def garbage_exif_jpeg(taken: str, offset: str | None, gps) -> bytes:
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = taken
    if offset:
        ifd[0x9011] = offset
    if gps:
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = gps
    return encode(L.picture(7), "JPEG", exif=exif.tobytes())


def bad_library(root):
    w = L.write
    good_png, good_heic = L.png(10, (80, 60)), L.heic(11, (80, 60))
    w(root / "broken" / "zero.jpg", b"")
    w(root / "broken" / "truncated.jpg", L.jpeg(12, (200, 150))[:700])
    w(root / "broken" / "truncated.png", good_png[: len(good_png) // 2])
    w(root / "broken" / "truncated.heic", good_heic[: len(good_heic) // 2])
    w(root / "broken" / "text.jpg", "this is a text file with a .jpg name")
    w(root / "bombs" / "huge.png", L.bomb_png())
    w(root / "bombs" / "huge.jpg", huge_jpeg())
    w(root / "bombs" / "huge.gif", huge_gif())
    w(root / "odd" / "one-pixel.png", encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"))
    sixteen = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    w(root / "odd" / "sixteen-bit.png", encode(Image.fromarray(sixteen), "PNG"))
    w(root / "odd" / "cmyk.jpg", encode(L.picture(13).convert("CMYK"), "JPEG"))
    palette = L.picture(14).convert("P")
    palette.info["transparency"] = 0
    w(root / "odd" / "palette-transparent.png", encode(palette, "PNG", transparency=0))
    frames = [L.picture(15 + i, (60, 40)) for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    w(root / "odd" / "animated.webp", animated.getvalue())
    w(root / "exif" / "zero-date.jpg", garbage_exif_jpeg("0000:00:00 00:00:00", "+99:00", None), L.MTIME)
    w(root / "exif" / "year-9999.jpg", garbage_exif_jpeg("9999:12:31 23:59:59", "   :  ", None), L.MTIME)
    w(root / "exif" / "bad-gps.jpg",
      garbage_exif_jpeg("2020:01:01 10:00:00", "+02:00", ("N", (95.0, 0.0, 0.0), "E", (1.0, 2.0, 3.0))), L.MTIME)
    photos = root / "Takeout" / "Google Photos" / "Photos from 2020"
    w(photos / "invalid.jpg", L.jpeg(16), L.MTIME)
    w(photos / "invalid.jpg.json", '{"title": "invalid.jpg", "photoTakenTime": {"timestamp": ')
    w(photos / "fields.jpg", L.jpeg(17), L.MTIME)
    w(photos / "fields.jpg.json", json.dumps({"title": "fields.jpg", "photoTakenTime": "yesterday",
                                              "geoData": {"latitude": "north"}, "people": "Susan"}))
    w(photos / "page.html", "<html>not indexed, not reported</html>")
    os.symlink(root / "odd", root / "odd" / "loop")
    names = os.fsencode(root / "names")
    os.makedirs(names, exist_ok=True)
    for seed, raw in enumerate(("照片".encode("gbk") + b".jpg", b"\xff\xfe\xfa-not-utf8.jpg"), start=40):
        with open(os.path.join(names, raw), "wb") as handle:
            handle.write(L.jpeg(seed))
    deep = root / "names" / "/".join(["a-long-folder-name-" + "x" * 40] * 20)
    w(deep / ("y" * 200 + ".jpg"), L.jpeg(18))
    return root


@pytest.fixture
def indexed(settings, db, tmp_path):
    root = bad_library(tmp_path / "bad")
    result = index_folder(settings, db, root, out=None)
    with psycopg.connect(db.url) as conn:
        failures = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT relpath, stage, reason FROM ingest_failures")}
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT l.relpath, i.format, i.width, i.height, i.taken_at_source, i.latitude, l.source_meta "
            "FROM locations l JOIN images i ON i.id = l.image_id")}
    return result, failures, rows


def test_failures_have_readable_reasons(indexed):
    _result, failures, _rows = indexed
    reasons = {path: reason for path, (_stage, reason) in failures.items()}
    assert reasons["broken/zero.jpg"] == "empty file (0 bytes)"
    assert reasons["broken/truncated.jpg"].startswith("truncated JPEG")
    assert reasons["broken/truncated.png"].startswith(("truncated PNG", "cannot decode PNG"))
    assert reasons["broken/truncated.heic"].startswith(("truncated HEIF", "cannot decode HEIF"))
    assert reasons["broken/text.jpg"] == "named like an image but the content is text"
    for bomb in ("bombs/huge.png", "bombs/huge.jpg", "bombs/huge.gif"):
        assert "decompression bomb" in reasons[bomb] or "over the cap" in reasons[bomb], reasons[bomb]
    assert reasons["odd/loop"] == "symbolic link loop: folder already visited"
    assert len(failures) == 9


def test_odd_but_valid_images_are_indexed(indexed):
    _result, _failures, rows = indexed
    assert rows["odd/one-pixel.png"][:3] == ("png", 1, 1)
    assert rows["odd/sixteen-bit.png"][:3] == ("png", 64, 48)
    assert rows["odd/cmyk.jpg"][:3] == ("jpeg", 96, 64)
    assert rows["odd/palette-transparent.png"][:3] == ("png", 96, 64)
    assert rows["odd/animated.webp"][:3] == ("webp", 60, 40)


def test_garbage_metadata_is_ignored_not_fatal(indexed):
    _result, _failures, rows = indexed
    assert rows["exif/zero-date.jpg"][3] == "mtime" and rows["exif/year-9999.jpg"][3] == "mtime"
    assert rows["exif/bad-gps.jpg"][3] == "exif" and rows["exif/bad-gps.jpg"][4] is None
    invalid = rows["Takeout/Google Photos/Photos from 2020/invalid.jpg"]
    assert invalid[5]["sidecar_error"] == "unreadable or not JSON" and invalid[3] == "mtime"
    fields = rows["Takeout/Google Photos/Photos from 2020/fields.jpg"]
    assert fields[3] == "mtime" and fields[4] is None


def test_names_that_are_not_utf8_and_very_long_paths(indexed, db):
    _result, _failures, rows = indexed
    with psycopg.connect(db.url) as conn:
        names = {bytes(r[0]): r[1] for r in conn.execute(
            "SELECT relpath_bytes, relpath FROM locations WHERE relpath LIKE 'names/%'")}
    assert names[b"names/" + "照片".encode("gbk") + b".jpg"] == "names/照片.jpg"
    assert names[b"names/\xff\xfe\xfa-not-utf8.jpg"] == "names/\ufffd\ufffd\ufffd-not-utf8.jpg"
    longest = max(names, key=len)
    assert len(longest) > 1200 and longest.endswith(b"y" * 200 + b".jpg")


def test_the_run_went_on(indexed):
    result, failures, rows = indexed
    assert result.counts["images_new"] == len(rows) == 13
    assert result.counts["failed"] == len(failures) - 1   # the symlink loop is a scan failure


UNPRIVILEGED = r"""
import json, os, sys
from indexer.scan import walk, ScanProblem
from indexer.prepare import read_file
os.setgid(65534); os.setuid(65534)          # nobody: file permissions now apply
root = sys.argv[1].encode()
problems = {p.relpath.decode(): p.reason for p in walk(root) if isinstance(p, ScanProblem)}
data, failure = read_file(os.path.join(root, b"locked.jpg"), 1 << 20)
print(json.dumps({"problems": problems, "read": failure}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_unreadable_files_and_folders(tmp_path):
    root = tmp_path / "lib"
    L.write(root / "ok.jpg", L.jpeg(1))
    L.write(root / "locked.jpg", L.jpeg(2))
    L.write(root / "closed" / "inside.jpg", L.jpeg(3))
    os.chmod(root / "locked.jpg", 0o000)
    os.chmod(root / "closed", 0o000)
    for folder in [tmp_path, *tmp_path.parents]:
        os.chmod(folder, os.stat(folder).st_mode | 0o005)   # let `nobody` reach the library
    try:
        proc = subprocess.run([sys.executable, "-c", UNPRIVILEGED, str(root)], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
    finally:
        os.chmod(root / "closed", 0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["problems"] == {"closed": "cannot list folder: Permission denied"}
    assert out["read"] == ["read", "cannot read: Permission denied"]

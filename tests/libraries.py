"""Photo libraries generated in code, shaped like real exports (no binary fixtures in the repo).

Each builder writes a tree under a folder and returns it; the expectations live in the tests
next to the assertions, so a reader sees the input file and the row it must give side by side.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

# --- pixels and encodings ------------------------------------------------------------------------


def picture(seed: int, size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    """A small image whose pixels depend on ``seed`` (so different seeds give different bytes)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, 3)
    gradient = np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 255, 3)
    noise = rng.integers(0, 40, (h, w, 3))
    pixels = np.clip(base * 0.5 + gradient * 0.5 + noise, 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels, "RGB")
    return im.convert(mode) if mode != "RGB" else im


def exif_bytes(*, taken: str | None = None, offset: str | None = None, make: str | None = None,
               model: str | None = None, orientation: int | None = None,
               gps: tuple[str, tuple, str, tuple] | None = None) -> bytes:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if orientation:
        exif[0x0112] = orientation
    if taken or offset:
        ifd = exif.get_ifd(0x8769)
        if taken:
            ifd[0x9003] = taken
        if offset:
            ifd[0x9011] = offset
    if gps:
        lat_ref, lat, lon_ref, lon = gps
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = lat_ref, lat, lon_ref, lon
    return exif.tobytes()


def jpeg(seed: int, size=(96, 64), **exif) -> bytes:
    out = io.BytesIO()
    picture(seed, size).save(out, "JPEG", quality=90, exif=exif_bytes(**exif) if exif else b"")
    return out.getvalue()


def png(seed: int, size=(96, 64), mode="RGB", xmp: str | None = None) -> bytes:
    out = io.BytesIO()
    info = None
    if xmp:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
    picture(seed, size, mode).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def gif(seed: int, size=(64, 48)) -> bytes:
    out = io.BytesIO()
    frames = [picture(seed + i, size).convert("P") for i in range(3)]
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return out.getvalue()


def webp(seed: int, size=(80, 60)) -> bytes:
    out = io.BytesIO()
    picture(seed, size).save(out, "WEBP", quality=80)
    return out.getvalue()


def heic(seed: int, size=(96, 64), **exif) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    picture(seed, size).save(out, format="HEIF", quality=60, exif=exif_bytes(**exif) if exif else None)
    return out.getvalue()


def heic_rotated_by_exif_only(seed: int, size=(96, 64), orientation: int = 6) -> bytes:
    """A HEIC whose only rotation is its EXIF Orientation, as an iPhone 7 or a Galaxy photo edited
    in Windows Photos writes it: pillow-heif turns the EXIF value into an `irot` box when saving,
    so that box is made inert afterwards (renamed, its association no longer essential)."""
    import struct

    data = bytearray(heic(seed, size, orientation=orientation))

    def boxes(start: int, end: int):
        at = start
        while at < end:
            length, kind = struct.unpack_from(">I4s", data, at)
            yield kind, at, at + length
            at += length

    meta = next((s, e) for kind, s, e in boxes(0, len(data)) if kind == b"meta")
    inner = {kind: (s, e) for kind, s, e in boxes(meta[0] + 12, meta[1])}
    iprp = {kind: (s, e) for kind, s, e in boxes(inner[b"iprp"][0] + 8, inner[b"iprp"][1])}
    properties = list(boxes(iprp[b"ipco"][0] + 8, iprp[b"ipco"][1]))
    index = next(i for i, (kind, _s, _e) in enumerate(properties, start=1) if kind == b"irot")
    data[properties[index - 1][1] + 4:properties[index - 1][1] + 8] = b"xrot"
    at = iprp[b"ipma"][0] + 8
    version, flags = data[at], data[at + 3]
    entries = struct.unpack_from(">I", data, at + 4)[0]
    at += 8
    for _ in range(entries):
        at += 2 if version < 1 else 4
        count, at = data[at], at + 1
        for _ in range(count):
            width = 2 if flags & 1 else 1
            value = int.from_bytes(data[at:at + width], "big")
            if value & (0x7FFF if width == 2 else 0x7F) == index:
                data[at:at + width] = (value & (0x7FFF if width == 2 else 0x7F)).to_bytes(width, "big")
            at += width
    return bytes(data)


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A PNG whose header claims an enormous size (its pixel data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def write(path: Path, data: bytes | str, mtime: datetime | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mtime is not None:
        stamp = mtime.timestamp()
        os.utime(path, (stamp, stamp))
    return path


def epoch(text: str) -> str:
    return str(int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()))


def sidecar(title: str, taken: str | None, **extra) -> str:
    doc = {"title": title, "description": extra.pop("description", ""),
           "creationTime": {"timestamp": epoch("2024-01-02T03:04:05"), "formatted": "2 Jan 2024, 03:04:05 UTC"},
           "photoTakenTime": {"timestamp": epoch(taken) if taken else "0", "formatted": "whatever"},
           "geoData": extra.pop("geoData", {"latitude": 0.0, "longitude": 0.0, "altitude": 0.0}),
           "geoDataExif": extra.pop("geoDataExif", {"latitude": 0.0, "longitude": 0.0, "altitude": 0.0}),
           "url": "https://photos.google.com/photo/x"}
    doc.update(extra)
    return json.dumps(doc)


# --- Google Takeout ------------------------------------------------------------------------------

MTIME = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def takeout_library(base: Path) -> Path:
    """Two extracted Takeout parts with Google's naming quirks: sidecars in the other part, cut and
    counted names, edited copies, motion photos, localized album files."""
    part1 = base / "takeout-20240712T112341Z-001" / "Takeout"
    part2 = base / "takeout-20240712T112341Z-002" / "Takeout"
    photos1, photos2 = part1 / "Google Photos", part2 / "Google Photos"
    write(part1 / "archive_browser.html", "<html>index</html>")
    write(photos1 / "print-subscriptions.json", json.dumps({"category": "SHIPPED_PRINTS"}))
    year = photos1 / "Photos from 2023"
    # Sidecar time, place from geoData, people, favourite, description; EXIF without offset.
    beach = jpeg(1, taken="2023:07:29 04:45:07", make="Google", model="Pixel 7")
    write(year / "IMG_1234.JPG", beach, MTIME)
    write(year / "IMG_1234.JPG.json", sidecar(
        "IMG_1234.JPG", "2023-07-28T19:45:07", description="Ici c'est du texte",
        geoData={"latitude": 48.798, "longitude": 2.487}, people=[{"name": "Susan"}, {"name": "Justin"}],
        favorited=True))
    # The same bytes in an album (with its own copy of the sidecar): one image, two locations.
    album = photos1 / "Trip to Gdańsk"
    write(album / "metadata.json", json.dumps({
        "title": "Trip to Gdańsk", "description": "", "access": "protected",
        "enrichments": [{"locationEnrichment": {"location": [
            {"name": "Paris", "latitudeE7": 488029439, "longitudeE7": 24854290}]}}]}))
    write(album / "IMG_1234.JPG", beach, MTIME)
    write(album / "IMG_1234.JPG.json", sidecar("IMG_1234.JPG", "2023-07-28T19:45:07", favorited=True))
    # New naming, truncated suffix, timestamp "0": the EXIF time (with offset) is used.
    write(year / "MVIMG_20191230_232926.jpg", jpeg(2, taken="2019:12:30 23:29:26", offset="+01:00"), MTIME)
    write(year / "MVIMG_20191230_232926.jpg.supplemental-metadata.json", sidecar("MVIMG_20191230_232926.jpg", None))
    write(year / "MVIMG_20191230_232926.jpg.supplemental-metadat.json",
          sidecar("MVIMG_20191230_232926.jpg", "2019-12-30T22:29:26"))
    # Counter moved after the extension: Scan35(1).jpg <- Scan35.jpg.supplemental-metadata(1).json
    write(year / "Scan35.jpg", jpeg(3), MTIME)
    write(year / "Scan35.jpg.supplemental-metadata.json", sidecar("Scan35.jpg", "2021-05-01T10:00:00"))
    write(year / "Scan35(1).jpg", jpeg(4), MTIME)
    write(year / "Scan35.jpg.supplemental-metadata(1).json", sidecar("Scan35.jpg", "2021-05-02T10:00:00"))
    # An edited copy shares its original's sidecar.
    write(year / "IMAG0061.JPG", jpeg(5), MTIME)
    write(year / "IMAG0061-edited.JPG", jpeg(6), MTIME)
    write(year / "IMAG0061.JPG.supplemental-metadata.json", sidecar("IMAG0061.JPG", "2022-02-02T02:02:02"))
    # A Live Photo: the video is skipped by name; a ".HEIC" holding JPEG bytes decodes as JPEG.
    write(year / "IMG_4573.HEIC", jpeg(7), MTIME)
    write(year / "IMG_4573.MP4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, MTIME)
    write(year / "IMG_4573.HEIC.json", sidecar("IMG_4573.HEIC", "2020-08-08T08:08:08",
                                               geoDataExif={"latitude": -33.8598, "longitude": 151.2093}))
    # Partner sharing; trashed flag from the sidecar.
    write(year / "partner.jpg", jpeg(8), MTIME)
    write(year / "partner.jpg.json", sidecar("partner.jpg", "2023-03-03T03:03:03",
                                             googlePhotosOrigin={"fromPartnerSharing": {}}, trashed=True))
    # HTML where a photo should be: not an image, skipped without a failure.
    write(year / "page.jpg", "<html><body>not a photo</body></html>", MTIME)
    # Part 2 holds the media; its sidecar sits in part 1.
    write(photos2 / "Photos from 2023" / "split.jpg", jpeg(9), MTIME)
    write(year / "split.jpg.json", sidecar("split.jpg", "2023-09-09T09:09:09"))
    # Part 2 continues the album; the old album metadata form in another album.
    write(photos2 / "Trip to Gdańsk" / "IMG_9999.jpg", jpeg(10), MTIME)
    write(photos2 / "Trip to Gdańsk" / "IMG_9999.jpg.json", sidecar("IMG_9999.jpg", "2023-07-30T10:00:00"))
    old = photos2 / "Urlaub"
    write(old / "Metadaten.json", json.dumps({"albumData": {"title": "Urlaub im Schnee"}}))
    write(old / "ski.png", png(11), MTIME)
    write(old / "ski.png.json", sidecar("ski.png", "2018-02-14T09:00:00"))
    # Videos Google could not process are skipped.
    write(photos1 / "Failed Videos" / "broken.jpg", jpeg(12), MTIME)
    return base


def zip_folder(folder: Path, target: Path, *, method: int = zipfile.ZIP_DEFLATED, **kw) -> Path:
    """Every file under ``folder`` into ``target``, named by its path below ``folder`` and keeping
    its time, as Takeout writes its parts."""
    with zipfile.ZipFile(target, "w", method, **kw) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return target


def tar_folder(folder: Path, target: Path, *, mode: str = "w:gz", json_first: bool = False) -> Path:
    """Every file under ``folder`` into a tar part at ``target`` (``w:gz``: a Takeout .tgz),
    keeping its time. A tar keeps no order: ``json_first`` puts the sidecars before the photos."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file())
    if json_first:
        paths.sort(key=lambda path: path.suffix != ".json")
    with tarfile.open(target, mode) as archive:
        for path in paths:
            archive.add(path, path.relative_to(folder).as_posix(), recursive=False)
    return target


# --- iPhone DCIM ---------------------------------------------------------------------------------


def iphone_library(base: Path) -> Path:
    dcim = base / "DCIM"
    apple = dcim / "100APPLE"
    # HEIC, orientation 6, offset time, GPS in the southern hemisphere.
    write(apple / "IMG_0001.HEIC", heic(20, (120, 80), taken="2020:12:22 09:41:54", offset="+01:00",
                                        make="Apple", model="iPhone 12", orientation=6,
                                        gps=("S", (33.0, 51.0, 35.4), "E", (151.0, 12.0, 33.48))), MTIME)
    write(apple / "IMG_0001.MOV", b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 32, MTIME)
    write(apple / "IMG_0001.AAE", "<?xml version='1.0'?><plist><dict/></plist>", MTIME)
    write(apple / "IMG_E0001.JPG", jpeg(21, (80, 120), taken="2020:12:22 09:41:54", offset="+01:00",
                                        make="Apple", model="iPhone 12"), MTIME)
    # JPEG stored 120×80 with orientation 6: displayed 80×120; a local time with no offset.
    write(apple / "IMG_0002.JPG", jpeg(22, (120, 80), taken="2021:06:01 18:30:00", make="Apple",
                                       model="iPhone 8", orientation=6), MTIME)
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
           'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" exif:UserComment="Screenshot" '
           'photoshop:DateCreated="2022-03-04T05:06:07+08:00"/></rdf:RDF></x:xmpmeta>')
    write(apple / "IMG_0003.PNG", png(23, (60, 130), xmp=xmp), MTIME)
    # Numbers wrap: the same name in another folder with other bytes is another photo.
    write(dcim / "105APPLE" / "IMG_0001.JPG", jpeg(24), MTIME)
    return base


# --- QQ ------------------------------------------------------------------------------------------


def qq_library(base: Path) -> Path:
    import hashlib

    account = base / "Tencent Files" / "12345678"
    image = account / "Image"
    shared = jpeg(30, (100, 70))
    write(image / "Group2" / "HR" / "DT" / "HRDT{B9%A6BQW5REX6ZPJ]A.png", gif(31), MTIME)  # a GIF named .png
    write(image / "C2C" / "D4439109D498DC8CA89FA94E2304C0C9", shared, MTIME)               # no extension
    write(image / "Group2" / "IY" / "S2" / "IYS2F)882TXGVT[JIR[`4BY.jpg", shared, MTIME)      # same bytes
    write(image / "Group" / "sticker.webp", webp(32), MTIME)
    write(image / "C2C" / "{F8F9D803-034D-70EC-CA14-5F2FAEFA712F}.png", png(33, mode="RGBA"), MTIME)
    # A name in GBK ("照片.jpg" written by Chinese Windows): not valid UTF-8.
    gbk_name = os.path.join(os.fsencode(image / "C2C"), "照片".encode("gbk") + b".jpg")
    with open(gbk_name, "wb") as handle:
        handle.write(jpeg(34))
    os.utime(gbk_name, (MTIME.timestamp(), MTIME.timestamp()))
    pic = account / "nt_qq" / "nt_data" / "Pic" / "2024-07"
    original = png(35)
    md5 = hashlib.md5(original).hexdigest()
    write(pic / "Ori" / f"{md5}.png", original, MTIME)
    write(pic / "Thumb" / f"{md5}_720.png", png(36, (40, 30)), MTIME)   # its original exists: dropped
    lonely = "01edc775e5cbc51dad90c8174a4e2b50"
    write(pic / "Thumb" / f"{lonely}_198.png", png(37, (30, 20)), MTIME)
    write(pic / "Thumb" / f"{lonely}_720.png", png(38, (72, 48)), MTIME)  # no original: the largest stands in
    write(pic / "OriTemp" / "partial.jpg", jpeg(39), MTIME)                 # download leftover
    write(pic / "Ori" / "0123456789abcdef0123456789abcdef.jpg", jpeg(40), MTIME)  # md5 does not match
    return base


# --- bad input -----------------------------------------------------------------------------------


def bad_files(base: Path) -> Path:
    good = jpeg(50, (200, 150))
    write(base / "zero.jpg", b"")
    write(base / "truncated.jpg", good[: len(good) // 2])
    write(base / "text.jpg", "just some text, not a picture")
    write(base / "bomb.png", bomb_png())
    write(base / "fine.jpg", good)
    return base

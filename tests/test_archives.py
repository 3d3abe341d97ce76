"""Takeout zips read in place: the same rows as the extracted export, one image for the same
bytes in an archive and on disk, no model work on a re-run, and a failure row with its reason
for every kind of damaged archive, while the run goes on."""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import zipfile
from pathlib import Path

import pytest

from clipdex import archives, database
from clipdex.files import FileRefused, open_regular, read_capped
from indexer.in_process import index_folder
from tests import libraries as L
from tests.conftest import fresh_database
from tests.test_ingest import counts, failures, located

PART1, PART2 = "takeout-20240712T112341Z-001", "takeout-20240712T112341Z-002"


def index(settings, db, path, **kw):
    return index_folder(settings, db, path, out=None, **kw)


def zipped_takeout(base: Path) -> Path:
    """The two-part test Takeout as the two zips Google sends, and nothing extracted."""
    extracted = L.takeout_library(base / "extracted")
    export = base / "zips"
    export.mkdir()
    for part in (PART1, PART2):
        L.zip_folder(extracted / part, export / f"{part}.zip")
    return export


def second_database(settings, pg_url: str, name: str):
    other = dataclasses.replace(settings, database_url=fresh_database(pg_url, name))
    return other, database.open_database(other)


def test_a_zipped_takeout_gives_the_rows_of_its_extracted_copy(settings, db, pg_url, tmp_path):
    zips = zipped_takeout(tmp_path)
    result = index(settings, db, zips)
    zipped = located(db.url)
    assert result.images_encoded == 11
    assert all(".zip//Takeout/Google Photos/" in p for p in zipped)
    other_settings, other_db = second_database(settings, pg_url, f"test_archives_{os.getpid()}")
    index(other_settings, other_db, tmp_path / "extracted")
    assert_rows_of_the_extracted_copy(db.url, other_db.url, ".zip")


def assert_rows_of_the_extracted_copy(packed_url: str, extracted_url: str, suffix: str) -> None:
    """The archives' rows (``suffix``: .zip, .tgz) are the extracted export's, path for path."""
    def as_extracted(path: str) -> str:
        return path.replace(f"{suffix}//", "/", 1)

    packed, extracted = located(packed_url), located(extracted_url)
    assert {as_extracted(p) for p in packed} == set(extracted)
    for path, row in packed.items():
        twin = extracted[as_extracted(path)]
        for field in ("source", "album", "format", "width", "height", "taken_at", "taken_at_source",
                      "utc_offset_minutes", "latitude", "longitude", "camera_make", "camera_model",
                      "description", "favorite", "extra"):
            assert row[field] == twin[field], (path, field)
        meta = {k: v for k, v in row["source_meta"].items() if k != "sidecar"}
        assert meta == {k: v for k, v in twin["source_meta"].items() if k != "sidecar"}
        if "sidecar" in twin["source_meta"]:
            assert as_extracted(row["source_meta"]["sidecar"]) == twin["source_meta"]["sidecar"]
    split = packed[f"{PART2}{suffix}//Takeout/Google Photos/Photos from 2023/split.jpg"]
    assert split["source_meta"]["sidecar"].startswith(f"{PART1}{suffix}//")   # its sidecar is in the other part
    assert {as_extracted(p): r for p, r in failures(packed_url).items()} == failures(extracted_url)
    assert counts(packed_url) == counts(extracted_url)


def test_the_same_photo_in_a_zip_and_on_disk_is_one_image(settings, db, tmp_path):
    library = tmp_path / "library"
    photos = {f"trip/IMG_{n}.jpg": L.jpeg(100 + n) for n in range(4)}
    for name, data in photos.items():
        L.write(library / "phone" / name, data, L.MTIME)
    L.zip_folder(library / "phone", library / "backup.zip")
    first = index(settings, db, library)
    assert first.images_encoded == 4
    rows = located(db.url)
    assert len(rows) == 8
    for name in photos:
        assert rows[f"phone/{name}"]["id"] == rows[f"backup.zip//{name}"]["id"]
        assert rows[f"backup.zip//{name}"]["album"] == "trip"

    again = index(settings, db, library)                       # nothing changed: no model work
    assert again.plan.files == 0 and again.images_encoded == 0

    # A new copy of the archive with one photo changed: that member alone is read again.
    with zipfile.ZipFile(library / "backup.zip") as archive:
        times = {info.filename: info.date_time for info in archive.infolist()}
    with zipfile.ZipFile(library / "backup.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for n in range(4):
            name = f"trip/IMG_{n}.jpg"
            archive.writestr(zipfile.ZipInfo(name, times[name]), L.jpeg(200) if n == 0 else photos[name])
    replaced = index(settings, db, library)
    assert replaced.plan.files == 1 and replaced.images_encoded == 1
    rows = located(db.url)
    assert rows["backup.zip//trip/IMG_0.jpg"]["id"] != rows["phone/trip/IMG_0.jpg"]["id"]
    assert counts(db.url)["images"] == 5


def test_one_archive_named_on_its_own_and_gone_members_forgotten(settings, db, tmp_path):
    folder = tmp_path / "takeout"
    for n in range(3):
        L.write(folder / "src" / f"p{n}.jpg", L.jpeg(300 + n), L.MTIME)
    archive = L.zip_folder(folder / "src", folder / "part.zip")
    L.write(folder / "loose.jpg", L.jpeg(310), L.MTIME)
    index(settings, db, archive)
    assert set(located(db.url)) == {"part.zip//p0.jpg", "part.zip//p1.jpg", "part.zip//p2.jpg"}

    (folder / "src" / "p2.jpg").unlink()
    L.zip_folder(folder / "src", archive)
    index(settings, db, archive)
    assert set(located(db.url)) == {"part.zip//p0.jpg", "part.zip//p1.jpg"}

    archive.write_bytes(archive.read_bytes()[:-60])             # cut short: its members are not forgotten
    result = index(settings, db, archive)
    assert set(located(db.url)) == {"part.zip//p0.jpg", "part.zip//p1.jpg"}
    assert failures(db.url)["part.zip"][1].startswith("no central directory (a part cut short?): 2 whole members")
    assert result.plan.problems == 1 and result.plan.files == 0


class _Unseekable(io.RawIOBase):
    """Where a streaming writer (Google's, or a web server's) puts a zip: sizes after each member."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += chunk
        return len(chunk)


def test_a_part_cut_short_gives_the_members_before_the_cut(settings, db, tmp_path):
    photos = {f"Takeout/Google Photos/Trip/IMG_{n}.jpg": L.jpeg(950 + n) for n in range(6)}
    stream = _Unseekable()
    with zipfile.ZipFile(stream, "w") as archive:
        for n, (name, data) in enumerate(photos.items()):   # stored and deflated, as writers mix them
            info = zipfile.ZipInfo(name, (2024, 7, 1, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if n % 2 else zipfile.ZIP_STORED
            with archive.open(info, "w") as member:
                member.write(data)
    whole = bytes(stream.data)
    members = zipfile.ZipFile(io.BytesIO(whole)).infolist()
    assert all(info.flag_bits & 0x8 for info in members)       # every size after its data
    library = tmp_path / "downloads"
    library.mkdir()
    part = library / "takeout-001.zip"
    part.write_bytes(whole)
    index(settings, db, library)
    assert len(located(db.url)) == 6

    cut_at = members[4].header_offset + 100                     # inside the fifth photo
    part.write_bytes(whole[:cut_at])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "takeout-002.zip").write_bytes(whole[:cut_at])
    index(settings, db, library)
    index(settings, db, fresh)
    rows = located(db.url)
    assert {p for p in rows if p.startswith("takeout-002.zip//")} == {f"takeout-002.zip//{n}" for n in list(photos)[:4]}
    for name in list(photos)[:4]:                                  # the same bytes as the whole part's
        assert rows[f"takeout-002.zip//{name}"]["id"] == rows[f"takeout-001.zip//{name}"]["id"]
    assert len([p for p in rows if p.startswith("takeout-001.zip//")]) == 6   # nothing past the cut forgotten
    for part_name in ("takeout-001.zip", "takeout-002.zip"):
        assert failures(db.url)[part_name][1].startswith("no central directory (a part cut short?): 4 whole members")


def _patch(data: bytearray, member: bytes, *, flags: int | None = None, method: int | None = None) -> None:
    """Sets a member's flag bits or compression method in its local header and its directory entry."""
    for signature, flag_at, method_at, name_at in ((b"PK\x03\x04", 6, 8, 30), (b"PK\x01\x02", 8, 10, 46)):
        at = data.find(signature)
        while at != -1:
            length = struct.unpack_from("<H", data, at + (26 if signature == b"PK\x03\x04" else 28))[0]
            if bytes(data[at + name_at:at + name_at + length]) == member:
                if flags is not None:
                    struct.pack_into("<H", data, at + flag_at, flags)
                if method is not None:
                    struct.pack_into("<H", data, at + method_at, method)
            at = data.find(signature, at + 4)


def test_damaged_archives_fail_member_by_member_and_the_run_goes_on(settings, db, tmp_path):
    library = tmp_path / "damaged"
    library.mkdir()
    good = L.jpeg(400)

    # One archive holding a good photo, a photo whose bytes were damaged, an "encrypted" one, one
    # packed with Deflate64, and names leading outside it.
    damaged = library / "mixed.zip"
    with zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("ok.jpg", good)
        archive.writestr("crc.jpg", L.jpeg(401))
        archive.writestr("locked.jpg", L.jpeg(402))
        archive.writestr("deflate64.jpg", L.jpeg(403))
        archive.writestr("../escape.jpg", L.jpeg(404))
        archive.writestr("/etc/absolute.jpg", L.jpeg(405))
    data = bytearray(damaged.read_bytes())
    start = data.find(L.jpeg(401))
    data[start + 200] ^= 0xFF
    _patch(data, b"locked.jpg", flags=0x1)
    _patch(data, b"deflate64.jpg", method=9)
    damaged.write_bytes(bytes(data))

    # A big Takeout part is a zip64 archive: read like any other.
    with zipfile.ZipFile(library / "zip64.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("big/IMG_1.jpg", "w", force_zip64=True) as member:
            member.write(L.jpeg(406))
    # A part cut short in the download.
    cut = library / "cut.zip"
    with zipfile.ZipFile(cut, "w") as archive:
        archive.writestr("a.jpg", L.jpeg(407))
    cut.write_bytes(cut.read_bytes()[:100])
    # A name from Chinese Windows: GBK bytes, no UTF-8 flag.
    gbk_name = "照片/春节12.jpg".encode("gbk")
    with zipfile.ZipFile(library / "gbk.zip", "w") as archive:
        archive.writestr(zipfile.ZipInfo("x" * len(gbk_name), (2024, 2, 10, 8, 0, 0)), L.jpeg(408))
    (library / "gbk.zip").write_bytes((library / "gbk.zip").read_bytes().replace(b"x" * len(gbk_name), gbk_name))

    index(settings, db, library)
    rows = located(db.url)
    assert set(rows) == {"mixed.zip//ok.jpg", "zip64.zip//big/IMG_1.jpg", "gbk.zip//" + gbk_name.decode("gb18030")}
    gbk_row = rows["gbk.zip//" + gbk_name.decode("gb18030")]
    assert bytes(gbk_row["relpath_bytes"]) == b"gbk.zip//" + gbk_name   # the archive's bytes, exactly
    assert gbk_row["album"] == "照片"
    failed = failures(db.url)
    assert failed["mixed.zip//crc.jpg"] == ("read", "damaged member of the archive: its CRC-32 does not match")
    assert failed["mixed.zip//locked.jpg"][1].startswith("encrypted member of the archive")
    assert failed["mixed.zip//deflate64.jpg"][1].startswith("member compressed with Deflate64 (method 9)")
    assert failed["mixed.zip//../escape.jpg"] == ("read", "member path leads out of the archive (..); not read")
    assert failed["mixed.zip///etc/absolute.jpg"] == ("read", "member path is absolute; not read")
    assert failed["cut.zip"][1].startswith("not a readable zip archive")
    assert len(failed) == 6
    assert not (library.parent / "escape.jpg").exists() and sorted(os.listdir(library)) == [
        "cut.zip", "gbk.zip", "mixed.zip", "zip64.zip"]


def test_members_read_back_exactly_and_damage_shows_when_read(tmp_path):
    payload = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x/big.bin", payload)
        archive.writestr("x/small.txt", b"hello")

    handle, st = open_regular(archives.member_path(os.fsencode(path), b"x/big.bin"), None)
    with handle:
        assert read_capped(handle, st, 10 << 20) == payload
        assert (st.st_size, st.st_ino) == (len(payload), zipfile.ZipFile(path).getinfo("x/big.bin").CRC)
    handle, st = open_regular(archives.member_path(os.fsencode(path), b"x/big.bin"), None)
    with handle, pytest.raises(FileRefused, match="over the 1 MiB cap"):
        read_capped(handle, st, 1 << 20)
    with pytest.raises(FileNotFoundError):
        open_regular(archives.member_path(os.fsencode(path), b"x/none.txt"), None)

    # A directory entry that understates the size (a zip bomb's trick): inflation stops there.
    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.bin", b"\0" * (1 << 20))
    data = bytearray(liar.read_bytes())
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 1000)
    liar.write_bytes(bytes(data))
    handle, st = open_regular(archives.member_path(os.fsencode(liar), b"bomb.bin"), None)
    assert st.st_size == 1000
    with handle, pytest.raises(archives.ArchiveRefused, match="more bytes than its directory entry says"):
        read_capped(handle, st, 10 << 20)
    assert archives.folder_of(b"a.zip//x.jpg") == b"a.zip//"
    assert archives.folder_of(b"a.zip//d/x.jpg") == b"a.zip//d"
    assert archives.folder_of(b"d/x.jpg") == b"d" and archives.folder_of(b"x.jpg") == b""
    assert archives.split_shown("t/a.zip//Takeout/x.jpg") == ("t/a.zip", "Takeout/x.jpg")
    assert archives.split_shown("t/a.zip/Takeout/x.jpg") is None


def test_the_web_app_serves_a_member_and_says_which_archive_holds_it(settings, db, tmp_path):
    from webapp import create_app

    library = tmp_path / "web"
    photo = L.jpeg(500)
    library.mkdir()
    with zipfile.ZipFile(library / "takeout-003.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Takeout/Google Photos/Trip/IMG_5.jpg", photo)
        archive.writestr("Takeout/Google Photos/Trip/IMG_5.jpg.json", L.sidecar("IMG_5.jpg", "2021-04-05T06:07:08"))
    index(settings, db, library)
    image_id = located(db.url)["takeout-003.zip//Takeout/Google Photos/Trip/IMG_5.jpg"]["id"]
    client = create_app(settings).test_client()

    original = client.get(f"/images/{image_id}/original")
    assert original.status_code == 200 and original.data == photo
    page = client.get(f"/images/{image_id}").get_data(as_text=True)
    assert "in <code>web/takeout-003.zip</code> › <code>Takeout/Google Photos/Trip/IMG_5.jpg</code>" in page
    detail = client.get(f"/api/images/{image_id}").get_json()
    assert detail["locations"][0]["archive"] == "takeout-003.zip"
    assert detail["taken_at"].startswith("2021-04-05T06:07:08")     # the sidecar, read inside the zip

    # The archive replaced by one whose member differs: refused, not served.
    with zipfile.ZipFile(library / "takeout-003.zip", "w") as archive:
        archive.writestr("Takeout/Google Photos/Trip/IMG_5.jpg", L.jpeg(501))
    assert client.get(f"/images/{image_id}/original").status_code == 409
    (library / "takeout-003.zip").unlink()
    assert client.get(f"/images/{image_id}/original").status_code == 404

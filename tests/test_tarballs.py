"""Takeout .tgz parts read in place: the rows of the extracted export whatever order a part keeps
its members in, each part listed once until it changes, a part cut short indexed up to the cut
with nothing forgotten past it, and a failure row for each damaged thing while the run goes on."""

from __future__ import annotations

import io
import os
import tarfile

import psycopg
import pytest

from clipdex import archives, tarballs
from clipdex.files import open_regular, read_capped
from indexer.producer import chains
from tests import libraries as L
from tests.test_archives import PART1, PART2, assert_rows_of_the_extracted_copy, index, second_database
from tests.test_ingest import failures, located


def listed_at(url) -> dict[str, object]:
    with psycopg.connect(url) as conn:
        return {bytes(r[0]).decode(): r[1] for r in conn.execute("SELECT relpath_bytes, listed_at FROM archive_listings")}


def test_a_tgz_takeout_gives_the_rows_of_its_extracted_copy(settings, db, pg_url, tmp_path):
    extracted = L.takeout_library(tmp_path / "extracted")
    export = tmp_path / "tgz"
    export.mkdir()
    # Part 1 keeps its sidecars before its photos, part 2 after: a tar has no order to rely on.
    L.tar_folder(extracted / PART1, export / f"{PART1}.tgz", json_first=True)
    L.tar_folder(extracted / PART2, export / f"{PART2}.tgz")
    restarts = tarballs.TarStream.restarts
    result = index(settings, db, export)
    assert result.images_encoded == 11
    # The sidecars came from the parts' listings: read from the stream, a sidecar before its photo
    # (part 1) or after it (part 2) would have sent the stream back to the top of its part.
    assert tarballs.TarStream.restarts == restarts
    other_settings, other_db = second_database(settings, pg_url, f"test_tarballs_{os.getpid()}")
    index(other_settings, other_db, tmp_path / "extracted")
    assert_rows_of_the_extracted_copy(db.url, other_db.url, ".tgz")
    split = located(db.url)[f"{PART2}.tgz//Takeout/Google Photos/Photos from 2023/split.jpg"]

    from webapp import create_app

    client = create_app(settings).test_client()     # the original, read from the middle of its part
    original = client.get(f"/images/{split['id']}/original")
    assert original.status_code == 200
    assert original.data == (extracted / PART2 / "Takeout/Google Photos/Photos from 2023/split.jpg").read_bytes()
    assert client.get(f"/api/images/{split['id']}").get_json()["locations"][0]["archive"].endswith(f"{PART2}.tgz")

    first_listing = listed_at(db.url)
    assert {os.path.basename(p) for p in first_listing} == {f"{PART1}.tgz", f"{PART2}.tgz"}
    again = index(settings, db, export)              # nothing changed: no model work, nothing listed
    assert again.plan.files == 0 and again.images_encoded == 0
    assert listed_at(db.url) == first_listing
    (export / f"{PART2}.tgz").unlink()               # a part gone: its listing and photos go too
    index(settings, db, export)
    assert len(listed_at(db.url)) == 1
    assert not any(p.startswith(f"{PART2}.tgz//") for p in located(db.url))


def test_a_part_cut_short_is_read_up_to_the_cut_and_nothing_past_it_is_forgotten(settings, db, tmp_path):
    library = tmp_path / "cut"
    for n in range(6):
        L.write(library / "src" / f"IMG_{n}.jpg", L.jpeg(600 + n), L.MTIME)
    part = L.tar_folder(library / "src", library / "takeout-001.tgz")
    whole = part.read_bytes()
    (library / "src").rename(tmp_path / "src")
    index(settings, db, library)
    assert len(located(db.url)) == 6

    part.write_bytes(whole[:len(whole) // 2])        # the download stopped half way
    result = index(settings, db, library)
    assert len(located(db.url)) == 6                  # the members past the cut are not forgotten
    reason = failures(db.url)["takeout-001.tgz"][1]
    assert reason.startswith("the archive ends early or is damaged after ") and result.plan.problems == 1

    # Indexed for the first time from the cut part: the members before the cut are.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "takeout-002.tgz").write_bytes(whole[:len(whole) // 2])
    index(settings, db, fresh / "takeout-002.tgz")   # one part named on its own
    listed = {p for p in located(db.url) if p.startswith("takeout-002.tgz//")}
    assert 1 <= len(listed) < 6


def test_damaged_tar_parts_fail_member_by_member_and_the_run_goes_on(settings, db, tmp_path):
    library = tmp_path / "damaged"
    library.mkdir()
    with tarfile.open(library / "mixed.tar", "w") as archive:          # plain tar: read with seeks
        for name, data in (("ok.jpg", L.jpeg(700)), ("../escape.jpg", L.jpeg(701)),
                           ("/etc/absolute.jpg", L.jpeg(702))):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), L.MTIME.timestamp()
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    (library / "not-a-tar.tgz").write_bytes(b"\x1f\x8b" + os.urandom(2000))
    gbk = "照片/春节.jpg".encode("gbk")
    with tarfile.open(library / "gbk.tar.gz", "w:gz", format=tarfile.USTAR_FORMAT, encoding="gbk") as archive:
        data = L.jpeg(703)
        info = tarfile.TarInfo("照片/春节.jpg")
        info.size, info.mtime = len(data), L.MTIME.timestamp()
        archive.addfile(info, io.BytesIO(data))

    index(settings, db, library)
    rows = located(db.url)
    assert set(rows) == {"mixed.tar//ok.jpg", "gbk.tar.gz//" + gbk.decode("gb18030")}
    listing = tarballs.list_tar(open(library / "mixed.tar", "rb"))[0]
    kept = tarballs.unpack_entries(tarballs.pack_entries(listing))   # as the database keeps it
    assert (kept.entries, kept.problems) == (listing.entries, listing.problems) and len(kept.problems) == 3
    assert bytes(rows["gbk.tar.gz//" + gbk.decode("gb18030")]["relpath_bytes"]) == b"gbk.tar.gz//" + gbk
    failed = failures(db.url)
    assert failed["mixed.tar//../escape.jpg"] == ("read", "member path leads out of the archive (..); not read")
    assert failed["mixed.tar///etc/absolute.jpg"] == ("read", "member path is absolute; not read")
    assert failed["mixed.tar//link.jpg"] == ("read", "a link inside the archive; not followed")
    assert failed["not-a-tar.tgz"][1].startswith("not a readable tar archive")
    assert len(failed) == 4
    assert sorted(os.listdir(library)) == ["gbk.tar.gz", "mixed.tar", "not-a-tar.tgz"]


def test_members_read_back_exactly_in_any_order(tmp_path):
    members = {f"d/{n}.bin": os.urandom(50_000 + n) for n in range(5)}
    path = tmp_path / "p.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    listing, texts = tarballs.list_tar(open(path, "rb"))
    assert list(listing.entries) == [n.encode() for n in members] and texts == {}
    assert tarballs.unpack_entries(tarballs.pack_entries(listing)).entries == listing.entries

    def read(name: str) -> bytes:
        handle, st = open_regular(archives.member_path(os.fsencode(path), name.encode()), None)
        with handle:
            assert st.st_ino == listing.entries[name.encode()].offset
            return read_capped(handle, st, 1 << 20)

    with pytest.raises(FileNotFoundError):           # the part's first request, for no member
        read("d/none.bin")
    for name in ("d/1.bin", "d/3.bin", "d/0.bin", "d/4.bin", "d/2.bin"):   # forward, then behind
        assert read(name) == members[name]
    with pytest.raises(FileNotFoundError):
        read("d/none.bin")
    assert read("d/2.bin") == members["d/2.bin"]


def test_the_batches_of_one_part_travel_as_one_chain():
    parts = {1: None, 2: b"a.tgz", 3: b"a.tgz", 4: b"a.tgz", 5: b"b.tgz", 6: None, 7: b"b.tgz"}
    assert chains([1, 2, 3, 4, 5, 6, 7], parts) == [[1], [2, 3, 4], [5], [6], [7]]
    assert chains([2, 4], parts) == [[2], [4]]        # a batch done between: each resumes alone


def test_a_part_listed_again_gives_a_long_lived_worker_its_new_sidecars(settings, db, tmp_path):
    """A watcher or a worker keeps a part's sidecars in memory across batches and runs: a new
    copy of the part, listed again, must not be described with the old copy's sidecars."""
    from indexer.in_process import index_folder
    from indexer.runtime import Runtime

    library = tmp_path / "lib"
    trip = tmp_path / "src" / "Takeout" / "Google Photos" / "Trip"

    def part(seed: int, taken: str) -> None:
        L.write(trip / "IMG_1.jpg", L.jpeg(seed), L.MTIME)
        L.write(trip / "IMG_1.jpg.json", L.sidecar("IMG_1.jpg", taken), L.MTIME)
        L.tar_folder(tmp_path / "src", library / "takeout-001.tgz")

    library.mkdir()
    part(800, "2019-05-06T07:08:09")
    runtime = Runtime(settings, db)
    try:
        index_folder(settings, db, library, out=None, runtime=runtime)
        part(801, "2021-01-02T03:04:05")          # other bytes, another sidecar time
        os.utime(library / "takeout-001.tgz", ns=(10**18, 10**18))
        index_folder(settings, db, library, out=None, runtime=runtime)
    finally:
        runtime.close()
    row = located(db.url)["takeout-001.tgz//Takeout/Google Photos/Trip/IMG_1.jpg"]
    assert row["taken_at"].isoformat().startswith("2021-01-02T03:04:05")


def test_parts_are_listed_side_by_side_or_here_when_no_process_can_start(settings, db, tmp_path, monkeypatch):
    import indexer.producer

    library = tmp_path / "lib"
    for n in range(3):
        L.write(tmp_path / f"src{n}" / f"IMG_{n}.jpg", L.jpeg(900 + n), L.MTIME)
        library.mkdir(exist_ok=True)
        L.tar_folder(tmp_path / f"src{n}", library / f"takeout-00{n}.tgz")
    index(settings, db, library)                      # three new parts: listed in child processes
    assert len(listed_at(db.url)) == 3 and len(located(db.url)) == 3

    def no_processes(*args, **kwargs):
        raise OSError("out of processes")

    monkeypatch.setattr(indexer.producer, "ProcessPoolExecutor", no_processes)
    for n in range(3):                                # new copies: listed again, here
        os.utime(library / f"takeout-00{n}.tgz", ns=(10**18 + n, 10**18 + n))
    before = listed_at(db.url)
    index(settings, db, library)
    after = listed_at(db.url)
    assert all(after[p] > before[p] for p in before) and len(located(db.url)) == 3

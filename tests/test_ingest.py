"""Local-mode ingest of generated exports: the stored rows, exactly."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime, timezone

import psycopg

from clipdex.status import get_run
from indexer.in_process import index_folder
from tests import libraries as L
from tests.conftest import run_cli

UTC = timezone.utc


def index(settings, db, path, **kw):
    return index_folder(settings, db, path, out=None, **kw)


def located(url) -> dict[str, dict]:
    """Every location with its image's fields, keyed by relative path."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            "SELECT l.relpath, l.source, l.album, l.source_meta, i.id, i.format, i.width, i.height, "
            "i.exif_orientation, i.taken_at, i.taken_at_source, i.utc_offset_minutes, i.latitude, "
            "i.longitude, i.camera_make, i.camera_model, i.description, i.favorite, i.extra, l.relpath_bytes "
            "FROM locations l JOIN images i ON i.id = l.image_id")
        names = [d.name for d in cur.description]
        return {row[0]: dict(zip(names, row)) for row in cur}


def failures(url) -> dict[str, tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT relpath, stage, reason FROM ingest_failures")}


def counts(url) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("images", "locations", "embeddings", "thumbnails", "skipped_files")}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


GP1 = "takeout-20240712T112341Z-001/Takeout/Google Photos/"
GP2 = "takeout-20240712T112341Z-002/Takeout/Google Photos/"


def test_takeout_export(settings, db, tmp_path):
    root = L.takeout_library(tmp_path / "export")
    result = index(settings, db, root)
    rows = located(db.url)
    assert set(rows) == {GP1 + p for p in [
        "Photos from 2023/IMG_1234.JPG", "Trip to Gdańsk/IMG_1234.JPG", "Photos from 2023/MVIMG_20191230_232926.jpg",
        "Photos from 2023/Scan35.jpg", "Photos from 2023/Scan35(1).jpg", "Photos from 2023/IMAG0061.JPG",
        "Photos from 2023/IMAG0061-edited.JPG", "Photos from 2023/IMG_4573.HEIC", "Photos from 2023/partner.jpg",
    ]} | {GP2 + p for p in ["Photos from 2023/split.jpg", "Trip to Gdańsk/IMG_9999.jpg", "Urlaub/ski.png"]}

    year, album = rows[GP1 + "Photos from 2023/IMG_1234.JPG"], rows[GP1 + "Trip to Gdańsk/IMG_1234.JPG"]
    assert year["id"] == album["id"]                      # same bytes: one image, two locations
    assert (year["album"], album["album"]) == (None, "Trip to Gdańsk")
    assert year["taken_at"] == at("2023-07-28T19:45:07") and year["taken_at_source"] == "sidecar"
    assert year["utc_offset_minutes"] == 540              # EXIF 04:45:07 local vs sidecar UTC: +09:00
    assert (year["latitude"], year["longitude"]) == (48.798, 2.487)   # geoData; geoDataExif was 0,0
    assert year["description"] == "Ici c'est du texte" and year["favorite"] is True
    assert year["extra"]["people"] == ["Susan", "Justin"]
    assert (year["camera_make"], year["camera_model"]) == ("Google", "Pixel 7")
    assert year["source_meta"]["json"]["title"] == "IMG_1234.JPG"
    assert year["source_meta"]["uploaded_at"].startswith("2024-01-02T03:04:05")  # creationTime, never the capture time
    assert album["source_meta"]["album_location"] == {"name": "Paris", "latitude": 48.8029439, "longitude": 2.485429}

    mv = rows[GP1 + "Photos from 2023/MVIMG_20191230_232926.jpg"]
    assert mv["source_meta"]["sidecar"].endswith(".supplemental-metadata.json")  # its photoTakenTime is "0"
    assert (mv["taken_at"], mv["taken_at_source"], mv["utc_offset_minutes"]) == (at("2019-12-30T22:29:26"), "exif", 60)

    scan, scan1 = rows[GP1 + "Photos from 2023/Scan35.jpg"], rows[GP1 + "Photos from 2023/Scan35(1).jpg"]
    assert scan["taken_at"] == at("2021-05-01T10:00:00") and scan1["taken_at"] == at("2021-05-02T10:00:00")
    assert scan1["source_meta"]["sidecar"].endswith("Scan35.jpg.supplemental-metadata(1).json")

    edited = rows[GP1 + "Photos from 2023/IMAG0061-edited.JPG"]
    assert edited["taken_at"] == at("2022-02-02T02:02:02") and edited["source_meta"]["match"] == "edited"
    assert edited["extra"]["derived_from"] == "IMAG0061.JPG"

    live = rows[GP1 + "Photos from 2023/IMG_4573.HEIC"]
    assert live["format"] == "jpeg"                        # a .HEIC holding JPEG bytes
    assert (live["latitude"], live["longitude"]) == (-33.8598, 151.2093)   # from geoDataExif

    partner = rows[GP1 + "Photos from 2023/partner.jpg"]
    assert partner["extra"] == {"partner": True, "trashed": True}
    split = rows[GP2 + "Photos from 2023/split.jpg"]
    assert split["taken_at"] == at("2023-09-09T09:09:09")  # sidecar found in the other part
    assert split["source_meta"]["sidecar"].startswith("takeout-20240712T112341Z-001/")
    assert rows[GP2 + "Trip to Gdańsk/IMG_9999.jpg"]["album"] == "Trip to Gdańsk"
    assert rows[GP2 + "Urlaub/ski.png"]["album"] == "Urlaub im Schnee"   # old {"albumData": …} form

    assert failures(db.url) == {GP1 + "Photos from 2023/page.jpg": (
        "decode", "named like an image but the content is an HTML page")}
    assert counts(db.url) == {"images": 11, "locations": 12, "embeddings": 11, "thumbnails": 11,
                              "skipped_files": 0}
    assert result.images_encoded == 11
    run = get_run(psycopg.connect(db.url), result.plan.run_id)
    takeout = next(s for s in run.sources if s.source == "takeout")
    assert (takeout.new, takeout.duplicates, takeout.failed) == (11, 1, 1)
    assert run.state == "done"


def test_iphone_copy(settings, db, tmp_path):
    root = L.iphone_library(tmp_path / "phone")
    index(settings, db, root)
    rows = located(db.url)
    assert set(rows) == {"DCIM/100APPLE/IMG_0001.HEIC", "DCIM/100APPLE/IMG_E0001.JPG", "DCIM/100APPLE/IMG_0002.JPG",
                         "DCIM/100APPLE/IMG_0003.PNG", "DCIM/105APPLE/IMG_0001.JPG"}  # no .MOV, no .AAE
    heic = rows["DCIM/100APPLE/IMG_0001.HEIC"]
    assert (heic["format"], heic["width"], heic["height"], heic["exif_orientation"]) == ("heif", 80, 120, 6)
    assert (heic["taken_at"], heic["utc_offset_minutes"], heic["taken_at_source"]) == (
        at("2020-12-22T08:41:54"), 60, "exif")
    assert round(heic["latitude"], 4) == -33.8598 and round(heic["longitude"], 4) == 151.2093
    assert (heic["camera_make"], heic["camera_model"]) == ("Apple", "iPhone 12")
    assert heic["source_meta"] == {"folder": "100APPLE", "has_edits": True, "live_video": "IMG_0001.MOV"}
    edited = rows["DCIM/100APPLE/IMG_E0001.JPG"]
    assert edited["source_meta"]["edited_of"] == "IMG_0001.HEIC" and edited["extra"] == {"edited": True}
    jpg = rows["DCIM/100APPLE/IMG_0002.JPG"]
    assert (jpg["width"], jpg["height"], jpg["exif_orientation"]) == (80, 120, 6)   # stored 120×80
    assert (jpg["taken_at"], jpg["utc_offset_minutes"]) == (at("2021-06-01T18:30:00"), None)  # zone unknown
    shot = rows["DCIM/100APPLE/IMG_0003.PNG"]
    assert shot["extra"] == {"screenshot": True}
    assert (shot["taken_at"], shot["utc_offset_minutes"]) == (at("2022-03-03T21:06:07"), 480)
    other = rows["DCIM/105APPLE/IMG_0001.JPG"]
    assert other["id"] != heic["id"] and other["taken_at_source"] == "mtime"
    assert other["taken_at"] == L.MTIME


def test_qq_folders(settings, db, tmp_path):
    root = L.qq_library(tmp_path / "qq")
    index(settings, db, root)
    rows = located(db.url)
    base = "Tencent Files/12345678/"
    pic = base + "nt_qq/nt_data/Pic/2024-07/"
    gbk = next(r for r in rows.values() if bytes(r["relpath_bytes"]).endswith("照片".encode("gbk") + b".jpg"))
    assert gbk["relpath"] == base + "Image/C2C/照片.jpg"    # shown readably, stored exactly
    ori = f"{pic}Ori/{hashlib.md5(L.png(35)).hexdigest()}.png"
    # Not indexed: the _720 and _198 thumbnails whose original exists or that a larger one
    # replaces, and the OriTemp download leftover.
    assert set(rows) == {base + p for p in [
        "Image/Group2/HR/DT/HRDT{B9%A6BQW5REX6ZPJ]A.png", "Image/C2C/D4439109D498DC8CA89FA94E2304C0C9",
        "Image/Group2/IY/S2/IYS2F)882TXGVT[JIR[`4BY.jpg", "Image/Group/sticker.webp",
        "Image/C2C/{F8F9D803-034D-70EC-CA14-5F2FAEFA712F}.png", "Image/C2C/照片.jpg"]} | {
        ori, pic + "Thumb/01edc775e5cbc51dad90c8174a4e2b50_720.png", pic + "Ori/0123456789abcdef0123456789abcdef.jpg"}
    gif = rows[base + "Image/Group2/HR/DT/HRDT{B9%A6BQW5REX6ZPJ]A.png"]
    assert (gif["format"], gif["album"], gif["source_meta"]["chat_type"]) == ("gif", "QQ group chats", "group")
    private = rows[base + "Image/C2C/D4439109D498DC8CA89FA94E2304C0C9"]
    group = rows[base + "Image/Group2/IY/S2/IYS2F)882TXGVT[JIR[`4BY.jpg"]
    assert private["id"] == group["id"]                    # same picture in two chats: one image
    assert (private["format"], private["album"], group["album"]) == ("jpeg", "QQ private chats", "QQ group chats")
    assert private["taken_at"] == L.MTIME and private["taken_at_source"] == "mtime"
    assert private["source_meta"]["account"] == "12345678"
    assert rows[base + "Image/Group/sticker.webp"]["format"] == "webp"
    thumb = rows[pic + "Thumb/01edc775e5cbc51dad90c8174a4e2b50_720.png"]
    assert thumb["extra"] == {"is_thumbnail": True} and (thumb["width"], thumb["height"]) == (72, 48)
    assert rows[pic + "Ori/0123456789abcdef0123456789abcdef.jpg"]["source_meta"]["hash_mismatch"] is True
    assert "hash_mismatch" not in rows[ori]["source_meta"] and rows[ori]["source_meta"]["month"] == "2024-07"


def test_bad_files_fail_with_reasons_and_the_run_goes_on(settings, db, tmp_path):
    root = L.bad_files(tmp_path / "bad")
    write = L.write
    write(root / "notes.dat", "plain text in a file with no image name")
    result = index(settings, db, root)
    got = failures(db.url)
    assert set(got) == {"zero.jpg", "truncated.jpg", "text.jpg", "bomb.png"}
    assert got["zero.jpg"] == ("decode", "empty file (0 bytes)")
    assert got["truncated.jpg"][1].startswith("truncated JPEG")
    assert got["text.jpg"] == ("decode", "named like an image but the content is text")
    assert "decompression bomb" in got["bomb.png"][1]
    assert set(located(db.url)) == {"fine.jpg"}
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT relpath, reason FROM skipped_files").fetchall() == [
            ("notes.dat", "not an image: text")]
    assert result.counts == {"images_new": 1, "images_known": 0, "ignored": 1, "failed": 4}


def test_rerun_does_no_model_work_and_a_copy_becomes_a_location(settings, db, tmp_path):
    root = L.iphone_library(tmp_path / "lib")
    L.write(root / "notes.dat", "not an image")
    first = index(settings, db, root)
    assert first.images_encoded == 5 and first.counts["ignored"] == 1
    before = counts(db.url)
    again = index(settings, db, root)
    assert again.plan.files == 0 and again.images_encoded == 0 and counts(db.url) == before
    shutil.copy(root / "DCIM/100APPLE/IMG_0002.JPG", root / "copy of IMG_0002.JPG")
    third = index(settings, db, root)
    assert third.plan.files == 1 and third.images_encoded == 0
    assert third.counts == {"images_new": 0, "images_known": 1, "ignored": 0, "failed": 0}
    rows = located(db.url)
    assert rows["copy of IMG_0002.JPG"]["id"] == rows["DCIM/100APPLE/IMG_0002.JPG"]["id"]
    # A changed file is indexed again: its location now points at the new bytes.
    L.write(root / "copy of IMG_0002.JPG", L.jpeg(99))
    fourth = index(settings, db, root)
    assert fourth.images_encoded == 1
    assert located(db.url)["copy of IMG_0002.JPG"]["id"] != rows["DCIM/100APPLE/IMG_0002.JPG"]["id"]
    # An edited photo with no other copy: its old image goes (nothing would show the old pixels).
    old_id = rows["DCIM/105APPLE/IMG_0001.JPG"]["id"]
    L.write(root / "DCIM/105APPLE/IMG_0001.JPG", L.jpeg(98))
    index(settings, db, root)
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM images WHERE id = %s", (old_id,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 6
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 6   # cascaded


def test_files_gone_from_disk_are_forgotten_and_only_those(settings, db, tmp_path):
    root = L.iphone_library(tmp_path / "lib")
    shutil.copy(root / "DCIM/100APPLE/IMG_0002.JPG", root / "copy of IMG_0002.JPG")
    index(settings, db, root)
    rows = located(db.url)
    assert len(rows) == 6 and counts(db.url)["images"] == 5
    (root / "DCIM/100APPLE/IMG_0002.JPG").unlink()        # its copy remains: the image stays
    (root / "DCIM/100APPLE/IMG_0003.PNG").unlink()        # the only copy: the image goes
    (root / "DCIM/105APPLE/IMG_0001.JPG").unlink()        # now a broken link: unreadable, not gone
    os.symlink(root / "nowhere.jpg", root / "DCIM/105APPLE/IMG_0001.JPG")
    second = index(settings, db, root)
    assert sum(c.gone for c in second.plan.sources.values()) == 2 and second.plan.missing_kept == 0
    assert set(located(db.url)) == {"DCIM/100APPLE/IMG_0001.HEIC", "DCIM/100APPLE/IMG_E0001.JPG",
                                    "DCIM/105APPLE/IMG_0001.JPG", "copy of IMG_0002.JPG"}
    assert located(db.url)["copy of IMG_0002.JPG"]["id"] == rows["DCIM/100APPLE/IMG_0002.JPG"]["id"]
    assert {k: v for k, v in counts(db.url).items() if k != "skipped_files"} == {
        "images": 4, "locations": 4, "embeddings": 4, "thumbnails": 4}
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM images WHERE id = %s",
                            (rows["DCIM/100APPLE/IMG_0003.PNG"]["id"],)).fetchone()[0] == 0
        assert sum(s.gone for s in get_run(conn, second.plan.run_id).sources) == 2

    # Indexing a subfolder looks only inside it.
    (root / "copy of IMG_0002.JPG").unlink()
    (root / "DCIM/100APPLE/IMG_E0001.JPG").unlink()
    third = index(settings, db, root / "DCIM/100APPLE")
    assert sum(c.gone for c in third.plan.sources.values()) == 1
    assert set(located(db.url)) == {"DCIM/100APPLE/IMG_0001.HEIC", "DCIM/105APPLE/IMG_0001.JPG",
                                    "copy of IMG_0002.JPG"}

    # Told to keep them, or finding no file at all (an unmounted share), a run forgets nothing.
    kept = index(settings.replace(forget_missing=False), db, root)
    assert kept.plan.missing_kept == 1 and "copy of IMG_0002.JPG" in located(db.url)
    for path in sorted(root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    empty = index(settings, db, root)
    assert empty.plan.missing_kept == 3 and len(located(db.url)) == 3
    assert sum(c.gone for c in empty.plan.sources.values()) == 0


def test_a_moved_photo_keeps_its_image_and_costs_no_model_work(settings, db, tmp_path):
    root = tmp_path / "lib"
    for n in range(3):
        L.write(root / "inbox" / f"p{n}.jpg", L.jpeg(700 + n), L.MTIME)
    index(settings, db, root)
    before = located(db.url)
    (root / "2024").mkdir()
    os.rename(root / "inbox" / "p0.jpg", root / "2024" / "p0.jpg")
    (root / "inbox" / "p1.jpg").unlink()
    moved = index(settings, db, root)
    assert moved.images_encoded == 0 and moved.plan.files == 1      # read (hashed) at its new place only
    after = located(db.url)
    assert set(after) == {"2024/p0.jpg", "inbox/p2.jpg"}
    assert after["2024/p0.jpg"]["id"] == before["inbox/p0.jpg"]["id"] and after["2024/p0.jpg"]["album"] == "2024"
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT held_images FROM ingest_runs WHERE id = %s",
                            (moved.plan.run_id,)).fetchone()[0] is None     # let go when the run ended
    assert counts(db.url)["images"] == 2 and counts(db.url)["embeddings"] == 2

    # Moved to another disk: `mv` copies the file there (another inode) and keeps its time.
    (root / "inbox" / "p3.jpg").write_bytes(L.jpeg(703))
    index(settings, db, root)
    other_disk = root / "archive-disk"
    other_disk.mkdir()
    shutil.copy2(root / "inbox" / "p3.jpg", other_disk / "p3.jpg")
    kept_id = located(db.url)["inbox/p3.jpg"]["id"]
    (root / "inbox" / "p3.jpg").unlink()
    across = index(settings, db, root)
    assert across.images_encoded == 0 and located(db.url)["archive-disk/p3.jpg"]["id"] == kept_id
    shutil.rmtree(other_disk)
    index(settings, db, root)

    # A file that looked moved (same size and time elsewhere) but holds other bytes: the held
    # image leaves when the run ends.
    os.rename(root / "inbox" / "p2.jpg", root / "2024" / "p2.jpg")
    with open(root / "2024" / "p2.jpg", "r+b") as handle:
        stat = os.fstat(handle.fileno())
        handle.seek(stat.st_size - 3)
        handle.write(b"\xff\xd9\x00")
    os.utime(root / "2024" / "p2.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    index(settings, db, root)
    assert counts(db.url)["images"] == 2 and set(located(db.url)) == {"2024/p0.jpg", "2024/p2.jpg"}
    assert located(db.url)["2024/p2.jpg"]["id"] != before["inbox/p2.jpg"]["id"]


def test_the_cli_says_what_it_forgot_or_kept(settings, db, tmp_path):
    root = L.iphone_library(tmp_path / "lib")
    env = settings.to_environ()
    run_cli("index", str(root), env=env)
    (root / "DCIM/100APPLE/IMG_0003.PNG").unlink()
    kept = run_cli("index", str(root), "--keep-missing", env=env)
    assert "kept 1 indexed file that is no longer on disk" in kept.stderr and "forgot" not in kept.stderr
    assert "DCIM/100APPLE/IMG_0003.PNG" in located(db.url)
    forgot = run_cli("index", str(root), env=env)
    assert "iphone: forgot 1 file no longer on disk" in forgot.stderr
    assert "DCIM/100APPLE/IMG_0003.PNG" not in located(db.url)
    run_id = forgot.stderr.split("run ", 1)[1].split(" ", 1)[0]
    assert "gone 1" in run_cli("status", run_id, env=env).stdout


def test_index_prints_its_plan_first_and_the_rates_status_prints(settings, db, tmp_path):
    root = tmp_path / "lib"
    for i in range(12):
        L.write(root / f"p{i:02}.png", L.png(1900 + i))
    L.write(root / "notes.txt", "not a photo")
    env = settings.to_environ()
    proc = run_cli("index", str(root), env=env)
    plan_line = proc.stderr.index("folder: 13 files, 12 to index, 0 unchanged, 1 skipped (not photos by name)")
    assert plan_line < proc.stderr.index("files/s ·")            # the plan, then the progress line
    summary = proc.stdout.strip().splitlines()[0]
    assert summary.startswith("indexed 12 new images, 0 already known, 0 not images, 0 failed in ")
    rates = summary.split("; ", 1)[1]                           # "N files/s, M new images/s"
    status = run_cli("status", "1", env=env).stdout
    assert rates in status.splitlines()[0]
    assert "skipped 1," in status


def test_unchanged_failures_are_not_tried_again_unless_asked(settings, db, tmp_path):
    """A re-run over an unchanged tree does not load the model to fail the same files again."""
    root = tmp_path / "lib"
    L.write(root / "good.png", L.png(1950))
    L.write(root / "broken.jpg", "text, not a picture")
    env = settings.to_environ()
    assert index(settings, db, root).counts["failed"] == 1
    again = run_cli("index", str(root), env=env)
    assert "1 failed before and unchanged (--retry-failed tries again)" in again.stderr
    assert again.stdout.startswith("indexed 0 new images, 0 already known, 0 not images, 0 failed")
    status = run_cli("status", "2", env=env).stdout
    assert "batches 0/0" in status and "failed before 1" in status        # nothing to do: no model loaded
    retried = index(settings, db, root)
    assert retried.plan.files == 0 and retried.images_encoded == 0
    from indexer.producer import plan_run

    assert plan_run(settings, db, root, retry_failed=True).files == 1     # --retry-failed queues it
    L.write(root / "broken.jpg", L.jpeg(1951))                   # fixed: it changed, so it is tried
    assert index(settings, db, root).counts["images_new"] == 1


def test_same_photo_in_takeout_and_iphone_is_one_image(settings, db, tmp_path):
    photo = L.jpeg(60, taken="2022:08:01 10:00:00", offset="+02:00", make="Apple", model="iPhone 13")
    phone = tmp_path / "phone"
    L.write(phone / "DCIM" / "100APPLE" / "IMG_0500.JPG", photo, L.MTIME)
    export = tmp_path / "export" / "Takeout" / "Google Photos" / "Photos from 2022"
    L.write(export / "IMG_0500.JPG", photo, L.MTIME)
    L.write(export / "IMG_0500.JPG.json", L.sidecar("IMG_0500.JPG", "2022-08-01T08:00:05", favorited=True,
                                                    geoData={"latitude": 10.5, "longitude": 20.25}))
    index(settings, db, phone)
    first = located(db.url)["DCIM/100APPLE/IMG_0500.JPG"]
    assert (first["taken_at"], first["taken_at_source"], first["favorite"]) == (at("2022-08-01T08:00:00"), "exif", False)
    second = index(settings, db, tmp_path / "export")
    assert second.images_encoded == 0                     # known bytes: no model work
    rows = located(db.url)
    takeout = rows["Takeout/Google Photos/Photos from 2022/IMG_0500.JPG"]
    assert takeout["id"] == first["id"] and takeout["source"] == "takeout"
    # The sidecar's time, place and star now describe the image (the user's corrections win).
    assert (takeout["taken_at"], takeout["taken_at_source"], takeout["favorite"]) == (
        at("2022-08-01T08:00:05"), "sidecar", True)
    assert (takeout["latitude"], takeout["longitude"]) == (10.5, 20.25)
    assert takeout["utc_offset_minutes"] == 120 and takeout["camera_model"] == "iPhone 13"
    assert counts(db.url)["images"] == 1 and counts(db.url)["locations"] == 2


def test_forced_source_and_unreadable_folders(settings, db, tmp_path):
    root = tmp_path / "plain"
    L.write(root / "a" / "one.jpg", L.jpeg(70))
    L.write(root / "b" / "two.png", L.png(71))
    os.symlink(root, root / "a" / "loop")
    result = index(settings, db, root, source="folder")
    rows = located(db.url)
    assert set(rows) == {"a/one.jpg", "b/two.png"}
    assert rows["a/one.jpg"]["album"] == "a" and rows["a/one.jpg"]["source"] == "folder"
    assert failures(db.url) == {"a/loop": ("read", "symbolic link loop: folder already visited")}
    assert result.plan.problems == 1


def vector_index_oid(url):
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 'embeddings_hnsw_model_1'::regclass::oid").fetchone() if conn.execute(
            "SELECT to_regclass('embeddings_hnsw_model_1')").fetchone()[0] else None
    return row[0] if row else None


def test_a_bulk_load_builds_the_vector_index_once_at_the_end(settings, db, tmp_path):
    bulk = settings.replace(defer_index_files=5)
    for i in range(3):
        L.write(tmp_path / "lib" / "first" / f"{i}.png", L.png(200 + i))
    small = index_folder(bulk, db, tmp_path / "lib", out=None)
    assert not small.plan.defer_index                      # 3 files: the index is kept up to date
    before = vector_index_oid(db.url)
    assert before is not None
    for i in range(10):
        L.write(tmp_path / "lib" / "second" / f"{i}.png", L.png(300 + i))
    with psycopg.connect(db.url) as conn:
        began = conn.execute("SELECT now()").fetchone()[0]
    big = index_folder(bulk, db, tmp_path / "lib", out=None)
    assert big.plan.defer_index                            # 10 new >= max(5, 3 already there)
    after = vector_index_oid(db.url)
    assert after is not None and after != before          # dropped for the load, built again at the end
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT defer_index FROM ingest_runs ORDER BY id").fetchall() == [(False,), (True,)]
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 13
        # the planner's counts and the visibility map are brought up to date by the load itself
        settled = conn.execute("SELECT relname, last_vacuum >= %s, last_analyze >= %s FROM pg_stat_user_tables "
                               "WHERE relname IN ('images', 'embeddings') ORDER BY relname", (began, began)).fetchall()
        assert settled == [("embeddings", True, True), ("images", True, True)]


def test_an_interrupted_bulk_load_has_its_index_back_by_the_next_command(settings, db, tmp_path):
    """A load that dropped its index and died (here: planned, no batch run, as a process killed
    right after its scan) leaves the model without its index only until the next command opens
    the database; a load that is still going on keeps its index deferred."""
    from clipdex import model_registry
    from clipdex.database import open_database
    from indexer.producer import plan_run

    bulk = settings.replace(defer_index_files=5)
    for i in range(3):
        L.write(tmp_path / "lib" / "first" / f"{i}.png", L.png(400 + i))
    index_folder(bulk, db, tmp_path / "lib", out=None)
    for i in range(10):
        L.write(tmp_path / "lib" / "second" / f"{i}.png", L.png(500 + i))

    local = plan_run(bulk, db, tmp_path / "lib", mode="local")
    assert local.defer_index and vector_index_oid(db.url) is None
    with db.connect(autocommit=True) as conn, model_registry.holding_bulk_load(conn, local.run_id):
        open_database(bulk)                          # the load is alive: its process holds the lock
        assert vector_index_oid(db.url) is None
    open_database(bulk)                              # its process is gone: the next command builds it
    assert vector_index_oid(db.url) is not None

    celery = plan_run(bulk, db, tmp_path / "lib", mode="celery")
    assert celery.defer_index and vector_index_oid(db.url) is None
    open_database(bulk)                              # the run was planned just now: workers are on it
    assert vector_index_oid(db.url) is None
    with psycopg.connect(db.url, autocommit=True) as conn:   # nothing has moved for an hour
        conn.execute("UPDATE ingest_runs SET started_at = now() - interval '1 hour', "
                     "enqueued_at = now() - interval '1 hour' WHERE id = %s", (celery.run_id,))
    proc = run_cli("status", env=bulk.to_environ())
    assert "building it now" in proc.stderr
    assert vector_index_oid(db.url) is not None
    assert "building it now" not in run_cli("status", env=bulk.to_environ()).stderr   # there: nothing to do

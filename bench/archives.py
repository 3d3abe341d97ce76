"""Takeout zips and .tgz parts read in place against the same export extracted.

    python -m bench.archives [--scale 3] [--members 200000] [--smoke] [--json OUT]

1. Indexing: the decode benchmark's corpus (camera JPEGs, HEICs, screenshots, chat images),
   ``--scale`` copies of it, laid out as a three-part Takeout with a sidecar per photo, indexed in
   this process with the tiny random-weight model into a fresh embedded database: from the parts
   extracted (the baseline), from the three zips and from the three .tgz parts, each twice in turn
   after a warm-up run, the faster run of each kept. Photos/s, the bytes the process read
   (``rchar``: every read call, files and sockets alike) and the disk each form of the export takes.
2. The producer: ``--members`` members (half photos, half sidecars, empty: the producer never reads
   a photo) in four zip parts, planned (list the archives, match the sidecars across parts, store
   the batches), against the same tree extracted on disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from bench.corpus import make_corpus
from bench.ingest import SMOKE_COUNTS, library_from
from bench.report import Report, fresh_database
from clipdex import embedded_postgres
from clipdex.config import Settings
from tests.libraries import tar_folder, zip_folder
from tests.tiny_model import TINY_MODEL_CFG, write_model_folder

PARTS = 3
PRODUCER_PARTS = 4


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def takeout_tree(photos: list[Path], export: Path) -> int:
    """The photos spread over PARTS parts as Google lays them out, each with its sidecar."""
    for n, photo in enumerate(photos):
        album = export / f"takeout-20240101T000000Z-{n % PARTS + 1:03d}" / "Takeout" / "Google Photos" / \
            f"Album {n % 7}"
        album.mkdir(parents=True, exist_ok=True)
        name = f"{n:05d}_{photo.name}"
        shutil.copy(photo, album / name)
        (album / f"{name}.supplemental-metadata.json").write_text(json.dumps(
            {"title": name, "photoTakenTime": {"timestamp": str(1_600_000_000 + n * 3600)}}))
    return len(photos)


def zipped(export: Path, target: Path) -> Path:
    target.mkdir()
    for part in sorted(export.iterdir()):
        zip_folder(part, target / f"{part.name}.zip")
    return target


def tarred(export: Path, target: Path) -> Path:
    target.mkdir()
    for part in sorted(export.iterdir()):
        tar_folder(part, target / f"{part.name}.tgz")
    return target


def index_once(settings: Settings, folder: Path) -> tuple[float, int, int]:
    """(seconds, photos encoded, bytes read) of one `clipdex index` in this process."""
    from clipdex.database import open_database
    from indexer.in_process import index_folder

    db = open_database(settings)
    before, start = rchar(), time.perf_counter()
    result = index_folder(settings, db, folder, out=None)
    return time.perf_counter() - start, result.images_encoded, rchar() - before


def member_parts(target: Path, members: int) -> None:
    """PRODUCER_PARTS zips of empty members: half photos, half their sidecars, 500 per album."""
    per_part = members // 2 // PRODUCER_PARTS
    for part in range(PRODUCER_PARTS):
        with zipfile.ZipFile(target / f"takeout-20240101T000000Z-{part + 1:03d}.zip", "w") as archive:
            for i in range(per_part):
                n = part * per_part + i
                folder = f"Takeout/Google Photos/Album {n // 500}"
                archive.writestr(f"{folder}/PXL_2023{n:09}.jpg", b"")
                archive.writestr(f"{folder}/PXL_2023{n:09}.jpg.supplemental-metadata.json", b"")


def extract(zips: Path, target: Path) -> None:
    for archive in sorted(zips.iterdir()):
        with zipfile.ZipFile(archive) as z:
            z.extractall(target / archive.stem)


def plan_once(settings: Settings, folder: Path) -> tuple[float, int]:
    from clipdex.database import open_database
    from indexer.producer import plan_run

    db = open_database(settings)
    start = time.perf_counter()
    plan = plan_run(settings, db, folder, mode="local")
    return time.perf_counter() - start, plan.files


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=3, help="copies of the decode corpus (each new images)")
    parser.add_argument("--members", type=int, default=200_000, help="archive members for the producer")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.scale, args.members = 1, 2000
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-archives-"))
    home = work / "home"
    try:
        corpus_dir = Path(tempfile.gettempdir()) / "clipdex-bench" / ("corpus-smoke" if args.smoke else "corpus")
        photos = sorted(p for p in library_from(make_corpus(corpus_dir, SMOKE_COUNTS if args.smoke else None),
                                                work / "copies", args.scale).rglob("*") if p.is_file())
        files = takeout_tree(photos, work / "extracted")
        zipped(work / "extracted", work / "zips")
        tarred(work / "extracted", work / "tgz")
        model = write_model_folder(work / "model", TINY_MODEL_CFG)
        base = embedded_postgres.server_url(home)

        def settings(name: str) -> Settings:
            return Settings(home=home, database_url=fresh_database(base, name), model=f"local-dir:{model}",
                            device="cpu", ocr=False)

        # A first run loads the model and warms every cache; then each form twice, in turn, best kept.
        index_once(settings("warm_up"), work / "extracted")
        runs: dict[str, list[tuple[float, int, int]]] = {"extracted": [], "zips": [], "tgz": []}
        for attempt in range(2):
            for form in runs:
                runs[form].append(index_once(settings(f"{form}_{attempt}"), work / form))
        (extracted_s, extracted_n, extracted_read), (zip_s, zip_n, zip_read), (tgz_s, tgz_n, tgz_read) = (
            min(runs[f]) for f in runs)
        if not extracted_n == zip_n == tgz_n or not zip_n:   # copies sharing bytes: fewer images than files
            raise SystemExit(f"indexed {extracted_n} extracted, {zip_n} zipped and {tgz_n} tgz images of {files}")

        members = work / "members"
        members.mkdir()
        member_parts(members, args.members)
        extract(members, work / "members-extracted")
        tarred(work / "members-extracted", work / "members-tgz")
        plan_zip_s, planned_zip = plan_once(settings("plan_zips"), members)
        plan_tree_s, planned_tree = plan_once(settings("plan_tree"), work / "members-extracted")
        tgz_settings = settings("plan_tgz")
        plan_tgz_s, planned_tgz = plan_once(tgz_settings, work / "members-tgz")
        replan_tgz_s, _ = plan_once(tgz_settings, work / "members-tgz")
        if not planned_zip == planned_tree == planned_tgz:
            raise SystemExit(f"planned {planned_zip} zipped, {planned_tgz} tgz and {planned_tree} extracted members")

        report = Report(f"Takeout zips and .tgz parts in place: {files} photos in {PARTS} parts; the producer on "
                        f"{args.members:,} members", "the same export extracted")
        report.facts.update({"photos": str(files), "export extracted": f"{disk_bytes(work / 'extracted') / 2**20:.0f} MiB",
                             "export as zips": f"{disk_bytes(work / 'zips') / 2**20:.0f} MiB",
                             "export as .tgz": f"{disk_bytes(work / 'tgz') / 2**20:.0f} MiB"})
        report.add("index, photos/s", files / zip_s, files / extracted_s, "photos/s",
                   note=f"{zip_s:.1f} s from zips, {extracted_s:.1f} s extracted; {zip_n} distinct images")
        report.add("index from .tgz, photos/s", files / tgz_s, files / extracted_s, "photos/s",
                   note=f"{tgz_s:.1f} s from .tgz parts (the producer's listing pass included)")
        report.add("bytes read by the process, MiB", zip_read / 2**20, extracted_read / 2**20, "MiB",
                   higher_is_better=False, note="rchar: files and sockets")
        report.add("bytes read from .tgz, MiB", tgz_read / 2**20, extracted_read / 2**20, "MiB",
                   higher_is_better=False, note="listing pass, then the workers' pass: each part read twice")
        report.add(f"producer, {args.members:,} members, members/s", args.members / plan_zip_s,
                   args.members / plan_tree_s, "members/s",
                   note=f"{plan_zip_s:.1f} s from {PRODUCER_PARTS} zips, {plan_tree_s:.1f} s extracted; "
                        f"{planned_zip:,} photos planned")
        report.add(f"producer, {args.members:,} members in .tgz, members/s", args.members / plan_tgz_s,
                   args.members / plan_tree_s, "members/s", note=f"{plan_tgz_s:.1f} s: every part inflated to list it")
        report.add("the same .tgz planned again, members/s", args.members / replan_tgz_s, args.members / plan_tree_s,
                   "members/s", note=f"{replan_tgz_s:.1f} s: the listings kept in the database")
        report.emit(args.json)
        return report
    finally:
        embedded_postgres.stop(home)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

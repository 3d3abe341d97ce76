"""What the web app reads back from the library: one image's details and copies, thumbnails,
originals by image id, and the values the filter panel offers."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import psycopg

from clipdex.config import Settings
from clipdex.archives import split_shown
from clipdex.files import FileRefused, open_regular, read_capped
from clipdex.roots import RootError, absolute, known_roots, local_root
from clipdex.search.errors import Conflict, NotFound
from clipdex.vocabulary import IMAGE_FORMATS, SOURCE_KINDS


def _archive_member(relpath: str) -> dict[str, str]:
    """For a photo read inside a zip: the archive's path and the member's name within it."""
    inside = split_shown(relpath)
    return {"archive": inside[0], "member": inside[1]} if inside else {}


def image_detail(conn: psycopg.Connection, image_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, taken_at, taken_at_source, utc_offset_minutes, width, height, orientation, format, "
        "byte_size, camera_make, camera_model, latitude, longitude, favorite, description, source, "
        "sources, album, root, path, copies, extra, sha256, ocr_text FROM photos WHERE id = %s", (image_id,)).fetchone()
    if row is None:
        raise NotFound(f"there is no image {image_id}")
    names = ["id", "taken_at", "taken_at_source", "utc_offset_minutes", "width", "height", "orientation",
             "format", "byte_size", "camera_make", "camera_model", "latitude", "longitude", "favorite",
             "description", "source", "sources", "album", "root", "path", "copies", "extra", "sha256", "ocr_text"]
    detail = dict(zip(names, row))
    detail["taken_at"] = detail["taken_at"].isoformat() if detail["taken_at"] else None
    detail["locations"] = [
        {"root": root, "path": relpath, "source": source, "album": album, "byte_size": size,
         "modified": datetime.fromtimestamp(mtime_ns / 1e9).astimezone().isoformat(),
         "source_meta": meta, **_archive_member(relpath)}
        for root, relpath, source, album, size, mtime_ns, meta in conn.execute(
            "SELECT root, relpath, source, album, byte_size, mtime_ns, source_meta FROM locations "
            "WHERE image_id = %s ORDER BY album IS NULL, first_seen_at, id", (image_id,))]
    # The other copies of its picture (recompressed, resized, screenshots, bursts), best first.
    detail["lookalikes"] = [r[0] for r in conn.execute(
        "SELECT id FROM lookalikes(%s) WHERE id <> %s", (image_id, image_id))]
    return detail


def run_status(conn: psycopg.Connection, run_id: int):
    """An ingest run's figures, or NotFound (also for ids past bigint, which name no run)."""
    from clipdex import status

    run = status.get_run(conn, run_id) if run_id <= 2**63 - 1 else None
    if run is None:
        raise NotFound(f"there is no run {run_id}")
    return run


def image_id_of(conn: psycopg.Connection, data: bytes) -> int | None:
    """The indexed image with exactly these bytes, if any."""
    row = conn.execute("SELECT id FROM images WHERE sha256 = %s", (hashlib.sha256(data).digest(),)).fetchone()
    return row[0] if row else None


def thumbnail(conn: psycopg.Connection, image_id: int) -> bytes:
    row = conn.execute("SELECT webp FROM thumbnails WHERE image_id = %s", (image_id,)).fetchone()
    if row is None:
        raise NotFound(f"there is no thumbnail for image {image_id}")
    return bytes(row[0])


VERIFY_HASH_MAX_BYTES = 64 << 20   # originals up to this size are hashed before being served


@dataclass
class Original:
    """An opened original: its bytes when they were checked against the image's SHA-256 (files up
    to VERIFY_HASH_MAX_BYTES), else an open file whose size, time and inode matched."""

    name: str
    format: str
    size: int
    mtime_ns: int
    data: bytes | None = None
    handle: BinaryIO | None = None
    stat: Any = None     # the handle's stat (an archive member's has no file descriptor to fstat)

    def read(self, max_bytes: int) -> bytes:
        if self.data is not None:
            return self.data
        with self.handle:
            return read_capped(self.handle, self.stat, max_bytes)


def open_original(settings: Settings, conn: psycopg.Connection, image_id: int) -> Original:
    """The very file that was indexed for this image, opened, from a location readable here.

    Files are reached only through an image id and the locations stored for it: no request names
    a path. The resolved path must stay inside its root, be a regular file with the size, time and
    inode stored when it was indexed, and (when small enough to check cheaply) hash to the image's
    SHA-256. Raises NotFound when no copy is reachable, Conflict when copies exist but changed.
    """
    row = conn.execute("SELECT format, sha256 FROM images WHERE id = %s", (image_id,)).fetchone()
    if row is None:
        raise NotFound(f"there is no image {image_id}")
    fmt, sha256 = row[0], bytes(row[1])
    registered = known_roots(conn)
    changed: list[str] = []
    for root, relpath, size, mtime_ns, inode in conn.execute(
            "SELECT root, relpath_bytes, byte_size, mtime_ns, inode FROM locations WHERE image_id = %s "
            "ORDER BY first_seen_at, id", (image_id,)).fetchall():
        relpath = bytes(relpath)
        if relpath.startswith(b"/") or b".." in relpath.split(b"/"):
            continue
        try:
            root_path = local_root(settings, None, root, registered)
        except RootError:
            continue
        inside = None if settings.follow_external_links else [os.path.realpath(os.fsencode(root_path))]
        try:
            handle, st = open_regular(absolute(root_path, relpath), inside)
        except FileNotFoundError:
            continue
        except (FileRefused, OSError) as exc:
            changed.append(str(exc))
            continue
        name = os.fsdecode(os.path.basename(relpath))
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) or (inode is not None and st.st_ino != inode):
            handle.close()
            changed.append("its size, time or inode differ from when it was indexed")
            continue
        if size > VERIFY_HASH_MAX_BYTES:
            return Original(name, fmt, size, mtime_ns, handle=handle, stat=st)
        with handle:
            data = read_capped(handle, st, VERIFY_HASH_MAX_BYTES)
        if hashlib.sha256(data).digest() != sha256:
            changed.append("its content differs from when it was indexed")
            continue
        return Original(name, fmt, size, mtime_ns, data=data)
    if changed:
        raise Conflict(f"the file of image {image_id} changed since it was indexed ({changed[0]}); "
                       "index its folder again to see it")
    raise NotFound(f"no copy of image {image_id} is reachable from this server")


def facets(conn: psycopg.Connection, limit: int = 200) -> dict[str, Any]:
    """What the filter panel can offer: sources, albums, formats, cameras, the date range and the
    models searches can ask for (the default first).

    Every page load asks, so it reads the photos once: the few sources and formats are each
    looked up in their index, the cameras and the count come from one pass (grouping sets), the
    dates from the date index (five scans took 240 ms at a million photos, this 188 ms)."""
    first, last = conn.execute("SELECT min(taken_at), max(taken_at) FROM images").fetchone()
    makes: list[tuple[int, str]] = []
    models: list[tuple[int, str]] = []
    images = 0
    for make, model, count, by_make, by_model in conn.execute(
            "SELECT camera_make, camera_model, count(*), GROUPING(camera_make) = 0, GROUPING(camera_model) = 0 "
            "FROM images GROUP BY GROUPING SETS ((camera_make), (camera_model), ())"):
        if by_make and make is not None:
            makes.append((-count, make))
        elif by_model and model is not None:
            models.append((-count, model))
        elif not by_make and not by_model:
            images = count
    present = "SELECT v FROM unnest(%s::text[]) v WHERE EXISTS (SELECT 1 FROM {table} WHERE {column} = v) ORDER BY v"
    return {
        "models": [{"name": name, "default": active, "multilingual": bool(multilingual)}
                   for name, active, multilingual in conn.execute(
                       "SELECT name, active, (spec->>'multilingual')::boolean FROM models ORDER BY active DESC, id")],
        "sources": [r[0] for r in conn.execute(present.format(table="locations", column="source"),
                                               (list(SOURCE_KINDS),))],
        "albums": [r[0] for r in conn.execute(
            "SELECT album FROM locations WHERE album IS NOT NULL GROUP BY album "
            "ORDER BY count(*) DESC, album LIMIT %s", (limit,))],
        "formats": [r[0] for r in conn.execute(present.format(table="images", column="format"),
                                               (list(IMAGE_FORMATS),))],
        "camera_makes": [make for _, make in sorted(makes)[:limit]],
        "camera_models": [model for _, model in sorted(models)[:limit]],
        "taken_from": first.date().isoformat() if first else None,
        "taken_to": last.date().isoformat() if last else None,
        "images": images,
    }

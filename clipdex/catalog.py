"""Reading the library back: one image's details and copies, thumbnails, originals by image id,
and the values the filter panel offers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from clipdex.config import Settings
from clipdex.roots import RootError, absolute, known_roots, local_root
from clipdex.search import NotFound


def image_detail(conn: psycopg.Connection, image_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, taken_at, taken_at_source, utc_offset_minutes, width, height, orientation, format, "
        "byte_size, camera_make, camera_model, latitude, longitude, favorite, description, source, "
        "sources, album, root, path, copies, extra, sha256 FROM photos WHERE id = %s", (image_id,)).fetchone()
    if row is None:
        raise NotFound(f"there is no image {image_id}")
    names = ["id", "taken_at", "taken_at_source", "utc_offset_minutes", "width", "height", "orientation",
             "format", "byte_size", "camera_make", "camera_model", "latitude", "longitude", "favorite",
             "description", "source", "sources", "album", "root", "path", "copies", "extra", "sha256"]
    detail = dict(zip(names, row))
    detail["taken_at"] = detail["taken_at"].isoformat() if detail["taken_at"] else None
    detail["locations"] = [
        {"root": root, "path": relpath, "source": source, "album": album, "byte_size": size,
         "modified": datetime.fromtimestamp(mtime_ns / 1e9).astimezone().isoformat(),
         "source_meta": meta}
        for root, relpath, source, album, size, mtime_ns, meta in conn.execute(
            "SELECT root, relpath, source, album, byte_size, mtime_ns, source_meta FROM locations "
            "WHERE image_id = %s ORDER BY album IS NULL, first_seen_at, id", (image_id,))]
    detail["thumbnail_url"] = f"/thumbnails/{image_id}.webp"
    detail["original_url"] = f"/images/{image_id}/original"
    return detail


def thumbnail(conn: psycopg.Connection, image_id: int) -> bytes:
    row = conn.execute("SELECT webp FROM thumbnails WHERE image_id = %s", (image_id,)).fetchone()
    if row is None:
        raise NotFound(f"there is no thumbnail for image {image_id}")
    return bytes(row[0])


@dataclass(frozen=True)
class Original:
    path: bytes
    name: str
    format: str


def find_original(settings: Settings, conn: psycopg.Connection, image_id: int) -> Original:
    """A copy of the image's file readable on this machine, unchanged since it was indexed.

    Files are only ever reached through an image id and the locations stored for it: no request
    names a path.
    """
    fmt = conn.execute("SELECT format FROM images WHERE id = %s", (image_id,)).fetchone()
    if fmt is None:
        raise NotFound(f"there is no image {image_id}")
    registered = known_roots(conn)
    for root, relpath, size, mtime_ns in conn.execute(
            "SELECT root, relpath_bytes, byte_size, mtime_ns FROM locations WHERE image_id = %s "
            "ORDER BY first_seen_at, id", (image_id,)):
        relpath = bytes(relpath)
        if relpath.startswith(b"/") or b".." in relpath.split(b"/"):
            continue
        try:
            path = absolute(local_root(settings, None, root, registered), relpath)
            st = os.stat(path)
        except (RootError, OSError):
            continue
        if st.st_size == size and st.st_mtime_ns == mtime_ns:
            return Original(path, os.fsdecode(os.path.basename(relpath)), fmt[0])
    raise NotFound(f"no copy of image {image_id} is reachable from this server (or the files changed)")


def facets(conn: psycopg.Connection, limit: int = 200) -> dict[str, Any]:
    """What the filter panel can offer: sources, albums, formats, cameras and the date range."""
    first, last = conn.execute("SELECT min(taken_at), max(taken_at) FROM images").fetchone()
    return {
        "sources": [r[0] for r in conn.execute("SELECT DISTINCT source FROM locations ORDER BY 1")],
        "albums": [r[0] for r in conn.execute(
            "SELECT album FROM locations WHERE album IS NOT NULL GROUP BY album "
            "ORDER BY count(*) DESC, album LIMIT %s", (limit,))],
        "formats": [r[0] for r in conn.execute("SELECT DISTINCT format FROM images ORDER BY 1")],
        "camera_makes": [r[0] for r in conn.execute(
            "SELECT camera_make FROM images WHERE camera_make IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC "
            "LIMIT %s", (limit,))],
        "camera_models": [r[0] for r in conn.execute(
            "SELECT camera_model FROM images WHERE camera_model IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC "
            "LIMIT %s", (limit,))],
        "taken_from": first.date().isoformat() if first else None,
        "taken_to": last.date().isoformat() if last else None,
        "images": conn.execute("SELECT count(*) FROM images").fetchone()[0],
    }

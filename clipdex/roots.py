"""Library roots: files are stored as (root name, relative path), never as absolute paths.

A root name means the same library on every machine; each machine says where it mounts it with
``CLIPDEX_ROOTS`` (``photos=/mnt/nas/photos``), else the ``roots`` table says where the machine
that first indexed it found it (the indexer registers roots: indexer/placement.py).

Names on disk are bytes. They are stored exactly (``relpath_bytes``) and shown through
:func:`display_path`, which reads UTF-8, then GB18030 (QQ folders and zip files from Chinese
Windows), and never fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from clipdex.config import Settings


class RootError(ValueError):
    """A path cannot be placed under a root, or a root is not mounted on this machine."""


def display_path(raw: bytes) -> str:
    """A readable rendering of a file name's bytes (lossless storage is ``relpath_bytes``)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gb18030")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


def known_roots(conn: psycopg.Connection) -> dict[str, Path]:
    return {name: Path(path) for name, path in conn.execute("SELECT name, path FROM roots")}


def local_root(settings: Settings, conn: psycopg.Connection | None, name: str,
               registered: dict[str, Path] | None = None) -> Path:
    """Where root ``name`` is mounted on this machine (CLIPDEX_ROOTS first, then the roots table)."""
    if name in settings.roots:
        path = settings.roots[name]
    else:
        if registered is None:
            registered = known_roots(conn) if conn is not None else {}
        path = registered.get(name)
    if path is None or not path.is_dir():
        where = f" (registered at {path})" if path is not None else ""
        raise RootError(
            f"library root {name!r}{where} is not mounted on this machine; "
            f"set CLIPDEX_ROOTS={name}=/where/it/is/mounted"
        )
    return path


def absolute(root_path: Path, relpath: bytes) -> bytes:
    return os.path.join(os.fsencode(root_path), relpath)

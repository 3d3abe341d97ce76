"""Library roots: files are stored as (root name, relative path), never as absolute paths.

A root name means the same library on every machine; each machine says where it mounts it with
``CLIPDEX_ROOTS`` (``photos=/mnt/nas/photos``). A folder indexed without a configured root gets
a root named after it, remembered in the ``roots`` table with the path where it was found, so
the same machine (and the web app beside it) can find the files again.

Names on disk are bytes. They are stored exactly (``relpath_bytes``) and shown through
:func:`display_path`, which reads UTF-8, then GB18030 (QQ folders and zip files from Chinese
Windows), and never fails.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from clipdex.config import Settings, valid_root_name


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


def encode_path(raw: bytes) -> str | dict:
    """JSON-safe form of a name for task messages: text when it is UTF-8, else base64."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


def decode_path(value: str | dict) -> bytes:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value.encode("utf-8")


@dataclass(frozen=True)
class Placement:
    """Where a folder being indexed sits: its root and its path inside that root."""

    root: str
    root_path: Path
    relpath: bytes  # b"" for the root itself


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def _relative(path: Path, parent: Path) -> bytes:
    rel = os.path.relpath(os.fsencode(path), os.fsencode(parent))
    return b"" if rel == b"." else rel


def _name_for(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name).strip("-.") or "library"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def known_roots(conn: psycopg.Connection) -> dict[str, Path]:
    return {name: Path(path) for name, path in conn.execute("SELECT name, path FROM roots")}


def place(settings: Settings, conn: psycopg.Connection, folder: Path) -> Placement:
    """Finds (or registers) the root for a folder about to be indexed.

    Order: a root configured in CLIPDEX_ROOTS that contains the folder (the innermost one), a
    root already registered here that contains it, else a new root named after the folder.
    """
    folder = Path(os.path.realpath(folder))
    if not folder.is_dir():
        raise RootError(f"{folder} is not a folder")
    configured = {n: Path(os.path.realpath(p)) for n, p in settings.roots.items()}
    registered = known_roots(conn)
    for candidates in (configured, {n: p for n, p in registered.items() if n not in configured}):
        inside = [(n, p) for n, p in candidates.items() if _is_within(folder, p)]
        if inside:
            name, path = max(inside, key=lambda item: len(item[1].parts))
            _register(conn, name, path)
            return Placement(name, path, _relative(folder, path))
    name = _name_for(folder, set(registered) | set(configured))
    _register(conn, name, folder)
    return Placement(name, folder, b"")


def _register(conn: psycopg.Connection, name: str, path: Path) -> None:
    if not valid_root_name(name):
        raise RootError(f"root name {name!r} may only use letters, digits, '.', '_' and '-'")
    conn.execute(
        "INSERT INTO roots (name, path) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (name, str(path)),
    )


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

"""Where a folder being indexed belongs: the library root it sits under (a configured one, one
registered here before, or a new root named after the folder) and its path inside that root."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from clipdex.config import Settings, valid_root_name
from clipdex.roots import RootError, known_roots
from indexer import store


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
    store.register_root(conn, name, str(path))

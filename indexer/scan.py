"""Walks a library with ``os.scandir`` and ``stat`` only: no file is opened here.

Names stay bytes from start to end, so a file whose name is not valid UTF-8 (GBK names from QQ
or from a zip made on Chinese Windows) is found, stored and read back exactly. Symbolic links are
followed while they stay inside the library's roots (a link to ``/etc`` is reported once and not
followed, unless allowed); a folder reached twice (a loop) is reported, not walked again; folders
that cannot be read are reported and the walk goes on.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from clipdex.files import outside_reason, within


@dataclass(frozen=True, slots=True)
class ScannedFile:
    name: bytes       # the file name within its folder
    size: int
    mtime_ns: int
    inode: int = 0


@dataclass(slots=True)
class ScannedFolder:
    relpath: bytes                      # relative to the root; b"" is the root
    files: list[ScannedFile] = field(default_factory=list)

    def file_relpath(self, name: bytes) -> bytes:
        return os.path.join(self.relpath, name) if self.relpath else name


@dataclass(frozen=True, slots=True)
class ScanProblem:
    relpath: bytes
    reason: str


def walk(root: bytes, start: bytes = b"", inside: Sequence[bytes] | None = None
         ) -> Iterator[ScannedFolder | ScanProblem]:
    """Yields every folder under ``root/start`` with its regular files, and each problem met.

    ``inside``: resolved folders a symbolic link may lead into (None: anywhere).
    """
    seen_dirs: set[tuple[int, int]] = set()
    pending = [start]
    while pending:
        relpath = pending.pop()
        path = os.path.join(root, relpath) if relpath else root
        try:
            info = os.stat(path)
        except OSError as exc:
            yield ScanProblem(relpath, f"cannot read folder: {exc.strerror or exc}")
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            yield ScanProblem(relpath, "symbolic link loop: folder already visited")
            continue
        seen_dirs.add(key)
        folder = ScannedFolder(relpath)
        subfolders: list[bytes] = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    child = os.path.join(relpath, entry.name) if relpath else entry.name
                    if inside is not None and entry.is_symlink():
                        target = os.path.realpath(os.path.join(root, child))
                        if not any(within(target, folder) for folder in inside):
                            yield ScanProblem(child, outside_reason(target))
                            continue
                    try:
                        st = entry.stat()  # follows symlinks
                    except OSError as exc:
                        reason = "broken symbolic link" if entry.is_symlink() else (exc.strerror or str(exc))
                        yield ScanProblem(child, f"cannot stat: {reason}")
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        subfolders.append(child)
                    elif stat.S_ISREG(st.st_mode):
                        folder.files.append(ScannedFile(entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError as exc:
            yield ScanProblem(relpath, f"cannot list folder: {exc.strerror or exc}")
            continue
        yield folder
        pending.extend(sorted(subfolders, reverse=True))

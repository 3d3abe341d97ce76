"""Walks a library with ``os.scandir`` and ``stat`` only: no photo is opened here (an archive is
listed, to give its members as folders: ``list_archives``).

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
from typing import BinaryIO, Callable, Iterator, Sequence

from clipdex import archives
from clipdex.files import FileRefused, open_regular, outside_reason, within


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


TarLister = Callable[[bytes, BinaryIO, os.stat_result], archives.Listing]


def list_archives(root: bytes, folders: list[ScannedFolder], inside: Sequence[bytes] | None,
                  list_tar: TarLister) -> tuple[list[ScannedFolder], list[ScanProblem]]:
    """Each archive among the scanned files becomes the folders of its members
    (``archive.zip//Takeout/Google Photos/Trip``); the archive itself is no longer a file of its
    folder. A zip is listed from its central directory; a tar part by ``list_tar(relpath, handle,
    stat)`` (the producer's, which keeps listings in the database). An archive that cannot be listed, a part cut short, and a member whose name would lead
    outside its archive are problems."""
    found: list[ScannedFolder] = []
    problems: list[ScanProblem] = []
    for folder in folders:
        kept: list[ScannedFile] = []
        for f in folder.files:
            tar = archives.is_tar(f.name)
            if not archives.is_archive(f.name):
                kept.append(f)
                continue
            relpath = folder.file_relpath(f.name)
            try:
                handle, st = open_regular(os.path.join(root, relpath), inside)
                with handle:
                    listing = list_tar(relpath, handle, st) if tar else archives.listing(handle, st)
            except FileNotFoundError:
                problems.append(ScanProblem(relpath, "archive vanished before it was listed"))
                continue
            except FileRefused as exc:
                problems.append(ScanProblem(relpath, str(exc)))
                continue
            except OSError as exc:
                problems.append(ScanProblem(relpath, f"cannot read archive: {exc.strerror or exc}"))
                continue
            members: dict[bytes, ScannedFolder] = {}
            for entry in listing.entries.values():
                parent, _, name = entry.name.rpartition(b"/")
                inner = members.get(parent)
                if inner is None:
                    inner = members[parent] = ScannedFolder(archives.member_path(relpath, parent))
                inner.files.append(ScannedFile(name, entry.size, entry.mtime_ns, entry.inode))
            found.extend(members[key] for key in sorted(members))
            problems.extend(ScanProblem(archives.member_path(relpath, name), reason)
                            for name, reason in listing.problems)
            if listing.damage is not None:   # what lies past the damage is unknown: nothing forgotten
                problems.append(ScanProblem(relpath, listing.damage))
        folder.files = kept
    return folders + found, problems

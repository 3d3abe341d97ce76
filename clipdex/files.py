"""Opening a library file without trusting the path: the indexer's reads, sidecars, and the
originals the web app serves all go through here.

Between the scan and the read (or the index and a download) a file can be swapped for a named
pipe (an open() that never returns), a link to ``/dev/zero`` (a read that never ends) or a link to
a secret outside the library. So: the path is resolved and must stay inside the library's roots
(unless following links out is allowed), the resolved path is opened without following a link
and without blocking, the open descriptor must be a regular file, and a read never takes more than
its cap, whatever the size the file claims.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

from clipdex.config import Settings
from clipdex.roots import display_path

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class FileRefused(Exception):
    """The path cannot be read as a library file; the message is the reason."""


def within(path: bytes, folder: bytes) -> bool:
    """Whether ``path`` is ``folder`` or below it (both resolved, absolute)."""
    folder = folder.rstrip(b"/") or b"/"
    return path == folder or path.startswith(folder if folder == b"/" else folder + b"/")


def outside_reason(real: bytes) -> str:
    return (f"symbolic link leads outside the library (to {display_path(real)}); not followed "
            "(CLIPDEX_FOLLOW_EXTERNAL_LINKS=true allows it)")


def open_regular(path: bytes, inside: Sequence[bytes] | None) -> tuple[BinaryIO, os.stat_result]:
    """An open regular file at ``path`` and its fstat. ``inside``: resolved folders the resolved
    path must lie in (None: anywhere). Raises FileNotFoundError, PermissionError, FileRefused.

    A member of an archive (``archive.zip//member``, clipdex/archives.py; tar parts too) opens the same way:
    the archive file passes these checks, the member's reader and stat stand for the file's."""
    from clipdex import archives

    member = archives.split_member(path)
    if member is not None:
        archive, st = _open_file(member[0], inside)
        try:
            return archives.open_member(archive, st, member[1], member[0])
        except BaseException:
            archive.close()
            raise
    return _open_file(path, inside)


def _open_file(path: bytes, inside: Sequence[bytes] | None) -> tuple[BinaryIO, os.stat_result]:
    real = os.path.realpath(path)
    if inside is not None and not any(within(real, folder) for folder in inside):
        raise FileRefused(outside_reason(real))
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last part became a link after it was resolved
            raise FileRefused("the file was replaced by a symbolic link while being read") from None
        raise
    handle = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
            raise FileRefused("a folder now stands where the file was" if kind == "a folder"
                              else f"not a regular file: {kind}")
    except BaseException:
        handle.close()
        raise
    return handle, st


def read_capped(handle: BinaryIO, st: os.stat_result, max_bytes: int) -> bytes:
    """The whole file, or FileRefused when it is (or grows) over ``max_bytes``."""
    if st.st_size > max_bytes:
        raise FileRefused(too_large(st.st_size, max_bytes))
    # Sized to the file (not to the cap: a read of the cap allocates it, 512 MiB by default), then
    # whatever it grew since the stat, up to one byte past the cap.
    data = handle.read(st.st_size + 1)
    if len(data) > st.st_size:
        data += handle.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise FileRefused(f"file grew over the {_mib(max_bytes)} cap while being read")
    return data


def too_large(size: int, max_bytes: int) -> str:
    return f"file is {_mib(size)}, over the {_mib(max_bytes)} cap"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def allowed_roots(settings: Settings, registered: Mapping[str, Path], *more: Path) -> list[bytes] | None:
    """Where a library file may resolve to: any root known here, resolved (None when links out of
    the library may be followed, CLIPDEX_FOLLOW_EXTERNAL_LINKS)."""
    if settings.follow_external_links:
        return None
    return [os.path.realpath(os.fsencode(p)) for p in (*settings.roots.values(), *registered.values(), *more)]

"""Photos inside archives, read in place: a Google Takeout arrives as dozens of 2-50 GB zips (or
.tgz parts: clipdex/tarballs.py), and unpacking them would double the disk a user needs.

A member is stored as a location like any file: its path is the archive's path, ``//``, then the
member's name (``Takeout/takeout-001.zip//Takeout/Google Photos/Trip/IMG_1.jpg``). A path walked
on disk never holds ``//``, so the first one always marks the archive. Member names are kept as
the bytes the archive holds (a zip from Chinese Windows stores GBK names without the UTF-8 flag).

Only the central directory is read to list a zip (a few MB even for 200,000 members). A
member is read from its own offset: its local header, then its compressed bytes, inflated as
they are read, so memory stays near the member's size whatever the archive's, and its CRC-32
and size are checked at the end. A member's size and time are its own; its CRC-32 stands where a
file's inode stands, so a member replaced in a new copy of the archive is read again.
"""

from __future__ import annotations

import calendar
import io
import os
import stat
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from clipdex.files import FileRefused

SEPARATOR = b"//"
ARCHIVE_EXTENSIONS = (b".zip", b".tgz", b".tar.gz", b".tar")
TAR_EXTENSIONS = (b".tgz", b".tar.gz", b".tar")
_LOCAL_HEADER = b"PK\x03\x04"
_STORED, _DEFLATED = 0, 8
TAR_MEMBER = -1        # an Entry's method for a tar member (no compression of its own, no CRC-32)
_METHOD_NAMES = {9: "Deflate64", 12: "bzip2", 14: "LZMA", 93: "Zstandard", 95: "XZ", 98: "PPMd", 99: "AES"}
_CHUNK = 1 << 20
_LISTINGS_KEPT = 4     # archives whose member lists a process keeps (a worker reads one part at a time)


class ArchiveRefused(FileRefused):
    """An archive or a member clipdex cannot read; the message is the reason (a failure row)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One member as the central directory describes it."""

    name: bytes
    offset: int          # of its local header
    method: int
    compressed: int
    size: int
    crc: int
    flags: int
    mtime_ns: int

    @property
    def inode(self) -> int:
        """What stands for a file's inode: a zip member's CRC-32, a tar member's offset."""
        return self.offset if self.method == TAR_MEMBER else self.crc


@dataclass(slots=True)
class Listing:
    entries: dict[bytes, Entry] = field(default_factory=dict)
    problems: list[tuple[bytes, str]] = field(default_factory=list)   # (member name, reason)
    damage: str | None = None    # a tar part cut short: the members before it were listed


class MemberStat(NamedTuple):
    """What ``os.stat`` says of a file, for a member: its size, its time, its CRC-32 as inode."""

    st_size: int
    st_mtime_ns: int
    st_ino: int
    st_mode: int = stat.S_IFREG


def is_archive(name: bytes) -> bool:
    return name.lower().endswith(ARCHIVE_EXTENSIONS)


def is_tar(name: bytes) -> bool:
    """A tar part (.tgz, .tar.gz, .tar): read forward only, listed once (clipdex/tarballs.py)."""
    return name.lower().endswith(TAR_EXTENSIONS)


def tar_of(path: bytes) -> bytes | None:
    """The tar part a stored path lies in, or None (a file on disk, a zip member)."""
    member = split_member(path)
    return member[0] if member is not None and is_tar(member[0]) else None


def member_path(archive: bytes, member: bytes) -> bytes:
    return archive + SEPARATOR + member


def split_member(path: bytes) -> tuple[bytes, bytes] | None:
    """(archive path, member name) of a member's path; None for a file on disk."""
    archive, sep, member = path.partition(SEPARATOR)
    return (archive, member) if sep and member else None


def folder_of(relpath: bytes) -> bytes:
    """The folder a stored path sits in, as the scan names it: a member at the top of an archive
    sits in ``archive//`` (``os.path.split`` would say the archive file itself)."""
    head, sep, _name = relpath.rpartition(b"/")
    if not sep:
        return b""
    return head + b"/" if head.endswith(b"/") and SEPARATOR in relpath else head


def split_shown(path: str) -> tuple[str, str] | None:
    """(archive, member) of a stored path as text (``locations.relpath``); None for a file on
    disk. The detail page shows it as "in takeout-003.zip › Takeout/Google Photos/x.jpg"."""
    archive, sep, member = path.partition(SEPARATOR.decode())
    return (archive, member) if sep and member else None


def _name_problem(name: bytes) -> str | None:
    if name.startswith(b"/") or (len(name) > 1 and name[1:2] == b":"):
        return "member path is absolute; not read"
    parts = name.split(b"/")
    if b".." in parts:
        return "member path leads out of the archive (..); not read"
    if b"" in parts[:-1]:
        return "member path has an empty folder name; not read"
    return None


def _dos_time_ns(date_time: tuple) -> int:
    """A member's time (zip keeps local wall-clock time without a zone; read as UTC)."""
    try:
        return calendar.timegm((*date_time, 0, 0, 0)) * 1_000_000_000
    except (OverflowError, ValueError):
        return 0


def admitted(listing: Listing, name: bytes) -> bool:
    """Whether a listed name is a member to index: folders are left out, and a name leading
    outside the archive becomes a problem of the listing."""
    if name.endswith(b"/"):
        return False
    problem = _name_problem(name)
    if problem is not None:
        listing.problems.append((name, problem))
    return problem is None


def list_zip(handle: BinaryIO) -> Listing:
    """The members of an open zip file, from its central directory. Folders are left out; a name
    that would lead outside the archive is a problem, not an entry. Without a readable central
    directory (a part cut short) the whole members before the damage are found by their own
    headers (``Listing.damage`` says so); raises ArchiveRefused when there are none (not a zip)."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        recovered = _walk_local_headers(handle)
        if not recovered.entries:
            raise ArchiveRefused(f"not a readable zip archive (truncated or damaged?): {exc}") from None
        recovered.damage = (f"no central directory (a part cut short?): {len(recovered.entries)} whole members "
                            "found by their own headers were read, the rest of the part is lost")
        return recovered
    listing = Listing()
    with archive:
        for info in archive.infolist():
            name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
            if admitted(listing, name):
                listing.entries[name] = Entry(name, info.header_offset, info.compress_type, info.compress_size,
                                              info.file_size, info.CRC, info.flag_bits, _dos_time_ns(info.date_time))
    return listing


def _zip64_sizes(extra: bytes, size: int, compressed: int) -> tuple[int, int, bool]:
    """(size, compressed, zip64) with the zip64 extra field's values where the header says 0xFFFFFFFF."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 0x0001:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if compressed == 0xFFFFFFFF and values:
                compressed = values.pop(0)
            return size, compressed, True
        at += 4 + length
    return size, compressed, False


def _inflated_length(handle: BinaryIO, start: int) -> int | None:
    """How many compressed bytes the Deflate stream at ``start`` takes (None: it is cut short)."""
    handle.seek(start)
    inflate, used = zlib.decompressobj(-15), 0
    while not inflate.eof:
        chunk = handle.read(_CHUNK)
        if not chunk:
            return None
        try:
            inflate.decompress(chunk, 1)   # output is not kept: only where the stream ends matters
            while inflate.unconsumed_tail and not inflate.eof:
                inflate.decompress(inflate.unconsumed_tail, _CHUNK)
        except zlib.error:
            return None
        used += len(chunk) - len(inflate.unused_data)
    return used


def _stored_length(handle: BinaryIO, start: int, zip64: bool) -> int | None:
    """The length of a stored member whose sizes follow its data: up to the first data
    descriptor whose size says so (None: none does before the end)."""
    handle.seek(start)
    data, offset = b"", start
    while True:
        chunk = handle.read(_CHUNK)
        if not chunk:
            return None
        data = data[-23:] + chunk
        base = offset - (len(data) - len(chunk))
        at = data.find(b"PK\x07\x08")
        while at != -1:
            fields = data[at + 4:at + (24 if zip64 else 16)]
            if len(fields) == (20 if zip64 else 12):
                _crc, compressed, _size = struct.unpack("<IQQ" if zip64 else "<III", fields)
                if compressed == base + at - start:
                    return compressed
            at = data.find(b"PK\x07\x08", at + 1)
        offset += len(chunk)


def _walk_local_headers(handle: BinaryIO) -> Listing:
    """The whole members of a zip that lost its central directory (a download cut short), found
    from the start by their local headers. A member whose sizes follow its data (a data
    descriptor, as streaming writers make) is inflated to find its end, or, when stored, ends at
    the descriptor that gives its size; the walk stops at the first member the cut runs through,
    or at anything that is not a local header."""
    listing = Listing()
    end = handle.seek(0, os.SEEK_END)
    at = 0
    while at + 30 <= end:
        header_at = at
        handle.seek(at)
        header = handle.read(30)
        if header[:4] != _LOCAL_HEADER:
            break
        flags, method, dos_time, dos_date, crc, compressed, size, name_length, extra_length = struct.unpack(
            "<2xHHHHIIIHH", header[4:30])
        name, extra = handle.read(name_length), handle.read(extra_length)
        data_at = at + 30 + name_length + extra_length
        size, compressed, zip64 = _zip64_sizes(extra, size, compressed)
        after = 0
        if flags & 0x8:
            compressed = (_inflated_length(handle, data_at) if method == _DEFLATED
                          else _stored_length(handle, data_at, zip64) if method == _STORED else None)
            if compressed is None:
                break
            handle.seek(data_at + compressed)
            descriptor = handle.read(24 if zip64 else 16)
            fields = descriptor[4:] if descriptor[:4] == b"PK\x07\x08" else descriptor
            layout = "<IQQ" if zip64 else "<III"
            if len(fields) < struct.calcsize(layout):
                break
            crc, _compressed, size = struct.unpack_from(layout, fields)
            after = (4 if descriptor[:4] == b"PK\x07\x08" else 0) + struct.calcsize(layout)
        if data_at + compressed + after > end:
            break
        at = data_at + compressed + after
        if not admitted(listing, name):
            continue
        date_time = (1980 + (dos_date >> 9), (dos_date >> 5) & 0xF, dos_date & 0x1F,
                     dos_time >> 11, (dos_time >> 5) & 0x3F, (dos_time & 0x1F) * 2)
        listing.entries[name] = Entry(name, header_at, method, compressed, size, crc, flags, _dos_time_ns(date_time))
    return listing


_listings: OrderedDict[tuple, Listing] = OrderedDict()
_listings_lock = threading.Lock()


def listing(handle: BinaryIO, st: os.stat_result) -> Listing:
    """The archive's members, listed once per version of the archive in this process."""
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _listings_lock:
        if key in _listings:
            _listings.move_to_end(key)
            return _listings[key]
    found = list_zip(handle)
    with _listings_lock:
        _listings[key] = found
        while len(_listings) > _LISTINGS_KEPT:
            _listings.popitem(last=False)
    return found


def refusal(entry: Entry) -> str | None:
    """Why a member cannot be read, or None."""
    if entry.flags & 0x1:
        return "encrypted member of the archive; clipdex does not read password-protected archives"
    if entry.method not in (_STORED, _DEFLATED):
        name = _METHOD_NAMES.get(entry.method, f"method {entry.method}")
        return f"member compressed with {name} (method {entry.method}); clipdex reads stored and Deflate members"
    return None


def open_member(archive: BinaryIO, st: os.stat_result, member: bytes, path: bytes = b""
                ) -> tuple[BinaryIO, MemberStat]:
    """A reader of one member of an open archive at ``path`` (which it closes with itself).
    Raises FileNotFoundError (no such member) or ArchiveRefused."""
    if is_tar(path):
        from clipdex import tarballs

        return tarballs.open_member(archive, st, member)
    entry = listing(archive, st).entries.get(member)
    if entry is None:
        raise FileNotFoundError(f"no member {member!r} in the archive")
    reason = refusal(entry)
    if reason is not None:
        raise ArchiveRefused(reason)
    return (io.BufferedReader(_MemberReader(archive, entry), _CHUNK),
            MemberStat(entry.size, entry.mtime_ns, entry.crc))


class _MemberReader(io.RawIOBase):
    """The bytes of one member, inflated as they are read; damage (a bad CRC-32, a size other
    than the directory's, data cut short) raises ArchiveRefused when it shows."""

    def __init__(self, archive: BinaryIO, entry: Entry):
        super().__init__()
        self._archive, self._entry = archive, entry
        archive.seek(entry.offset)
        header = archive.read(30)
        if len(header) < 30 or header[:4] != _LOCAL_HEADER:
            raise ArchiveRefused("the member's header is not where the archive's directory says (damaged archive)")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        archive.seek(entry.offset + 30 + name_length + extra_length)
        self._left = entry.compressed
        self._inflate = zlib.decompressobj(-15) if entry.method == _DEFLATED else None
        self._crc = 0
        self._out = 0
        self._done = False
        self._exhausted = False

    def readable(self) -> bool:
        return True

    def _read(self, size: int) -> bytes:
        data = self._archive.read(size)
        if not data:
            raise ArchiveRefused("the archive ends inside this member (truncated archive)")
        self._left -= len(data)
        return data

    def _more(self, want: int) -> bytes:
        """Up to ``want`` more bytes of the member; b"" may only mean "nothing yet" while
        ``_exhausted`` is false."""
        if self._inflate is None:
            if self._left <= 0:
                self._exhausted = True
                return b""
            return self._read(min(self._left, want))
        if self._inflate.eof:
            self._exhausted = True
            return b""
        if self._inflate.unconsumed_tail:
            data = self._inflate.unconsumed_tail
        elif self._left > 0:
            data = self._read(min(self._left, _CHUNK))
        else:   # all input given: what the inflater still holds, if anything
            out = self._inflate.decompress(b"", want)
            self._exhausted = not out
            return out
        return self._inflate.decompress(data, want)

    def readinto(self, buffer) -> int:
        if self._done:
            return 0
        want = len(buffer)
        try:
            out = self._more(want)
            while not out and not self._exhausted:
                out = self._more(want)
        except zlib.error as exc:
            raise ArchiveRefused(f"damaged member of the archive: cannot inflate ({exc})") from None
        if not out:
            self._finish()
            return 0
        self._crc = zlib.crc32(out, self._crc)
        self._out += len(out)
        if self._out > self._entry.size:
            raise ArchiveRefused("damaged member of the archive: more bytes than its directory entry says")
        buffer[:len(out)] = out
        return len(out)

    def _finish(self) -> None:
        self._done = True
        if self._inflate is not None and not self._inflate.eof:
            raise ArchiveRefused("damaged member of the archive: its compressed data ends early")
        if self._out != self._entry.size:
            raise ArchiveRefused(f"damaged member of the archive: {self._out} bytes where its directory says "
                                 f"{self._entry.size}")
        if self._crc != self._entry.crc:
            raise ArchiveRefused("damaged member of the archive: its CRC-32 does not match")

    def close(self) -> None:
        try:
            self._archive.close()
        finally:
            super().close()

"""Photos inside tar archives (``.tgz``, ``.tar.gz``, ``.tar``: Google Takeout's other format, up
to 50 GB a part), read in place.

A gzip stream has no index and a tar has no directory: a member is reached only by inflating
everything before it, and its members come in any order. So:

- the producer lists a part in one sequential pass (``list_tar``) and the database keeps the
  listing (``archive_listings``) with the bytes of the part's small JSON members, Takeout's
  sidecars and album files. A re-run, or a watcher's rescan, over an unchanged part inflates
  nothing, and a worker gets a sidecar from there instead of from the stream, wherever it lies;
- the producer plans a part's members in the order they lie in it, and a process reads them with
  one forward stream per part (``TarStream``), kept open from one batch to the next: each part is
  inflated about once by the process that reads it. A member asked for behind the stream starts
  it again from the top (correct, slow: the web app's originals).

An uncompressed ``.tar`` is read with seeks, so listing it reads only its headers.
A member's "inode" is the offset of its data in the uncompressed stream.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import os
import struct
import tarfile
import threading
import zlib
from collections import OrderedDict
from typing import BinaryIO

from clipdex.archives import TAR_MEMBER, ArchiveRefused, Entry, Listing, MemberStat, admitted

TEXT_SUFFIX = b".json"
TEXT_MAX_BYTES = 256 << 10      # sidecars and album files are a few KiB
_BUFFER = 1 << 20               # a member's reader's buffer
_STREAMS_KEPT = 2               # parts a process keeps open (one being read, the one before)
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


def _decompressed(handle: BinaryIO) -> BinaryIO:
    """The tar inside: gzip, bzip2 and xz inflated as it is read (seeking forward reads on, seeking
    back starts again from the top), a plain tar as it is."""
    magic = handle.read(6)
    handle.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle, mode="rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(handle)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(handle)
    return handle


def _open(handle: BinaryIO) -> tarfile.TarFile:
    # tarfile's own stream mode ("r|gz") copies its whole buffer on every header it reads: a part
    # of 50,000 small members took minutes; over GzipFile's buffered reader, 2 s.
    try:
        return tarfile.open(fileobj=_decompressed(handle), mode="r:", encoding="utf-8", errors="surrogateescape")
    except _READ_ERRORS as exc:
        raise ArchiveRefused(f"not a readable tar archive (truncated or damaged?): {exc}") from None


def _name(info: tarfile.TarInfo) -> bytes:
    """The member's name as the archive's bytes (names that are not UTF-8 come back exactly)."""
    return info.name.encode("utf-8", "surrogateescape")


def _entry(name: bytes, offset: int, size: int, mtime_ns: int) -> Entry:
    """A tar member: its data at ``offset`` of the uncompressed stream, stored as it is."""
    return Entry(name, offset, TAR_MEMBER, size, size, 0, 0, mtime_ns)


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    info = tar.next()
    tar.members = []      # tarfile keeps every member it met: 200,000 of them in a big part
    return info


def list_tar(handle: BinaryIO) -> tuple[Listing, dict[bytes, bytes]]:
    """The regular members of an open tar archive, and the bytes of its small JSON members, in one
    pass. Links and folders are left out; a name leading outside the archive is a problem. A part
    cut short keeps the members whose data is whole, and says where it ends (``Listing.damage``);
    one that is not a tar at all raises ArchiveRefused."""
    listing = Listing()
    texts: dict[bytes, bytes] = {}
    tar = _open(handle)
    pending: Entry | None = None   # a member counts once the next header shows its data was whole
    try:
        while (info := _next(tar)) is not None:
            if pending is not None:
                listing.entries[pending.name] = pending
                pending = None
            if not info.isreg():
                if info.issym() or info.islnk():
                    listing.problems.append((_name(info), "a link inside the archive; not followed"))
                continue
            name = _name(info)
            if not admitted(listing, name):
                continue
            if name.lower().endswith(TEXT_SUFFIX) and info.size <= TEXT_MAX_BYTES:
                member = tar.extractfile(info)
                texts[name] = member.read() if member is not None else b""
            pending = _entry(name, info.offset_data, info.size, int(info.mtime) * 1_000_000_000)
        if pending is not None:
            listing.entries[pending.name] = pending
    except _READ_ERRORS as exc:
        if not listing.entries and pending is None:
            raise ArchiveRefused(f"not a readable tar archive (truncated or damaged?): {exc}") from None
        listing.damage = (f"the archive ends early or is damaged after {len(listing.entries)} members "
                          f"(a part cut short?): {exc}; the members before were read")
    return listing, texts


def list_tar_file(path: bytes, inside) -> tuple[tuple[int, int, int], bytes, bytes, str | None] | None:
    """For a pool of processes: the packed listing of the part at ``path`` and the part's (size,
    time, inode); None when it cannot be listed (the scan lists it again and says why)."""
    from clipdex.files import FileRefused, open_regular

    try:
        handle, st = open_regular(path, inside)
        with handle:
            listing, texts = list_tar(handle)
    except (FileRefused, OSError):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino), pack_entries(listing), pack_texts(texts), listing.damage


# --- The listing as the database keeps it ---------------------------------------------------------

_ENTRY = struct.Struct("<IQQq")


def pack_entries(listing: Listing) -> bytes:
    """The listing's members and problems (a link, a name leading outside), as the database keeps
    them: a run planned from a kept listing reports the same problems."""
    parts = []
    for entry in listing.entries.values():
        parts += (_ENTRY.pack(len(entry.name), entry.offset, entry.size, entry.mtime_ns), entry.name)
    entries = b"".join(parts)
    problems = json.dumps([[base64.b64encode(name).decode(), reason] for name, reason in listing.problems])
    return zlib.compress(struct.pack("<Q", len(entries)) + entries + problems.encode(), 1)


def unpack_entries(packed: bytes) -> Listing:
    data, listing = zlib.decompress(packed), Listing()
    end = 8 + struct.unpack_from("<Q", data)[0]
    at = 8
    while at < end:
        length, offset, size, mtime_ns = _ENTRY.unpack_from(data, at)
        at += _ENTRY.size
        name = data[at:at + length]
        at += length
        listing.entries[name] = _entry(name, offset, size, mtime_ns)
    listing.problems = [(base64.b64decode(name), reason) for name, reason in json.loads(data[end:])]
    return listing


def pack_texts(texts: dict[bytes, bytes]) -> bytes:
    return zlib.compress(b"".join(struct.pack("<II", len(n), len(t)) + n + t for n, t in texts.items()), 1)


def unpack_texts(packed: bytes) -> dict[bytes, bytes]:
    data, at, texts = zlib.decompress(packed), 0, {}
    while at < len(data):
        name_length, text_length = struct.unpack_from("<II", data, at)
        at += 8
        name = data[at:at + name_length]
        texts[name] = data[at + name_length:at + name_length + text_length]
        at += name_length + text_length
    return texts


# --- Reading members ------------------------------------------------------------------------------


class TarStream:
    """One part, read forward. Its lock is held from finding a member until the member's reader
    is closed: the stream can only be in one place."""

    restarts = 0   # how often a stream of this process went back to its part's top (tests read it)

    def __init__(self, handle: BinaryIO):
        self.lock = threading.Lock()
        self._handle = os.fdopen(os.dup(handle.fileno()), "rb")   # its own: the caller closes theirs
        try:
            self._tar = _open(self._handle)
        except BaseException:
            self._handle.close()
            raise
        self._first = True     # no member passed yet
        self._ended = False    # the last member passed
        self.retired = False   # left the process's cache while a member was being read

    def find(self, member: bytes) -> tarfile.TarInfo:
        """Walks forward to ``member``; from the top once more if it lay behind. Raises
        FileNotFoundError or ArchiveRefused (the caller then drops the stream)."""
        for _ in range(2):
            started_at_top = self._first
            try:
                while not self._ended:
                    info = _next(self._tar)
                    self._first = False
                    if info is None:
                        self._ended = True
                    elif info.isreg() and _name(info) == member:
                        return info
            except _READ_ERRORS as exc:
                raise ArchiveRefused(f"the archive ends or is damaged before this member: {exc}") from None
            if started_at_top:
                break
            TarStream.restarts += 1
            try:
                self._handle.seek(0)
            except _READ_ERRORS as exc:
                raise ArchiveRefused(f"cannot read the archive again from its start: {exc}") from None
            self._tar = _open(self._handle)
            self._first, self._ended = True, False
        raise FileNotFoundError(f"no member {member!r} in the archive")

    def reader(self, info: tarfile.TarInfo) -> BinaryIO:
        return io.BufferedReader(_TarMemberReader(self, self._tar.extractfile(info)), _BUFFER)

    def retire(self) -> None:
        """Closes the part now, or when its member being read is closed."""
        self.retired = True
        if self.lock.acquire(blocking=False):
            try:
                self.close()
            finally:
                self.lock.release()

    def close(self) -> None:
        self._handle.close()


class _TarMemberReader(io.RawIOBase):
    """The current member's bytes; releases the stream when closed."""

    def __init__(self, stream: TarStream, member: BinaryIO):
        super().__init__()
        self._stream, self._member = stream, member

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._member.read(len(buffer))
        except _READ_ERRORS as exc:
            _drop(self._stream)
            raise ArchiveRefused(f"the archive ends inside this member, or is damaged there: {exc}") from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            if self._stream.retired:
                self._stream.close()
            self._stream.lock.release()
        super().close()


_streams: OrderedDict[tuple, TarStream] = OrderedDict()
_streams_lock = threading.Lock()


def _drop(stream: TarStream) -> None:
    """A stream that met damage leaves the cache (the next reader starts from the top)."""
    with _streams_lock:
        for key, kept in list(_streams.items()):
            if kept is stream:
                del _streams[key]
    stream.retire()


def open_member(handle: BinaryIO, st: os.stat_result, member: bytes) -> tuple[BinaryIO, MemberStat]:
    """A reader of one member of an open tar part (``handle``, which it closes), through the
    process's stream over that part. Raises FileNotFoundError or ArchiveRefused."""
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _streams_lock:
        stream = _streams.get(key)
        if stream is not None:
            _streams.move_to_end(key)
    if stream is not None:
        stream.lock.acquire()
        if stream.retired:    # left the cache (and closed) while this thread waited for it
            stream.lock.release()
            stream = None
    if stream is None:
        stream = TarStream(handle)
        stream.lock.acquire()   # before it is shared: no other thread can retire it under us
        with _streams_lock:
            _streams[key] = stream
            while len(_streams) > _STREAMS_KEPT:
                _streams.popitem(last=False)[1].retire()
    handle.close()
    try:
        info = stream.find(member)
        reader = stream.reader(info)
    except ArchiveRefused:
        stream.lock.release()
        _drop(stream)
        raise
    except BaseException:
        stream.lock.release()
        raise
    return reader, MemberStat(info.size, int(info.mtime) * 1_000_000_000, info.offset_data)

"""Export formats: which files of a folder are photos, and what the export says about each one.

Each source kind has two halves:

- ``plan(folder)`` runs in the producer on names and stat results only: it picks the files to
  index, drops what is not a photo by name (sidecars, videos, QQ thumbnail copies) and attaches
  hints (the matched Takeout sidecar, the original of an edited copy, the QQ chat type…).
- ``describe(task, root_path, cache)`` runs in the worker beside decoding: it reads the small files
  the hints name (sidecar JSON, album metadata) and returns what the export knows about the file.

Detection looks at folder names: a Google Photos folder (any language) means Takeout, ``DCIM``
means an iPhone copy, ``Tencent Files`` / ``nt_data`` means QQ; everything else is a plain folder.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from clipdex.files import open_regular, read_capped
from clipdex.roots import display_path
from clipdex.vocabulary import NON_IMAGE_EXTENSIONS
from indexer.scan import ScannedFile, ScannedFolder

IGNORED_NAMES = frozenset({b".ds_store", b"thumbs.db", b"desktop.ini", b".nomedia", b"icon\r"})


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


def path_components(relpath: bytes) -> tuple[str, ...]:
    """The names on a relative path, readable; an archive's members continue its path
    (``a.zip//Takeout/x`` is a.zip, Takeout, x)."""
    return tuple(name for name in display_path(relpath).split(os.sep) if name)


def extension(name: str | bytes) -> str:
    if isinstance(name, bytes):
        name = display_path(name)
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem else ""


def is_candidate(name: bytes) -> bool:
    """Whether a file might be a still image by its name (content decides later)."""
    lowered = name.lower()
    if lowered in IGNORED_NAMES or lowered.startswith(b"._"):  # AppleDouble resource forks
        return False
    return extension(name) not in NON_IMAGE_EXTENSIONS


@dataclass(slots=True)
class FileTask:
    """One file to index, as it travels from the producer to a worker."""

    relpath: bytes
    size: int
    mtime_ns: int
    album: str | None = None
    hints: dict[str, Any] = field(default_factory=dict)
    inode: int = 0     # from the scan, to tell a replaced file; not sent to workers (they fstat)
    # The image these unchanged bytes already are (another model's run indexed them): the worker
    # trusts the stored hash and facts and adds only this model's vector.
    indexed_image: int | None = None

    def to_json(self) -> list:
        data = [encode_path(self.relpath), self.size, self.mtime_ns, self.album, self.hints]
        return data if self.indexed_image is None else data + [self.indexed_image]

    @classmethod
    def from_json(cls, data: list) -> "FileTask":
        path, size, mtime_ns, album, hints, *indexed = data
        return cls(decode_path(path), size, mtime_ns, album, hints, indexed_image=indexed[0] if indexed else None)

    @property
    def name(self) -> str:
        return display_path(os.path.basename(self.relpath))


@dataclass(slots=True)
class VirtualFolder:
    """One folder as a source sees it: a key, and the physical folders merged under it.

    Takeout parts extracted side by side hold the same album in several physical folders; QQ NT
    keeps a month's originals and thumbnails in sibling folders. Everywhere else it is one folder.
    """

    source: str
    key: tuple[str, ...]
    root_components: tuple[str, ...] = ()   # names on the root's own path, for detection rules
    parts: list[ScannedFolder] = field(default_factory=list)

    def components(self, part: ScannedFolder) -> tuple[str, ...]:
        """The names on a part's path, root path included."""
        return self.root_components + path_components(part.relpath)

    def files(self) -> list[tuple[ScannedFolder, ScannedFile]]:
        return [(part, f) for part in self.parts for f in part.files]


@dataclass(slots=True)
class Plan:
    tasks: list[FileTask] = field(default_factory=list)
    skipped: int = 0  # files that are not photos by name

    def add(self, part: ScannedFolder, f: ScannedFile, album: str | None = None, **hints: Any) -> None:
        self.tasks.append(FileTask(part.file_relpath(f.name), f.size, f.mtime_ns, album,
                                   {k: v for k, v in hints.items() if v not in (None, False)}, f.inode))


@dataclass(slots=True)
class SourceInfo:
    """What the export says about one file, without looking at its pixels."""

    album: str | None = None
    source_meta: dict[str, Any] = field(default_factory=dict)   # stored on the location
    sidecar_time: datetime | None = None                         # a UTC instant from a sidecar
    latitude: float | None = None
    longitude: float | None = None
    description: str | None = None
    favorite: bool = False
    image_extra: dict[str, Any] = field(default_factory=dict)   # merged into images.extra


class Source(Protocol):
    kind: str

    def folder_key(self, components: tuple[str, ...], root_depth: int) -> tuple[str, ...]: ...

    def plan(self, folder: VirtualFolder) -> Plan: ...

    def describe(self, task: FileTask, root_path: Path, cache: dict) -> SourceInfo: ...


def get_source(kind: str) -> Source:
    from indexer.sources import folder, iphone, qq, takeout

    return {"takeout": takeout.SOURCE, "iphone": iphone.SOURCE, "qq": qq.SOURCE,
            "folder": folder.SOURCE}[kind]


def detect(components: tuple[str, ...]) -> str:
    """The source kind of a folder from the names on its path (root path included)."""
    from indexer.sources import iphone, qq, takeout

    if takeout.photos_root_index(components) is not None:
        return "takeout"
    if qq.is_qq_path(components):
        return "qq"
    if iphone.is_dcim_path(components):
        return "iphone"
    return "folder"


def side_files(task: FileTask) -> list[bytes]:
    """The files besides the photo that describing it reads: its sidecar, its album's files."""
    named = ([task.hints["sidecar"]] if "sidecar" in task.hints else []) + task.hints.get("album_files", [])
    return [decode_path(value) for value in named]


SIDECAR_MAX_BYTES = 4 << 20   # Takeout sidecars and album files are a few KiB


def read_small_file(path: bytes, root_path: Path, limit: int = SIDECAR_MAX_BYTES) -> bytes:
    """Reads a sidecar or album file, which must lie inside the root being indexed.
    Raises FileNotFoundError, OSError or FileRefused (too large, not a regular file, outside)."""
    handle, st = open_regular(path, [os.path.realpath(os.fsencode(root_path))])
    with handle:
        return read_capped(handle, st, limit)

"""The threaded part of indexing one file: read → hash → describe → look up → decode.

Each file is read once; every stage after the read works on those bytes. The answer is exactly
one of five outcomes: the file failed (with its stage and reason), is not an image (skipped), holds
bytes already embedded with this model (known: only its location is new), is a new image ready
for the model (its pixels preprocessed, everything else of its row filled in), or is an image
another model indexed, unchanged since, that needs only this model's vector (its stored hash,
facts, thumbnail and location stay: read and decode only).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import psycopg

from clipdex.files import FileRefused, open_regular, read_capped
from clipdex.imaging import DecodeBudget, DecodeFailure, NotAnImage, decode, jpeg_header
from clipdex.model import ClipModel
from clipdex.roots import absolute
from clipdex.vocabulary import IMAGE_EXTENSIONS, RAW_EXTENSIONS
from indexer import store
from indexer.device_decode import DeviceJpeg
from indexer.metadata import image_facts, read_embedded_metadata, resolve_capture_time
from indexer.sources import FileTask, SourceInfo, extension, get_source
from indexer.thumbnail import make_thumbnail

log = logging.getLogger(__name__)


@dataclass
class BatchContext:
    """What every file of a batch shares: its run, where its root is mounted here, where links
    may lead, and a cache of the sidecars its files read."""

    work: store.BatchWork
    root_path: Path
    inside: Sequence[bytes] | None
    cache: dict = field(default_factory=dict)
    earlier: "EarlierWrite | None" = None


@dataclass
class EarlierWrite:
    """The previous batch of this process, still being written while this one is computed: the
    bytes of its new images, and its write. A file with those bytes waits for that write before it
    looks them up, so it is found known (as when batches run one after the other), not embedded
    twice."""

    sha256s: frozenset[bytes]
    write: Future

    def wait_for(self, sha256: bytes) -> None:
        if sha256 in self.sha256s:
            wait([self.write])


@dataclass
class FileRead:
    """The file as it was read (what the scan saw may have changed since)."""

    size: int
    mtime_ns: int
    inode: int
    sha256: bytes


@dataclass
class Failed:
    task: FileTask
    stage: str
    reason: str
    size: int | None
    mtime_ns: int | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Skipped:
    """Not an image by its content (and not named like one): remembered so a re-run skips it."""

    task: FileTask
    reason: str
    size: int
    mtime_ns: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Known:
    """Bytes already embedded with this model: a new location of a known image."""

    task: FileTask
    file: FileRead
    info: SourceInfo
    image_id: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class New:
    """New bytes: the row to insert (its embedding still to come) and the model's input."""

    task: FileTask
    file: FileRead
    info: SourceInfo
    image: store.NewImage
    pixels: Any        # the model's input, or a DeviceJpeg the model's device decodes
    timings: dict[str, float] = field(default_factory=dict)

    def take_vector(self, vector) -> None:
        self.image.embedding = vector
        self.pixels = None


@dataclass
class VectorOnly:
    """An image stored by another model's run, its file unchanged since: this model's input only."""

    task: FileTask
    file: FileRead
    image_id: int
    pixels: Any
    vector: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    def take_vector(self, vector) -> None:
        self.vector = vector
        self.pixels = None


Prepared = Union[Failed, Skipped, Known, New, VectorOnly]


def prepare(task: FileTask, ctx: BatchContext, model: ClipModel, pool, *, max_file_bytes: int,
            max_pixels: int, budget: DecodeBudget | None = None, preread: Future | None = None,
            device_jpegs: bool = False) -> Prepared:
    """One file through the threaded stages. Never raises for the file's sake: any surprise becomes
    its failure (a database error is re-raised: the whole batch must be retried). ``preread``:
    the file's ``read_file`` answer, read on another thread (members of a tar part, in order).
    ``device_jpegs``: a plain JPEG's pixels are left to the model's device (only its header is
    read here)."""
    timings: dict[str, float] = {}
    try:
        return _prepare(task, ctx, model, pool, max_file_bytes, max_pixels, budget, timings, preread,
                        device_jpegs)
    except psycopg.Error:
        raise
    except Exception as exc:
        log.exception("unexpected error on %r", task.name)
        return Failed(task, "decode", f"unexpected error: {type(exc).__name__}: {exc}", task.size, task.mtime_ns,
                      timings)


def read_file(path: bytes, max_bytes: int, inside: Sequence[bytes] | None = None
              ) -> tuple[tuple[bytes, os.stat_result] | None, tuple[str, str] | None]:
    """The file's bytes and stat, read once; or why not, as a failure (stage, reason).

    ``inside``: the resolved library roots the file must be in (None: follow links anywhere).
    A named pipe, a device or a link out of the library is refused without blocking or reading.
    """
    try:
        handle, st = open_regular(path, inside)
    except FileNotFoundError:
        return None, ("read", "file vanished before it was read")
    except FileRefused as exc:
        return None, ("read", str(exc))
    except OSError as exc:
        return None, ("read", f"cannot read: {exc.strerror or exc}")
    with handle:
        try:
            return (read_capped(handle, st, max_bytes), st), None
        except FileRefused as exc:
            return (b"", st), ("read", str(exc))
        except OSError as exc:
            return None, ("read", f"cannot read: {exc.strerror or exc}")


def _timed(timings: dict[str, float], stage: str, started: float) -> float:
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - started
    return now


def describe(ctx: BatchContext, task: FileTask) -> SourceInfo:
    """What the export says about the file; its own metadata must never cost us the photo."""
    try:
        return get_source(ctx.work.source).describe(task, ctx.root_path, ctx.cache)
    except Exception as exc:
        log.warning("cannot read %s metadata for %r: %s", ctx.work.source, task.name, exc)
        return SourceInfo(album=task.album, source_meta={"source_error": str(exc)})


def _prepare(task: FileTask, ctx: BatchContext, model: ClipModel, pool, max_file_bytes: int, max_pixels: int,
             budget: DecodeBudget | None, timings: dict[str, float], preread: Future | None = None,
             device_jpegs: bool = False) -> Prepared:
    t = time.perf_counter()
    if preread is not None:
        read, failure = preread.result()
    else:
        read, failure = read_file(absolute(ctx.root_path, task.relpath), max_file_bytes, ctx.inside)
    if read is None:
        return Failed(task, *failure, task.size, task.mtime_ns, timings)
    data, st = read
    if failure:
        return Failed(task, *failure, st.st_size, st.st_mtime_ns, timings)
    t = _timed(timings, "read", t)
    if task.indexed_image is not None and (st.st_size, st.st_mtime_ns) == (task.size, task.mtime_ns):
        return _vector_only(task, data, st, model, max_pixels, budget, timings, device_jpegs)
    file = FileRead(st.st_size, st.st_mtime_ns, st.st_ino, hashlib.sha256(data).digest())
    if task.hints.get("md5") and hashlib.md5(data).hexdigest() != task.hints["md5"]:
        task.hints["hash_mismatch"] = True  # a QQ NT original whose bytes do not match its name
    t = _timed(timings, "hash", t)
    info = describe(ctx, task)
    if ctx.earlier is not None:
        ctx.earlier.wait_for(file.sha256)
    with pool.connection() as conn:
        known = store.lookup_image(conn, file.sha256, ctx.work.model_id)
    t = _timed(timings, "lookup", t)
    if known is not None and known[1]:
        return Known(task, file, info, known[0], timings)
    if extension(task.name) in RAW_EXTENSIONS:
        return Failed(task, "decode", f"unsupported format: camera RAW (.{extension(task.name)})",
                      file.size, file.mtime_ns, timings)
    try:
        # Known bytes without this model's vector (a second model): everything but the vector is stored.
        device = _header_for_device(data, max_pixels, timings, with_thumbnail=known is None) if device_jpegs else None
        if device is not None:
            (decoded, pixels), thumbnail = device, None   # the preview is made from the device's pixels
        else:
            decoded, thumbnail, pixels = decode_for_model(data, model, max_pixels, timings, budget,
                                                          with_thumbnail=known is None)
    except NotAnImage as exc:
        if extension(task.name) in IMAGE_EXTENSIONS:
            # Named like a photo: the user expects it indexed, so say why it is not.
            return Failed(task, "decode", f"named like an image but the content is {exc}", file.size,
                          file.mtime_ns, timings)
        return Skipped(task, f"not an image: {exc}", file.size, file.mtime_ns, timings)
    except DecodeFailure as exc:
        return Failed(task, "decode", str(exc), file.size, file.mtime_ns, timings)
    capture = resolve_capture_time(decoded.inspected, sidecar_utc=info.sidecar_time,
                                   filename=task.name, mtime_ns=file.mtime_ns)
    image = store.NewImage(
        sha256=file.sha256, format=decoded.format, width=decoded.width, height=decoded.height,
        exif_orientation=decoded.inspected.exif_orientation, byte_size=file.size,
        facts=image_facts(info, decoded.inspected, capture), embedding=None, thumbnail=thumbnail)
    return New(task, file, info, image, pixels, timings)


def _vector_only(task: FileTask, data: bytes, st, model: ClipModel, max_pixels: int,
                 budget: DecodeBudget | None, timings: dict[str, float], device_jpegs: bool = False) -> Prepared:
    """Bytes the scan and this read both find as the stored image's (same size and time): no hash,
    sidecar, lookup, EXIF facts or thumbnail, only the pixels for this model."""
    file = FileRead(st.st_size, st.st_mtime_ns, st.st_ino, b"")
    t = time.perf_counter()
    try:
        device = _header_for_device(data, max_pixels, timings, with_thumbnail=False, facts=False) if device_jpegs else None
        if device is not None:
            return VectorOnly(task, file, task.indexed_image, device[1], timings=timings)
        decoded = decode(data, min_side=max(model.image_size), max_pixels=max_pixels, budget=budget)
        t = _timed(timings, "decode", t)
        pixels = model.preprocess(decoded.image)
    except (NotAnImage, DecodeFailure) as exc:
        return Failed(task, "decode", str(exc), file.size, file.mtime_ns, timings)
    except Exception as exc:  # open_clip transforms on odd images
        return Failed(task, "decode", f"cannot prepare pixels for the model: {exc}", file.size, file.mtime_ns,
                      timings)
    _timed(timings, "preprocess", t)
    return VectorOnly(task, file, task.indexed_image, pixels, timings=timings)


def _header_for_device(data: bytes, max_pixels: int, timings: dict[str, float], *, with_thumbnail: bool,
                       facts: bool = True):
    """(header, DeviceJpeg) for a plain JPEG, whose pixels the model's device decodes; None for
    any other file (Pillow decodes it here). Raises as ``decode`` does for a bad header.
    ``facts``: the header's EXIF is read too (a new image's date, place, camera)."""
    t = time.perf_counter()
    header = jpeg_header(data, max_pixels=max_pixels, inspect=read_embedded_metadata if facts else None)
    found = (header, DeviceJpeg.of(data, header, with_thumbnail)) if header and header.plain else None
    _timed(timings, "decode", t)
    return found


def decode_for_model(data: bytes, model: ClipModel, max_pixels: int, timings: dict[str, float] | None = None,
                     budget: DecodeBudget | None = None, *, with_thumbnail: bool = True):
    """The CPU work on a new image's bytes: decode (with its EXIF), thumbnail (unless the image
    has one: a second model's vectors), the model's own preprocessing. Returns (decoded, thumbnail
    or None, pixels); raises NotAnImage or DecodeFailure."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    decoded = decode(data, min_side=max(model.image_size), max_pixels=max_pixels, inspect=read_embedded_metadata,
                     budget=budget)
    t = _timed(timings, "decode", t)
    thumbnail = make_thumbnail(decoded.image) if with_thumbnail else None
    t = _timed(timings, "thumbnail", t)
    try:
        pixels = model.preprocess(decoded.image)
    except Exception as exc:  # open_clip transforms on odd images
        raise DecodeFailure(f"cannot prepare pixels for the model: {exc}") from None
    _timed(timings, "preprocess", t)
    return decoded, thumbnail, pixels

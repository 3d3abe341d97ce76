"""Google Takeout (Google Photos), extracted: several ``Takeout`` parts side by side.

The Photos folder (its name is localized) can sit at any depth; everything below it is keyed by
its path under that folder, so an album spread over several parts is one virtual folder and a
photo finds its sidecar in another part. Sidecars are matched by name in the producer
(``takeout_match``) and read in the worker. The sidecar's time, place and flags win over EXIF:
they carry the user's corrections in Google Photos.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clipdex.files import FileRefused
from clipdex.roots import display_path
from indexer.sources import (FileTask, Plan, SourceInfo, VirtualFolder, decode_path, encode_path, extension,
                             is_candidate, read_small_file)
from indexer.sources.takeout_match import (ALBUM_METADATA_NAMES, NON_SIDECAR_JSON, is_photos_root,
                                           is_year_folder, match_sidecars, original_name)

TRASH_FOLDERS = {"trash", "bin", "corbeille", "papelera", "papierkorb", "cestino", "lixeira",
                 "prullenbak", "kosz", "корзина", "koš", "papperskorg", "papirkurv", "roskakori"}
ARCHIVE_FOLDERS = {"archive", "archiv", "archivio", "archivo", "archives", "arquivo", "archief"}
SKIPPED_FOLDERS = {"failed videos"}
_TAKEOUT_DIR = re.compile(r"^takeout(-\d{8}t\d{6}z(-\d+)*)?$", re.I)


def photos_root_index(components: tuple[str, ...]) -> int | None:
    """Where the Google Photos folder is on a path: a known localized name, or else the folder
    right below a ``Takeout`` folder (for languages we do not know)."""
    for i in range(len(components) - 1, -1, -1):
        if is_photos_root(components[i]):
            return i
    for i in range(len(components) - 2, -1, -1):
        if components[i].lower() == "takeout" and not _TAKEOUT_DIR.match(components[i + 1]):
            return i + 1
    return None


def _folded(name: str) -> str:
    """NFC and lower case: macOS hands out NFD names (métadonnées.json)."""
    return unicodedata.normalize("NFC", name).lower()


def folder_kind(name: str | None) -> str:
    if name is None:
        return "root"
    lowered = _folded(name)
    if lowered in TRASH_FOLDERS:
        return "trash"
    if lowered in ARCHIVE_FOLDERS:
        return "archive"
    if lowered == "locked folder":
        return "locked"
    if is_year_folder(name):
        return "year"
    return "album"


class TakeoutSource:
    kind = "takeout"

    def folder_key(self, components: tuple[str, ...], root_depth: int) -> tuple[str, ...]:
        index = photos_root_index(components)
        if index is None:  # --source takeout on a folder below the Photos folder
            return components[root_depth:]
        return components[index + 1:]

    def plan(self, folder: VirtualFolder) -> Plan:
        plan = Plan()
        name = folder.key[-1] if folder.key else None
        kind = folder_kind(name)
        files = folder.files()
        if name is not None and name.lower() in SKIPPED_FOLDERS:
            plan.skipped = len(files)
            return plan
        json_parts: dict[str, bytes] = {}   # json name -> its relpath (in whichever part)
        media: list[tuple[Any, Any, str]] = []
        for part, f in files:
            text = display_path(f.name)
            if extension(text) == "json":
                json_parts.setdefault(text, part.file_relpath(f.name))
                plan.skipped += 1
            elif is_candidate(f.name):
                media.append((part, f, text))
            else:
                plan.skipped += 1
        matches = match_sidecars(sorted({m[2] for m in media}), sorted(json_parts))
        matched = {m.sidecar for m in matches.values()}
        album_files = [json_parts[n] for n in sorted(json_parts) if _folded(n) in ALBUM_METADATA_NAMES]
        if not album_files and kind == "album":
            # A localized album file we do not know by name: the worker tells by content.
            album_files = [json_parts[n] for n in sorted(json_parts)
                           if n not in matched and _folded(n) not in NON_SIDECAR_JSON][:3]
        for part, f, text in media:
            match = matches.get(text)
            hints: dict[str, Any] = {"folder_kind": kind, "folder": name}
            if match is not None:
                hints.update(sidecar=encode_path(json_parts[match.sidecar]), match=match.how,
                             confidence=match.confidence, derived_from=match.derived_from)
            if album_files and kind == "album":
                hints["album_files"] = [encode_path(p) for p in album_files]
            plan.add(part, f, name if kind == "album" else None, **hints)
        return plan

    def describe(self, task: FileTask, root_path: Path, cache: dict) -> SourceInfo:
        hints = task.hints
        info = SourceInfo(album=task.album)
        meta: dict[str, Any] = {k: hints[k] for k in ("folder", "folder_kind", "match", "confidence",
                                                       "derived_from") if k in hints}
        if hints.get("derived_from"):
            info.image_extra["derived_from"] = hints["derived_from"]
        if hints.get("match") == "creation":
            info.image_extra["creation"] = True   # its time and place are its source photo's
        if "album_files" in hints:
            album = _album_metadata(root_path, hints["album_files"], cache)
            if album is not None:
                if album.get("title"):
                    info.album = album["title"]
                if album.get("location"):
                    meta["album_location"] = album["location"]
        if hints.get("folder_kind") == "trash":
            info.image_extra["trashed"] = True
        if "sidecar" in hints:
            sidecar_path = decode_path(hints["sidecar"])
            meta["sidecar"] = display_path(sidecar_path)
            sidecar, error = _read_json(root_path, sidecar_path, cache)
            if error is not None:
                meta["sidecar_error"] = error
            else:
                _apply_sidecar(info, meta, sidecar, task.name)
        info.source_meta = meta
        return info


def _read_json(root_path: Path, relpath: bytes, cache: dict) -> tuple[Any, str | None]:
    """(the parsed document, None), or (None, why it cannot be used)."""
    key = ("json", relpath)
    if key not in cache:
        try:
            data = cache.get(("file", relpath))   # a tar part's JSON, kept when it was listed
            if data is None:
                data = read_small_file(os.path.join(os.fsencode(root_path), relpath), root_path)
            cache[key] = (json.loads(data), None)
        except FileRefused as exc:
            cache[key] = (None, f"sidecar not read: {exc}")
        except FileNotFoundError:
            cache[key] = (None, "sidecar vanished before it was read")
        except OSError as exc:
            cache[key] = (None, f"sidecar not read: {exc.strerror or exc}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            cache[key] = (None, "unreadable or not JSON")
    return cache[key]


def _album_metadata(root_path: Path, candidates: list, cache: dict) -> dict | None:
    """Title and location from the album's metadata JSON (new and old ``albumData`` forms)."""
    for encoded in candidates:
        doc, _error = _read_json(root_path, decode_path(encoded), cache)
        if not isinstance(doc, dict):
            continue
        doc = doc.get("albumData", doc) if isinstance(doc.get("albumData"), dict) else doc
        if "title" not in doc or "photoTakenTime" in doc:
            continue
        album: dict[str, Any] = {"title": doc.get("title") if isinstance(doc.get("title"), str) else None}
        for enrichment in doc.get("enrichments") or []:
            places = (enrichment or {}).get("locationEnrichment", {}).get("location") or []
            for place in places:
                try:
                    album["location"] = {"name": place.get("name"),
                                         "latitude": place["latitudeE7"] / 1e7,
                                         "longitude": place["longitudeE7"] / 1e7}
                    break
                except (KeyError, TypeError):
                    continue
        return album
    return None


def _epoch(block: Any) -> datetime | None:
    """A sidecar timestamp (epoch seconds as a string); "0" or missing means unknown."""
    try:
        seconds = int(str(block["timestamp"]))
    except (KeyError, TypeError, ValueError):
        return None
    if seconds <= 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _geo(block: Any) -> tuple[float, float] | None:
    try:
        lat, lon = float(block["latitude"]), float(block["longitude"])
    except (KeyError, TypeError, ValueError):
        return None
    if (lat, lon) == (0.0, 0.0) or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _apply_sidecar(info: SourceInfo, meta: dict, sidecar: Any, media_name: str) -> None:
    if not isinstance(sidecar, dict):
        meta["sidecar_error"] = "not a JSON object"
        return
    meta["json"] = sidecar
    info.sidecar_time = _epoch(sidecar.get("photoTakenTime"))
    uploaded = _epoch(sidecar.get("creationTime"))
    if uploaded is not None:
        meta["uploaded_at"] = uploaded.isoformat()
    place = _geo(sidecar.get("geoData")) or _geo(sidecar.get("geoDataExif"))
    if place is not None:
        info.latitude, info.longitude = place
    description = sidecar.get("description")
    if isinstance(description, str) and description.strip():
        info.description = description.strip()
    title = sidecar.get("title") if isinstance(sidecar.get("title"), str) else None
    meta["original_name"] = original_name(media_name, title)
    people = [p.get("name") for p in sidecar.get("people") or [] if isinstance(p, dict) and p.get("name")]
    if people:
        info.image_extra["people"] = people
    info.favorite = sidecar.get("favorited") is True
    for flag in ("archived", "trashed"):
        if sidecar.get(flag) is True:
            info.image_extra[flag] = True
    origin = sidecar.get("googlePhotosOrigin")
    if isinstance(origin, dict) and origin:
        meta["origin"] = next(iter(origin))
        if "fromPartnerSharing" in origin:
            info.image_extra["partner"] = True


SOURCE = TakeoutSource()

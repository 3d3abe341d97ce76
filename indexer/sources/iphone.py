"""iPhone DCIM copies: ``DCIM/100APPLE/IMG_1234.HEIC`` and friends.

Edited renders (``IMG_E1234.JPG``) are kept and linked to their original; ``.AAE`` edit files and
Live-Photo ``.MOV`` files are not photos and are skipped silently, but they tell us that the
original has edits and a live video. Times, places and camera come from EXIF when decoding.
"""

from __future__ import annotations

import re
from pathlib import Path

from indexer.sources import FileTask, Plan, SourceInfo, VirtualFolder, extension, is_candidate
from clipdex.roots import display_path

_NUMBERED = re.compile(r"^IMG_(E|O)?(\d{4})$", re.I)
_DCIM_FOLDER = re.compile(r"^(\d{3}(APPLE|CLOUD|IMPRT)|\d{6}__)$", re.I)


def is_dcim_path(components: tuple[str, ...]) -> bool:
    return any(c.upper() == "DCIM" or _DCIM_FOLDER.match(c) for c in components)


def _number(name: str) -> tuple[str | None, str | None]:
    """('E', '1234') for IMG_E1234.JPG, (None, '1234') for IMG_1234.HEIC, (None, None) otherwise."""
    stem = name.rsplit(".", 1)[0]
    match = _NUMBERED.match(stem)
    if not match:
        return None, None
    return (match.group(1) or "").upper() or None, match.group(2)


class IphoneSource:
    kind = "iphone"

    def folder_key(self, components: tuple[str, ...], root_depth: int) -> tuple[str, ...]:
        return components[root_depth:]

    def plan(self, folder: VirtualFolder) -> Plan:
        plan = Plan()
        files = folder.files()
        originals: dict[str, str] = {}      # number -> original still's name
        edited_numbers: set[str] = set()    # numbers with an .AAE edit file
        live_videos: dict[str, str] = {}    # number -> IMG_1234.MOV
        for _, f in files:
            name = display_path(f.name)
            prefix, number = _number(name)
            if number is None:
                continue
            ext = extension(name)
            if ext == "aae":
                edited_numbers.add(number)
            elif ext in ("mov", "mp4") and prefix is None:
                live_videos[number] = name
            elif prefix is None and is_candidate(f.name):
                originals.setdefault(number, name)
        folder_name = folder.key[-1] if folder.key else None
        for part, f in files:
            if not is_candidate(f.name):
                plan.skipped += 1
                continue
            name = display_path(f.name)
            prefix, number = _number(name)
            hints = {"folder": folder_name}
            if prefix == "E":
                hints["edited_of"] = originals.get(number)
                hints["edited"] = True
            elif number is not None:
                hints["has_edits"] = number in edited_numbers
                hints["live_video"] = live_videos.get(number)
            plan.add(part, f, None, **hints)
        return plan

    def describe(self, task: FileTask, root_path: Path, cache: dict) -> SourceInfo:
        meta = dict(task.hints)
        extra = {"edited": True} if meta.get("edited") else {}
        return SourceInfo(album=None, source_meta=meta, image_extra=extra)


SOURCE = IphoneSource()

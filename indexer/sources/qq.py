"""QQ desktop chat images: legacy ``Tencent Files/<QQ>/Image/...`` and QQNT ``nt_data/Pic/...``.

Names carry no meaning beyond hashes, extensions are often missing or wrong (content decides), and
there are no sidecars: the path tells the account and, in the legacy layout, group or private
chat. QQNT keeps thumbnails beside originals; a thumbnail is indexed only when its original is
missing (the largest one stands in, marked as a thumbnail). Download leftovers are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from clipdex.roots import display_path
from indexer.sources import FileTask, Plan, SourceInfo, VirtualFolder, is_candidate

_MONTH = re.compile(r"^\d{4}-\d{2}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$", re.I)
_THUMB = re.compile(r"^([0-9a-f]{32})_(\d+)$", re.I)
_ACCOUNT = re.compile(r"^\d{5,11}$")
_SKIPPED_FOLDERS = {"oritemp", "thumbtemp", "video", "ptt"}
_CHAT_FOLDERS = {"c2c": "private", "group": "group", "group2": "group", "discuss": "group"}

ALBUMS = {"group": "QQ group chats", "private": "QQ private chats", "unknown": "QQ chats",
          "sticker": "QQ stickers", "file": "QQ received files"}


def is_qq_path(components: tuple[str, ...]) -> bool:
    lowered = [c.lower() for c in components]
    if "tencent files" in lowered or "nt_data" in lowered or any(c.startswith("nt_qq") for c in lowered):
        return True
    return any(a == "image" and b in _CHAT_FOLDERS for a, b in zip(lowered, lowered[1:]))


def _month_folder_index(components: tuple[str, ...]) -> int | None:
    """Index of YYYY-MM in …/Pic/YYYY-MM/Ori (or Thumb, Emoji's months alike)."""
    for i in range(len(components) - 1, 0, -1):
        if _MONTH.match(components[i]) and i + 1 < len(components):
            return i
    return None


def describe_path(components: tuple[str, ...]) -> dict:
    """Account, chat type, month and kind of folder from a QQ path."""
    lowered = [c.lower() for c in components]
    info: dict = {"chat_type": "unknown"}
    if "tencent files" in lowered:
        i = lowered.index("tencent files")
        if i + 1 < len(components) and _ACCOUNT.match(components[i + 1]):
            info["account"] = components[i + 1]
    for a, b in zip(lowered, lowered[1:]):
        if a == "image" and b in _CHAT_FOLDERS:
            info["chat_type"] = _CHAT_FOLDERS[b]
    month = _month_folder_index(components)
    if month is not None and "nt_data" in lowered:
        info["month"] = components[month]
    if "emoji" in lowered or "marketface" in lowered or "emoji-recv" in lowered:
        info["sticker"] = True
    if "filerecv" in lowered:
        info["received_file"] = True
    return info


def _album(info: dict) -> str:
    if info.get("sticker"):
        return ALBUMS["sticker"]
    if info.get("received_file"):
        return ALBUMS["file"]
    return ALBUMS[info["chat_type"]]


class QQSource:
    kind = "qq"

    def folder_key(self, components: tuple[str, ...], root_depth: int) -> tuple[str, ...]:
        month = _month_folder_index(components)
        if month is not None and month >= root_depth and components[month + 1].lower() in (
                "ori", "thumb", "oritemp", "thumbtemp"):
            return components[root_depth:month + 1]  # Ori and Thumb of one month together
        return components[root_depth:]

    def plan(self, folder: VirtualFolder) -> Plan:
        plan = Plan()
        originals: set[str] = set()   # md5s that have an original
        best_thumb: dict[str, tuple[int, str]] = {}  # md5 -> (size tag, name) of the largest thumb
        kinds = {}
        for part in folder.parts:
            last = (folder.components(part) or ("",))[-1].lower()
            kinds[id(part)] = last
            for f in part.files:
                stem = display_path(f.name).split(".", 1)[0]
                if last == "ori" and _MD5.match(stem):
                    originals.add(stem.lower())
                thumb = _THUMB.match(stem) if last == "thumb" else None
                if thumb:
                    md5, size = thumb.group(1).lower(), int(thumb.group(2))
                    if size >= best_thumb.get(md5, (-1, ""))[0]:
                        best_thumb[md5] = (size, display_path(f.name))
        for part in folder.parts:
            components = folder.components(part)
            info = describe_path(components)
            skip_folder = any(c.lower() in _SKIPPED_FOLDERS for c in components)
            for f in part.files:
                name = display_path(f.name)
                if skip_folder or not is_candidate(f.name):
                    plan.skipped += 1
                    continue
                stem = name.split(".", 1)[0]
                hints = dict(info)
                thumb = _THUMB.match(stem) if kinds[id(part)] == "thumb" else None
                if thumb:
                    md5 = thumb.group(1).lower()
                    if md5 in originals or best_thumb[md5][1] != name:
                        plan.skipped += 1
                        continue
                    hints["thumbnail_of"] = md5
                elif kinds[id(part)] == "ori" and _MD5.match(stem):
                    hints["md5"] = stem.lower()
                plan.add(part, f, _album(info), **hints)
        return plan

    def describe(self, task: FileTask, root_path: Path, cache: dict) -> SourceInfo:
        extra = {}
        if task.hints.get("sticker"):
            extra["sticker"] = True
        if task.hints.get("thumbnail_of"):
            extra["is_thumbnail"] = True
        return SourceInfo(album=task.album, source_meta=dict(task.hints), image_extra=extra)


SOURCE = QQSource()

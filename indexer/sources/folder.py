"""Any folder tree of images: the album is the folder a file sits in."""

from __future__ import annotations

from pathlib import Path

from indexer.sources import FileTask, Plan, SourceInfo, VirtualFolder, is_candidate


class FolderSource:
    kind = "folder"

    def folder_key(self, components: tuple[str, ...], root_depth: int) -> tuple[str, ...]:
        return components[root_depth:]

    def plan(self, folder: VirtualFolder) -> Plan:
        plan = Plan()
        # Files at the top of the indexed folder have no album of their own.
        album = folder.key[-1] if folder.key else None
        for part, f in folder.files():
            if is_candidate(f.name):
                plan.add(part, f, album)
            else:
                plan.skipped += 1
        return plan

    def describe(self, task: FileTask, root_path: Path, cache: dict) -> SourceInfo:
        return SourceInfo(album=task.album)


SOURCE = FolderSource()

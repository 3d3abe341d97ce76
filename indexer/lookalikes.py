"""Groups look-alike images once a run has stored them: each new image joins the group whose
first image looks nearest (its 64-bit hash within LOOKALIKE_BITS, confirmed by the 256-bit one
within DETAIL_BITS: clipdex/likeness.py), or starts its own.

An image is compared with the first image of each group only, never with every member: so a
group is a ball around one picture, and a chain of small differences (a burst drifting across a
scene, a hundred chat screenshots each a little like the next) cannot grow into one group that
spans unrelated photos. The comparison is exact: the first images' 64-bit hashes are held in
memory (8 bytes each) and every new hash is compared with all of them (XOR and a bit count, a
few ns a pair); the few within the bits have their 256-bit hashes read to confirm. An
approximate index over 64-bit hashes (pgvector's HNSW on `bit`) measured slower for the same
recall: with ties at every distance its graph search wanders.

One connection at a time groups (an advisory lock): two at once could each miss the other's new
picture and found two groups for it. Images indexed before hashes existed get theirs from their
stored thumbnails here.
"""

from __future__ import annotations

import logging

import numpy as np
import psycopg

from clipdex.likeness import Look, detail_distance, look_of_thumbnail

log = logging.getLogger(__name__)

# Bits two copies of one picture may differ in, of the 64 and of the 256 (bench/dupes.py measures
# the choice). Of the 64: recompression, resizing, WebP and a screenshot's bars move 0-6, a burst
# 0-6, a crop of 10 % up to about 20; another shot of the same scene 20 or more, unrelated photos
# about 32, but one pair in a few hundred thousand 10 or fewer. Of the 256: copies 0-34, crops
# 18-106, those unrelated pairs 84 or more, unrelated photos about 128.
LOOKALIKE_BITS = 12
DETAIL_BITS = 64
_LOCK = 0x6C6F6F6B   # 'look': the advisory lock key of the grouping
_CHUNK = 1000        # images grouped and written per transaction


class FirstImages:
    """The hashes of the groups' first images, and the nearest of them to a hash."""

    _MERGE_EVERY = 256   # new first images kept in a list before they join the array

    def __init__(self, ids: list[int], looks: list[int]) -> None:
        self.ids = np.array(ids, dtype=np.int64)
        self.looks = np.array(looks, dtype=np.int64).view(np.uint64)
        self._new: list[tuple[int, int]] = []

    @classmethod
    def load(cls, conn: psycopg.Connection) -> "FirstImages":
        rows = conn.execute("SELECT id, look::bigint FROM images WHERE look_group = id AND look IS NOT NULL").fetchall()
        return cls([r[0] for r in rows], [r[1] for r in rows])

    def within(self, look: int, bits: int) -> list[tuple[int, int]]:
        """(bits apart, image id) of the first images within ``bits`` of ``look``, nearest first."""
        found = []
        if self.ids.size:
            apart = np.bitwise_count(self.looks ^ np.uint64(look & ((1 << 64) - 1)))
            near = np.flatnonzero(apart <= bits)
            found = [(int(apart[at]), int(self.ids[at])) for at in near]
        for image_id, other in self._new:
            apart_new = ((look ^ other) & ((1 << 64) - 1)).bit_count()
            if apart_new <= bits:
                found.append((apart_new, image_id))
        return sorted(found)

    def add(self, image_id: int, look: int) -> None:
        self._new.append((image_id, look))
        if len(self._new) >= self._MERGE_EVERY:
            self.ids = np.concatenate([self.ids, np.array([i for i, _ in self._new], dtype=np.int64)])
            self.looks = np.concatenate([self.looks, np.array([v for _, v in self._new], dtype=np.int64).view(np.uint64)])
            self._new = []


def group_new_images(conn: psycopg.Connection, *, bits: int = LOOKALIKE_BITS, detail_bits: int = DETAIL_BITS) -> int:
    """Groups every image not yet grouped, oldest first; returns how many. Waits while another
    connection groups. ``conn`` must be in autocommit mode: each chunk commits on its own, so a
    long pass holds no row locks for long and loses little if stopped."""
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
    grouped = 0
    try:
        if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM images WHERE look_group IS NULL)").fetchone()[0]:
            return 0
        first_images = FirstImages.load(conn)
        details: dict[int, bytes | None] = {}   # 256-bit hashes of first images read so far
        after = 0
        while True:
            rows = conn.execute(
                "SELECT i.id, i.look::bigint, i.look_detail, t.webp FROM images i "
                "LEFT JOIN thumbnails t ON t.image_id = i.id AND i.picture_share IS NULL "
                "WHERE i.look_group IS NULL AND i.id > %s ORDER BY i.id LIMIT %s", (after, _CHUNK)).fetchall()
            if not rows:
                return grouped
            placed = []
            for image_id, look, detail, thumbnail in rows:
                seen = Look(look, None if detail is None else bytes(detail), None)
                if thumbnail is not None:   # indexed before looks were kept
                    seen = _look_or_none(image_id, bytes(thumbnail))
                group = image_id
                if seen.hash is not None:
                    group = _first_confirmed(conn, first_images.within(seen.hash, bits), seen.detail, details,
                                             detail_bits) or image_id
                    if group == image_id:
                        first_images.add(image_id, seen.hash)
                        details[image_id] = seen.detail
                placed.append((image_id, seen, group))
            _write(conn, placed)
            grouped += len(rows)
            after = rows[-1][0]
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))


def _first_confirmed(conn: psycopg.Connection, candidates: list[tuple[int, int]], detail: bytes | None,
                     details: dict[int, bytes | None], detail_bits: int) -> int | None:
    """The nearest candidate first image whose 256-bit hash confirms the match, or None."""
    unread = [image_id for _, image_id in candidates if image_id not in details]
    if unread:
        details.update((i, None if d is None else bytes(d)) for i, d in conn.execute(
            "SELECT id, look_detail FROM images WHERE id = ANY(%s)", (unread,)))
    for _, image_id in candidates:
        other = details.get(image_id)
        if detail is not None and other is not None and detail_distance(detail, other) <= detail_bits:
            return image_id
    return None


def _look_or_none(image_id: int, thumbnail: bytes) -> Look:
    try:
        return look_of_thumbnail(thumbnail)
    except Exception as exc:   # a damaged thumbnail: the photo stays alone, and searchable
        log.warning("image %s: cannot hash its thumbnail: %s", image_id, exc)
        return Look(None, None, 1.0)


def _write(conn: psycopg.Connection, placed: list[tuple[int, Look, int]]) -> None:
    """One statement for a chunk. An image deleted meanwhile is passed over; its group's other
    members, if it was their first image, are grouped again by the next pass (the delete resets them)."""
    conn.execute(
        "UPDATE images i SET look = n.look::bit(64), look_detail = coalesce(n.detail, i.look_detail), "
        "look_group = n.look_group, picture_share = coalesce(n.share, i.picture_share) "
        "FROM unnest(%s::bigint[], %s::bigint[], %b::bytea[], %s::real[], %s::bigint[]) "
        "AS n(id, look, detail, share, look_group) WHERE i.id = n.id",
        ([image_id for image_id, _, _ in placed], [seen.hash for _, seen, _ in placed],
         [seen.detail for _, seen, _ in placed], [seen.share for _, seen, _ in placed],
         [group for _, _, group in placed]))

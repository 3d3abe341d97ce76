"""One tile per picture: copies of one picture (a look-alike group, indexer/lookalikes.py) fold
into the copy that ranks first, which says how many more the filters keep ("+N similar").

Which copy shows is decided by the query and the filters alone, never by the page it falls on:
the copy nearest the query (a browse: the first in date order), among those the filters keep.
So every page hides the same copies, and paging by keyset neither repeats nor skips a picture.
A page may hold fewer tiles than asked when it folds copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import psycopg

from clipdex.search.filters import Filters
from clipdex.search.plan import date_key
from clipdex.search.query_vector import as_halfvec


@dataclass
class Folded:
    shown: set[int]                                    # the page's ids that keep their tile
    similar: dict[int, int] = field(default_factory=dict)   # shown id -> other copies the filters keep


A_COPY = "SELECT look_group FROM images WHERE look_group <> id ORDER BY look_group LIMIT 1"


def any_lookalikes(conn: psycopg.Connection) -> bool:
    """Whether any picture has two copies in the library: a library without any never pays for
    folding. Asked in the order of the partial index of copies, which answers at once: the planner
    guesses that nearly every photo passes ``look_group <> id`` and would read the whole table
    looking for the first (130 ms a search at a million photos, when none does)."""
    return conn.execute(A_COPY).fetchone() is not None


def fold_copies(conn: psycopg.Connection, model_id: int, ids: list[int], filters: Filters,
                query: np.ndarray | None, order: str = "relevance", preferred: frozenset[int] = frozenset(), *,
                folding: bool) -> Folded:
    """Which of a page's ``ids`` show, and how many copies each stands for. With a ``query`` the
    copy nearest it shows (``preferred`` ones first: those holding the query's words); without,
    the first by date in ``order``. ``folding`` False (the search service's decision: the filters
    ask for every copy, or the library has none): every one shows."""
    if not ids or not folding:
        return Folded(set(ids))
    groups = dict(conn.execute(
        "SELECT i.id, i.look_group FROM images i WHERE i.id = ANY(%s) AND (i.look_group <> i.id OR EXISTS "
        "(SELECT 1 FROM images o WHERE o.look_group = i.id AND o.look_group <> o.id))", (ids,)).fetchall())
    if not groups:
        return Folded(set(ids))
    where, params = filters.sql()
    if query is not None:
        rows = conn.execute(
            f"SELECT i.id, i.look_group, e.embedding <=> %s::halfvec FROM images i "
            f"JOIN embeddings e ON e.image_id = i.id AND e.model_id = {int(model_id)} "
            f"WHERE i.look_group = ANY(%s) AND {where}",
            [as_halfvec(query), sorted(set(groups.values())), *params]).fetchall()
        keys = {image_id: (image_id not in preferred, distance, image_id) for image_id, _, distance in rows}
    else:
        rows = conn.execute(
            f"SELECT i.id, i.look_group, i.taken_at FROM images i WHERE i.look_group = ANY(%s) AND {where} "
            f"AND EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model_id = {int(model_id)})",
            [sorted(set(groups.values())), *params]).fetchall()
        keys = {image_id: date_key(order, taken_at, image_id) for image_id, _, taken_at in rows}
    members: dict[int, list[int]] = {}
    for image_id, group, _ in rows:
        members.setdefault(group, []).append(image_id)
    first = {group: min(ids_, key=keys.__getitem__) for group, ids_ in members.items()}
    folded = Folded({i for i in ids if i not in groups})
    for image_id, group in groups.items():
        if first.get(group, image_id) == image_id:
            folded.shown.add(image_id)
            folded.similar[image_id] = max(0, len(members.get(group, ())) - 1)
    return folded

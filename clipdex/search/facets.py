"""What the matches are made of: counts by year, source, album, place, person and camera, for the
photos a search matches (after the cut-off) and its filters. Each value is something a filter
can take (`filter_params`), so the page turns every count into a link that narrows the search.

Counted in one statement over the matched ids (or, for a browse or a search with no cut-off,
over every photo the filters keep), the top FACET_VALUES of each facet. The whole library's
counts (the page as it opens) cost a scan of every photo: they are kept and reused until the
library changes (`library_state`).
"""

from __future__ import annotations

from typing import Any

import psycopg

from clipdex.search.filters import Filters

FACETS = ("year", "source", "album", "place", "person", "camera")
FACET_VALUES = 12

# The kept photos' rows are read once (`p`), their locations once (`l`): the photo row's year,
# place and camera come from one scan with GROUPING SETS. One join per facet read the images
# table four times: at 100,000 photos a quarter of them took 200-206 ms, this 133-137 ms, the
# same counts (BENCHMARKS §11).
_COUNTS = """
WITH m AS MATERIALIZED ({scope}),
p AS MATERIALIZED (SELECT extract(year FROM i.taken_at AT TIME ZONE 'UTC')::int::text AS year, i.place_name,
                          i.camera_make, i.extra FROM m JOIN images i ON i.id = m.id),
l AS MATERIALIZED (SELECT DISTINCT l.image_id, l.source, l.album FROM m JOIN locations l ON l.image_id = m.id)
SELECT CASE WHEN GROUPING(year) = 0 THEN 'year' WHEN GROUPING(place_name) = 0 THEN 'place' ELSE 'camera' END,
       coalesce(year, place_name, camera_make), count(*)
    FROM p GROUP BY GROUPING SETS ((year), (place_name), (camera_make))
    HAVING coalesce(year, place_name, camera_make) IS NOT NULL
UNION ALL SELECT 'person', n.name, count(*) FROM p,
    jsonb_array_elements_text(CASE WHEN jsonb_typeof(p.extra->'people') = 'array' THEN p.extra->'people'
                              ELSE '[]'::jsonb END) AS n(name) GROUP BY 2
UNION ALL SELECT 'source', l.source, count(DISTINCT l.image_id) FROM l GROUP BY 2
UNION ALL SELECT 'album', l.album, count(DISTINCT l.image_id) FROM l WHERE l.album IS NOT NULL GROUP BY 2
"""


def library_state(conn: psycopg.Connection) -> tuple:
    """Changes whenever a photo is added, removed, named a place or a run ends: what the whole
    library's facet counts depend on (an index-only count, a few ms at 100k photos)."""
    return tuple(conn.execute(
        "SELECT count(*), max(id), count(place_code), (SELECT max(id) FROM ingest_runs), "
        "(SELECT max(finished_at) FROM ingest_runs) FROM images").fetchone())


def facet_counts(conn: psycopg.Connection, filters: Filters,
                 ids: list[int] | None) -> dict[str, list[dict[str, Any]]]:
    """facet -> [{"value", "count", "filter"}], most photos first (years newest first), for the
    photos ``ids`` the filters keep, or every photo they keep."""
    where, params = filters.sql()
    scope = f"SELECT i.id FROM images i WHERE {where}"
    if ids is not None:
        scope += " AND i.id = ANY(%s)"
        params = [*params, ids]
    found: dict[str, list[tuple[str, int]]] = {facet: [] for facet in FACETS}
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        for facet, value, count in conn.execute(_COUNTS.format(scope=scope), params):
            found[facet].append((value, count))
    out = {}
    for facet, values in found.items():
        values.sort(key=(lambda v: (-int(v[0]),)) if facet == "year" else (lambda v: (-v[1], v[0])))
        out[facet] = [{"value": value, "count": count, "filter": filter_params(facet, value)}
                      for value, count in values[:FACET_VALUES]]
    return out


def filter_params(facet: str, value: str) -> dict[str, str]:
    """The filter that keeps the photos of one facet value."""
    if facet == "year":
        return {"taken_from": f"{value}-01-01", "taken_to": f"{value}-12-31"}
    if facet == "camera":
        return {"camera_make": value}
    return {facet: value}

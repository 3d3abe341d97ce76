"""The search service: the one way to search, behind the CLI, the JSON API, the pages and the
tests. A search is a query vector plus filters, answered by plain SQL::

    WHERE <filters> ORDER BY embedding <=> q LIMIT k

Filters alone are a browse: the photos they keep, newest first. Pages are keyset-paginated on
(distance, id), or (taken_at, id) for a browse, from what the cursor carries, so "next page"
neither skips nor repeats a result and needs no server state.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property

import numpy as np
import psycopg

from clipdex.config import Settings
from clipdex.database import Database
from clipdex.search.cursors import Cursor, DateCursor, decode_cursor
from clipdex.search.filters import Filters, check_text
from clipdex.search.plan import newest_ids, ranked_ids
from clipdex.search.query_vector import combine, image_vectors, model_row, text_vectors, upload_vectors
from clipdex.search.request import QuerySpec, SearchRequest
from clipdex.search.results import Page, load_hits

UPLOAD_MAX_PIXELS = 100_000_000   # an example image for a query needs no more
SIMILAR_PAGE = 24


class SearchService:
    """Searches one model's vectors with these settings. ``model`` may be any object with
    encode_texts/encode_images (loaded lazily by default: a search answered from the text cache
    never imports torch); ``model_key`` names the vectors (the configured model's by default)."""

    def __init__(self, settings: Settings, database: Database, *, model=None, model_key: str | None = None,
                 decode_budget=None) -> None:
        from clipdex.model import LazyModel

        self.settings = settings
        self.database = database
        self.model = model if model is not None else LazyModel(settings)
        self._model_key = model_key
        self.decode_budget = decode_budget

    @cached_property
    def model_key(self) -> str:
        """Computed once: for a local-dir: model it fingerprints the weight files."""
        if self._model_key is not None:
            return self._model_key
        from clipdex.model import ModelSpec

        return ModelSpec.from_settings(self.settings).key()

    def search(self, conn: psycopg.Connection, request: SearchRequest) -> Page:
        """One page of results: a search (best match first), a browse (no query: newest first), or
        the page after a cursor of either."""
        model_id, dim = model_row(conn, self.model_key)
        if request.cursor:
            cursor = decode_cursor(request.cursor, dim)
            filters = Filters.parse(cursor.filters)
            if isinstance(cursor, DateCursor):
                return self._browse(conn, model_id, filters, cursor.limit, (cursor.taken_at, cursor.image_id))
            return self._rank(conn, model_id, dim, cursor.vector, filters, cursor.limit,
                              (cursor.distance, cursor.image_id))
        spec = request.spec.check()
        if spec.browse:
            return self._browse(conn, model_id, request.filters, request.limit, None)
        query = self._query_vector(conn, model_id, dim, spec)
        return self._rank(conn, model_id, dim, query, request.filters, request.limit, None)

    def similar(self, conn: psycopg.Connection, image_id: int, limit: int = SIMILAR_PAGE) -> Page:
        """More like an indexed image: the nearest other photos (as psql's similar_to)."""
        return self.search(conn, SearchRequest(QuerySpec(image_ids=[(image_id, 1.0)]),
                                               Filters(exclude=(image_id,)), limit=limit))

    def _rank(self, conn: psycopg.Connection, model_id: int, dim: int, query: np.ndarray, filters: Filters,
              limit: int, after: tuple[float, int] | None) -> Page:
        rows, strategy, _filtered = ranked_ids(conn, model_id, dim, query, filters, limit + 1, after,
                                               iterative=self.database.info.iterative_scan,
                                               ef_search=self.settings.ef_search)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            next_cursor = Cursor(query, filters.to_params(), limit, rows[-1][1], rows[-1][0]).encode()
        return Page(load_hits(conn, rows), next_cursor, strategy)

    def _browse(self, conn: psycopg.Connection, model_id: int, filters: Filters, limit: int,
                after: tuple[datetime | None, int] | None) -> Page:
        rows = newest_ids(conn, model_id, filters, limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            next_cursor = DateCursor(filters.to_params(), limit, rows[-1][1], rows[-1][0]).encode()
        return Page(load_hits(conn, [(image_id, None) for image_id, _ in rows]), next_cursor, "newest")

    def cache_texts(self, conn: psycopg.Connection, texts: list[str]) -> None:
        """Embeds texts into the text cache, so psql can search by them (`clipdex embed-text`)."""
        model_id, dim = model_row(conn, self.model_key)
        for text in texts:
            check_text("text", text)
        text_vectors(conn, self.model, model_id, texts, dim)

    def _query_vector(self, conn: psycopg.Connection, model_id: int, dim: int, spec: QuerySpec) -> np.ndarray:
        parts: list[tuple[np.ndarray, float]] = []
        texts = [t for t, _ in spec.texts] + [t for t, _ in spec.negative_texts]
        if texts:
            weights = [w for _, w in spec.texts] + [-w for _, w in spec.negative_texts]
            parts += list(zip(text_vectors(conn, self.model, model_id, texts, dim), weights))
        if spec.image_ids:
            parts += list(zip(image_vectors(conn, model_id, [i for i, _ in spec.image_ids]),
                              [w for _, w in spec.image_ids]))
        if spec.uploads:
            max_pixels = min(self.settings.max_pixels, UPLOAD_MAX_PIXELS)
            parts += list(zip(upload_vectors(self.model, [d for d, _ in spec.uploads], max_pixels,
                                             self.decode_budget), [w for _, w in spec.uploads]))
        # Rounded to float16 once, here, so every page compares exactly the same vector.
        return combine(parts).astype(np.float16).astype(np.float32)

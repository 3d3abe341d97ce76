"""The search service: the one way to search, behind the CLI, the JSON API, the pages and the
tests. A search is a query vector plus filters, answered by plain SQL::

    WHERE <filters> ORDER BY embedding <=> q LIMIT k

Filters alone are a browse: the photos they keep, newest first. Pages are keyset-paginated on
(distance, id), or (taken_at, id) for a browse, from what the cursor carries, so "next page"
neither skips nor repeats a result and needs no server state.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from functools import cached_property

import numpy as np
import psycopg

from clipdex.config import Settings
from clipdex.database import Database
from clipdex.search.cursors import Cursor, DateCursor, decode_cursor
from clipdex.search.filters import Filters, check_text, holding_words
from clipdex.search.plan import newest_ids, ranked_ids
from clipdex.search.query_vector import combine, image_vectors, model_row, text_vectors, upload_vectors
from clipdex.search.request import QuerySpec, SearchRequest
from clipdex.search.errors import QueryError
from clipdex.search.results import Page, add_snippets, load_hits
from clipdex.search.words import query_words

UPLOAD_MAX_PIXELS = 100_000_000   # an example image for a query needs no more
SIMILAR_PAGE = 24
WORDS_EXCLUDED_MAX = 1000   # photos holding a query's words that a later tier leaves out by id
# The tiers of a hybrid search, in order, and how each names itself in the strategy line.
TIER_WRITTEN, TIER_NAMED, TIER_REST = 0, 1, 2
TIER_NAMES = {TIER_WRITTEN: "written ", TIER_NAMED: "named ", TIER_REST: ""}


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
            after = (cursor.distance, cursor.image_id)
            if cursor.phrases:
                return self._rank_hybrid(conn, model_id, dim, cursor.vector, filters, cursor.limit,
                                         cursor.phrases, cursor.words_only, cursor.tier, after)
            return self._rank(conn, model_id, dim, cursor.vector, filters, cursor.limit, after)
        spec = request.spec.check()
        if spec.browse:
            return self._browse(conn, model_id, request.filters, request.limit, None)
        phrases = ()
        if request.mode != "vector":
            phrases = tuple(dict.fromkeys(t.strip() for t, w in spec.texts if w > 0 and query_words(t)))
            if request.mode == "text" and not phrases:
                raise QueryError("mode=text: give words to look for in the photos (q)", field="mode")
        query = self._query_vector(conn, model_id, dim, spec)
        if phrases:
            return self._rank_hybrid(conn, model_id, dim, query, request.filters, request.limit, phrases,
                                     request.mode == "text", 0, None)
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
        return Page(self._with_snippets(conn, load_hits(conn, rows), filters), next_cursor, strategy)

    @staticmethod
    def _with_snippets(conn: psycopg.Connection, hits: list, filters: Filters) -> list:
        """Under a `text` filter every hit holds the words: say where."""
        if filters.text:
            for hit in hits:
                hit.written = True
            add_snippets(conn, hits, (filters.text,))
        return hits

    def _rank_hybrid(self, conn: psycopg.Connection, model_id: int, dim: int, query: np.ndarray, filters: Filters,
                     limit: int, phrases: tuple[str, ...], words_only: bool, tier: int,
                     after: tuple[float, int] | None) -> Page:
        """Words people type are often words in the photo or about it (a shop name, a flight
        number, a caption, an album "Kyoto 2019"). Three tiers: the photos whose recognised text or
        caption holds one of the query's phrases, then those with it only in an album or file name,
        then (unless ``words_only``) every other photo. Each tier is ranked by the vector and paged
        by (distance, id); the cursor says which tier the page ended in. A fused score (reciprocal
        rank fusion) would let a strong vector match outrank the photo with the very words typed,
        and could not be paged by a key of the row alone (README, "Searching")."""
        anywhere = holding_words(conn, phrases, "all", WORDS_EXCLUDED_MAX + 1)
        if not anywhere:   # no photo holds the words (or no text was read): the plain vector ranking
            return self._rank(conn, model_id, dim, query, filters, limit, after if tier == TIER_REST else None)
        in_photo = holding_words(conn, phrases, "caption", WORDS_EXCLUDED_MAX + 1)
        # A later tier leaves out the photos of the earlier ones by id when they are few (cheap per
        # candidate), else by the same word tests negated.
        def leave_out(ids: list[int], negated: Filters) -> Filters:
            if len(ids) <= WORDS_EXCLUDED_MAX:
                return replace(filters, exclude=tuple(dict.fromkeys(filters.exclude + tuple(ids))))
            return negated
        tiers = [(TIER_WRITTEN, replace(filters, written=phrases), bool(in_photo)),
                 (TIER_NAMED, replace(leave_out(in_photo, replace(filters, unwritten=phrases)), named=phrases),
                  len(anywhere) > WORDS_EXCLUDED_MAX or not set(anywhere) <= set(in_photo)),
                 (TIER_REST, leave_out(anywhere, replace(filters, unnamed=phrases)), not words_only)]
        rows: list[tuple[int, float, int]] = []
        strategies = []
        for this_tier, tier_filters, wanted in tiers:
            if this_tier < tier or len(rows) > limit or not wanted:
                continue
            found, strategy, _ = ranked_ids(conn, model_id, dim, query, tier_filters, limit + 1 - len(rows),
                                            after if this_tier == tier else None,
                                            iterative=self.database.info.iterative_scan,
                                            ef_search=self.settings.ef_search)
            rows += [(image_id, distance, this_tier) for image_id, distance in found]
            strategies.append(TIER_NAMES[this_tier] + strategy)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last_id, last_distance, last_tier = rows[-1]
            next_cursor = Cursor(query, filters.to_params(), limit, last_distance, last_id, phrases, last_tier,
                                 words_only).encode()
        hits = load_hits(conn, [(image_id, distance) for image_id, distance, _ in rows])
        with_words = {image_id for image_id, _, t in rows if t != TIER_REST}
        for hit in hits:
            hit.written = hit.id in with_words
        add_snippets(conn, [h for h in hits if h.written], phrases)
        return Page(hits, next_cursor, ", then ".join(strategies))

    def _browse(self, conn: psycopg.Connection, model_id: int, filters: Filters, limit: int,
                after: tuple[datetime | None, int] | None) -> Page:
        rows = newest_ids(conn, model_id, filters, limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            next_cursor = DateCursor(filters.to_params(), limit, rows[-1][1], rows[-1][0]).encode()
        return Page(self._with_snippets(conn, load_hits(conn, [(image_id, None) for image_id, _ in rows]), filters),
                    next_cursor, "newest")

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

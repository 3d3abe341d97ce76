"""The search service: the one way to search, behind the CLI, the JSON API, the pages and the
tests. A search is a query vector plus filters, answered by plain SQL::

    WHERE <filters> ORDER BY embedding <=> q LIMIT k

Filters alone are a browse: the photos they keep, newest first. Pages are keyset-paginated on
(distance, id), or (taken_at, id) for a browse, from what the cursor carries, so "next page"
neither skips nor repeats a result and needs no server state.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import psycopg

from clipdex.config import Settings
from clipdex.database import Database
from clipdex import model_registry
from clipdex.search.cursors import Cursor, DateCursor, cursor_model, decode_cursor
from clipdex.search.filters import Filters, check_text, holding_words
from clipdex.search.plan import newest_ids, ranked_ids
from clipdex.search.query_vector import combine, image_vectors, text_vectors, upload_vectors
from clipdex.search.request import QuerySpec, SearchRequest
from clipdex.search.errors import QueryError
from clipdex.search.results import Page, add_snippets, load_hits
from clipdex.search.words import query_words

UPLOAD_MAX_PIXELS = 100_000_000   # an example image for a query needs no more
# What to index for queries in other languages when only English-reading models are (README, "Several models side by side").
MULTILINGUAL_SUGGESTION = "xlm-roberta-base-ViT-B-32 --pretrained laion5b_s13b_b90k"
SIMILAR_PAGE = 24
WORDS_EXCLUDED_MAX = 1000   # photos holding a query's words that a later tier leaves out by id
# The tiers of a hybrid search, in order, and how each names itself in the strategy line.
TIER_WRITTEN, TIER_NAMED, TIER_REST = 0, 1, 2
TIER_NAMES = {TIER_WRITTEN: "written ", TIER_NAMED: "named ", TIER_REST: ""}


@dataclass(frozen=True)
class ChosenModel:
    """The model a search runs on: its vectors (key, id, size), what encodes its queries, and a
    note for the user when it is not the one they would expect."""

    key: str
    model_id: int
    dim: int
    encoder: Any
    note: str | None = None


def _model(conn: psycopg.Connection, key: str | None) -> tuple[str, int, int, dict[str, Any]] | None:
    """(key, id, dim, spec) of the model stored as ``key``, or of the default model when None."""
    row = conn.execute("SELECT name, id, dim, spec FROM models WHERE CASE WHEN %(key)s::text IS NULL "
                       "THEN active ELSE name = %(key)s END", {"key": key}).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3] or {})


def not_latin(text: str) -> bool:
    """The text has letters of a script other than Latin (Chinese, Japanese, Cyrillic, …)."""
    return any(ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN") for ch in text)


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
        if request.cursor:
            chosen = self._choose_model(conn, cursor_model(request.cursor), None, from_cursor=True)
            cursor = decode_cursor(request.cursor, chosen.dim)
            filters = Filters.parse(cursor.filters)
            if isinstance(cursor, DateCursor):
                return self._browse(conn, chosen, filters, cursor.limit, (cursor.taken_at, cursor.image_id))
            after = (cursor.distance, cursor.image_id)
            if cursor.phrases:
                return self._rank_hybrid(conn, chosen, cursor.vector, filters, cursor.limit,
                                         cursor.phrases, cursor.words_only, cursor.tier, after)
            return self._rank(conn, chosen, cursor.vector, filters, cursor.limit, after)
        spec = request.spec.check()
        chosen = self._choose_model(conn, request.model, spec)
        if spec.browse:
            return self._browse(conn, chosen, request.filters, request.limit, None)
        phrases = ()
        if request.mode != "vector":
            phrases = tuple(dict.fromkeys(t.strip() for t, w in spec.texts if w > 0 and query_words(t)))
            if request.mode == "text" and not phrases:
                raise QueryError("mode=text: give words to look for in the photos (q)", field="mode")
        query = self._query_vector(conn, chosen, spec)
        if phrases:
            return self._rank_hybrid(conn, chosen, query, request.filters, request.limit, phrases,
                                     request.mode == "text", 0, None)
        return self._rank(conn, chosen, query, request.filters, request.limit, None)

    def _choose_model(self, conn: psycopg.Connection, asked: str | None, spec: QuerySpec | None, *,
                      from_cursor: bool = False) -> ChosenModel:
        """Whose vectors answer: the model asked for (``model=``, or the one a cursor was made
        with); else the library's default (the one psql uses, `clipdex models default`), or the
        configured one before any is; a query in Chinese (or any non-Latin script) goes to a
        multilingual model when the default reads only English and one is indexed. One read of
        the models table in the usual case."""
        note = None
        if asked:
            try:
                row = _model(conn, asked if from_cursor else model_registry.model_named(conn, asked))
            except model_registry.UnknownModel as exc:
                raise QueryError(str(exc), field="model") from None
        elif self._model_key is not None:
            row = _model(conn, self._model_key)
        else:
            row = _model(conn, None) or _model(conn, self.model_key)
            if (row is not None and not row[3].get("multilingual") and spec is not None
                    and any(not_latin(text) for text, _ in spec.texts + spec.negative_texts)):
                reader, note = self._reader_of(conn, row[0])
                row = _model(conn, reader) if reader != row[0] else row
        if row is None:
            missing = asked or self._model_key or self.model_key
            raise QueryError(f"no image is indexed with model {missing} yet: run `clipdex index` first")
        key, model_id, dim, model_spec = row
        return ChosenModel(key, model_id, dim, self._encoder(key, model_spec), note)

    @staticmethod
    def _reader_of(conn: psycopg.Connection, default: str) -> tuple[str, str | None]:
        """The model to read a non-English query with, when the default reads only English, and
        what to tell the user about it."""
        # The first multilingual model indexed (an EXISTS, not a count: this runs for every such query).
        row = conn.execute(
            "SELECT m.name FROM models m WHERE (m.spec->>'multilingual')::boolean "
            "AND EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = m.id) ORDER BY m.id LIMIT 1").fetchone()
        if row is None:
            return default, (f"{default} reads English only; for queries in other languages, index a multilingual "
                             f"model too: clipdex index PATH --model {MULTILINGUAL_SUGGESTION}")
        return row[0], f"a query in another language than English: answered by {row[0]}, which reads it"

    def _encoder(self, key: str, spec: dict[str, Any]):
        """What turns texts and uploads into vectors of model ``key`` (loaded only when used)."""
        if key == self.model_key:
            return self.model
        from clipdex.model import LazyModel

        if not spec.get("name"):
            raise QueryError(f"model {key} cannot be loaded here (its vectors came from elsewhere)", field="model")
        return LazyModel(self.settings.replace(model=spec["name"], pretrained=spec.get("pretrained")))

    def similar(self, conn: psycopg.Connection, image_id: int, limit: int = SIMILAR_PAGE) -> Page:
        """More like an indexed image: the nearest other photos (as psql's similar_to)."""
        return self.search(conn, SearchRequest(QuerySpec(image_ids=[(image_id, 1.0)]),
                                               Filters(exclude=(image_id,)), limit=limit))

    def _rank(self, conn: psycopg.Connection, chosen: ChosenModel, query: np.ndarray, filters: Filters,
              limit: int, after: tuple[float, int] | None) -> Page:
        rows, strategy, _filtered = ranked_ids(conn, chosen.model_id, chosen.dim, query, filters, limit + 1, after,
                                               iterative=self.database.info.iterative_scan,
                                               ef_search=self.settings.ef_search)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            next_cursor = Cursor(query, filters.to_params(), limit, rows[-1][1], rows[-1][0],
                                 model=chosen.key).encode()
        return Page(self._with_snippets(conn, load_hits(conn, rows), filters), next_cursor, strategy,
                    chosen.key, chosen.note)

    @staticmethod
    def _with_snippets(conn: psycopg.Connection, hits: list, filters: Filters) -> list:
        """Under a `text` filter every hit holds the words: say where."""
        if filters.text:
            for hit in hits:
                hit.written = True
            add_snippets(conn, hits, (filters.text,))
        return hits

    def _rank_hybrid(self, conn: psycopg.Connection, chosen: ChosenModel, query: np.ndarray, filters: Filters,
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
            return self._rank(conn, chosen, query, filters, limit, after if tier == TIER_REST else None)
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
            found, strategy, _ = ranked_ids(conn, chosen.model_id, chosen.dim, query, tier_filters, limit + 1 - len(rows),
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
                                 words_only, chosen.key).encode()
        hits = load_hits(conn, [(image_id, distance) for image_id, distance, _ in rows])
        with_words = {image_id for image_id, _, t in rows if t != TIER_REST}
        for hit in hits:
            hit.written = hit.id in with_words
        add_snippets(conn, [h for h in hits if h.written], phrases)
        return Page(hits, next_cursor, ", then ".join(strategies), chosen.key, chosen.note)

    def _browse(self, conn: psycopg.Connection, chosen: ChosenModel, filters: Filters, limit: int,
                after: tuple[datetime | None, int] | None) -> Page:
        rows = newest_ids(conn, chosen.model_id, filters, limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            next_cursor = DateCursor(filters.to_params(), limit, rows[-1][1], rows[-1][0]).encode()
        return Page(self._with_snippets(conn, load_hits(conn, [(image_id, None) for image_id, _ in rows]), filters),
                    next_cursor, "newest", chosen.key)

    def cache_texts(self, conn: psycopg.Connection, texts: list[str]) -> None:
        """Embeds texts into the text cache of the default model, the one psql searches with
        (`clipdex embed-text`)."""
        chosen = self._choose_model(conn, None, None)
        for text in texts:
            check_text("text", text)
        text_vectors(conn, chosen.encoder, chosen.model_id, texts, chosen.dim)

    def _query_vector(self, conn: psycopg.Connection, chosen: ChosenModel, spec: QuerySpec) -> np.ndarray:
        parts: list[tuple[np.ndarray, float]] = []
        texts = [t for t, _ in spec.texts] + [t for t, _ in spec.negative_texts]
        if texts:
            weights = [w for _, w in spec.texts] + [-w for _, w in spec.negative_texts]
            parts += list(zip(text_vectors(conn, chosen.encoder, chosen.model_id, texts, chosen.dim), weights))
        if spec.image_ids:
            parts += list(zip(image_vectors(conn, chosen.model_id, [i for i, _ in spec.image_ids]),
                              [w for _, w in spec.image_ids]))
        if spec.uploads:
            max_pixels = min(self.settings.max_pixels, UPLOAD_MAX_PIXELS)
            parts += list(zip(upload_vectors(chosen.encoder, [d for d, _ in spec.uploads], max_pixels,
                                             self.decode_budget), [w for _, w in spec.uploads]))
        # Rounded to float16 once, here, so every page compares exactly the same vector.
        return combine(parts).astype(np.float16).astype(np.float32)

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
from clipdex.search.facets import facet_counts, library_state
from clipdex.search.filters import Filters, check_text, holding_words, words_in_photo
from clipdex.search.lookalikes import Folded, any_lookalikes, fold_copies
from clipdex.search.matches import CutOff, cut_off, share_kept
from clipdex.search.plan import date_key, dated_ids, image_rows, ranked_ids
from clipdex.search.query_vector import as_halfvec, combine, image_vectors, text_vectors, upload_vectors
from clipdex.search.request import DEFAULT_PAGE, MAX_ID, QuerySpec, SearchRequest
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
# Matches sorted by date: up to this many are gathered from the index and sorted; more are found
# by walking the photos in date order, each tested against the cut-off.
DATE_GATHER_MAX = 3000
FACET_SCOPE = 3000   # matches counted by facet at most (the best by relevance)
NO_ROW_YET = (-1.0, 1)   # a keyset position before every row of a ranking (distances are >= 0)
FOLD_READ_AHEAD = 2      # a page that folds copies reads this many times its size to fill its tiles


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


class UnloadableModel:
    """The encoder of a model whose vectors came from elsewhere (no open_clip name stored): its
    cached query texts still search, anything else to encode is refused."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _refuse(self, *_args, **_kwargs):
        raise QueryError(f"model {self.key} cannot be loaded here (its vectors came from elsewhere); "
                         "only its cached query texts can be searched", field="model")

    encode_texts = encode_images = preprocess = _refuse
    image_size = property(_refuse)


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
        self._whole_library_facets: tuple[tuple, dict] | None = None   # (library state, counts)

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
                after = (cursor.taken_at, cursor.image_id)
                if cursor.vector is None:
                    return self._browse(conn, chosen, filters, cursor.limit, after, cursor.order)
                return self._dated(conn, chosen, cursor.vector, filters, cursor.limit, cursor.phrases, cursor.cut,
                                   cursor.order, after)
            after = (cursor.distance, cursor.image_id)
            if cursor.phrases:
                return self._rank_hybrid(conn, chosen, cursor.vector, filters, cursor.limit,
                                         cursor.phrases, cursor.words_only, cursor.tier, after, cursor.cut)
            return self._rank(conn, chosen, cursor.vector, filters, cursor.limit, after, cursor.cut)
        spec = request.spec.check()
        chosen = self._choose_model(conn, request.model, spec)
        if spec.browse:
            page = self._browse(conn, chosen, request.filters, request.limit, None,
                                "oldest" if request.sort == "oldest" else "newest")
            if request.facets:
                page.facets = self._library_facets(conn, chosen, request.filters)
            return page
        page, query, phrases, cut = self._first_page(conn, chosen, spec, request)
        if request.facets:
            if cut is None:   # every photo matches
                page.facets = self._library_facets(conn, chosen, request.filters)
            else:
                ids, complete = self._matching_ids(conn, chosen, query, request.filters, cut, phrases, FACET_SCOPE)
                page.facets, page.facets_partial = facet_counts(conn, request.filters, ids), not complete
        return page

    def _library_facets(self, conn: psycopg.Connection, chosen: ChosenModel, filters: Filters) -> dict:
        """Facets of every photo the filters keep; those of the whole library are kept until it changes."""
        if filters.active:
            return facet_counts(conn, filters, None)
        state = (chosen.model_id, library_state(conn))
        if self._whole_library_facets is None or self._whole_library_facets[0] != state:
            self._whole_library_facets = (state, facet_counts(conn, filters, None))
        return self._whole_library_facets[1]

    def _first_page(self, conn: psycopg.Connection, chosen: ChosenModel, spec: QuerySpec,
                    request: SearchRequest) -> tuple[Page, np.ndarray, tuple[str, ...], CutOff | None]:
        """The first page of a search, and what its facets need: the query vector, its phrases
        and its cut-off."""
        phrases = ()
        if request.mode != "vector":
            phrases = tuple(dict.fromkeys(t.strip() for t, w in spec.texts if w > 0 and query_words(t)))
            if request.mode == "text" and not phrases:
                raise QueryError("mode=text: give words to look for in the photos (q)", field="mode")
        query = self._query_vector(conn, chosen, spec)
        strictness = self.settings.strictness if request.strictness is None else request.strictness
        cut = cut_off(conn, chosen.model_id, query, strictness)
        if request.mode == "text":   # only the photos holding the words: no vector match
            cut = CutOff(-1.0, 0.0, True)
        if request.sort != "relevance":
            page = self._dated(conn, chosen, query, request.filters, request.limit, phrases, cut, request.sort, None)
        elif phrases:
            page = self._rank_hybrid(conn, chosen, query, request.filters, request.limit, phrases,
                                     request.mode == "text", 0, None, cut)
        else:
            page = self._rank(conn, chosen, query, request.filters, request.limit, None, cut)
        return page, query, phrases, cut

    def _matching_ids(self, conn: psycopg.Connection, chosen: ChosenModel, query: np.ndarray, filters: Filters,
                      cut: CutOff, phrases: tuple[str, ...], cap: int) -> tuple[list[int], bool]:
        """Up to ``cap`` of the photos a search matches that the filters keep: within the cut-off
        (the best first) and holding its words; and whether that is all of them. The index is
        asked for about as many rows as the cut-off counted, with a margin."""
        ids: list[int] = []
        complete = True
        if not cut.nothing:
            pool = min(cap + 1, int(1.5 * cut.matches) + 100)
            found, _, _ = ranked_ids(conn, chosen.model_id, chosen.dim, query, filters, pool, None,
                                     iterative=self.database.info.iterative_scan, ef_search=self.settings.ef_search)
            kept = [image_id for image_id, distance in found if cut.keeps(distance)]
            ids, complete = kept[:cap], len(kept) < pool   # a pool of nothing but matches may hide more
        if phrases:
            where, params = filters.sql()
            words, word_params = words_in_photo(phrases, "all")
            held = [r[0] for r in conn.execute(
                f"SELECT i.id FROM images i WHERE {where} AND {words} AND EXISTS (SELECT 1 FROM embeddings e "
                f"WHERE e.image_id = i.id AND e.model_id = {int(chosen.model_id)}) LIMIT %s",
                [*params, *word_params, cap + 1])]
            ids, complete = ids + held[:cap], complete and len(held) <= cap
        return sorted(set(ids)), complete

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
            return UnloadableModel(key)
        return LazyModel(self.settings.replace(model=spec["name"], pretrained=spec.get("pretrained")))

    def similar(self, conn: psycopg.Connection, image_id: int, limit: int = SIMILAR_PAGE) -> Page:
        """More like an indexed image: the nearest other photos (as psql's similar_to)."""
        # A list of neighbours, nearest first, not a set of matches: no cut-off.
        return self.search(conn, SearchRequest(QuerySpec(image_ids=[(image_id, 1.0)]),
                                               Filters(exclude=(image_id,)), limit=limit, strictness=0.0))

    def _rank(self, conn: psycopg.Connection, chosen: ChosenModel, query: np.ndarray, filters: Filters,
              limit: int, after: tuple[float, int] | None, cut: CutOff | None = None) -> Page:
        folding = self._folding(conn, filters)
        fetch = self._fetch_size(folding, limit)
        found, strategy, _filtered = ranked_ids(conn, chosen.model_id, chosen.dim, query, filters, fetch, after,
                                                iterative=self.database.info.iterative_scan,
                                                ef_search=self.settings.ef_search)
        kept = found if cut is None else [row for row in found if cut.keeps(row[1])]
        folded = fold_copies(conn, chosen.model_id, [image_id for image_id, _ in kept], filters, query,
                             folding=folding)
        rows, more = self._page_rows(kept, limit, folded, len(found) == fetch and len(kept) == len(found))
        next_cursor = weaker = None
        if more:
            next_cursor = Cursor(query, filters.to_params(), limit, rows[-1][1], rows[-1][0],
                                 model=chosen.key, cut=cut).encode()
        elif len(kept) < len(found):   # the cut-off ended the matches: the weaker photos follow
            last = (rows[-1][1], rows[-1][0]) if rows else after or NO_ROW_YET
            weaker = Cursor(query, filters.to_params(), limit, *last, model=chosen.key).encode()
        hits, hidden = self._tiles(conn, rows, folded)
        page = Page(self._with_snippets(conn, hits, filters), next_cursor, strategy,
                    chosen.key, chosen.note, weaker_cursor=weaker, folded=hidden)
        return self._counted(conn, page, cut, filters, complete=after is None and not more)

    @staticmethod
    def _counted(conn: psycopg.Connection, page: Page, cut: CutOff | None, filters: Filters, *,
                 complete: bool, extra: int = 0, exact: bool = True) -> Page:
        """The page says how many photos match: all of them when the first page holds them all,
        else the cut-off's count (times the share of photos the filters keep), plus ``extra``
        photos matched by their words."""
        if cut is None:
            return page
        page.cut_score = None if cut.nothing else 1.0 - cut.distance
        if complete:
            page.matches, page.matches_exact = len(page.hits) + page.folded, True
            return page
        share = share_kept(conn, *filters.sql()) if filters.active else 1.0
        page.matches = int(round(cut.matches * share)) + extra
        page.matches_exact = cut.counted and not filters.active and exact
        return page

    @staticmethod
    def _folding(conn: psycopg.Connection, filters: Filters) -> bool:
        """Whether this page folds copies of a picture into one tile (the filters ask for it and
        the library has copies)."""
        return filters.collapse and filters.lookalikes_of is None and any_lookalikes(conn)

    @staticmethod
    def _fetch_size(folding: bool, limit: int) -> int:
        """Rows to read for a page: one more than it shows, to know whether more follow; more
        when copies of a picture fold into one tile."""
        return (FOLD_READ_AHEAD * limit if folding else limit) + 1

    @staticmethod
    def _page_rows(rows: list[tuple], limit: int, folded: Folded, beyond: bool) -> tuple[list[tuple], bool]:
        """The rows a page covers, in order: up to its ``limit``-th tile (folded copies between
        them are covered too, so the next page starts after them); and whether more follow.
        ``beyond``: rows past these may exist (the read was cut at its size)."""
        shown = 0
        for n, row in enumerate(rows):
            if row[0] in folded.shown:
                shown += 1
                if shown == limit:
                    return rows[:n + 1], n + 1 < len(rows) or beyond
        return rows, beyond

    @staticmethod
    def _tiles(conn: psycopg.Connection, rows: list[tuple[int, float | None]], folded: Folded) -> tuple[list, int]:
        """The hits of a page's (id, distance) rows but the copies folded into another's tile
        (clipdex.search.lookalikes); and how many were."""
        shown = [(image_id, distance) for image_id, distance in rows if image_id in folded.shown]
        hits = load_hits(conn, shown)
        for hit in hits:
            hit.similar = folded.similar.get(hit.id, 0)
        return hits, len(rows) - len(shown)

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
                     after: tuple[float, int] | None, cut: CutOff | None = None) -> Page:
        """Words people type are often words in the photo or about it (a shop name, a flight
        number, a caption, an album "Kyoto 2019"). Three tiers: the photos whose recognised text or
        caption holds one of the query's phrases, then those with it only in an album or file name,
        then (unless ``words_only``) every other photo. Each tier is ranked by the vector and paged
        by (distance, id); the cursor says which tier the page ended in. A fused score (reciprocal
        rank fusion) would let a strong vector match outrank the photo with the very words typed,
        and could not be paged by a key of the row alone (README, "Searching"). A photo holding the
        words is a match whatever its vector; the rest must pass the cut-off."""
        anywhere = holding_words(conn, phrases, "all", WORDS_EXCLUDED_MAX + 1)
        if not anywhere:   # no photo holds the words (or no text was read): the plain vector ranking
            return self._rank(conn, chosen, query, filters, limit, after if tier == TIER_REST else None, cut)
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
        folding = self._folding(conn, filters)
        fetch = self._fetch_size(folding, limit)
        strategies = []
        cut_short = False   # the cut-off ended the rest tier's matches
        for this_tier, tier_filters, wanted in tiers:
            if this_tier < tier or len(rows) >= fetch or not wanted:
                continue
            found, strategy, _ = ranked_ids(conn, chosen.model_id, chosen.dim, query, tier_filters, fetch - len(rows),
                                            after if this_tier == tier else None,
                                            iterative=self.database.info.iterative_scan,
                                            ef_search=self.settings.ef_search)
            if this_tier == TIER_REST and cut is not None:
                kept = [row for row in found if cut.keeps(row[1])]
                cut_short, found = len(kept) < len(found), kept
            rows += [(image_id, distance, this_tier) for image_id, distance in found]
            strategies.append(TIER_NAMES[this_tier] + strategy)
        with_words = frozenset(image_id for image_id, _, t in rows if t != TIER_REST)
        folded = fold_copies(conn, chosen.model_id, [image_id for image_id, _, _ in rows], filters, query,
                             preferred=with_words, folding=folding)
        rows, more = self._page_rows(rows, limit, folded, len(rows) >= fetch and not cut_short)
        next_cursor = weaker = None
        if more:
            last_id, last_distance, last_tier = rows[-1]
            next_cursor = Cursor(query, filters.to_params(), limit, last_distance, last_id, phrases, last_tier,
                                 words_only, chosen.key, cut).encode()
        elif cut_short:   # the weaker photos of the rest tier follow, with no cut-off
            rest = [(distance, image_id) for image_id, distance, t in rows if t == TIER_REST]
            last = rest[-1] if rest else (after if tier == TIER_REST and after else NO_ROW_YET)
            weaker = Cursor(query, filters.to_params(), limit, *last, phrases, TIER_REST, words_only,
                            chosen.key).encode()
        hits, hidden = self._tiles(conn, [(image_id, distance) for image_id, distance, _ in rows], folded)
        for hit in hits:
            hit.written = hit.id in with_words
        add_snippets(conn, [h for h in hits if h.written], phrases)
        page = Page(hits, next_cursor, ", then ".join(strategies), chosen.key, chosen.note, weaker_cursor=weaker,
                    folded=hidden)
        return self._counted(conn, page, cut, filters, complete=after is None and tier == 0 and not more,
                             extra=len(anywhere), exact=len(anywhere) <= WORDS_EXCLUDED_MAX)

    def _browse(self, conn: psycopg.Connection, chosen: ChosenModel, filters: Filters, limit: int,
                after: tuple[datetime | None, int] | None, order: str = "newest") -> Page:
        folding = self._folding(conn, filters)
        fetch = self._fetch_size(folding, limit)
        rows = dated_ids(conn, chosen.model_id, filters, fetch, after, order)
        folded = fold_copies(conn, chosen.model_id, [image_id for image_id, _ in rows], filters, None, order,
                             folding=folding)
        rows, more = self._page_rows(rows, limit, folded, len(rows) == fetch)
        next_cursor = None
        if more and rows:
            next_cursor = DateCursor(filters.to_params(), limit, rows[-1][1], rows[-1][0], order).encode()
        hits, hidden = self._tiles(conn, [(image_id, None) for image_id, _ in rows], folded)
        return Page(self._with_snippets(conn, hits, filters), next_cursor, order, chosen.key, folded=hidden)

    def _dated(self, conn: psycopg.Connection, chosen: ChosenModel, query: np.ndarray, filters: Filters, limit: int,
               phrases: tuple[str, ...], cut: CutOff | None, order: str,
               after: tuple[datetime | None, int] | None) -> Page:
        """A search's matches by date taken (newest or oldest first): the photos within the cut-off
        or holding the query's words. Few matches are gathered from the index and sorted; many are
        found by walking the photos in date order (the taken_at index), each tested against the
        cut-off, which stops after a page. With no cut-off every photo matches: a browse."""
        strategy, counted = order, None
        folding = self._folding(conn, filters)
        fetch = self._fetch_size(folding, limit)
        if cut is None:
            rows = dated_ids(conn, chosen.model_id, filters, fetch, after, order)
        else:
            gathered = self._gather(conn, chosen, query, filters, cut, phrases)
            if gathered is not None:
                counted = len(gathered)
                keys = sorted((date_key(order, taken_at, image_id), image_id, taken_at)
                              for image_id, taken_at in gathered.items())
                start = date_key(order, *after) if after is not None else None
                rows = [(image_id, taken_at) for key, image_id, taken_at in keys if start is None or key > start]
                rows = rows[:fetch]
                strategy = f"{order}, gathered"
            else:
                words, word_params = words_in_photo(phrases, "all") if phrases else ("FALSE", [])
                rows = dated_ids(conn, chosen.model_id, filters, fetch, after, order,
                                 also=f"(e.embedding <=> %s::halfvec <= %s OR {words})",
                                 also_params=[as_halfvec(query), cut.distance, *word_params])
                strategy = f"{order}, walked"
        folded = fold_copies(conn, chosen.model_id, [image_id for image_id, _ in rows], filters, query, order,
                             folding=folding)
        rows, more = self._page_rows(rows, limit, folded, len(rows) == fetch)
        next_cursor = None
        if more:
            next_cursor = DateCursor(filters.to_params(), limit, rows[-1][1], rows[-1][0], order, query, cut, phrases,
                                     chosen.key).encode()
        distances = dict(conn.execute(
            f"SELECT image_id, embedding <=> %s::halfvec FROM embeddings WHERE model_id = {int(chosen.model_id)} "
            "AND image_id = ANY(%s)", (as_halfvec(query), [image_id for image_id, _ in rows])))
        hits, hidden = self._tiles(conn, [(image_id, distances.get(image_id)) for image_id, _ in rows], folded)
        if phrases:
            add_snippets(conn, hits, phrases)
            for hit in hits:
                hit.written = hit.snippet is not None
        page = Page(self._with_snippets(conn, hits, filters), next_cursor, strategy, chosen.key, chosen.note,
                    folded=hidden)
        if cut is not None and not cut.nothing:   # the photos past the cut-off, by relevance
            # (none when nothing matched: a search by relevance shows how far off the photos are)
            page.weaker_cursor = Cursor(query, filters.to_params(), limit, cut.distance, MAX_ID,
                                        model=chosen.key).encode()
        if counted is not None:
            page.cut_score = None if cut.nothing else 1.0 - cut.distance
            page.matches, page.matches_exact = counted, True
            return page
        return self._counted(conn, page, cut, filters, complete=after is None and not more)

    def _gather(self, conn: psycopg.Connection, chosen: ChosenModel, query: np.ndarray, filters: Filters,
                cut: CutOff, phrases: tuple[str, ...]) -> dict[int, datetime | None] | None:
        """id -> taken_at of every match the filters keep, when they are few enough to gather;
        None when there are more (the caller walks the photos in date order instead)."""
        if not cut.nothing:
            # Walking reads about a page / (share of photos that match) rows, a distance each;
            # gathering ranks about 1.5 x the matches through the index, which costs more per
            # row: it wins only for matches that are few, or rare in the library. Weighed for
            # the default page whatever this one's size: the two ways count the matches apart
            # (gathered, the photos found; walked, the cut-off's own count), and a search must
            # not say 58 matches on a page of 40 and 59 on a page of 5.
            walked = DEFAULT_PAGE * image_rows(conn) / max(1.0, cut.matches)
            if cut.matches > DATE_GATHER_MAX or 2 * (1.5 * cut.matches + 100) > walked:
                return None
        ids, complete = self._matching_ids(conn, chosen, query, filters, cut, phrases, DATE_GATHER_MAX)
        if not complete:
            return None
        return dict(conn.execute("SELECT id, taken_at FROM images WHERE id = ANY(%s)", (ids,)).fetchall())

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

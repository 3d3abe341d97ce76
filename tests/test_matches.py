"""Which photos match a query: the cut-off calibrated against the library (clipdex.search.matches,
migration 0010), matches by date, the weaker photos past the cut-off, the count; through the
search service, the JSON API, the CLI and psql.

The library has planted matches (bench/planted.py): text-like query vectors sit in the text
cache under a name ("planted 3"), as a searched text's vector would, so every surface searches
exactly that vector without a model."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import psycopg
import pytest

from bench.planted import cache_query, f1, load_planted
from tests.conftest import run_cli
from tests.test_browser import browser  # noqa: F401  (the module's Playwright browser fixture)


@pytest.fixture(scope="module")
def planted(pg_url, template_url, tmp_path_factory):
    from clipdex.config import Settings
    from clipdex.database import open_database
    from clipdex.search.words import compact, text_words
    from tests.conftest import fresh_database

    settings = Settings(home=tmp_path_factory.mktemp("planted") / "home",
                        database_url=fresh_database(pg_url, "planted"), device="cpu", ocr=False)
    db = open_database(settings)
    with db.connect(autocommit=True) as conn:
        data, queries = load_planted(conn, 4000, 512, seed=3, sizes=(5, 40, 300), tightness=(0.6, 0.8), empty=2)
        # A photo with words read in it, and a query of those words whose vector answers nothing.
        conn.execute("INSERT INTO image_texts (image_id, engine, text, lines, words, compact) "
                     "VALUES (%s, 'test', %s, '[]', array_to_tsvector(%s::text[]), %s)",
                     (int(data.ids[-1]), "Flight MU5137", text_words("Flight MU5137"), compact("Flight MU5137")))
        cache_query(conn, data.model_id, "MU5137", queries[-1].vector)
        # Ties and unknown dates among the 40 tight matches (query 3): pages by date must neither
        # repeat nor skip them.
        rows = [int(data.ids[r]) for r in queries[3].relevant]
        conn.execute("UPDATE images SET taken_at = %s WHERE id = ANY(%s)",
                     (datetime(2021, 5, 1, tzinfo=timezone.utc), rows[:15]))
        conn.execute("UPDATE images SET taken_at = NULL WHERE id = ANY(%s)", (rows[15:22],))
    return settings, db, data, queries


def service(settings, db, **overrides):
    from clipdex.search import SearchService

    return SearchService(settings.replace(**overrides) if overrides else settings, db, model_key="planted")


def search(settings, db, params: dict, **overrides):
    from clipdex.search import SearchRequest

    with db.connect(autocommit=True) as conn:
        return service(settings, db, **overrides).search(conn, SearchRequest.parse(params))


def every_page(settings, db, params: dict, **overrides) -> tuple[list, list]:
    """(the hits of every page, the pages) of a search."""
    from clipdex.search import SearchRequest

    pages = [search(settings, db, params, **overrides)]
    with db.connect(autocommit=True) as conn:
        while pages[-1].next_cursor:
            pages.append(service(settings, db, **overrides).search(conn, SearchRequest(cursor=pages[-1].next_cursor)))
    return [hit for page in pages for hit in page.hits], pages


def distances(data, query) -> np.ndarray:
    return 1 - data.vectors @ query.vector


def test_the_matches_are_the_planted_photos_and_beat_any_fixed_threshold(planted):
    settings, db, data, queries = planted
    ours, row_of = [], {int(i): r for r, i in enumerate(data.ids)}
    for n, query in enumerate(queries):
        hits, pages = every_page(settings, db, {"q": [f"planted {n}"], "mode": ["vector"], "limit": ["200"]})
        matched = {row_of[h.id] for h in hits}
        # The pages hold exactly the photos within the cut-off (by an exact scan), best first.
        cut = 1 - pages[0].cut_score if pages[0].cut_score is not None else -1
        with db.connect(autocommit=True) as conn:
            within = {row_of[r[0]] for r in conn.execute(
                "SELECT image_id FROM embeddings WHERE model_id = %s AND embedding <=> %s::halfvec <= %s",
                (data.model_id, query.vector.tolist(), cut))}
        assert matched == within
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        score, precision, recall = f1(matched, set(query.relevant.tolist()))
        ours.append(score)
        if query.tightness == 0.8:   # (a loose set overlaps the background: no cut-off can split it cleanly)
            assert precision >= 0.6 and recall >= 0.9, (query.size, query.tightness, precision, recall)
        if not query.size:
            assert len(matched) <= 2, "a query nothing answers matches next to nothing"
        # The count: exact when the page says so, else near.
        assert pages[0].matches is not None
        if pages[0].matches_exact:
            assert pages[0].matches == len(matched)
        else:
            assert abs(pages[0].matches - len(matched)) <= max(10, 0.3 * len(matched))
    # The best single cosine threshold, chosen knowing every answer, does worse on average.
    scores = [distances(data, q) for q in queries]
    fixed = max(np.mean([f1(set(np.nonzero(d <= t)[0].tolist()), set(q.relevant.tolist()))[0]
                         for d, q in zip(scores, queries)]) for t in np.linspace(0.3, 1.2, 181))
    assert np.mean(ours) > fixed + 0.1, (np.mean(ours), fixed)


def test_strictness_moves_the_cut_off_and_zero_keeps_every_photo(planted):
    settings, db, data, queries = planted
    params = {"q": ["planted 4"], "mode": ["vector"], "limit": ["200"]}
    sets = [{h.id for h in every_page(settings, db, {**params, "strictness": [s]})[0]} for s in ("0.25", "0.5", "1")]
    assert sets[0] >= sets[1] >= sets[2] and len(sets[0]) > len(sets[2])
    everything = search(settings, db, {**params, "strictness": ["0"]})
    assert everything.matches is None and everything.next_cursor and everything.weaker_cursor is None
    # CLIPDEX_STRICTNESS is the default a request overrides.
    assert search(settings, db, params, strictness=0.0).matches is None


def test_the_weaker_photos_follow_the_matches_by_relevance(planted):
    settings, db, data, queries = planted
    hits, pages = every_page(settings, db, {"q": ["planted 2"], "mode": ["vector"], "limit": ["50"]})
    assert pages[-1].weaker_cursor and not any(p.weaker_cursor for p in pages[:-1])
    weaker = search(settings, db, {"cursor": [pages[-1].weaker_cursor]})
    cut = 1 - pages[0].cut_score
    assert weaker.hits and all(h.distance > cut for h in weaker.hits)
    assert weaker.hits[0].distance >= hits[-1].distance and not {h.id for h in weaker.hits} & {h.id for h in hits}
    # A query nothing answers: (next to) no match, and the weaker photos right after them.
    empty = next(n for n, q in enumerate(queries) if not q.size)
    page = search(settings, db, {"q": [f"planted {empty}"], "mode": ["vector"], "strictness": ["1"]})
    assert page.matches == len(page.hits) <= 2 and page.weaker_cursor
    after = search(settings, db, {"cursor": [page.weaker_cursor]}).hits
    assert after and not {h.id for h in after} & {h.id for h in page.hits}
    assert all(h.distance > 1 - (page.cut_score if page.cut_score is not None else 2) for h in after)


@pytest.mark.parametrize("gather_max", [3000, 0])   # gathered from the index, or walked in date order
@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_matches_by_date_page_without_repeats_across_equal_times(planted, order, gather_max, monkeypatch):
    import clipdex.search.service as service_module

    monkeypatch.setattr(service_module, "DATE_GATHER_MAX", gather_max)
    settings, db, data, queries = planted
    by_relevance = {h.id for h in every_page(settings, db, {"q": ["planted 3"], "mode": ["vector"],
                                                            "limit": ["200"]})[0]}
    hits, pages = every_page(settings, db, {"q": ["planted 3"], "mode": ["vector"], "sort": [order],
                                            "limit": ["7"]})
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) and set(ids) == by_relevance and len(pages) > 3
    assert all(("gathered" if gather_max else "walked") in p.strategy for p in pages)
    dated = [(h.taken_at, h.id) for h in hits if h.taken_at is not None]
    undated = [h.id for h in hits if h.taken_at is None]
    assert [h.taken_at is None for h in hits] == sorted(h.taken_at is None for h in hits)   # unknown last
    expected = sorted(dated, reverse=order == "newest")
    assert dated == expected and undated == sorted(undated, reverse=order == "newest")
    assert len(undated) >= 5 and sum(1 for t, _ in dated if t == datetime(2021, 5, 1, tzinfo=timezone.utc)) >= 10
    assert all(h.score is not None for h in hits)


def test_psql_lists_the_same_matches_by_date(planted):
    settings, db, data, queries = planted
    hits, _ = every_page(settings, db, {"q": ["planted 3"], "mode": ["vector"], "sort": ["newest"], "limit": ["200"]})
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT id, taken_at FROM matches_text('planted 3', sort => 'newest', k => 1000)").fetchall()
        cut = conn.execute("SELECT * FROM clipdex_match_cut(text_embedding('planted 3'), clipdex_model_id())").fetchone()
        everything = conn.execute("SELECT count(*) FROM matches_text('planted 3', 0, 'relevance', 5000)").fetchone()[0]
        with pytest.raises(psycopg.errors.RaiseException, match="sort"):
            conn.execute("SELECT * FROM matches_text('planted 3', sort => 'sideways')")
    assert [r[0] for r in rows] == [h.id for h in hits]
    assert 1 - cut[0] == pytest.approx(search(settings, db, {"q": ["planted 3"], "mode": ["vector"]}).cut_score)
    assert everything == 4000


def test_the_api_and_the_cli_take_strictness_and_sort(planted):
    from webapp import create_app

    settings, db, data, queries = planted
    client = create_app(settings).test_client()
    body = client.get("/api/search?q=planted 3&mode=vector&sort=oldest&limit=5").get_json()
    assert body["matches"] and body["next_cursor"] and body["strategy"] == "oldest, gathered"
    assert body["weaker_cursor"] and 0 < body["cut_score"] < 1
    for bad in ("strictness=2", "strictness=x", "sort=sideways", "sort=newest&sort=oldest"):
        response = client.get(f"/api/search?q=planted 3&{bad}")
        assert response.status_code == 400 and response.get_json()["error"]
    cursor = client.get(f"/api/search?cursor={body['next_cursor']}&sort=newest")
    assert cursor.status_code == 400
    env = settings.to_environ()
    # a page of 40 finds the matches the same way as a page of 5 (gathered through the index and
    # counted), so it reports as many
    lines = run_cli("search", "planted 3", "--mode", "vector", "--sort", "newest", "--limit", "40", "--json",
                    env=env).stdout.splitlines()
    tail = json.loads(lines[-1])
    assert tail["matches"] == body["matches"] and tail["strategy"] == "newest, gathered"
    shown = run_cli("search", "planted 3", "--mode", "vector", "--limit", "3", env=env)
    assert "photos match" in shown.stderr and "more: clipdex search --cursor" in shown.stderr
    assert run_cli("search", "planted 3", "--strictness", "3", env=env, check=False).returncode == 2


def test_indexing_draws_the_sample_searches_are_calibrated_with(library):
    settings, db, _root = library
    with db.connect(autocommit=True) as conn:
        sampled, images, drawn_at = conn.execute(
            "SELECT (SELECT count(*) FROM score_samples), (SELECT count(*) FROM embeddings), "
            "(SELECT sampled_vectors FROM models)").fetchone()
    assert sampled == images == drawn_at > 0


@pytest.mark.browser
def test_the_page_sorts_matches_by_date_moves_the_cut_off_and_shows_the_weaker_ones(planted, browser, tmp_path):
    from tests.test_browser import new_page, serving

    settings, _db, _data, _queries = planted
    with serving(settings, tmp_path / "serve.log") as base:
        page = new_page(browser, 1200)
        page.goto(base + "/?q=planted 3&sort=newest&limit=200")
        page.wait_for_selector(".tile")
        message = page.locator("#message").inner_text()
        assert "matches" in message and "newest first" in message
        headings = page.locator("#results .day").all_inner_texts()
        assert len(headings) >= 2 and headings[-1] == "Date unknown"
        assert page.locator("select[name=sort]").input_value() == "newest"
        # The weaker photos come after the matches, under their own heading.
        matched = page.locator(".tile").count()
        page.locator("#weaker").click()
        page.wait_for_selector("#results .day:text('Weaker matches')")
        assert page.locator(".tile").count() > matched and page.locator("#weaker").is_hidden()
        # Strictness 0: no cut-off, every photo is listed (by date here), and the address says so.
        page.locator("input[name=strictness]").evaluate(
            "el => { el.value = '0'; el.dispatchEvent(new Event('change', {bubbles: true})); }")
        page.wait_for_function("() => { const m = document.getElementById('message').textContent; "
                               "return m.includes('photos,') && !m.includes('matches'); }")
        assert "strictness=0" in page.url and "200+ photos" in page.locator("#message").inner_text()


def test_a_read_only_role_gets_matches_by_date_and_their_pages(planted):
    from tests.conftest import read_only_role
    from webapp import create_app

    settings, _db, _data, _queries = planted
    with read_only_role(settings.database_url) as reader_url:
        client = create_app(settings.replace(database_url=reader_url)).test_client()
        first = client.get("/api/search?q=planted 3&sort=newest&limit=10").get_json()
        assert first["matches"] and first["next_cursor"] and len(first["results"]) == 10
        rest = client.get("/api/search?cursor=" + first["next_cursor"]).get_json()["results"]
        assert rest and not {h["id"] for h in rest} & {h["id"] for h in first["results"]}
        with psycopg.connect(reader_url) as conn:
            assert conn.execute("SELECT count(*) FROM matches_text('planted 3', sort => 'oldest')").fetchone()[0] \
                == first["matches"]


def test_the_photos_holding_the_words_always_match(planted):
    """A query whose vector matches nothing still matches the photo with its words written in it,
    by relevance and by date."""
    settings, db, data, _queries = planted
    written = int(data.ids[-1])
    for sort in ("relevance", "newest", "oldest"):
        page = search(settings, db, {"q": ["MU5137"], "sort": [sort], "strictness": ["1"]})
        assert written in [h.id for h in page.hits] and page.matches >= 1, sort
        assert next(h for h in page.hits if h.id == written).written
    only = search(settings, db, {"q": ["MU5137"], "mode": ["text"], "sort": ["newest"]})
    assert [h.id for h in only.hits] == [written] and only.matches == 1 and only.hits[0].snippet == "Flight MU5137"

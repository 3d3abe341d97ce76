"""The query core on a real PostgreSQL: filters, exactness under filters, pagination, the index."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector

from bench import synthetic
from clipdex.database import open_database
from clipdex.model import load_model
from clipdex.search import plan
from clipdex.search import (Cursor, Filters, QueryError, QuerySpec, SearchRequest, SearchService, combine,
                            ranked_ids, split_weight)
from indexer.in_process import index_folder
from tests import libraries as L

N = 12_000


@pytest.fixture(scope="module")
def synthetic_db(pg_url, template_url):
    from tests.conftest import fresh_database

    url = fresh_database(pg_url, "search_synthetic")
    with psycopg.connect(url) as conn:
        data = synthetic.create(conn, N, dim=64, seed=7)
        conn.commit()
    return url, data


@pytest.fixture
def sconn(synthetic_db, settings):
    url, data = synthetic_db
    db = open_database(settings.replace(database_url=url))
    with db.connect(autocommit=True) as conn:
        yield db, conn, data


def service_for(db, settings=None, model_key: str | None = None, model=None) -> SearchService:
    """A service that lists every photo by relevance (strictness 0): these tests check the ranking
    itself against an exact sort; the match cut-off has its own (test_matches.py)."""
    from clipdex.config import Settings

    return SearchService(settings or Settings(database_url=db.url, strictness=0.0), db, model=model,
                         model_key=model_key)


def exact_sql(conn, data, query: np.ndarray, where: str, k: int) -> list[int]:
    """The exact answer, written independently of the core: a full sort with index scans off."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(
            f"SELECT e.image_id FROM embeddings e JOIN images i ON i.id = e.image_id "
            f"WHERE e.model_id = %s AND {where} ORDER BY e.embedding <=> %s::halfvec, e.image_id LIMIT %s",
            (data.model_id, HalfVector(query), k)).fetchall()
    return [r[0] for r in rows]


def query_near(data, cluster: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = data.centers[cluster] + rng.normal(scale=0.3 / np.sqrt(data.dim), size=data.dim)  # near a moment
    return (q / np.linalg.norm(q)).astype(np.float16).astype(np.float32)


def literal(conn, filters: Filters) -> str:
    where, params = filters.sql()
    return psycopg.ClientCursor(conn).mogrify(where, params)


@pytest.mark.parametrize("label", list(synthetic.SELECTIVITY_FILTERS))
def test_selective_filters_fill_the_page_with_the_exact_answer(sconn, label):
    """The exact-sort threshold scaled to this table (1 % of rows, as 20,000 is of 2M): 0.5 % and
    0.05 % filters get the exact sort, 5 % and 50 % the index with its iterative scan."""
    db, conn, data = sconn
    filters = Filters.parse(synthetic.SELECTIVITY_FILTERS[label])
    keep = conn.execute(f"SELECT count(*) FROM images i WHERE {literal(conn, filters)}").fetchone()[0]
    k = min(20, keep)
    for cluster in (3, 50, 120):
        query = query_near(data, cluster)
        rows, strategy, _ = ranked_ids(conn, data.model_id, data.dim, query, filters, k, None,
                                       iterative=db.info.iterative_scan, exact_max_rows=N // 100)
        assert len(rows) == k, f"{label}: page of {len(rows)} for {keep} matching rows"
        got = [r[0] for r in rows]
        expected = exact_sql(conn, data, query, literal(conn, filters), k)
        if keep <= N // 100:
            assert strategy == "exact" and got == expected
        else:
            assert strategy == "hnsw" and len(set(got) & set(expected)) >= 0.9 * k
        distances = [r[1] for r in rows]
        assert distances == sorted(distances)


class Recording:
    """A connection that keeps each statement's parameters."""

    def __init__(self, conn):
        self.conn, self.params = conn, []

    def execute(self, query, params=None, **kwargs):
        self.params.append(params or [])
        return self.conn.execute(query, params, **kwargs)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_the_exact_sort_counts_and_ranks_without_sending_the_ids_back_and_forth(sconn):
    """The filtered photos' ids stay in the server (5,000 of them cost 30 ms to fetch and send
    back at a million photos): no statement gets a list of ids, and the count still decides."""
    db, conn, data = sconn
    filters = Filters.parse(synthetic.SELECTIVITY_FILTERS["0.5%"])
    keep = conn.execute(f"SELECT count(*) FROM images i WHERE {literal(conn, filters)}").fetchone()[0]
    query = query_near(data, 31)
    recording = Recording(conn)
    rows, strategy, filtered = ranked_ids(recording, data.model_id, data.dim, query, filters, 10, None,
                                          iterative=db.info.iterative_scan, exact_max_rows=keep)
    assert (strategy, filtered) == ("exact", keep)
    assert [r[0] for r in rows] == exact_sql(conn, data, query, literal(conn, filters), 10)
    assert not [p for params in recording.params for p in params if isinstance(p, list) and len(p) > 1]

    # one photo more than the bound: counted up to the bound + 1, and ranked through the index
    rows, strategy, filtered = ranked_ids(conn, data.model_id, data.dim, query, filters, 10, None,
                                          iterative=db.info.iterative_scan, exact_max_rows=keep - 1)
    assert (strategy, filtered, len(rows)) == ("hnsw", keep, 10)

    nobody = Filters.parse({"camera_make": ["No-such-make"]})
    assert ranked_ids(conn, data.model_id, data.dim, query, nobody, 10, None,
                      iterative=db.info.iterative_scan) == ([], "exact", 0)


def test_a_filter_that_costs_more_than_its_rows_is_not_counted_before_the_index(sconn):
    """A date range crossed with a source joins every file location: finding its photos costs far
    more than their number says (150-190 ms for 22,000 of a million), so a search under it near the
    exact-sort bound goes to the index without counting them first, where an indexed filter of as
    many photos is counted and sorted exactly."""
    db, conn, data = sconn
    if not db.info.iterative_scan:
        pytest.skip("pgvector < 0.8 has no iterative scan")
    costly = Filters.parse(synthetic.SELECTIVITY_FILTERS["combined ~2%"])
    where, params = costly.sql()
    rows, cost = plan.estimated_filter(conn, where, params)
    assert cost / rows > 2 * plan.FILTER_COST_PER_ROW      # (the premise: a join, not a B-tree lookup)
    keep = conn.execute(f"SELECT count(*) FROM images i WHERE {literal(conn, costly)}").fetchone()[0]
    query = query_near(data, 12)
    got, strategy, filtered = ranked_ids(conn, data.model_id, data.dim, query, costly, 10, None,
                                         iterative=True, exact_max_rows=keep)
    assert (strategy, filtered, len(got)) == ("hnsw", None, 10)      # (filtered: None = never counted)
    assert len(set(r[0] for r in got) & set(exact_sql(conn, data, query, literal(conn, costly), 10))) >= 9

    cheap = Filters.parse({"camera_make": ["Make-1"]})
    keep = conn.execute(f"SELECT count(*) FROM images i WHERE {literal(conn, cheap)}").fetchone()[0]
    got, strategy, filtered = ranked_ids(conn, data.model_id, data.dim, query, cheap, 10, None,
                                         iterative=True, exact_max_rows=keep)
    assert (strategy, filtered) == ("exact", keep)


def test_index_path_under_a_selective_filter_still_fills_the_page(sconn):
    """Forced onto the HNSW index (no exact sort), a 0.5 % filter still returns a full page in order:
    the iterative scan keeps going until the LIMIT is met."""
    db, conn, data = sconn
    if not db.info.iterative_scan:
        pytest.skip("pgvector < 0.8 has no iterative scan")
    filters = Filters.parse(synthetic.SELECTIVITY_FILTERS["0.5%"])
    query = query_near(data, 9)
    rows, strategy, _ = ranked_ids(conn, data.model_id, data.dim, query, filters, 20, None,
                                   iterative=True, exact_max_rows=0)
    assert strategy == "hnsw" and len(rows) == 20
    expected = exact_sql(conn, data, query, "i.camera_make = 'Make-0.5'", 20)
    assert len(set(r[0] for r in rows) & set(expected)) >= 18


def test_the_index_is_used_and_the_exact_sort_is_not(sconn):
    db, conn, data = sconn
    query = HalfVector(query_near(data, 4))
    plan = "\n".join(r[0] for r in conn.execute(
        f"EXPLAIN SELECT e.image_id, e.embedding::halfvec({data.dim}) <=> %s::halfvec({data.dim}) AS distance "
        f"FROM embeddings e JOIN images i ON i.id = e.image_id WHERE e.model_id = {data.model_id} "
        f"AND i.format = 'png' ORDER BY distance LIMIT 20", (query,)))
    assert f"embeddings_hnsw_model_{data.model_id}" in plan
    exact_plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT e.image_id FROM embeddings e WHERE e.model_id = %s "
        "ORDER BY e.embedding <=> %s::halfvec LIMIT 20", (data.model_id, query)))
    assert "hnsw" not in exact_plan


def test_whether_the_library_holds_copies_is_asked_of_the_index_not_the_whole_table(sconn):
    """Every search asks it: a scan of the photos would cost 130 ms at a million of them."""
    from clipdex.search.lookalikes import A_COPY, any_lookalikes

    db, conn, data = sconn
    assert not any_lookalikes(conn)
    plan = json.dumps(conn.execute("EXPLAIN (FORMAT JSON) " + A_COPY).fetchone()[0])
    assert "images_look_copies" in plan and "Seq Scan" not in plan
    with conn.transaction(force_rollback=True):
        first, second = (int(i) for i in data.ids[:2])
        conn.execute("UPDATE images SET look_group = %s WHERE id = ANY(%s)", (first, [first, second]))
        assert any_lookalikes(conn)


@pytest.mark.parametrize("params", [{"camera_make": ["Make-1"]}, {"camera_model": ["Model-1"]},
                                    {"format": ["png", "heic"]}, {"orientation": ["portrait"]},
                                    {"min_width": ["3000"]}, {"min_height": ["3000"]},
                                    {"bbox": ["35,139,36,140"]}, {"taken_from": ["2019-01-01"]}])
def test_the_photos_a_filter_keeps_are_read_from_its_index_alone(sconn, params):
    """An exact sort first gathers the ids the filters keep: read from the filter's index alone,
    not one visit to the photos table per photo (at a million photos 11 ms of the 1 % filter's 41)."""
    db, conn, data = sconn
    conn.execute("VACUUM images")   # (the visibility map, as autovacuum keeps it after a load)
    where, values = Filters.parse(params).sql()
    with conn.transaction(force_rollback=True):
        # (a table this small is cheaper to read whole: only the index paths are weighed here)
        conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        scan = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT i.id FROM images i WHERE {where}",
                            values).fetchone()[0][0]["Plan"]
    assert scan["Node Type"] == "Index Only Scan", scan


@pytest.mark.parametrize("filters, exact_max", [({}, 20_000), ({"format": ["png"]}, 20_000),
                                                 ({"format": ["png"]}, 0), ({"camera_make": ["Make-5"]}, 20_000)])
def test_pages_follow_each_other_without_gaps_or_repeats(sconn, filters, exact_max, monkeypatch):
    db, conn, data = sconn
    import clipdex.search.plan as plan

    monkeypatch.setattr(plan, "EXACT_SCAN_MAX_ROWS", exact_max)
    service = service_for(db, model_key=data.model_key)
    page = service.search(conn, SearchRequest(QuerySpec(image_ids=[(int(data.ids[42]), 1.0)]),
                                              Filters.parse(filters), limit=25))
    first_cursor = page.next_cursor
    seen = [h.id for h in page.hits]
    strategies = {page.strategy}
    while page.next_cursor and len(seen) < 150:
        page = service.search(conn, SearchRequest(cursor=page.next_cursor))
        seen += [h.id for h in page.hits]
        strategies.add(page.strategy)
    assert len(seen) == len(set(seen)) == 150
    vector = Cursor.decode(first_cursor, data.dim).vector
    expected = exact_sql(conn, data, vector, literal(conn, Filters.parse(filters)), 150)
    if strategies == {"exact"}:    # few rows: the exact sort, identical
        assert seen == expected and filters and exact_max
    else:                          # the HNSW index: approximate, but no page repeats or skips
        assert strategies == {"hnsw"} and len(set(seen) & set(expected)) >= 0.9 * 150
    assert page.hits[0].score <= 1.0


def test_cursors_that_we_did_not_make_are_refused(sconn):
    db, conn, data = sconn
    service = service_for(db, model_key=data.model_key)

    def search(cursor: str):
        return service.search(conn, SearchRequest(cursor=cursor))

    with pytest.raises(QueryError, match="cursor"):
        search("not-a-cursor")
    wrong_size = Cursor(np.ones(data.dim + 1, np.float32), {}, 10, 0.1, 5).encode()
    with pytest.raises(QueryError, match="not a cursor for this model"):
        search(wrong_size)
    unit = np.ones(data.dim, np.float32) / np.sqrt(data.dim)
    bad_filter = Cursor(unit, {"colour": ["red"]}, 10, 0.1, 5).encode()
    with pytest.raises(QueryError, match="unknown filter"):
        search(bad_filter)
    # Degenerate vectors would rank by nothing and score NaN (invalid JSON): refused.
    for vector in (np.zeros(data.dim, np.float32), unit * 3, np.full(data.dim, np.nan, np.float32)):
        with pytest.raises(QueryError, match="cursor"):
            search(Cursor(vector, {}, 10, 0.1, 5).encode())
    for distance, image_id in ((float("nan"), 5), (7.0, 5), (0.1, 0), (0.1, 2**63)):
        with pytest.raises(QueryError, match="cursor"):
            search(Cursor(unit, {}, 10, distance, image_id).encode())


@pytest.mark.parametrize("params, message", [
    ({"colour": ["red"]}, "unknown filter 'colour'"),
    ({"taken_from": ["last week"]}, "taken_from: expected a date"),
    ({"taken_from": ["2024-01-02"], "taken_to": ["2024-01-01"]}, "taken_from must be before taken_to"),
    ({"source": ["flickr"]}, "source: 'flickr' is not one of"),
    ({"orientation": ["diagonal"]}, "orientation"),
    ({"format": ["psd"]}, "format: 'psd'"),
    ({"min_width": ["-3"]}, "min_width: must be between"),
    ({"has_gps": ["perhaps"]}, "has_gps: expected true or false"),
    ({"bbox": ["1,2,3"]}, "bbox: expected south,west,north,east"),
    ({"bbox": ["10,0,-10,5"]}, "south <= north"),
    ({"favorite": ["yes", "no"]}, "favorite: give it once"),
])
def test_bad_filters_are_explained(params, message):
    with pytest.raises(QueryError, match=message):
        Filters.parse(params)


def test_filter_round_trip_and_dates():
    f = Filters.parse({"taken_from": ["2023-01-01"], "taken_to": ["2023-01-31"], "source": ["qq,iphone"],
                       "format": ["JPG", "heic"], "bbox": ["48.8,170,49,-170"], "path": ["/photos/2019/"]})
    assert f.taken_from == datetime(2023, 1, 1, tzinfo=timezone.utc)
    assert f.taken_to == datetime(2023, 2, 1, tzinfo=timezone.utc)   # the whole last day
    assert f.source == ("qq", "iphone") and f.format == ("jpeg", "heif") and f.path == "photos/2019"
    assert Filters.parse(f.to_params()) == f
    where, params = f.sql()
    assert "(i.longitude >= %s OR i.longitude <= %s)" in where      # the box crosses 180°
    assert params.count("photos") == 1 and "2019%" in params


def test_weights_and_combination():
    assert split_weight("red car^1.5") == ("red car", 1.5)
    assert split_weight("plain") == ("plain", 1.0)
    assert split_weight("x^2^3") == ("x^2", 3.0)
    with pytest.raises(QueryError):
        split_weight("car^0")
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    np.testing.assert_allclose(combine([(a, 1.0), (b, -1.0)]), (a - b) / np.sqrt(2), rtol=1e-6)
    with pytest.raises(QueryError, match="cancel out"):
        combine([(a, 1.0), (a, -1.0)])


def test_text_image_and_negative_text_make_one_vector(settings, db, tmp_path):
    root = L.iphone_library(tmp_path / "lib")
    index_folder(settings, db, root, out=None)
    model = load_model(settings)
    with db.connect(autocommit=True) as conn:
        image_id, stored = conn.execute(
            "SELECT image_id, embedding FROM embeddings ORDER BY image_id LIMIT 1").fetchone()
        spec = QuerySpec(texts=[("a beach", 1.0)], image_ids=[(image_id, 0.5)], negative_texts=[("night", 1.0)])
        page = service_for(db, settings, model=model).search(conn, SearchRequest(spec, limit=3))
        q = Cursor.decode(page.next_cursor, model.dim).vector
        cached = dict(conn.execute("SELECT query, embedding FROM text_embeddings").fetchall())
    assert set(cached) == {"a beach", "night"}       # psql can now use them
    texts = model.encode_texts(["a beach", "night"])
    expected = texts[0] + 0.5 * stored.to_numpy().astype(np.float32) - texts[1]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(q, expected, atol=2e-3)
    assert len(page.hits) == 3 and page.strategy == "hnsw"


def test_a_query_text_has_the_same_vector_the_first_time_and_from_the_cache(settings, db, tmp_path):
    """The first search of a text once used the model's float32 vector and every later one (and
    psql) the halfvec kept in the cache: in a few queries of a hundred one component differed by
    its last bit, and a photo at the cut-off could count as a match once and not the next time
    (a flaky test saw 59 matches against 58)."""
    from clipdex.search.query_vector import text_vectors

    L.write(tmp_path / "lib" / "p.png", L.png(1500))
    index_folder(settings, db, tmp_path / "lib", out=None)
    model = load_model(settings)
    texts = ["a red kite over the sea", "狗", "night"]
    with db.connect(autocommit=True) as conn:
        model_id = conn.execute("SELECT id FROM models").fetchone()[0]
        first = text_vectors(conn, model, model_id, texts, model.dim)
        assert conn.execute("SELECT count(*) FROM text_embeddings").fetchone()[0] == 3
        again = text_vectors(conn, model, model_id, texts, model.dim)
    assert np.array_equal(first, again)
    assert np.allclose(first, model.encode_texts(texts), atol=1e-3)


def test_an_indexed_image_finds_itself_first_through_every_filter(settings, db, tmp_path):
    L.takeout_library(tmp_path / "lib" / "export")
    L.iphone_library(tmp_path / "lib" / "phone")
    L.qq_library(tmp_path / "lib" / "chat")
    index_folder(settings, db, tmp_path / "lib", out=None)
    service = service_for(db, settings)
    with db.connect(autocommit=True) as conn:
        ids = dict(conn.execute("SELECT relpath, image_id FROM locations").fetchall())

        def top(photo: str, **filters) -> list[int]:
            page = service.search(conn, SearchRequest(QuerySpec(image_ids=[(ids[photo], 1.0)]),
                                                      Filters.parse({k: [v] for k, v in filters.items()}), limit=50))
            return [h.id for h in page.hits]

        heic = "phone/DCIM/100APPLE/IMG_0001.HEIC"
        beach = "export/takeout-20240712T112341Z-001/Takeout/Google Photos/Trip to Gdańsk/IMG_1234.JPG"
        gif = "chat/Tencent Files/12345678/Image/Group2/HR/DT/HRDT{B9%A6BQW5REX6ZPJ]A.png"
        assert top(heic)[0] == ids[heic]
        assert top(heic, source="iphone", format="heic", orientation="portrait", camera_model="IPHONE 12",
                   has_gps="true", bbox="-34,151,-33,152", taken_from="2020-12-22", taken_to="2020-12-22")[0] == ids[heic]
        assert ids[heic] not in top(heic, source="takeout")
        assert ids[heic] not in top(heic, taken_from="2020-12-23")
        assert top(beach, album="Trip to Gdańsk", favorite="true", camera_make="google")[0] == ids[beach]
        assert set(top(beach, album="Trip to Gdańsk")) == {ids[beach], ids[beach.replace(
            "001", "002").replace("IMG_1234.JPG", "IMG_9999.jpg")]}
        assert top(gif, path="lib/chat/Tencent Files/12345678/Image/Group2", format="gif")[0] == ids[gif]
        assert top(gif, min_width=64, min_height=48, path="lib/chat/Tencent Files/12345678/Image/Group2")[0] == ids[gif]
        wide = "chat/Tencent Files/12345678/Image/Group2/IY/S2/IYS2F)882TXGVT[JIR[`4BY.jpg"   # 100×70
        assert top(gif, min_width=65, path="lib/chat/Tencent Files/12345678/Image/Group2") == [ids[wide]]
        only_qq = top(gif, source="qq")
        assert len(only_qq) == 8 and all(ids[p] in only_qq for p in ids if p.startswith("chat/"))
        # % and _ in a path prefix are literal characters, not patterns.
        assert top(gif, path="lib/chat/Tencent Files/1234567_") == []


def test_psql_functions_hold_at_the_edges(synthetic_db):
    """Once: similar_to(<missing id>, k) gave k arbitrary rows, similar_to(1, 2147483647) failed with
    integer out of range, and nearest_images() came back short when the index scan hit its bound."""
    from pgvector.psycopg import register_vector

    url, data = synthetic_db
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        assert conn.execute("SELECT count(*) FROM similar_to(987654321, 10)").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM similar_to(%s, 2147483647)",
                            (int(data.ids[0]),)).fetchone()[0] == N - 1
        query = "(SELECT embedding FROM embeddings WHERE image_id = %s)"
        conn.execute("SET hnsw.max_scan_tuples = 100")          # a small scan bound: the index stops early
        conn.execute("SET hnsw.ef_search = 40")
        rows = conn.execute(f"SELECT id FROM nearest_images({query}, 500)", (int(data.ids[4]),)).fetchall()
        assert len(rows) == 500
        assert [r[0] for r in rows] == exact_sql(conn, data, data.vectors[4].astype(np.float32), "true", 500)
        with pytest.raises(psycopg.errors.RaiseException, match="dimensions"):
            conn.execute("SELECT * FROM nearest_images('[1,0,0]'::halfvec, 5)")


def test_a_poisoned_text_cache_is_refused_and_replaced(settings, db, tmp_path):
    """Another role with write access to text_embeddings once made every `q=dog` a 500 with a 3-d
    vector. Cached vectors are checked (size, unit length): psql refuses a bad one with a hint, and a
    search embeds the text again and replaces it."""
    for i in range(6):
        L.write(tmp_path / "lib" / f"p{i}.png", L.png(1400 + i))
    index_folder(settings, db, tmp_path / "lib", out=None)
    model = load_model(settings)
    with db.connect(autocommit=True) as conn:
        model_id = conn.execute("SELECT id FROM models").fetchone()[0]
        for query, vector in (("dog", "[1,0,0]"), ("cat", "[" + ",".join(["0.5"] * model.dim) + "]")):
            conn.execute("INSERT INTO text_embeddings (model_id, query, embedding) VALUES (%s, %s, %s::halfvec)",
                         (model_id, query, vector))
        with pytest.raises(psycopg.errors.RaiseException, match="not a unit vector of the active model"):
            conn.execute("SELECT text_embedding('dog')")
        for text in ("dog", "cat"):
            page = service_for(db, settings, model=model).search(conn, SearchRequest(QuerySpec([(text, 1.0)]), limit=3))
            assert len(page.hits) == 3
            fresh = model.encode_texts([text])[0]
            stored = np.asarray(conn.execute("SELECT text_embedding(%s)", (text,)).fetchone()[0].to_numpy(), np.float32)
            assert stored.shape == (model.dim,) and float(stored @ fresh) > 0.999

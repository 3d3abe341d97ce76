"""Vector cells (clipdex.vector_cells, migration 0015): a model split into k-means cells keeps one
HNSW graph per cell, every vector in the cell of its nearest centre, and a search walks the cells
nearest its query, on a real PostgreSQL."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector

from bench import synthetic
from clipdex import model_registry, vector_cells
from clipdex.database import open_database
from clipdex.search import Filters, QuerySpec, SearchRequest, ranked_ids
from clipdex.vocabulary import CELL_PROBES, CELL_PROBES_SELECTIVE
from tests.test_search import exact_sql, literal, query_near, service_for

N, DIM = 6_000, 64


@pytest.fixture(scope="module")
def celled_db(pg_url, template_url):
    from tests.conftest import fresh_database

    url = fresh_database(pg_url, "search_cells")
    with psycopg.connect(url, autocommit=True) as conn:
        data = synthetic.create(conn, N, dim=DIM, seed=11)
        index = model_registry.split_into_cells(conn, data.model_id)
    return url, data, index


@pytest.fixture
def cconn(celled_db, settings):
    url, data, _ = celled_db
    db = open_database(settings.replace(database_url=url))
    with db.connect(autocommit=True) as conn:
        yield db, conn, data


def unit(rows) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def centres(conn, model_id: int) -> np.ndarray:
    return unit([r[0] for r in conn.execute(
        "SELECT centre::real[] FROM vector_cells WHERE model_id = %s ORDER BY cell", (model_id,))])


def vectors_and_cells(conn, model_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = conn.execute("SELECT image_id, embedding::real[], cell FROM embeddings WHERE model_id = %s "
                        "ORDER BY image_id", (model_id,)).fetchall()
    return (np.array([r[0] for r in rows]), unit([r[1] for r in rows]),
            np.array([-1 if r[2] is None else r[2] for r in rows]))


def nearest_cells(conn, model_id: int, query: np.ndarray, probes: int = CELL_PROBES) -> list[int]:
    """The cells nearest the query, computed here from the centres (not by clipdex)."""
    c = centres(conn, model_id)
    return list(np.argsort(-(c @ (query / np.linalg.norm(query))), kind="stable")[:probes])


def test_every_vector_is_in_the_cell_of_its_nearest_centre(cconn):
    db, conn, data = cconn
    c = centres(conn, data.model_id)
    assert len(c) == vector_cells.CELLS_MIN            # 6,000 vectors: the fewest cells
    _, x, cells = vectors_and_cells(conn, data.model_id)
    assert (cells >= 0).all()
    similarity = x @ c.T
    own = similarity[np.arange(len(x)), cells]
    assert (own >= similarity.max(axis=1) - 1e-3).all()   # (centres are stored as float16)
    assert np.bincount(cells, minlength=len(c)).min() > 0  # no empty cell
    assert conn.execute("SELECT cells_drawn_from FROM models WHERE id = %s", (data.model_id,)).fetchone()[0] == N


def test_each_cell_has_its_own_graph_and_the_one_graph_is_gone(celled_db, cconn):
    _, _, index = celled_db
    db, conn, data = cconn
    names = {r[0]: r[1] for r in conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE %s",
        (f"embeddings_hnsw_model_{data.model_id}%",))}
    assert set(names) == {f"embeddings_hnsw_model_{data.model_id}_cell_{c}" for c in range(vector_cells.CELLS_MIN)}
    for c in range(vector_cells.CELLS_MIN):
        indexdef = names[f"embeddings_hnsw_model_{data.model_id}_cell_{c}"]
        assert "USING hnsw" in indexdef and f"cell = {c}" in indexdef
    assert not conn.execute("SELECT clipdex_vector_index_missing(%s::smallint)", (data.model_id,)).fetchone()[0]
    assert conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (data.model_id,)).fetchone()[0] == index


@pytest.mark.parametrize("model", ["off the data", "text-like"])
def test_a_search_ranks_the_cells_it_walks_exactly(cconn, model):
    """Each query's page is the exact top 50 of the vectors in the cells it walked (the graphs of
    750 vectors miss nothing): its CELL_PROBES nearest, and one more when the score sample showed
    a photo of another cell that belongs on the page; and close to the exact top 10 of the whole
    library."""
    db, conn, data = cconn
    ids, x, cells = vectors_and_cells(conn, data.model_id)
    rng = np.random.default_rng(5)
    gap = synthetic.modality_gap(DIM)
    overlap, elsewhere, widened = [], 0, 0
    for cluster in rng.choice(len(data.centers), 12, replace=False):
        query = query_near(data, int(cluster))
        if model == "text-like":
            query = 0.9 * gap + 0.3 * query
            query = (query / np.linalg.norm(query)).astype(np.float16).astype(np.float32)
        rows, strategy, _ = ranked_ids(conn, data.model_id, data.dim, query, Filters(), 50, None,
                                       iterative=db.info.iterative_scan)
        assert strategy == "hnsw"
        nearest = set(nearest_cells(conn, data.model_id, query))
        walked = nearest | set(cells[np.isin(ids, [r[0] for r in rows])].tolist())
        assert len(walked) <= CELL_PROBES + 1
        widened += len(walked) > CELL_PROBES
        near = np.isin(cells, list(walked))
        scores = x[near] @ query
        in_cells = ids[near][np.lexsort((ids[near], -scores))][:50]
        assert [r[0] for r in rows] == list(in_cells)
        exact = exact_sql(conn, data, query, "TRUE", 50)
        overlap.append(len(set(in_cells[:10]) & set(exact[:10])) / 10)
        elsewhere += len(set(exact) - set(ids[np.isin(cells, list(nearest))]))
    assert np.mean(overlap) >= 0.9
    assert elsewhere > 0   # (other cells held some of the 50 best: the test tells the walks apart)
    assert widened > 0 or model == "text-like"   # (the sample's check widened some walks of this data)


def test_the_score_sample_tells_a_page_that_missed_a_photo(cconn):
    """A photo of the sample closer than the page's last row, and not on it, names its cell;
    a page that holds it, a cursor past it, or a filter that drops it shows nothing wrong."""
    from clipdex.search import lost_walks

    db, conn, data = cconn
    sampled, vector = conn.execute("SELECT image_id, embedding FROM score_samples WHERE model_id = %s "
                                   "ORDER BY image_id LIMIT 1", (data.model_id,)).fetchone()
    query = HalfVector(vector.to_numpy())
    exact = conn.execute("SELECT image_id, embedding <=> %s FROM embeddings WHERE model_id = %s "
                         "ORDER BY 2, 1 LIMIT 11", (query, data.model_id)).fetchall()
    assert exact[0][0] == sampled
    cell = conn.execute("SELECT cell FROM embeddings WHERE image_id = %s", (sampled,)).fetchone()[0]
    sample = lost_walks.SAMPLES.get(conn, data.model_id, vector_cells.route(conn, data.model_id, query).sample_version)
    assert sampled in sample.ids and len(sample.ids) == conn.execute(
        "SELECT count(*) FROM score_samples WHERE model_id = %s", (data.model_id,)).fetchone()[0]

    def missed(where, params, after, rows):
        return lost_walks.missed_photo_cell(conn, data.model_id, sample, query, where, params, after, rows)

    assert missed("TRUE", [], None, exact[1:]) == cell
    assert missed("TRUE", [], None, exact[:10]) is None
    assert missed("TRUE", [], tuple(exact[0][::-1]), exact[1:]) is None
    assert missed("i.id <> %s", [sampled], None, exact[1:]) is None


def test_a_sample_drawn_again_is_read_again(cconn):
    """The process keeps each model's sample; drawing it again (the library grew) changes its
    version, and the next search reads the new one."""
    from clipdex.search import lost_walks

    db, conn, data = cconn
    query = HalfVector(query_near(data, 3))
    before = vector_cells.route(conn, data.model_id, query).sample_version
    kept = lost_walks.SAMPLES.get(conn, data.model_id, before)
    assert lost_walks.SAMPLES.get(conn, data.model_id, before) is kept
    try:
        conn.execute("SELECT clipdex_refresh_sample(%s::smallint, 500)", (data.model_id,))
        after = vector_cells.route(conn, data.model_id, query).sample_version
        assert after != before
        assert len(lost_walks.SAMPLES.get(conn, data.model_id, after).ids) == 500
    finally:
        conn.execute("SELECT clipdex_refresh_sample(%s::smallint, %s)", (data.model_id, len(kept.ids)))


def test_the_search_walks_only_the_graphs_of_the_nearest_cells(cconn):
    db, conn, data = cconn
    query = query_near(data, 17)
    cells = nearest_cells(conn, data.model_id, query, CELL_PROBES_SELECTIVE)
    route = vector_cells.route(conn, data.model_id, HalfVector(query))
    assert (route.cells, route.cell_count) == (cells, vector_cells.CELLS_MIN)
    walk = conn.execute("SELECT clipdex_walk_sql(%s::smallint, %s::halfvec)", (data.model_id, HalfVector(query))).fetchone()[0]
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + walk.replace("$1", "%s").replace("$2", "10"),
                                                (HalfVector(query),) * 4))
    used = {f"embeddings_hnsw_model_{data.model_id}_cell_{c}" for c in cells}
    assert all(name in plan for name in used) and "Seq Scan" not in plan
    assert plan.count(f"embeddings_hnsw_model_{data.model_id}_cell_") == CELL_PROBES_SELECTIVE


class RecordingConnection(psycopg.Connection):
    """Keeps the text of every statement it runs."""

    def execute(self, query, params=None, **kwargs):
        self.statements.append(str(query))
        return super().execute(query, params, **kwargs)


def walked_cells(conn, data, query: np.ndarray, filters: Filters) -> set[int]:
    """The cells whose graphs a search walks (its statements recorded by RecordingConnection)."""
    import re

    conn.statements = []
    ranked_ids(conn, data.model_id, data.dim, query, filters, 10, None, iterative=True, exact_max_rows=0)
    walk = next(sql for sql in conn.statements if "UNION ALL" in sql)
    return {int(x) for x in re.findall(r"e\.cell = (\d+)", walk)}


def test_a_selective_filter_also_walks_the_cells_as_near_as_the_nearest(celled_db):
    """Three cells for a search; under a filter that keeps under 10 % of the photos, also every cell
    whose centre is about as near as the nearest's: a query about as far from five centres (as
    text is from many) walks all five, whose photos it finds in the fifth as often as in the third
    (BENCHMARKS.md §4). A query near one centre walks three."""
    from pgvector.psycopg import register_vector
    from clipdex.search.plan import TIE_RATIO

    url, data, _ = celled_db
    selective = {"5 %": Filters.parse({"camera_make": ["Make-5"]}), "1 %": Filters.parse({"camera_make": ["Make-1"]})}
    with RecordingConnection.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.statements = []
        c = centres(conn, data.model_id)
        tied = c[[0, 2, 3, 5, 6]]
        text = tied.T @ np.linalg.solve(tied @ tied.T, np.ones(len(tied)))   # as near to each of the five
        for query in (query_near(data, 23), (text / np.linalg.norm(text)).astype(np.float16).astype(np.float32)):
            distances = 1 - c @ (query / np.linalg.norm(query))
            order = np.argsort(distances, kind="stable")
            expected = {int(x) for n, x in enumerate(order)
                        if n < CELL_PROBES or distances[x] <= TIE_RATIO * distances[order[0]] - 1e-4}
            plain = {int(x) for x in order[:CELL_PROBES]}
            for filters in (Filters(), Filters.parse({"format": ["png"]})):     # none, 50 %
                assert walked_cells(conn, data, query, filters) == plain
            for label, filters in selective.items():
                assert walked_cells(conn, data, query, filters) == expected, label
        assert expected >= {0, 2, 3, 5, 6} and len(expected) <= 6    # (the premise: the five tie)


def test_pages_over_the_cells_follow_each_other_without_gaps_or_repeats(cconn):
    db, conn, data = cconn
    service = service_for(db, model_key=data.model_key)
    page = service.search(conn, SearchRequest(QuerySpec(image_ids=[(int(data.ids[99]), 1.0)]), Filters(), limit=25))
    assert page.hits[0].id == int(data.ids[99])            # the photo itself first
    scores = [h.score for h in page.hits]
    seen = [h.id for h in page.hits]
    while page.next_cursor and len(seen) < 100:
        page = service.search(conn, SearchRequest(cursor=page.next_cursor))
        seen += [h.id for h in page.hits]
        scores += [h.score for h in page.hits]
    assert len(seen) == len(set(seen)) == 100
    assert scores == sorted(scores, reverse=True)


def test_psql_walks_the_cells_as_the_search_does(cconn):
    db, conn, data = cconn
    query = query_near(data, 33)
    rows, _, _ = ranked_ids(conn, data.model_id, data.dim, query, Filters(), 20, None,
                            iterative=db.info.iterative_scan)
    psql = conn.execute("SELECT id, distance FROM nearest_images_of(%s::smallint, %s::halfvec, 20)",
                        (data.model_id, HalfVector(query))).fetchall()
    assert [r[0] for r in psql] == [r[0] for r in rows]
    assert np.allclose([r[1] for r in psql], [r[1] for r in rows], atol=1e-6)
    cut = conn.execute("SELECT * FROM clipdex_match_cut(%s::halfvec, %s::smallint, 0.5)",
                       (HalfVector(query), data.model_id)).fetchone()
    assert cut is not None and cut[1] >= 1   # the moment's photos match


def test_a_filter_the_nearest_cells_cannot_fill_is_answered_exactly(cconn):
    """On the index path, the nearest cells hold fewer of a rare camera's photos than a page:
    the search does not stop short, it sorts exactly all the photos the filter keeps."""
    db, conn, data = cconn
    filters = Filters.parse(synthetic.SELECTIVITY_FILTERS["0.5%"])
    query = query_near(data, 60)
    kept = {r[0] for r in conn.execute(f"SELECT i.id FROM images i WHERE {literal(conn, filters)}")}
    ids, _, cells = vectors_and_cells(conn, data.model_id)
    in_near = np.isin(cells, nearest_cells(conn, data.model_id, query)) & np.isin(ids, list(kept))
    k = int(in_near.sum()) + 5
    assert k <= len(kept)
    rows, strategy, _ = ranked_ids(conn, data.model_id, data.dim, query, filters, k, None,
                                   iterative=db.info.iterative_scan, exact_max_rows=0)
    assert strategy == "exact"
    assert [r[0] for r in rows] == exact_sql(conn, data, query, literal(conn, filters), k)


def test_a_vector_written_after_the_split_goes_to_its_cell_and_is_found(cconn):
    db, conn, data = cconn
    rng = np.random.default_rng(3)
    fresh = rng.normal(size=(3, DIM))
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    with conn.transaction(force_rollback=True):
        added = synthetic.create(conn, 3, seed=99, model_key=data.model_key, build_index=False, vectors=fresh)
        c = centres(conn, data.model_id)
        for image_id, vector in zip(added.ids, fresh.astype(np.float16).astype(np.float32)):
            cell = conn.execute("SELECT cell FROM embeddings WHERE image_id = %s", (int(image_id),)).fetchone()[0]
            assert cell == int(np.argmax(c @ vector))
            rows, strategy, _ = ranked_ids(conn, data.model_id, data.dim, vector, Filters(), 5, None,
                                           iterative=db.info.iterative_scan)
            assert strategy == "hnsw" and rows[0][0] == int(image_id)


def test_a_model_loses_its_cells_graphs_only_until_the_next_command(pg_url, template_url, settings):
    """After a bulk load dropped them (and died), the next command builds every cell's graph
    again, with the same centres; a library that has doubled since gets new ones."""
    from tests.conftest import fresh_database

    url = fresh_database(pg_url, "cells_repair")
    with psycopg.connect(url, autocommit=True) as conn:
        data = synthetic.create(conn, 1_500, dim=DIM, seed=12)
        model_registry.drop_vector_index(conn, data.model_id)
        model_registry.build_vector_index(conn, data.model_id, cells_from=1_000)   # the end of a bulk load
        before = centres(conn, data.model_id)
        assert len(before) == vector_cells.CELLS_MIN
        model_registry.drop_vector_index(conn, data.model_id)
        assert conn.execute("SELECT clipdex_vector_index_missing(%s::smallint)", (data.model_id,)).fetchone()[0]
    open_database(settings.replace(database_url=url, cells_from=1_000))   # the next command
    with psycopg.connect(url, autocommit=True) as conn:
        assert not conn.execute("SELECT clipdex_vector_index_missing(%s::smallint)", (data.model_id,)).fetchone()[0]
        assert np.array_equal(centres(conn, data.model_id), before)
        synthetic.create(conn, 1_600, dim=DIM, seed=13, model_key=data.model_key, build_index=False)
        model_registry.drop_vector_index(conn, data.model_id)
        model_registry.build_vector_index(conn, data.model_id, cells_from=1_000)
        assert conn.execute("SELECT cells_drawn_from FROM models WHERE id = %s", (data.model_id,)).fetchone()[0] == 3_100
        assert not np.array_equal(centres(conn, data.model_id), before)
        assert conn.execute("SELECT count(*) FROM embeddings WHERE cell IS NULL").fetchone()[0] == 0


def test_a_model_with_its_one_graph_keeps_it_until_asked(pg_url, template_url):
    """Splitting a model whose graph is in place would insert every vector into it again: the
    build leaves such a model alone, whatever its size."""
    from tests.conftest import fresh_database

    url = fresh_database(pg_url, "cells_kept")
    with psycopg.connect(url, autocommit=True) as conn:
        data = synthetic.create(conn, 1_200, dim=DIM, seed=14)
        assert model_registry.build_vector_index(conn, data.model_id, cells_from=1_000) == \
            f"embeddings_hnsw_model_{data.model_id}"
        assert conn.execute("SELECT count(*) FROM vector_cells").fetchone()[0] == 0


def test_the_downgrade_gives_a_split_model_its_one_graph_back(pg_url, template_url):
    from clipdex import database
    from tests.conftest import fresh_database

    url = fresh_database(pg_url, "cells_downgrade")
    with psycopg.connect(url, autocommit=True) as conn:
        data = synthetic.create(conn, 1_000, dim=DIM, seed=15)
        model_registry.split_into_cells(conn, data.model_id)
    database.downgrade(url, "0014")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"embeddings_hnsw_model_{data.model_id}",)).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%%_cell_%%'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM nearest_images_of(%s::smallint, %s::text::halfvec, 5)",
                            (data.model_id, str(data.centers[0].tolist()))).fetchone()[0] == 5
    database.upgrade(url)


def test_a_bulk_load_past_cells_from_ends_with_its_model_in_cells(settings, db, tmp_path):
    """Through the indexer: a model past CLIPDEX_CELLS_FROM with its one graph is told how to
    split it; a bulk load ends with cells and a graph per cell; its photos find themselves;
    `clipdex db index --cells` splits it again."""
    from indexer.in_process import index_folder
    from tests import libraries as L
    from tests.conftest import run_cli

    bulk = settings.replace(defer_index_files=5, cells_from=2)
    for i in range(3):
        L.write(tmp_path / "lib" / "first" / f"{i}.png", L.png(690 + i))
    assert not index_folder(bulk, db, tmp_path / "lib", out=None).plan.defer_index   # 3 files: one graph
    assert "`clipdex db index --cells` splits it" in run_cli("models", env=bulk.to_environ()).stdout
    for i in range(12):
        L.write(tmp_path / "lib" / f"{i}.png", L.png(700 + i))
    run = index_folder(bulk, db, tmp_path / "lib", out=None)
    assert run.plan.defer_index
    with db.connect(autocommit=True) as conn:
        model_id = conn.execute("SELECT id FROM models").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM vector_cells").fetchone()[0] == vector_cells.CELLS_MIN
        assert conn.execute("SELECT count(*) FROM embeddings WHERE cell IS NULL").fetchone()[0] == 0
        assert not conn.execute("SELECT clipdex_vector_index_missing(%s::smallint)", (model_id,)).fetchone()[0]
        image_id = conn.execute("SELECT id FROM images ORDER BY id LIMIT 1").fetchone()[0]
    first = json.loads(run_cli("search", "--like", str(image_id), "--strictness", "0", "--json",
                               env=bulk.to_environ()).stdout.splitlines()[0])
    assert first["id"] == image_id
    out = run_cli("db", "index", "--cells", env=bulk.to_environ()).stdout
    assert f"embeddings_hnsw_model_{model_id}_cell_* ({vector_cells.CELLS_MIN} cells) built in" in out
    listed = json.loads(run_cli("models", "--json", env=bulk.to_environ()).stdout.splitlines()[0])
    assert listed["cells"] == vector_cells.CELLS_MIN and listed["images"] == 15

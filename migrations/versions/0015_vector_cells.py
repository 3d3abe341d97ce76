"""Vector cells: a model with many vectors keeps one HNSW graph per k-means cell of its vectors
instead of one graph for all, and a search walks the graphs of the cells nearest the query.

At a million photos one graph loses queries whose walk enters the wrong region (recall@10
0.91-0.97 at ef_search 1000, pgvector's ceiling) and takes 12-41 ms; sixteen cells of about
62,500 vectors, searched four at a time, gave recall@10 1.00 unfiltered at p50 10-12 ms and
0.95-0.99 under filters, and build faster (BENCHMARKS.md §4). A cell is a column of the vectors, so
psql keeps plain SQL: ``WHERE model_id = 3 AND cell = 5 ORDER BY embedding::halfvec(512) <=> q``
walks that cell's graph (partial index ``embeddings_hnsw_model_3_cell_5``).

- ``vector_cells``: each model's cell centres (unit vectors), drawn by clipdex when the model's
  index is built with enough vectors (``clipdex.vector_cells``).
- ``embeddings.cell``: the nearest centre, set by a trigger on every insert (NULL while the model
  has no cells); clipdex sets it for the vectors there when it draws the centres.
- ``clipdex_cells_near(model, q, n)``: the n cells nearest q; ``clipdex_walk_sql(model, q)``: the
  SQL of a walk through the model's index, which ``nearest_images_of`` and ``clipdex_match_cut``
  now run.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

CELL_PROBES = 4   # cells a psql walk takes (clipdex.vocabulary.CELL_PROBES_SELECTIVE)
SCAN_BOUND = 200_000   # hnsw.max_scan_tuples (clipdex.vocabulary.MAX_SCAN_TUPLES)

UPGRADE = r"""
ALTER TABLE models ADD COLUMN cells_drawn_from bigint;   -- vectors the model had when its cells were drawn
ALTER TABLE embeddings ADD COLUMN cell smallint;

CREATE TABLE vector_cells (
    model_id  smallint NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    cell      smallint NOT NULL,
    centre    halfvec NOT NULL,
    PRIMARY KEY (model_id, cell)
);

-- The cell of a model's vector: its nearest centre; NULL while the model has no cells.
CREATE FUNCTION clipdex_cell_of(model smallint, v halfvec) RETURNS smallint
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT c.cell FROM vector_cells c WHERE c.model_id = model ORDER BY c.centre <=> v, c.cell LIMIT 1
$$;

CREATE FUNCTION clipdex_assign_cell() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.cell := clipdex_cell_of(NEW.model_id, NEW.embedding);
    RETURN NEW;
END
$$;

CREATE TRIGGER embeddings_cell BEFORE INSERT OR UPDATE OF embedding, model_id ON embeddings
    FOR EACH ROW EXECUTE FUNCTION clipdex_assign_cell();

-- The n cells of a model nearest q, nearest first (empty while the model has no cells).
CREATE FUNCTION clipdex_cells_near(model smallint, q halfvec, n integer DEFAULT {probes}) RETURNS smallint[]
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ARRAY(SELECT c.cell FROM vector_cells c WHERE c.model_id = model ORDER BY c.centre <=> q, c.cell LIMIT n)
$$;

-- The SQL of a walk through a model's HNSW index: (image_id, distance) of the $2 vectors nearest
-- $1, nearest first; the graphs of the cells nearest q, or the one graph of a model without cells.
-- Each cell is read only as far as the merge needs (its LIMIT, the scan bound, is what makes the
-- planner walk its index lazily).
CREATE FUNCTION clipdex_walk_sql(model smallint, q halfvec, probes integer DEFAULT {probes}) RETURNS text
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    d        integer := (SELECT m.dim FROM models m WHERE m.id = model);
    distance text := format('e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)', d);
    cells    smallint[] := clipdex_cells_near(model, q, probes);
BEGIN
    IF cardinality(cells) = 0 THEN
        RETURN format('SELECT e.image_id, %s AS distance FROM embeddings e WHERE e.model_id = %s '
                      'ORDER BY distance, e.image_id LIMIT $2', distance, model);
    END IF;
    RETURN 'SELECT u.image_id, u.distance FROM (' || (
        SELECT string_agg(format('(SELECT e.image_id, %s AS distance FROM embeddings e WHERE e.model_id = %s '
                                 'AND e.cell = %s ORDER BY distance LIMIT {scan_bound})', distance, model, c),
                          ' UNION ALL ')
        FROM unnest(cells) c) || ') u ORDER BY u.distance, u.image_id LIMIT $2';
END
$$;

-- Whether a model lacks (part of) its HNSW index.
CREATE FUNCTION clipdex_vector_index_missing(p_model smallint) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM vector_cells v WHERE v.model_id = p_model)
        THEN EXISTS (SELECT 1 FROM vector_cells v WHERE v.model_id = p_model
                     AND to_regclass(format('embeddings_hnsw_model_%s_cell_%s', p_model, v.cell)) IS NULL)
        ELSE to_regclass(format('embeddings_hnsw_model_%s', p_model)) IS NULL END
$$;

-- One HNSW graph over the vectors the predicate keeps, as 0001 built them (m 16, ef_construction
-- 128: its comment says why).
CREATE FUNCTION clipdex_build_graph(name text, d integer, predicate text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON embeddings USING hnsw ((embedding::halfvec(%s)) '
                   'halfvec_cosine_ops) WITH (m = 16, ef_construction = 128) WHERE %s', name, d, predicate);
END
$$;

-- The HNSW index of one model's vectors (idempotent): one graph, or one per cell once the model
-- has cells (the one graph is dropped when the cells' are built). Returns the name, or the cells'
-- name pattern.
CREATE OR REPLACE FUNCTION clipdex_ensure_vector_index(p_model smallint) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    d       integer;
    idx     text := format('embeddings_hnsw_model_%s', p_model);
    cell_list smallint[];
    sizes   bigint[];
    i       integer;
    c       smallint;
    members bigint;
    memory  text := current_setting('maintenance_work_mem');
    cells   integer := 0;
BEGIN
    d := (SELECT m.dim FROM models m WHERE m.id = p_model);
    IF d IS NULL THEN RAISE EXCEPTION 'no model with id %', p_model; END IF;
    PERFORM pg_advisory_xact_lock(hashtext(idx));   -- (workers that start together would race)
    IF clipdex_vector_index_missing(p_model) THEN   -- (the members are counted only then)
        -- (read whole first: CREATE INDEX cannot run while a query over the table is open)
        SELECT array_agg(s.cell ORDER BY s.cell), array_agg(s.members ORDER BY s.cell) INTO cell_list, sizes
        FROM (SELECT v.cell, count(e.image_id) AS members FROM vector_cells v
              LEFT JOIN embeddings e ON e.model_id = p_model AND e.cell = v.cell
              WHERE v.model_id = p_model GROUP BY v.cell) s;
        FOR i IN 1 .. coalesce(cardinality(cell_list), 0) LOOP
            c := cell_list[i];
            members := sizes[i];
            CONTINUE WHEN to_regclass(idx || '_cell_' || c) IS NOT NULL;
            -- A parallel build first allocates all of maintenance_work_mem (seconds for
            -- gigabytes): a cell's graph needs about 2 x (vector + neighbour lists) per member.
            PERFORM set_config('maintenance_work_mem', least(pg_size_bytes(memory) / 1024,
                greatest(65536, members * 2 * (2 * d + 1024) / 1024))::bigint || 'kB', true);
            PERFORM clipdex_build_graph(idx || '_cell_' || c, d, format('model_id = %s AND cell = %s', p_model, c));
        END LOOP;
        PERFORM set_config('maintenance_work_mem', memory, true);
    END IF;
    cells := (SELECT count(*) FROM vector_cells v WHERE v.model_id = p_model);
    IF cells > 0 THEN
        EXECUTE format('DROP INDEX IF EXISTS %I', idx);
        RETURN format('%s_cell_* (%s cells)', idx, cells);
    END IF;
    PERFORM clipdex_build_graph(idx, d, format('model_id = %s', p_model));
    RETURN idx;
END
$$;

-- Drops every HNSW index of a model (its one graph and its cells'); returns how many.
CREATE FUNCTION clipdex_drop_vector_index(p_model smallint) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    idx     text;
    dropped integer := 0;
BEGIN
    FOR idx IN SELECT c.relname FROM pg_class c WHERE c.relkind = 'i'
               AND c.relnamespace = 'public'::regnamespace
               AND c.relname ~ ('^embeddings_hnsw_model_' || p_model || '(_cell_[0-9]+)?$') LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I', idx);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
""".replace("{probes}", str(CELL_PROBES)).replace("{scan_bound}", str(SCAN_BOUND))

# What 0009 and 0010 ran as a walk through the one graph, and the walk through the cells instead.
NEAREST_WALK = """\
    EXECUTE format(
        'SELECT array_agg(s.image_id ORDER BY s.distance, s.image_id), '
        '       array_agg(s.distance ORDER BY s.distance, s.image_id) '
        'FROM (SELECT e.image_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
        '      FROM embeddings e WHERE e.model_id = %2$s ORDER BY distance LIMIT $2) s', d, model)
        INTO ids, dists USING q, k;"""
NEAREST_CELLS = """\
    EXECUTE 'SELECT array_agg(s.image_id ORDER BY s.distance, s.image_id), '
            '       array_agg(s.distance ORDER BY s.distance, s.image_id) '
            'FROM (' || clipdex_walk_sql(model, q) || ') s'
        INTO ids, dists USING q, k;"""
CUT_WALK = """\
    EXECUTE format('SELECT ARRAY(SELECT e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) FROM embeddings e '
                   'WHERE e.model_id = %2$s ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $2)',
                   d, model) INTO tops USING q, top;"""
CUT_CELLS = """\
    EXECUTE 'SELECT ARRAY(SELECT s.distance FROM (' || clipdex_walk_sql(model, q) || ') s ORDER BY s.distance)'
        INTO tops USING q, top;"""


def _sibling(name: str):
    """An earlier migration of this folder, whose SQL this one rewrites (loaded by path: the folder
    is ``migrations.versions`` in a checkout and ``clipdex.migrations.versions`` installed)."""
    spec = importlib.util.spec_from_file_location(f"clipdex_migration_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replaced(sql: str, old: str, new: str) -> str:
    if sql.count(old) != 1:
        raise RuntimeError("migration 0015: the walk to replace is not where it was")
    return sql.replace(old, new)


# The `vectors` view (0002) shows each vector's cell, so a psql query can walk one cell's graph.
VIEW_ONE_GRAPH = """'CREATE VIEW vectors AS SELECT image_id AS id, embedding::halfvec(%s) AS embedding '"""
VIEW_CELLS = """'CREATE VIEW vectors AS SELECT image_id AS id, embedding::halfvec(%s) AS embedding, cell '"""


def _function(sql: str, name: str) -> str:
    """One function's CREATE statement out of an earlier migration's SQL, as CREATE OR REPLACE."""
    start = sql.index(f"CREATE FUNCTION {name}(")
    return sql[start:sql.index("\n$$;\n", start) + 5].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _functions(cells: bool) -> list[str]:
    """nearest_images_of (0009) and clipdex_match_cut (0010), walking the cells or the one graph;
    clipdex_use_model (0002), with or without the cell in its view."""
    side, matches = _sibling("0009_models_side_by_side"), _sibling("0010_matches")
    nearest = side.NEAREST.format(name="nearest_images_of", model_arg="model_id smallint, ", model="model_id")
    cut = _function(matches.UPGRADE, "clipdex_match_cut")
    use = _function(_sibling("0002_search_surface").UPGRADE, "clipdex_use_model")
    if cells:
        nearest, cut = _replaced(nearest, NEAREST_WALK, NEAREST_CELLS), _replaced(cut, CUT_WALK, CUT_CELLS)
        use = _replaced(use, VIEW_ONE_GRAPH, VIEW_CELLS)
    else:
        _replaced(nearest, NEAREST_WALK, NEAREST_WALK), _replaced(cut, CUT_WALK, CUT_WALK)
    return [nearest, cut, use, "SELECT clipdex_use_model(m.id) FROM models m WHERE m.active"]


def upgrade() -> None:
    op.execute(UPGRADE)
    for sql in _functions(cells=True):
        op.execute(sql)


def downgrade() -> None:
    celled = [r[0] for r in op.get_bind().exec_driver_sql(
        "SELECT DISTINCT model_id FROM vector_cells ORDER BY model_id").fetchall()]
    for sql in _functions(cells=False):
        op.execute(sql)
    for model_id in celled:
        op.execute(f"SELECT clipdex_drop_vector_index({int(model_id)}::smallint)")
    op.execute("""
DROP FUNCTION clipdex_drop_vector_index(smallint);
DROP FUNCTION clipdex_build_graph(text, integer, text);
DROP FUNCTION clipdex_vector_index_missing(smallint);
DROP FUNCTION clipdex_walk_sql(smallint, halfvec, integer);
DROP FUNCTION clipdex_cells_near(smallint, halfvec, integer);
DROP TRIGGER embeddings_cell ON embeddings;
DROP FUNCTION clipdex_assign_cell();
DROP FUNCTION clipdex_cell_of(smallint, halfvec);
DROP TABLE vector_cells;
ALTER TABLE embeddings DROP COLUMN cell;
ALTER TABLE models DROP COLUMN cells_drawn_from;
""")
    op.execute(_function(_sibling("0001_initial").UPGRADE, "clipdex_ensure_vector_index"))
    for model_id in celled:   # the one graph again, for the models that had cells
        op.execute(f"SELECT clipdex_ensure_vector_index({int(model_id)}::smallint)")

"""The psql surface: the `photos` and `vectors` views, text_embedding(), search_text(),
similar_to(), nearest_images(), the active model, and database defaults for hnsw settings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The model psql functions and the `vectors` view use; clipdex marks the first model it meets.
ALTER TABLE models ADD COLUMN active boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX models_one_active ON models (active) WHERE active;

-- One row per image, with its best location (an album copy first, then the first seen).
CREATE VIEW photos AS
SELECT i.id, i.taken_at, i.taken_at_source, i.utc_offset_minutes, i.width, i.height, i.orientation,
       i.format, i.byte_size, i.camera_make, i.camera_model, i.latitude, i.longitude, i.favorite,
       i.description, best.source, best.album, best.root, best.relpath AS path,
       (SELECT array_agg(DISTINCT l.source ORDER BY l.source) FROM locations l WHERE l.image_id = i.id) AS sources,
       (SELECT count(*) FROM locations l WHERE l.image_id = i.id) AS copies,
       i.extra, encode(i.sha256, 'hex') AS sha256
FROM images i
LEFT JOIN LATERAL (
    SELECT l.source, l.album, l.root, l.relpath FROM locations l WHERE l.image_id = i.id
    ORDER BY l.album IS NULL, l.first_seen_at, l.id LIMIT 1
) best ON true;

CREATE FUNCTION clipdex_model_id() RETURNS smallint
    LANGUAGE sql STABLE
    AS $$ SELECT id FROM models WHERE active $$;

-- The active model's vectors, typed with its dimension so that ORDER BY embedding <=> … uses its
-- HNSW index; clipdex_use_model() rebuilds it for another model.
CREATE FUNCTION clipdex_use_model(p_model smallint) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    d integer;
BEGIN
    SELECT dim INTO d FROM models WHERE id = p_model;
    IF d IS NULL THEN
        RAISE EXCEPTION 'no model with id %', p_model;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('clipdex_use_model'));
    UPDATE models SET active = false WHERE active AND id <> p_model;
    UPDATE models SET active = true WHERE id = p_model;
    DROP VIEW IF EXISTS vectors;
    EXECUTE format(
        'CREATE VIEW vectors AS SELECT image_id AS id, embedding::halfvec(%s) AS embedding '
        'FROM embeddings WHERE model_id = %s', d, p_model);
END
$$;

-- The cached embedding of a query text for the active model (clipdex embed-text fills the cache).
CREATE FUNCTION text_embedding(query text) RETURNS halfvec
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v halfvec;
BEGIN
    SELECT t.embedding INTO v FROM text_embeddings t
    WHERE t.model_id = clipdex_model_id() AND t.query = clipdex_query_key(text_embedding.query);
    IF v IS NULL THEN
        RAISE EXCEPTION 'no embedding cached for "%"', query
            USING HINT = format('run: clipdex embed-text %L  (searches from the web app fill the cache too)', query);
    END IF;
    RETURN v;
END
$$;

-- Nearest images to a vector, with the iterative index scan so that a page is always full.
CREATE FUNCTION nearest_images(q halfvec, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, distance double precision)
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    d integer := (SELECT dim FROM models WHERE active);
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT e.image_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
        'FROM embeddings e WHERE e.model_id = %2$s ORDER BY distance LIMIT $2',
        d, clipdex_model_id()) USING q, k;
END
$$;

CREATE FUNCTION search_text(query text, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, score double precision, taken_at timestamptz, source text, album text,
                   path text)
    LANGUAGE sql STABLE AS $$
    SELECT n.id, 1 - n.distance, p.taken_at, p.source, p.album, p.path
    FROM nearest_images(text_embedding(query), k) n JOIN photos p ON p.id = n.id
    ORDER BY n.distance, n.id
$$;

CREATE FUNCTION similar_to(image_id bigint, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, score double precision, taken_at timestamptz, source text, album text,
                   path text)
    LANGUAGE sql STABLE AS $$
    SELECT n.id, 1 - n.distance, p.taken_at, p.source, p.album, p.path
    FROM nearest_images((SELECT e.embedding FROM embeddings e
                         WHERE e.image_id = similar_to.image_id AND e.model_id = clipdex_model_id()),
                        k + 1) n
    JOIN photos p ON p.id = n.id
    WHERE n.id <> similar_to.image_id
    ORDER BY n.distance, n.id
    LIMIT k
$$;

-- Search settings for every session on this database (psql included): a wider candidate list,
-- and on pgvector >= 0.8 iterative scans so that a filtered ORDER BY … LIMIT fills its page.
DO $$
DECLARE
    version text := (SELECT extversion FROM pg_extension WHERE extname = 'vector');
BEGIN
    EXECUTE format('ALTER DATABASE %I SET hnsw.ef_search = 200', current_database());
    IF string_to_array(version, '.')::int[] >= ARRAY[0, 8] THEN
        EXECUTE format('ALTER DATABASE %I SET hnsw.iterative_scan = strict_order', current_database());
        EXECUTE format('ALTER DATABASE %I SET hnsw.max_scan_tuples = 100000', current_database());
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not the database owner: set hnsw.iterative_scan per session instead';
END
$$;

-- Models registered before this migration: the first becomes active.
DO $$
DECLARE
    first_model smallint := (SELECT min(id) FROM models);
BEGIN
    IF first_model IS NOT NULL THEN
        PERFORM clipdex_use_model(first_model);
    END IF;
END
$$;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I RESET hnsw.ef_search', current_database());
    EXECUTE format('ALTER DATABASE %I RESET hnsw.iterative_scan', current_database());
    EXECUTE format('ALTER DATABASE %I RESET hnsw.max_scan_tuples', current_database());
EXCEPTION WHEN OTHERS THEN
    NULL;  -- best effort: not the owner, or a pgvector without these settings
END
$$;
DROP FUNCTION IF EXISTS similar_to(bigint, integer);
DROP FUNCTION IF EXISTS search_text(text, integer);
DROP FUNCTION IF EXISTS nearest_images(halfvec, integer);
DROP FUNCTION IF EXISTS text_embedding(text);
DROP VIEW IF EXISTS vectors;
DROP FUNCTION IF EXISTS clipdex_use_model(smallint);
DROP FUNCTION IF EXISTS clipdex_model_id();
DROP VIEW IF EXISTS photos;
DROP INDEX IF EXISTS models_one_active;
ALTER TABLE models DROP COLUMN IF EXISTS active;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)

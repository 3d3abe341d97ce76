"""Hardening after the outside checks: batches that fail for good, file identity for originals,
and psql functions that cannot be fooled by a missing image, a huge k or a bad cached vector.

- ``ingest_batches.state`` may be 'failed' (a task that failed for good: the run still finishes,
  `clipdex status` shows the error) and a failure row may name the stage 'batch' for its files.
- ``locations.inode``: originals are served only from the very file that was indexed.
- ``ingest_failures`` is keyed by the SHA-256 of a path, so a path too long for a B-tree entry
  can still be recorded as a failure.
- ``nearest_images`` returns nothing for a NULL vector (``similar_to(<missing id>)``), sorts
  exactly when the index comes back short (k near the library size) and refuses a vector of the
  wrong size; ``similar_to`` takes any k; ``text_embedding`` refuses a cached vector that is not
  one of the active model's (another role could have written it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE ingest_batches DROP CONSTRAINT ingest_batches_state_check;
ALTER TABLE ingest_batches ADD CONSTRAINT ingest_batches_state_check
    CHECK (state IN ('queued', 'done', 'failed'));
ALTER TABLE ingest_failures DROP CONSTRAINT ingest_failures_stage_check;
ALTER TABLE ingest_failures ADD CONSTRAINT ingest_failures_stage_check
    CHECK (stage IN ('read', 'decode', 'metadata', 'embed', 'write', 'batch'));

-- A failure row must be writable for any path, even one too long for a B-tree entry (2,704
-- bytes): the file's identity in the indexes is the SHA-256 of its name.
ALTER TABLE ingest_failures DROP CONSTRAINT ingest_failures_run_id_root_relpath_bytes_key;
DROP INDEX ingest_failures_path;
CREATE UNIQUE INDEX ingest_failures_file ON ingest_failures (run_id, root, sha256(relpath_bytes));
CREATE INDEX ingest_failures_path ON ingest_failures (root, sha256(relpath_bytes));

ALTER TABLE locations ADD COLUMN inode bigint;
COMMENT ON COLUMN locations.inode IS
    'inode number of the file when it was read: an original is served only from that same file';

CREATE OR REPLACE FUNCTION nearest_images(q halfvec, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, distance double precision)
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    model   smallint := clipdex_model_id();
    d       integer := (SELECT dim FROM models WHERE active);
    rows    real;
    ids     bigint[];
    dists   double precision[];
    exact   text;
BEGIN
    IF q IS NULL OR k IS NULL OR k < 1 OR model IS NULL THEN
        RETURN;   -- no vector (e.g. similar_to a missing image): no neighbours
    END IF;
    IF vector_dims(q) <> d THEN
        RAISE EXCEPTION 'the query vector has % dimensions, the active model''s vectors have %',
            vector_dims(q), d;
    END IF;
    exact := format('SELECT e.image_id, e.embedding <=> $1 AS distance FROM embeddings e '
                    'WHERE e.model_id = %s ORDER BY distance, e.image_id LIMIT $2', model);
    rows := (SELECT reltuples FROM pg_class WHERE oid = 'embeddings'::regclass);
    IF k >= 10000 OR k >= rows / 10 THEN
        -- A large share of the library: one exact sort is complete, and faster than the graph.
        RETURN QUERY EXECUTE exact USING q, k;
        RETURN;
    END IF;
    EXECUTE format(
        'SELECT array_agg(s.image_id ORDER BY s.distance, s.image_id), '
        '       array_agg(s.distance ORDER BY s.distance, s.image_id) '
        'FROM (SELECT e.image_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
        '      FROM embeddings e WHERE e.model_id = %2$s ORDER BY distance LIMIT $2) s', d, model)
        INTO ids, dists USING q, k;
    IF coalesce(cardinality(ids), 0) >= k THEN
        RETURN QUERY SELECT * FROM unnest(ids, dists);
    ELSE
        -- The index scan stopped short (its scan bound, or fewer images than k): sort exactly.
        RETURN QUERY EXECUTE exact USING q, k;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION similar_to(image_id bigint, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, score double precision, taken_at timestamptz, source text, album text,
                   path text)
    LANGUAGE sql STABLE AS $$
    SELECT n.id, 1 - n.distance, p.taken_at, p.source, p.album, p.path
    FROM nearest_images((SELECT e.embedding FROM embeddings e
                         WHERE e.image_id = similar_to.image_id AND e.model_id = clipdex_model_id()),
                        least(k, 2147483646) + 1) n
    JOIN photos p ON p.id = n.id
    WHERE n.id <> similar_to.image_id
    ORDER BY n.distance, n.id
    LIMIT k
$$;

CREATE OR REPLACE FUNCTION text_embedding(query text) RETURNS halfvec
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    v halfvec;
    d integer := (SELECT dim FROM models WHERE active);
BEGIN
    SELECT t.embedding INTO v FROM text_embeddings t
    WHERE t.model_id = clipdex_model_id() AND t.query = clipdex_query_key(text_embedding.query);
    IF v IS NULL THEN
        RAISE EXCEPTION 'no embedding cached for "%"', query
            USING HINT = format('run: clipdex embed-text %L  (searches from the web app fill the cache too)', query);
    END IF;
    IF vector_dims(v) <> d OR abs(l2_norm(v) - 1) > 0.01 THEN
        RAISE EXCEPTION 'the cached embedding of "%" is not a unit vector of the active model', query
            USING HINT = format('run: clipdex embed-text %L  (it replaces the cached vector)', query);
    END IF;
    RETURN v;
END
$$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION text_embedding(query text) RETURNS halfvec
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

CREATE OR REPLACE FUNCTION similar_to(image_id bigint, k integer DEFAULT 20)
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

CREATE OR REPLACE FUNCTION nearest_images(q halfvec, k integer DEFAULT 20)
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

ALTER TABLE locations DROP COLUMN inode;
DROP INDEX ingest_failures_path;
DROP INDEX ingest_failures_file;
DELETE FROM ingest_failures WHERE length(root) + length(relpath_bytes) > 2000;
ALTER TABLE ingest_failures ADD CONSTRAINT ingest_failures_run_id_root_relpath_bytes_key
    UNIQUE (run_id, root, relpath_bytes);
CREATE INDEX ingest_failures_path ON ingest_failures (root, relpath_bytes);
DELETE FROM ingest_failures WHERE stage = 'batch';
ALTER TABLE ingest_failures DROP CONSTRAINT ingest_failures_stage_check;
ALTER TABLE ingest_failures ADD CONSTRAINT ingest_failures_stage_check
    CHECK (stage IN ('read', 'decode', 'metadata', 'embed', 'write'));
UPDATE ingest_batches SET state = 'queued' WHERE state = 'failed';
ALTER TABLE ingest_batches DROP CONSTRAINT ingest_batches_state_check;
ALTER TABLE ingest_batches ADD CONSTRAINT ingest_batches_state_check CHECK (state IN ('queued', 'done'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)

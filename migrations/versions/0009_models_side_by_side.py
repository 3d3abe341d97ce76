"""Several models side by side in psql: the searches take a model's name as a last argument
(``search_text('海边的日落', 20, 'xlm-roberta-base-ViT-B-32')``), by its key or its open_clip name,
and search that model's vectors with that model's cached query vectors; without it they use the
default model as before. nearest_images() becomes nearest_images_of() for the default model.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The nearest images of a model: an exact sort when k is a large share of the library or the index
# scan stops short, else the model's HNSW index (as 0004's nearest_images, for any model).
NEAREST = r"""
CREATE OR REPLACE FUNCTION {name}({model_arg}q halfvec, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, distance double precision)
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    model   smallint := {model};
    d       integer := (SELECT dim FROM models WHERE models.id = model);
    rows    real;
    ids     bigint[];
    dists   double precision[];
    exact   text;
BEGIN
    IF q IS NULL OR k IS NULL OR k < 1 OR model IS NULL THEN
        RETURN;   -- no vector (e.g. similar_to a missing image): no neighbours
    END IF;
    IF vector_dims(q) <> d THEN
        RAISE EXCEPTION 'the query vector has % dimensions, the model''s vectors have %', vector_dims(q), d;
    END IF;
    exact := format('SELECT e.image_id, e.embedding <=> $1 AS distance FROM embeddings e '
                    'WHERE e.model_id = %s ORDER BY distance, e.image_id LIMIT $2', model);
    rows := (SELECT reltuples FROM pg_class WHERE oid = 'embeddings'::regclass);
    IF k >= 10000 OR k >= rows / 10 THEN
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
        RETURN QUERY EXECUTE exact USING q, k;
    END IF;
END
$$;
"""

UPGRADE = r"""
-- The model a user names: its key, else its open_clip name (one model, or an error).
CREATE FUNCTION clipdex_model_named(model text) RETURNS smallint
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    found smallint[] := ARRAY(SELECT m.id FROM models m WHERE m.name = model);
BEGIN
    IF cardinality(found) = 0 THEN
        found := ARRAY(SELECT m.id FROM models m WHERE m.spec->>'name' = model);
    END IF;
    IF cardinality(found) <> 1 THEN
        RAISE EXCEPTION 'no single model named "%"', model
            USING HINT = 'SELECT name, spec->>''name'' FROM models;  (clipdex models lists them)';
    END IF;
    RETURN found[1];
END
$$;

CREATE FUNCTION text_embedding(query text, model text) RETURNS halfvec
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    wanted smallint := clipdex_model_named(model);
    v halfvec;
BEGIN
    SELECT t.embedding INTO v FROM text_embeddings t
    WHERE t.model_id = wanted AND t.query = clipdex_query_key(text_embedding.query);
    IF v IS NULL OR vector_dims(v) <> (SELECT dim FROM models m WHERE m.id = wanted)
       OR abs(l2_norm(v) - 1) > 0.01 THEN
        RAISE EXCEPTION 'no embedding of "%" cached for model %', query, model
            USING HINT = format('search it once with: clipdex search %L --model %L', query, model);
    END IF;
    RETURN v;
END
$$;

CREATE FUNCTION search_text(query text, k integer, model text)
    RETURNS TABLE (id bigint, score double precision, taken_at timestamptz, source text, album text,
                   path text)
    LANGUAGE sql STABLE AS $$
    SELECT n.id, 1 - n.distance, p.taken_at, p.source, p.album, p.path
    FROM nearest_images_of(clipdex_model_named(model), text_embedding(query, model), k) n
    JOIN photos p ON p.id = n.id
    ORDER BY n.distance, n.id
$$;
"""


def upgrade() -> None:
    op.execute(NEAREST.format(name="nearest_images_of", model_arg="model_id smallint, ", model="model_id"))
    op.execute("""
CREATE OR REPLACE FUNCTION nearest_images(q halfvec, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, distance double precision)
    LANGUAGE sql STABLE AS $$ SELECT * FROM nearest_images_of(clipdex_model_id(), q, k) $$;
""")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP FUNCTION search_text(text, integer, text)")
    op.execute("DROP FUNCTION text_embedding(text, text)")
    op.execute("DROP FUNCTION clipdex_model_named(text)")
    op.execute(NEAREST.format(name="nearest_images", model_arg="", model="clipdex_model_id()"))
    op.execute("DROP FUNCTION nearest_images_of(smallint, halfvec, integer)")

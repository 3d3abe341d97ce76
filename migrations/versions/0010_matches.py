"""Which photos *match* a query: a cut-off calibrated against the library itself.

Every model keeps a fixed sample of its vectors (``score_samples``: the 2,000 with the smallest
hash of their image id, so the sample is stable and grows with the library). A query's scores
over that sample are how it scores the library at large: their median and spread (MAD). The
cut-off is then the lowest score at which the photos above it are, by that background, at most a
share alpha there by chance (a false discovery rate): the background is expected to put
``N · P(Z > (s − median) / spread)`` photos above a score s, and the query's own top scores (from
the HNSW index: the top 200) and the sample's count say how many are there. ``strictness`` sets alpha
(10^(−2·strictness): 0.5 gives 0.1, 1 gives 0.01); 0 keeps every photo.

psql: ``clipdex_match_cut(q, model, strictness)`` gives the cut-off distance and the number of
matches; ``matches(q, …)`` and ``matches_text('words', …)`` list them by relevance or by date.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE score_samples (
    model_id  smallint NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    image_id  bigint NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    embedding halfvec NOT NULL,
    PRIMARY KEY (model_id, image_id)
);
COMMENT ON TABLE score_samples IS
    'A fixed sample of each model''s vectors: how a query scores the library at large (the match cut-off)';
ALTER TABLE models ADD COLUMN sampled_vectors bigint;
COMMENT ON COLUMN models.sampled_vectors IS 'the model''s vectors when its score sample was drawn';

-- Draws the model's sample again: the vectors whose image ids hash lowest, so a photo stays in
-- it while the library grows, and the same library always gives the same sample.
CREATE FUNCTION clipdex_refresh_sample(model smallint, size integer DEFAULT 2000) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    vectors bigint := (SELECT count(*) FROM embeddings e WHERE e.model_id = model);
BEGIN
    -- Two runs of one model finishing together draw it one after the other.
    PERFORM pg_advisory_xact_lock(hashtext('clipdex_refresh_sample'), model);
    DELETE FROM score_samples s WHERE s.model_id = model;
    INSERT INTO score_samples (model_id, image_id, embedding)
    SELECT e.model_id, e.image_id, e.embedding FROM embeddings e WHERE e.model_id = model
    ORDER BY hashint8(e.image_id), e.image_id LIMIT size
    ON CONFLICT DO NOTHING;
    UPDATE models m SET sampled_vectors = vectors WHERE m.id = model;
    RETURN vectors;
END
$$;

-- The sample again once the model's vectors grew or shrank by a tenth since it was drawn.
CREATE FUNCTION clipdex_refresh_sample_if_due(model smallint) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    sampled bigint := (SELECT m.sampled_vectors FROM models m WHERE m.id = model);
    vectors bigint := (SELECT count(*) FROM embeddings e WHERE e.model_id = model);
BEGIN
    IF sampled IS NOT NULL AND vectors BETWEEN sampled * 0.9 AND sampled * 1.1 THEN
        RETURN false;
    END IF;
    PERFORM clipdex_refresh_sample(model);
    RETURN true;
END
$$;

-- P(Z > z) for a standard normal Z: erfc(z/√2)/2, erfc from Numerical Recipes' Chebyshev fit
-- (relative error below 1.2e-7 everywhere, so a far tail keeps its size). Plain expressions, so
-- PostgreSQL inlines them into the cut-off's query (a function with its own FROM cost 20 µs a row).
CREATE FUNCTION clipdex_erfc_fit(x double precision, t double precision) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT t * exp(-x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223
        + t * 0.17087277)))))))))
$$;

CREATE FUNCTION clipdex_normal_sf(z double precision) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN z >= 0
        THEN 0.5 * clipdex_erfc_fit(least(z * 0.7071067811865476, 26), 1 / (1 + 0.5 * least(z * 0.7071067811865476, 26)))
        ELSE 1 - 0.5 * clipdex_erfc_fit(least(-z * 0.7071067811865476, 26), 1 / (1 + 0.5 * least(-z * 0.7071067811865476, 26)))
    END
$$;

-- The match cut-off of query q on a model's vectors: photos at a cosine distance <= distance
-- match (-1 when none does); matches: how many (counted: exactly, from the index's top rows,
-- else an estimate from the sample). No row when strictness <= 0 (no cut-off) or the model has
-- too few sampled vectors to say.
CREATE FUNCTION clipdex_match_cut(q halfvec, model smallint, strictness double precision DEFAULT 0.5,
                                  top integer DEFAULT 200)
    RETURNS TABLE (distance double precision, matches double precision, counted boolean)
    LANGUAGE plpgsql STABLE
    SET hnsw.ef_search = 200 AS $$
DECLARE
    d        integer := (SELECT m.dim FROM models m WHERE m.id = model);
    total    double precision := (SELECT m.sampled_vectors FROM models m WHERE m.id = model);
    alpha    double precision := power(10, -2 * least(strictness, 4));
    dists    double precision[];
    tops     double precision[];
    med      double precision;
    spread   double precision;
    sampled  integer;
    least_z  double precision := 0;   -- no score below this many spreads over the median can pass
    step     double precision := 4;
BEGIN
    IF q IS NULL OR strictness IS NULL OR strictness <= 0 OR d IS NULL THEN
        RETURN;
    END IF;
    IF vector_dims(q) <> d THEN
        RAISE EXCEPTION 'the query vector has % dimensions, the model''s vectors have %', vector_dims(q), d;
    END IF;
    dists := ARRAY(SELECT s.embedding <=> q FROM score_samples s WHERE s.model_id = model);
    sampled := cardinality(dists);
    IF sampled < 20 THEN
        RETURN;
    END IF;
    med := (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(dists) x);
    spread := 1.4826 * (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(x - med)) FROM unnest(dists) x);
    IF NOT spread > 0 THEN
        RETURN;
    END IF;
    -- A match needs total * sf(z) <= alpha * found <= alpha * total, so sf(z) <= alpha: only the
    -- candidates past that z are weighed (bisection on the monotone sf).
    WHILE step > 0.001 LOOP
        IF clipdex_normal_sf(least_z + step) > alpha THEN
            least_z := least_z + step;
        END IF;
        step := step / 2;
    END LOOP;
    -- Distances exactly as the searches compute them, so a photo at the cut-off is in or out alike.
    EXECUTE format('SELECT ARRAY(SELECT e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) FROM embeddings e '
                   'WHERE e.model_id = %2$s ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $2)',
                   d, model) INTO tops USING q, top;
    total := greatest(total, cardinality(tops));
    RETURN QUERY
    WITH ranked AS (
        SELECT u.dist, sum(u.from_top) OVER w AS below_top, sum(1 - u.from_top) OVER w AS below_sample
        FROM (SELECT x AS dist, 1 AS from_top FROM unnest(tops) x
              UNION ALL SELECT x, 0 FROM unnest(dists) x) u
        WINDOW w AS (ORDER BY u.dist ROWS UNBOUNDED PRECEDING)
    ), found AS (
        SELECT r.dist, r.below_top, greatest(r.below_top, total * r.below_sample / sampled) AS n
        FROM ranked r WHERE r.dist <= med - least_z * spread
    ), cut AS (
        SELECT f.dist, f.n, f.below_top >= f.n AND (f.below_top < cardinality(tops) OR cardinality(tops) < top) AS exact
        FROM found f
        WHERE total * clipdex_normal_sf((med - f.dist) / spread) <= alpha * f.n
        ORDER BY f.dist DESC LIMIT 1
    )
    SELECT coalesce(c.dist, -1), coalesce(c.n, 0)::double precision, coalesce(c.exact, true)
    FROM (SELECT 1) one LEFT JOIN cut c ON true;
END
$$;

-- The matches of q on a model's vectors, best first or by date taken ('newest', 'oldest'; photos
-- of unknown date last); every photo when strictness is 0 or the model is not calibrated yet.
CREATE FUNCTION matches(q halfvec, strictness double precision DEFAULT 0.5, sort text DEFAULT 'relevance',
                        k integer DEFAULT 100, model text DEFAULT NULL)
    RETURNS TABLE (id bigint, score double precision, taken_at timestamptz, source text, album text,
                   path text)
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    wanted smallint := CASE WHEN model IS NULL THEN clipdex_model_id() ELSE clipdex_model_named(model) END;
    cut    record;
    pool   integer;
BEGIN
    IF sort NOT IN ('relevance', 'newest', 'oldest') THEN
        RAISE EXCEPTION 'sort: relevance, newest or oldest, not %', sort;
    END IF;
    SELECT * INTO cut FROM clipdex_match_cut(q, wanted, strictness);
    -- The photos to order: the nearest k (relevance), or every match when they are few enough to
    -- collect from the index; else all photos, each tested against the cut-off in date order.
    pool := CASE WHEN sort = 'relevance' THEN k
                 WHEN cut.distance IS NOT NULL AND cut.matches * 1.5 + 100 <= 10000
                 THEN ceil(cut.matches * 1.5)::integer + 100 END;
    IF pool IS NOT NULL THEN
        RETURN QUERY
        SELECT n.id, 1 - n.distance, p.taken_at, p.source, p.album, p.path
        FROM nearest_images_of(wanted, q, pool) n JOIN photos p ON p.id = n.id
        WHERE cut.distance IS NULL OR n.distance <= cut.distance
        ORDER BY CASE WHEN sort = 'relevance' THEN n.distance END,
                 CASE WHEN sort = 'relevance' THEN n.id END,
                 CASE WHEN sort = 'newest' THEN p.taken_at END DESC NULLS LAST,
                 CASE WHEN sort = 'oldest' THEN p.taken_at END ASC NULLS LAST,
                 CASE WHEN sort = 'oldest' THEN n.id END, n.id DESC
        LIMIT k;
    ELSE
        RETURN QUERY
        SELECT p.id, 1 - (e.embedding <=> q), p.taken_at, p.source, p.album, p.path
        FROM photos p JOIN embeddings e ON e.image_id = p.id AND e.model_id = wanted
        WHERE cut.distance IS NULL OR (e.embedding <=> q) <= cut.distance
        ORDER BY CASE WHEN sort = 'newest' THEN p.taken_at END DESC NULLS LAST,
                 CASE WHEN sort = 'oldest' THEN p.taken_at END ASC NULLS LAST,
                 CASE WHEN sort = 'oldest' THEN p.id END, p.id DESC
        LIMIT k;
    END IF;
END
$$;

CREATE FUNCTION matches_text(query text, strictness double precision DEFAULT 0.5,
                             sort text DEFAULT 'relevance', k integer DEFAULT 100, model text DEFAULT NULL)
    RETURNS TABLE (id bigint, score double precision, taken_at timestamptz, source text, album text,
                   path text)
    LANGUAGE sql STABLE AS $$
    SELECT * FROM matches(CASE WHEN model IS NULL THEN text_embedding(query) ELSE text_embedding(query, model) END,
                          strictness, sort, k, model)
$$;

SELECT clipdex_refresh_sample(m.id) FROM models m;
"""

DOWNGRADE = r"""
DROP FUNCTION matches_text(text, double precision, text, integer, text);
DROP FUNCTION matches(halfvec, double precision, text, integer, text);
DROP FUNCTION clipdex_match_cut(halfvec, smallint, double precision, integer);
DROP FUNCTION clipdex_normal_sf(double precision);
DROP FUNCTION clipdex_erfc_fit(double precision, double precision);
DROP FUNCTION clipdex_refresh_sample_if_due(smallint);
DROP FUNCTION clipdex_refresh_sample(smallint, integer);
ALTER TABLE models DROP COLUMN sampled_vectors;
DROP TABLE score_samples;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)

"""Places and people: where a photo was taken as names (town, region, country in English and
Chinese, from the offline GeoNames table; filled by the indexer, see clipdex/places.py), searchable
as words like an album name; and the people a Takeout export names, lower-cased for the `person`
filter. The `photos` view gains `place` and `people`.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PHOTOS = """
CREATE OR REPLACE VIEW photos AS
SELECT i.id, i.taken_at, i.taken_at_source, i.utc_offset_minutes, i.width, i.height, i.orientation,
       i.format, i.byte_size, i.camera_make, i.camera_model, i.latitude, i.longitude, i.favorite,
       i.description, best.source, best.album, best.root, best.relpath AS path,
       (SELECT array_agg(DISTINCT l.source ORDER BY l.source) FROM locations l WHERE l.image_id = i.id) AS sources,
       (SELECT count(*) FROM locations l WHERE l.image_id = i.id) AS copies,
       i.extra, encode(i.sha256, 'hex') AS sha256,
       (SELECT t.text FROM image_texts t WHERE t.image_id = i.id AND t.error IS NULL
        ORDER BY t.created_at DESC LIMIT 1) AS ocr_text{extra}
FROM images i
LEFT JOIN LATERAL (
    SELECT l.source, l.album, l.root, l.relpath FROM locations l WHERE l.image_id = i.id
    ORDER BY l.album IS NULL, l.first_seen_at, l.id LIMIT 1
) best ON true;
"""

PLACE_AND_PEOPLE = """,
       concat_ws(', ', i.place_name, nullif(i.place_region, i.place_name), i.place_country) AS place,
       clipdex_people(i.extra) AS people"""

UPGRADE = """
ALTER TABLE images
    ADD COLUMN place_name text,       -- the nearest town of 1,000 people or more (GeoNames)
    ADD COLUMN place_region text,     -- its first-level region
    ADD COLUMN place_country text,    -- the country's English name
    ADD COLUMN place_code text,       -- ISO 3166 alpha-2; set once the photo's GPS was looked up
    ADD COLUMN place_words tsvector,  -- town, region, country (English and Chinese) as clipdex's lexemes
    ADD COLUMN place_compact text;    -- the same names folded, '|' between them
CREATE INDEX images_place_words ON images USING gin (place_words);
CREATE INDEX images_unplaced ON images (id) WHERE latitude IS NOT NULL AND place_code IS NULL;

-- The people a photo's export names (Takeout's "people"), lower-cased: the person filter's index.
CREATE FUNCTION clipdex_people(extra jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY(SELECT lower(p) FROM jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(extra->'people') = 'array' THEN extra->'people' ELSE '[]'::jsonb END) p)
$$;
CREATE INDEX images_people ON images USING gin (clipdex_people(extra));
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(PHOTOS.format(extra=PLACE_AND_PEOPLE))


def downgrade() -> None:
    op.execute("DROP VIEW photos")
    op.execute(PHOTOS.format(extra=""))
    op.execute("DROP INDEX images_people")
    op.execute("DROP FUNCTION clipdex_people(jsonb)")
    op.execute("ALTER TABLE images DROP COLUMN place_name, DROP COLUMN place_region, DROP COLUMN place_country, "
               "DROP COLUMN place_code, DROP COLUMN place_words, DROP COLUMN place_compact")

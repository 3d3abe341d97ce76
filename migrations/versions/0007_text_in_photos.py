"""Text in photos: what OCR read, per (image, engine), with the lexemes clipdex's own tokenizer made
(clipdex/search/words.py: CJK character pairs, whole Latin words and numbers) in a GIN-indexed
tsvector, and the folded text without spaces for phrase checks. A row with no text records that
the photo was read and holds none; a row with an error, that reading failed (the photo stays
searchable by its vector). Failures of stage 'ocr' in a run's failure list; the photos view gains
the text, and psql gets search_ocr(query, k): the photos whose text holds the phrase, newest first
(characters as typed: the Traditional/Simplified folding of clipdex's own search is Python's).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PHOTOS_VIEW = """
CREATE OR REPLACE VIEW photos AS
SELECT i.id, i.taken_at, i.taken_at_source, i.utc_offset_minutes, i.width, i.height, i.orientation,
       i.format, i.byte_size, i.camera_make, i.camera_model, i.latitude, i.longitude, i.favorite,
       i.description, best.source, best.album, best.root, best.relpath AS path,
       (SELECT array_agg(DISTINCT l.source ORDER BY l.source) FROM locations l WHERE l.image_id = i.id) AS sources,
       (SELECT count(*) FROM locations l WHERE l.image_id = i.id) AS copies,
       i.extra, encode(i.sha256, 'hex') AS sha256{extra}
FROM images i
LEFT JOIN LATERAL (
    SELECT l.source, l.album, l.root, l.relpath FROM locations l WHERE l.image_id = i.id
    ORDER BY l.album IS NULL, l.first_seen_at, l.id LIMIT 1
) best ON true;
"""

OCR_TEXT = """,
       (SELECT t.text FROM image_texts t WHERE t.image_id = i.id AND t.error IS NULL
        ORDER BY t.created_at DESC LIMIT 1) AS ocr_text"""


SEARCH_OCR = r"""
CREATE FUNCTION search_ocr(query text, k integer DEFAULT 20)
    RETURNS TABLE (id bigint, taken_at timestamptz, source text, album text, path text, ocr_text text)
    LANGUAGE sql STABLE AS $$
    SELECT p.id, p.taken_at, p.source, p.album, p.path, t.text
    FROM image_texts t JOIN photos p ON p.id = t.image_id
    WHERE t.error IS NULL
      AND strpos(t.compact, lower(regexp_replace(normalize(query, NFKC), '[[:space:][:punct:]]', '', 'g'))) > 0
    ORDER BY p.taken_at DESC NULLS LAST, p.id DESC
    LIMIT k
$$;
"""


def upgrade() -> None:
    op.execute("""
CREATE TABLE image_texts (
    image_id    bigint NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    engine      text NOT NULL,                   -- e.g. 'rapidocr-onnxruntime 1.4.4 PP-OCRv4'
    text        text NOT NULL DEFAULT '',        -- the lines in reading order, one per line
    lines       jsonb NOT NULL DEFAULT '[]',     -- [{"text", "box": four [x, y] corners, "score"}]
    words       tsvector NOT NULL DEFAULT '',    -- lexemes from clipdex.search.words.text_words
    compact     text NOT NULL DEFAULT '',        -- folded text without spaces or punctuation
    gated       boolean NOT NULL DEFAULT false,  -- the cheap detection pass found no text
    error       text,                            -- why reading failed
    seconds     real,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, engine)
);
CREATE INDEX image_texts_words ON image_texts USING gin (words);
ALTER TABLE ingest_failures DROP CONSTRAINT ingest_failures_stage_check;
ALTER TABLE ingest_failures ADD CONSTRAINT ingest_failures_stage_check
    CHECK (stage IN ('read', 'decode', 'metadata', 'embed', 'write', 'batch', 'ocr'));
""")
    op.execute(PHOTOS_VIEW.format(extra=OCR_TEXT))
    op.execute(SEARCH_OCR)


def downgrade() -> None:
    op.execute("DROP FUNCTION search_ocr(text, integer)")
    op.execute("DROP VIEW photos")
    op.execute(PHOTOS_VIEW.format(extra=""))
    op.execute("""
DELETE FROM ingest_failures WHERE stage = 'ocr';
ALTER TABLE ingest_failures DROP CONSTRAINT ingest_failures_stage_check;
ALTER TABLE ingest_failures ADD CONSTRAINT ingest_failures_stage_check
    CHECK (stage IN ('read', 'decode', 'metadata', 'embed', 'write', 'batch'));
DROP TABLE image_texts;
""")

"""A photo's names are searchable with the same words as the text in it: each file location keeps
the lexemes of its caption (the export's description), its album and its file name, weighted by
field (B, C, D: clipdex.search.words.name_words), in a GIN-indexed tsvector, and the three fields'
compact forms joined by "|" for phrase checks. Locations already stored are filled in here, in
batches, with the image's stored description as the caption. And an index on the run that wrote
a location: the status of a run counts the text read in its photos.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade() -> None:
    from clipdex.search.words import name_words

    op.execute("ALTER TABLE locations ADD COLUMN words tsvector NOT NULL DEFAULT '', "
               "ADD COLUMN words_compact text NOT NULL DEFAULT ''")
    conn = op.get_bind().connection.dbapi_connection   # psycopg: arrays and keyset batches
    last = 0
    while True:
        rows = conn.execute(
            "SELECT l.id, i.description, l.album, l.relpath FROM locations l JOIN images i ON i.id = l.image_id "
            "WHERE l.id > %s ORDER BY l.id LIMIT %s", (last, BATCH)).fetchall()
        if not rows:
            break
        names = [name_words(caption, album, relpath) for _id, caption, album, relpath in rows]
        conn.execute(
            "UPDATE locations l SET words = n.words::tsvector, words_compact = n.compact "
            "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS n(id, words, compact) WHERE l.id = n.id",
            ([r[0] for r in rows], [w for w, _ in names], [c for _, c in names]))
        last = rows[-1][0]
    op.execute("CREATE INDEX locations_words ON locations USING gin (words)")
    op.execute("CREATE INDEX locations_run ON locations (run_id)")


def downgrade() -> None:
    op.execute("DROP INDEX locations_run")
    op.execute("DROP INDEX locations_words")
    op.execute("ALTER TABLE locations DROP COLUMN words, DROP COLUMN words_compact")

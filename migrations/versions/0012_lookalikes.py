"""Look-alikes: the same picture in other bytes (a chat app's recompressed copy, a resize, a
screenshot of the photo, a light crop, a burst). Each image keeps perceptual hashes of its
thumbnail (`look`, 64 bits, and `look_detail`, 256; clipdex/likeness.py) and the id of its
group's first image (`look_group`; its own id when it stands alone). The indexer groups a run's
new images when it finishes (indexer/lookalikes.py): an image joins the group whose first image
is nearest within a few bits of both hashes. A partial index holds the first images' 64-bit
hashes, which grouping reads.

`duplicate_groups` lists every group of two or more, best copy first (a camera's over a chat
app's or a screenshot, then most pixels of the picture, most bytes, taken earliest);
`lookalikes(id)` lists one photo's group.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The copy to keep: a camera's (its EXIF names one) over a chat app's or a screenshot, then the
# most pixels of the picture itself (a screenshot's bars do not count), the most bytes, the earliest.
BEST_FIRST = ("i.camera_make IS NULL, i.width::bigint * i.height * coalesce(i.picture_share, 1) DESC, "
              "i.byte_size DESC, i.taken_at NULLS LAST, i.id")

UPGRADE = f"""
ALTER TABLE images
    ADD COLUMN look bit(64),        -- perceptual hash of the thumbnail; NULL: not yet, or a blank picture
    ADD COLUMN look_detail bytea,   -- a finer one, 256 bits, that confirms a match
    ADD COLUMN look_group bigint,   -- the first image of its group (its own id alone); NULL: not grouped yet
    ADD COLUMN picture_share real;  -- of the frame that is picture, bars trimmed; NULL: not yet looked at
CREATE INDEX images_ungrouped ON images (id) WHERE look_group IS NULL;
CREATE INDEX images_look_group ON images (look_group);
CREATE INDEX images_look_copies ON images (look_group) WHERE look_group <> id;   -- members beside the first
CREATE INDEX images_look_founders ON images (id) INCLUDE (look) WHERE look_group = id;

CREATE VIEW duplicate_groups AS
SELECT i.look_group AS group_id,
       count(*) AS copies,
       (array_agg(i.id ORDER BY {BEST_FIRST}))[1] AS best_id,
       array_agg(i.id ORDER BY {BEST_FIRST}) AS image_ids,
       (sum(i.byte_size) - max(i.byte_size))::bigint AS bytes_beside_best
FROM images i
WHERE i.look_group IS NOT NULL
GROUP BY i.look_group
HAVING count(*) > 1;

-- Every photo of one photo's group, best copy first: SELECT * FROM lookalikes(42);
CREATE FUNCTION lookalikes(image_id bigint) RETURNS SETOF photos
    LANGUAGE sql STABLE AS $$
    SELECT p.* FROM photos p JOIN images i ON i.id = p.id
    WHERE i.look_group = (SELECT g.look_group FROM images g WHERE g.id = lookalikes.image_id)
    ORDER BY {BEST_FIRST}
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP FUNCTION lookalikes(bigint)")
    op.execute("DROP VIEW duplicate_groups")
    op.execute("DROP INDEX images_look_founders")
    op.execute("DROP INDEX images_look_copies")
    op.execute("DROP INDEX images_look_group")
    op.execute("DROP INDEX images_ungrouped")
    op.execute("ALTER TABLE images DROP COLUMN picture_share, DROP COLUMN look_group, DROP COLUMN look_detail, "
               "DROP COLUMN look")

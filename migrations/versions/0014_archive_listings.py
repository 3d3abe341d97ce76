"""Tar parts' listings: a .tgz Takeout part can be listed only by inflating all of it, so the
producer keeps what one pass found (its members, and the bytes of its small JSON members: the
sidecars and album files workers read) and lists the part again only when it changes.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE TABLE archive_listings (
    root           text NOT NULL,
    relpath_bytes  bytea NOT NULL,          -- the part, relative to its root
    size           bigint NOT NULL,         -- the part as it was listed: a change lists it again
    mtime_ns       bigint NOT NULL,
    inode          bigint NOT NULL,
    members        bytea NOT NULL,          -- zlib: (name, data offset, size, mtime) of each member
    texts          bytea NOT NULL,          -- zlib: (name, bytes) of each JSON member up to 256 KiB
    damage         text,                    -- a part cut short: where the listing stopped
    listed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (root, relpath_bytes)
);
""")


def downgrade() -> None:
    op.execute("DROP TABLE archive_listings")

"""Browsing newest first: one index in the order the photos are shown, (taken_at DESC NULLS LAST,
id DESC), which also serves taken_from/taken_to ranges (it replaces images_taken_at). And runs
count the files that failed in an earlier run and have not changed since (not tried again).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX images_newest ON images (taken_at DESC NULLS LAST, id DESC)")
    op.execute("DROP INDEX images_taken_at")
    op.execute("ALTER TABLE ingest_sources ADD COLUMN files_failed_before bigint NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE ingest_sources DROP COLUMN files_failed_before")
    op.execute("CREATE INDEX images_taken_at ON images (taken_at)")
    op.execute("DROP INDEX images_newest")

"""Runs count the files that were indexed before and are gone from the folder they scanned.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ingest_sources ADD COLUMN files_gone bigint NOT NULL DEFAULT 0")
    op.execute("COMMENT ON COLUMN ingest_sources.files_gone IS "
               "'indexed by an earlier run, no longer on disk: forgotten by this run'")


def downgrade() -> None:
    op.execute("ALTER TABLE ingest_sources DROP COLUMN files_gone")

"""One bound for iterative index scans: psql sessions get the same hnsw.max_scan_tuples as
clipdex's own searches (clipdex.vocabulary.MAX_SCAN_TUPLES).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SET_BOUND = r"""
DO $$
DECLARE
    version text := (SELECT extversion FROM pg_extension WHERE extname = 'vector');
BEGIN
    IF string_to_array(version, '.')::int[] >= ARRAY[0, 8] THEN
        EXECUTE format('ALTER DATABASE %%I SET hnsw.max_scan_tuples = %d', current_database());
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not the database owner: set hnsw.max_scan_tuples per session instead';
END
$$;
"""


def upgrade() -> None:
    op.execute(SET_BOUND % 200_000)


def downgrade() -> None:
    op.execute(SET_BOUND % 100_000)

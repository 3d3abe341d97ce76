"""Alembic environment for clipdex: online migrations only, serialised by an advisory lock.

Two clipdex commands that start at once on a fresh embedded database both try to upgrade; the
lock makes the second wait and then find the schema already at head.
"""

from alembic import context
from sqlalchemy import create_engine, pool, text

from clipdex.database import SCHEMA_LOCK_KEY

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        connection.commit()
        try:
            context.configure(connection=connection, transaction_per_migration=False)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
            connection.commit()


if context.is_offline_mode():
    raise SystemExit("clipdex migrations run online only: use `clipdex db upgrade`.")
run_migrations_online()

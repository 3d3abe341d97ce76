"""`clipdex serve`: the search page and the JSON API (clipdex/cli.py puts it on the command line)."""

from __future__ import annotations

import click

from clipdex.commands import settings_of


@click.command("serve")
@click.option("--host", help="Address to bind (CLIPDEX_WEB_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (CLIPDEX_WEB_PORT, default 5000).")
@click.option("--threads", default=8, show_default=True)
@click.pass_context
def serve_cmd(ctx: click.Context, host: str | None, port: int | None, threads: int) -> None:
    """Serve the search page and the JSON API (waitress: one process, threads, slow clients cut off)."""
    from webapp.server import Refused, serve

    settings = settings_of(ctx).replace(**{k: v for k, v in (("web_host", host), ("web_port", port)) if v})
    _repair_indexes(settings)
    try:
        serve(settings, threads=threads)
    except Refused as exc:
        raise click.ClickException(str(exc)) from None


def _repair_indexes(settings) -> None:
    """Before serving: a vector index that an interrupted bulk load left missing is built now, so
    the server does not sort a whole library per search. A database that is away is not fatal
    here (the server answers 503 until it is back)."""
    import psycopg

    from clipdex.database import DatabaseError, open_database

    try:
        open_database(settings)
    except (DatabaseError, psycopg.OperationalError) as exc:
        click.echo(f"clipdex serve: the database is not ready ({str(exc).strip()}); serving anyway", err=True)


COMMANDS = [serve_cmd]

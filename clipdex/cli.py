"""The ``clipdex`` command: the composition root that wires settings into the components.

Commands parse their arguments, call the core, and turn the errors users can act on into one
line on stderr and a non-zero exit code. Heavy modules (torch, the indexer, Flask) are imported
inside the commands that need them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from clipdex.config import ConfigError, Settings
from clipdex.text import printable

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError,)


def _user_errors() -> tuple[type[Exception], ...]:
    from clipdex.database import DatabaseError
    from clipdex.model import ModelUnavailable

    return USER_ERRORS + (DatabaseError, ModelUnavailable)


class ClipdexGroup(click.Group):
    """Prints user-facing errors as one sentence instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _user_errors() as exc:
            click.secho(f"clipdex: {printable(str(exc))}", fg="red", err=True)
            ctx.exit(1)


def settings_of(ctx: click.Context) -> Settings:
    return ctx.find_object(Settings)


@click.group(cls=ClipdexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", help="Data folder (CLIPDEX_HOME).")
@click.option("--database-url", help="PostgreSQL URL (CLIPDEX_DATABASE_URL); unset = embedded.")
@click.option("--broker-url", help="Celery broker URL (CLIPDEX_BROKER_URL).")
@click.option("--model", help="open_clip model (CLIPDEX_MODEL).")
@click.option("--pretrained", help="Weights tag for a built-in model (CLIPDEX_PRETRAINED).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (CLIPDEX_DEVICE).")
@click.option("--roots", help="name=/path,… library roots (CLIPDEX_ROOTS).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, **overrides) -> None:
    """clipdex: search your own photos by text or example image."""
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        ctx.obj = Settings.from_env(**overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


# --- configuration ------------------------------------------------------------------------------


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings as environment variables."""
    for key, value in sorted(settings_of(ctx).to_environ().items()):
        if key in ("CLIPDEX_ACCESS_TOKEN",):
            value = "***"
        click.echo(f"{key}={value}")


# --- database -----------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database: schema migrations, URL, embedded server."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from clipdex import database

    settings = settings_of(ctx)
    url = database.resolve_url(settings)
    with database.connect(url, register=False) as conn:
        database.check_server(database.inspect_server(conn), url)
    database.upgrade(url, revision)
    with database.connect(url, register=False) as conn:
        click.echo(f"schema at {database.current_revision(conn) or 'base'}")


@db.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Revert migrations down to REVISION (`base` removes every clipdex table)."""
    from clipdex import database

    url = database.resolve_url(settings_of(ctx))
    database.downgrade(url, revision)
    with database.connect(url, register=False) as conn:
        click.echo(f"schema at {database.current_revision(conn) or 'base'}")


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Show the schema revision, the head revision and the server's versions."""
    from clipdex import database

    url = database.resolve_url(settings_of(ctx))
    with database.connect(url, register=False) as conn:
        info = database.inspect_server(conn)
        current = database.current_revision(conn)
    click.echo(f"schema:     {current or 'base'} (head {database.head_revision()})")
    click.echo(f"postgresql: {info.server_version}")
    click.echo(f"pgvector:   {info.pgvector_installed or 'not installed'}"
               f" (available {info.pgvector_available or 'none'})")


@db.command("url")
@click.pass_context
def db_url(ctx: click.Context) -> None:
    """Print the database URL (starts the embedded server if needed): psql "$(clipdex db url)"."""
    from clipdex import database

    click.echo(database.open_database(settings_of(ctx)).url)


@db.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def db_psql(ctx: click.Context, psql_args: tuple[str, ...]) -> None:
    """Open psql on the clipdex database (the embedded server's own psql when embedded)."""
    import shutil

    from clipdex import database, embedded

    settings = settings_of(ctx)
    url = database.open_database(settings).url
    psql = str(embedded.psql_path()) if settings.uses_embedded_database else shutil.which("psql")
    if not psql:
        raise click.ClickException("psql is not installed")
    os.execv(psql, [psql, url, *psql_args])


@db.command("index")
@click.pass_context
def db_index(ctx: click.Context) -> None:
    """Build any missing per-model vector index (e.g. after an interrupted bulk load)."""
    from clipdex.database import open_database

    with open_database(settings_of(ctx)).connect(autocommit=True) as conn:
        for model_id, name in conn.execute("SELECT id, name FROM models ORDER BY id").fetchall():
            index = conn.execute("SELECT clipdex_ensure_vector_index(%s::smallint)", (model_id,)).fetchone()[0]
            click.echo(f"{name}: {index}")


@db.command("stop")
@click.pass_context
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded PostgreSQL server (the next command starts it again)."""
    from clipdex import embedded

    settings = settings_of(ctx)
    if not settings.uses_embedded_database:
        raise click.ClickException("CLIPDEX_DATABASE_URL is set: clipdex does not manage that server")
    click.echo("stopped" if embedded.stop(settings.home) else "not running")


# --- indexing -----------------------------------------------------------------------------------

SOURCE_CHOICE = click.Choice(["auto", "takeout", "iphone", "qq", "folder"])
FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def _print_plan(plan) -> None:
    for kind, count in sorted(plan.sources.items()):
        if count.seen:
            where = f" at {printable(count.path)}" if count.path else ""
            click.echo(f"  {kind}{where}: {count.seen} files, {count.queued} to index, "
                       f"{count.unchanged} unchanged, {count.skipped} not photos by name", err=True)
        if count.gone:
            click.echo(f"  {kind}: forgot {count.gone} files no longer on disk", err=True)
    if plan.missing_kept:
        click.echo(f"  kept {plan.missing_kept} indexed files that are no longer on disk (see the log)", err=True)
    if plan.problems:
        click.echo(f"  {plan.problems} files or folders could not be read (clipdex status "
                   f"{plan.run_id} --failures)", err=True)


KEEP_MISSING = click.option(
    "--keep-missing", is_flag=True,
    help="Keep files indexed earlier that are gone from PATH (default: forget them).")


def _run_settings(ctx: click.Context, keep_missing: bool) -> Settings:
    settings = settings_of(ctx)
    return settings.replace(forget_missing=False) if keep_missing else settings


@cli.command("index")
@click.argument("path", type=FOLDER)
@click.option("--source", type=SOURCE_CHOICE, default="auto", show_default=True,
              help="Export format; auto detects it per folder.")
@KEEP_MISSING
@click.pass_context
def index(ctx: click.Context, path, source: str, keep_missing: bool) -> None:
    """Index PATH in this process (no broker): the same pipeline the workers run."""
    from clipdex.database import open_database
    from indexer.local import index_folder

    settings = _run_settings(ctx, keep_missing)
    database = open_database(settings)
    result = index_folder(settings, database, path, source=source, out=sys.stderr)
    plan = result.plan
    click.echo(f"run {plan.run_id} (root {plan.root}):", err=True)
    _print_plan(plan)
    c = result.counts
    rate = (c.get("images_new", 0) + c.get("images_known", 0)) / result.seconds if result.seconds else 0
    click.echo(f"indexed {c.get('images_new', 0)} new images, {c.get('images_known', 0)} already known, "
               f"{c.get('ignored', 0)} not images, {c.get('failed', 0)} failed "
               f"in {result.seconds:.1f} s ({rate:.1f} images/s)")
    if c.get("failed") or plan.problems:
        click.echo(f"see the failures with: clipdex status {plan.run_id} --failures")


def _need_broker(settings: Settings) -> None:
    if not settings.broker_url:
        raise click.ClickException(
            "CLIPDEX_BROKER_URL is not set: start Redis and set it (redis://host:6379/0), "
            "or index in this process with `clipdex index`")


@cli.command("enqueue")
@click.argument("path", type=FOLDER)
@click.option("--source", type=SOURCE_CHOICE, default="auto", show_default=True)
@KEEP_MISSING
@click.pass_context
def enqueue_cmd(ctx: click.Context, path, source: str, keep_missing: bool) -> None:
    """Scan PATH and queue its new files for the Celery workers; prints the run id."""
    from clipdex.database import open_database
    from indexer.producer import enqueue, plan_run

    settings = _run_settings(ctx, keep_missing)
    _need_broker(settings)
    database = open_database(settings)
    plan = plan_run(settings, database, path, source=source, mode="celery")
    sent = enqueue(settings, database, plan.run_id, plan.batches)
    _print_plan(plan)
    click.echo(f"run {plan.run_id}: {plan.files} files in {sent} batches queued "
               f"(follow it with: clipdex status {plan.run_id})")


@cli.command("resume")
@click.argument("run_id", type=int)
@click.pass_context
def resume_cmd(ctx: click.Context, run_id: int) -> None:
    """Queue again the batches of RUN_ID that are not done (e.g. after Redis lost its queue)."""
    from clipdex.database import open_database
    from indexer.producer import resume

    settings = settings_of(ctx)
    _need_broker(settings)
    try:
        sent = resume(settings, open_database(settings), run_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id}: {sent} batches queued again")


@cli.command("worker", context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker_cmd(ctx: click.Context, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on the embed queue (one per GPU); extra arguments go to Celery."""
    settings = settings_of(ctx)
    _need_broker(settings)
    from indexer.worker import QUEUE

    args = [sys.executable, "-m", "celery", "-A", "indexer.worker", "worker", "-Q", QUEUE,
            "--pool", "solo", "--concurrency", "1", *celery_args]
    # The worker module reads its settings from the environment: hand it these.
    os.execve(sys.executable, args, settings.child_environ())


@cli.command("status")
@click.argument("run_id", type=int, required=False)
@click.option("--failures", "show_failures", is_flag=True, help="List failed files and reasons.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=10, show_default=True, help="Runs (or failures) to show.")
@click.pass_context
def status_cmd(ctx: click.Context, run_id: int | None, show_failures: bool, as_json: bool,
               limit: int) -> None:
    """Ingest runs: per source, files queued, done, duplicates, failed, and the rate."""
    from clipdex import status
    from clipdex.database import open_database

    with open_database(settings_of(ctx)).connect() as conn:
        if show_failures:
            rows = status.failures(conn, run_id, limit=max(limit, 100) if limit == 10 else limit)
            if as_json:
                for f in rows:
                    click.echo(json.dumps({**f.__dict__, "created_at": f.created_at.isoformat()}))
            for f in rows if not as_json else []:
                click.echo(f"run {f.run_id}  {printable(f.root)}/{printable(f.path)}  [{f.stage}] {printable(f.reason)}")
            return
        runs = [status.get_run(conn, run_id)] if run_id is not None else status.list_runs(conn, limit)
    if run_id is not None and runs[0] is None:
        raise click.ClickException(f"there is no run {run_id}")
    if as_json:
        for run in runs:
            click.echo(json.dumps(run.to_dict()))
        return
    for run in runs:
        rate = f", {run.images_per_second} images/s" if run.images_per_second else ""
        failed = f" ({run.batches_failed} failed)" if run.batches_failed else ""
        click.echo(f"run {run.id} [{run.state}] {run.mode} {printable(run.root)}/{printable(run.path or '')} "
                   f"model {printable(run.model)}: batches {run.batches_done}/{run.batches}{failed}{rate}")
        for s in run.sources:
            click.echo(f"  {s.source:8} seen {s.seen}, unchanged {s.unchanged}, skipped {s.skipped}, "
                       f"queued {s.queued}, done {s.processed}, new {s.new}, duplicates {s.duplicates}, "
                       f"not images {s.ignored}, failed {s.failed}, gone {s.gone}")
        if run.scan_failures:
            click.echo(f"  {run.scan_failures} paths could not be scanned")
        for error in run.errors:
            click.echo(f"  error: {printable(error)}")


# --- search -----------------------------------------------------------------------------------


@cli.command("search")
@click.argument("texts", nargs=-1)
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An example image file (repeatable).")
@click.option("--like", "likes", multiple=True, help="An indexed image id to look like (`12^0.5` weighs it).")
@click.option("--not", "negatives", multiple=True, help="A text to steer away from (repeatable).")
@click.option("--filter", "-f", "filters", multiple=True, metavar="NAME=VALUE",
              help="A filter, e.g. -f taken_from=2023-01-01 -f source=iphone -f orientation=portrait.")
@click.option("--limit", default=20, show_default=True)
@click.option("--cursor", help="The next page of an earlier search (printed with --json).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one per result, then the cursor.")
@click.pass_context
def search_cmd(ctx: click.Context, texts, images, likes, negatives, filters, limit, cursor, as_json) -> None:
    """Search by TEXTS (`red car^2` weighs a text), example images and filters."""
    from clipdex.database import open_database
    from clipdex.model import LazyModel, ModelSpec
    from clipdex.search import Filters, QueryError, QuerySpec, parse_like_term, search, split_weight

    settings = settings_of(ctx)
    try:
        params: dict[str, list[str]] = {}
        for item in filters:
            name, sep, value = item.partition("=")
            if not sep:
                raise QueryError(f"--filter {item!r}: expected NAME=VALUE")
            params.setdefault(name.strip(), []).append(value)
        like_ids = [parse_like_term(term) for term in likes]
        spec = QuerySpec([split_weight(t) for t in texts], [split_weight(t) for t in negatives], like_ids,
                         [(Path(p).read_bytes(), 1.0) for p in images])
        database = open_database(settings)
        with database.connect(autocommit=True) as conn:
            page = search(database, conn, ModelSpec.from_settings(settings).key(), spec=spec,
                          model=LazyModel(settings), filters=Filters.parse(params), limit=limit,
                          cursor=cursor, max_pixels=settings.max_pixels, ef_search=settings.ef_search)
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        for hit in page.hits:
            click.echo(json.dumps(hit.to_dict()))
        click.echo(json.dumps({"next_cursor": page.next_cursor, "strategy": page.strategy}))
        return
    if not page.hits:
        click.echo("no photos match")
    for hit in page.hits:
        taken = hit.taken_at.date().isoformat() if hit.taken_at else "?"
        click.echo(f"{hit.id:>8}  {hit.score:5.3f}  {taken}  {hit.width}x{hit.height}  {hit.source or '?':7}  "
                   f"{printable(hit.root or '')}/{printable(hit.path or '')}")


@cli.command("embed-text")
@click.argument("texts", nargs=-1, required=True)
@click.pass_context
def embed_text(ctx: click.Context, texts: tuple[str, ...]) -> None:
    """Embed query TEXTS with the model and cache them for psql: search_text('…')."""
    from clipdex.database import open_database
    from clipdex.model import LazyModel, ModelSpec
    from clipdex.search import QueryError, model_row, text_vectors

    settings = settings_of(ctx)
    database = open_database(settings)
    key = ModelSpec.from_settings(settings).key()
    with database.connect(autocommit=True) as conn:
        try:
            model_id, dim = model_row(conn, key)
        except QueryError as exc:
            raise click.ClickException(str(exc)) from None
        text_vectors(conn, LazyModel(settings), model_id, list(texts), dim)
    for text in texts:
        click.echo(f"cached: SELECT * FROM search_text({_sql_literal(text)});")


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@cli.command("serve")
@click.option("--host", help="Address to bind (CLIPDEX_WEB_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (CLIPDEX_WEB_PORT, default 5000).")
@click.option("--threads", default=8, show_default=True)
@click.pass_context
def serve_cmd(ctx: click.Context, host: str | None, port: int | None, threads: int) -> None:
    """Serve the search page and the JSON API (waitress: one process, threads, slow clients cut off)."""
    from webapp.server import Refused, serve

    settings = settings_of(ctx).replace(**{k: v for k, v in (("web_host", host), ("web_port", port)) if v})
    try:
        serve(settings, threads=threads)
    except Refused as exc:
        raise click.ClickException(str(exc)) from None


# --- model --------------------------------------------------------------------------------------


@cli.command("model")
@click.option("--activate", is_flag=True,
              help="Make this model the one psql's vectors view and functions use.")
@click.pass_context
def model_info(ctx: click.Context, activate: bool) -> None:
    """Load the configured model and print its key, device and embedding size."""
    from clipdex.model import load_model

    settings = settings_of(ctx)
    model = load_model(settings)
    click.echo(json.dumps({"key": model.key, "device": model.device, **model.describe()}))
    if activate:
        from clipdex.database import open_database

        with open_database(settings).connect(autocommit=True) as conn:
            row = conn.execute("SELECT id FROM models WHERE name = %s", (model.key,)).fetchone()
            if row is None:
                raise click.ClickException(f"no image is indexed with {model.key} yet")
            conn.execute("SELECT clipdex_use_model(%s::smallint)", (row[0],))
        click.echo(f"psql now searches with {model.key}")


def main() -> None:
    cli(prog_name="clipdex")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The commands that drive the core (configuration, the database, status, search, the model) and
what every command module shares: the settings in the click context and the errors a user can act
on. Commands that drive the indexer or the web app live next to them (indexer/commands.py,
webapp/commands.py); clipdex/cli.py assembles them all."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from clipdex.config import ConfigError, Settings
from clipdex.text import printable


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are one sentence for the user, not a traceback."""
    from clipdex.database import DatabaseError
    from clipdex.model import ModelUnavailable
    from clipdex.model_registry import ModelMismatch, UnknownModel

    return ConfigError, DatabaseError, ModelUnavailable, ModelMismatch, UnknownModel


def settings_of(ctx: click.Context) -> Settings:
    return ctx.find_object(Settings)


# --- configuration ------------------------------------------------------------------------------


@click.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the settings in effect as environment variables (the access token masked)."""
    from clipdex.model import ModelSpec, ModelUnavailable

    settings = settings_of(ctx)
    ignored = set()
    if settings.model.startswith(("local-dir:", "hf-hub:")):
        ignored.add("CLIPDEX_PRETRAINED")   # such a model names its own weights
    elif settings.model_named and settings.pretrained is None:   # the weights recommended for that name
        try:
            settings = settings.replace(pretrained=ModelSpec.from_settings(settings).pretrained)
        except ModelUnavailable as exc:
            click.echo(f"# {exc}")
    if not settings.model_named:
        click.echo(f"# CLIPDEX_MODEL unset: indexing and searches use the library's default model "
                   f"(clipdex models); a new library starts with {settings.model} "
                   f"({ModelSpec.from_settings(settings).pretrained})")
    for key, value in sorted(settings.to_environ().items()):
        if key in ignored:
            continue
        if key == "CLIPDEX_ACCESS_TOKEN":
            value = "***"
        click.echo(f"{key}={value}")


# --- database -----------------------------------------------------------------------------------


@click.group()
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

    from clipdex import database, embedded_postgres

    settings = settings_of(ctx)
    url = database.open_database(settings).url
    psql = str(embedded_postgres.psql_path()) if settings.uses_embedded_database else shutil.which("psql")
    if not psql:
        raise click.ClickException("psql is not installed")
    os.execv(psql, [psql, url, *psql_args])


@db.command("index")
@click.option("--cells", is_flag=True,
              help="Split every model's vectors into cells again, whatever their number, and build one graph "
                   "per cell (searches sort exactly until they are built).")
@click.pass_context
def db_index(ctx: click.Context, cells: bool) -> None:
    """Build any missing per-model vector index (e.g. after an interrupted bulk load)."""
    from clipdex import model_registry
    from clipdex.database import open_database

    settings = settings_of(ctx)
    with open_database(settings, repair_indexes=not cells).connect(autocommit=True) as conn:
        if cells:
            for model_id, name in conn.execute("SELECT m.id, m.name FROM models m WHERE EXISTS "
                                               "(SELECT 1 FROM embeddings e WHERE e.model_id = m.id) ORDER BY m.id").fetchall():
                started = time.perf_counter()
                index = model_registry.split_into_cells(conn, model_id, settings.lock_timeout)
                click.echo(f"{printable(name)}: {index} built in {time.perf_counter() - started:.1f} s")
            return
        built = model_registry.build_missing_indexes(conn, settings.lock_timeout, settings.cells_from)
    if not built:
        click.echo("no model has vectors yet: nothing to index")
    for name, index, seconds in built:
        what = "already there" if seconds is None else f"built in {seconds:.1f} s"
        click.echo(f"{printable(name)}: {index} {what}")


@db.command("stop")
@click.pass_context
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded PostgreSQL server (the next command starts it again)."""
    from clipdex import embedded_postgres

    settings = settings_of(ctx)
    if not settings.uses_embedded_database:
        raise click.ClickException("CLIPDEX_DATABASE_URL is set: clipdex does not manage that server")
    click.echo("stopped" if embedded_postgres.stop(settings.home) else "not running")


# --- status and search --------------------------------------------------------------------------


@click.command("status")
@click.argument("run_id", type=int, required=False)
@click.option("--failures", "show_failures", is_flag=True, help="List failed files and reasons.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", default=10, show_default=True, help="Runs (or failures) to show.")
@click.pass_context
def status_cmd(ctx: click.Context, run_id: int | None, show_failures: bool, as_json: bool,
               limit: int) -> None:
    """Ingest runs: per source, files queued, done, duplicates, failed, and the rate; the
    `clipdex watch` processes keeping folders current."""
    from clipdex import status
    from clipdex.database import open_database

    with open_database(settings_of(ctx)).connect() as conn:
        if run_id is not None and status.get_run(conn, run_id) is None:
            raise click.ClickException(f"there is no run {run_id}")
        if show_failures:
            rows = status.failures(conn, run_id, limit=max(limit, 100) if limit == 10 else limit)
            if as_json:
                for f in rows:
                    click.echo(json.dumps({**f.__dict__, "created_at": f.created_at.isoformat()}))
            for f in rows if not as_json else []:
                click.echo(f"run {f.run_id}  {printable(f.root)}/{printable(f.path)}  [{f.stage}] {printable(f.reason)}")
            return
        runs = [status.get_run(conn, run_id)] if run_id is not None else status.list_runs(conn, limit)
        texts = status.text_reading(conn) if run_id is None and not as_json else None
        watchers = status.list_watchers(conn) if run_id is None and not as_json else []
    for watcher in watchers:
        click.echo(printable(watcher.line()))
    if texts:
        click.echo(texts)
    if as_json:
        for run in runs:
            click.echo(json.dumps(run.to_dict()))
        return
    for run in runs:
        click.echo(_run_line(run))
        for s in run.sources:
            failed_before = f", failed before {s.failed_before}" if s.failed_before else ""
            click.echo(f"  {s.source:8} seen {s.seen}, unchanged {s.unchanged}, skipped {s.skipped}"
                       f"{failed_before}, queued {s.queued}, done {s.processed}, new {s.new}, "
                       f"duplicates {s.duplicates}, not images {s.ignored}, failed {s.failed}, gone {s.gone}")
        if run.text:
            click.echo(f"  {run.text.line()}")
        if run.scan_failures:
            click.echo(f"  {status.plural(run.scan_failures, 'path')} could not be scanned")
        for error in run.errors:
            click.echo(f"  error: {printable(error)}")


def _run_line(run) -> str:
    from clipdex.status import duration

    failed = f" ({run.batches_failed} failed)" if run.batches_failed else ""
    line = (f"run {run.id} [{run.state}] {run.mode} {printable(run.root)}/{printable(run.path or '')} "
            f"model {printable(run.model)}: batches {run.batches_done}/{run.batches}{failed}")
    if run.files_per_second:
        line += f", {run.files_per_second:.1f} files/s, {run.images_per_second:.1f} new images/s"
    if run.seconds_left is not None:
        line += f", {run.progress:.0%} done, about {duration(run.seconds_left)} left"
    return line


@click.command("search")
@click.argument("texts", nargs=-1)
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An example image file (repeatable).")
@click.option("--like", "likes", multiple=True, help="An indexed image id to look like (`12^0.5` weighs it).")
@click.option("--not", "negatives", multiple=True, help="A text to steer away from (repeatable).")
@click.option("--text", "written", help="Words in the photo (read by OCR), its caption, album or file name: "
                                        "only photos holding them.")
@click.option("--mode", type=click.Choice(["hybrid", "vector", "text"]), default=None,
              help="hybrid (default): photos with the words of TEXTS written in them or in their caption "
                   "first, then in an album or file name, then the rest; vector: the vector alone; text: "
                   "only photos holding the words.")
@click.option("--filter", "-f", "filters", multiple=True, metavar="NAME=VALUE",
              help="A filter, e.g. -f taken_from=2023-01-01 -f source=iphone -f orientation=portrait.")
@click.option("--model", "model_name", help="Search this model's vectors (see `clipdex models`); default: the "
                                             "library's default model.")
@click.option("--strictness", type=click.FloatRange(0, 1),
              help="How sure a photo must be to count as a match, 0 to 1 (default CLIPDEX_STRICTNESS, 0.5); "
                   "0 lists every photo.")
@click.option("--sort", type=click.Choice(["relevance", "newest", "oldest"]), default=None,
              help="relevance (default), or the matches by date taken.")
@click.option("--limit", default=20, show_default=True)
@click.option("--cursor", help="The next page of an earlier search (printed with --json).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one per result, then the cursor.")
@click.pass_context
def search_cmd(ctx: click.Context, texts, images, likes, negatives, written, mode, filters, model_name, strictness,
               sort, limit, cursor, as_json) -> None:
    """Search by TEXTS (`red car^2` weighs a text), example images and filters."""
    from clipdex.database import open_database
    from clipdex.search import QueryError, SearchRequest, SearchService

    settings = settings_of(ctx)
    params: dict[str, list[str]] = {"q": list(texts), "not": list(negatives), "like": list(likes),
                                    "limit": [str(limit)], "cursor": [cursor] if cursor else []}
    if written is not None:
        params["text"] = [written]
    if mode is not None:
        params["mode"] = [mode]
    if model_name is not None:
        params["model"] = [model_name]
    if strictness is not None:
        params["strictness"] = [str(strictness)]
    if sort is not None:
        params["sort"] = [sort]
    try:
        for item in filters:
            name, sep, value = item.partition("=")
            if not sep or name.strip() in params:
                raise QueryError(f"--filter {item!r}: expected NAME=VALUE with a filter's name")
            params.setdefault(name.strip(), []).append(value)
        request = SearchRequest.parse(params, [Path(p).read_bytes() for p in images])
        database = open_database(settings)
        with database.connect(autocommit=True) as conn:
            page = SearchService(settings, database).search(conn, request)
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        for hit in page.hits:
            click.echo(json.dumps(hit.to_dict()))
        tail = page.to_dict()
        del tail["results"]
        click.echo(json.dumps(tail))
        return
    if page.note:
        click.echo(f"note: {page.note}", err=True)
    if page.matches is not None:
        from clipdex.status import plural

        click.echo(f"{'' if page.matches_exact else 'about '}{plural(page.matches, 'photo')} "
                   f"match{'es' if page.matches == 1 else ''}", err=True)
    if not page.hits:
        click.echo("no photos match")
    else:
        click.echo(_hits_table(page.hits))
    if page.next_cursor:
        click.echo(f"more: clipdex search --cursor {page.next_cursor}", err=True)
    elif page.weaker_cursor:
        click.echo(f"weaker matches: clipdex search --cursor {page.weaker_cursor}", err=True)


def _hits_table(hits) -> str:
    """Aligned columns under a header; `id` is what --like takes."""
    rows = [("id", "taken", "size", "source", "path")]
    for hit in hits:
        rows.append((str(hit.id), hit.taken_at.date().isoformat() if hit.taken_at else "unknown",
                     f"{hit.width}×{hit.height}", hit.source or "?",
                     f"{printable(hit.root or '')}/{printable(hit.path or '')}"
                     + (f"  (+{hit.similar} similar)" if hit.similar else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:<{widths[3]}}  "
                     f"{row[4]}".rstrip() for row in rows)


@click.command("embed-text")
@click.argument("texts", nargs=-1, required=True)
@click.pass_context
def embed_text(ctx: click.Context, texts: tuple[str, ...]) -> None:
    """Embed query TEXTS with the model and cache them for psql: search_text('…')."""
    from clipdex.database import open_database
    from clipdex.search import QueryError, SearchService

    settings = settings_of(ctx)
    database = open_database(settings)
    with database.connect(autocommit=True) as conn:
        try:
            SearchService(settings, database).cache_texts(conn, list(texts))
        except (QueryError, LookupError) as exc:
            raise click.ClickException(str(exc)) from None
    for text in texts:
        click.echo(f"cached: SELECT * FROM search_text({_sql_literal(text)});")


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- model --------------------------------------------------------------------------------------


@click.command("model")
@click.option("--activate", is_flag=True,
              help="Make this model the library's default (as `clipdex models default`).")
@click.pass_context
def model_info(ctx: click.Context, activate: bool) -> None:
    """Load the configured model and print its key, device and embedding size."""
    from clipdex.model import load_model

    settings = settings_of(ctx)
    model = load_model(settings)
    click.echo(json.dumps({"key": model.key, "device": model.device, **model.describe()}))
    if activate:
        from clipdex import model_registry
        from clipdex.database import open_database

        with open_database(settings).connect(autocommit=True) as conn:
            try:
                model_registry.set_default(conn, model.key, lock_timeout=settings.lock_timeout)
            except (model_registry.UnknownModel, model_registry.PartialCoverage) as exc:
                raise click.ClickException(str(exc)) from None
        click.echo(f"searches (and psql) now use {model.key}")


@click.group("models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
@click.pass_context
def models_cmd(ctx: click.Context, as_json: bool) -> None:
    """The models whose vectors the library holds: coverage, size, which is the default."""
    if ctx.invoked_subcommand is not None:
        return
    from clipdex import model_registry
    from clipdex.database import open_database

    settings = settings_of(ctx)
    with open_database(settings).connect() as conn:
        models = model_registry.models_with_coverage(conn)
    if as_json:
        for model in models:
            click.echo(json.dumps(model.to_dict()))
        return
    if not models:
        click.echo("no model has vectors yet: clipdex index PATH")
    for model in models:
        flags = ", ".join(f for f, on in (("default", model.default), ("multilingual", model.multilingual)) if on)
        click.echo(f"{printable(model.name)}  {model.dim}-d  {model.images} of {_photos(model.total)}"
                   + (f"  ({flags})" if flags else ""))
        for source, (embedded, photos) in model.sources.items():
            click.echo(f"  {source:8} {embedded} of {photos}")
        if model.cells:
            click.echo(f"  index: one HNSW graph per cell, {model.cells} cells")
        elif model.images >= settings.cells_from:
            click.echo(f"  index: one HNSW graph for {model.images} vectors; `clipdex db index --cells` splits it "
                       "into cells (searches find more, sooner: BENCHMARKS.md §4)")


def _photos(count: int) -> str:
    from clipdex.status import plural

    return plural(count, "photo")


@models_cmd.command("default")
@click.argument("name")
@click.option("--force", is_flag=True, help="Switch even though the model has no vectors for some photos.")
@click.pass_context
def models_default(ctx: click.Context, name: str, force: bool) -> None:
    """Make NAME the model searches (and psql) use unless they ask for another."""
    from clipdex import model_registry
    from clipdex.database import open_database

    settings = settings_of(ctx)
    with open_database(settings).connect(autocommit=True) as conn:
        try:
            model = model_registry.set_default(conn, name, force=force, lock_timeout=settings.lock_timeout)
        except (model_registry.UnknownModel, model_registry.PartialCoverage) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"searches now use {model.name} ({model.images} of {_photos(model.total)})")


@models_cmd.command("drop")
@click.argument("name")
@click.pass_context
def models_drop(ctx: click.Context, name: str) -> None:
    """Remove NAME's vectors, index and cached query texts (never the default model's)."""
    from clipdex import model_registry
    from clipdex.database import open_database

    settings = settings_of(ctx)
    with open_database(settings).connect(autocommit=True) as conn:
        try:
            model = model_registry.drop_model(conn, name, settings.lock_timeout)
        except (model_registry.UnknownModel, model_registry.PartialCoverage) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"dropped {model.name}: {model.images} vectors")


COMMANDS = [show_config, db, status_cmd, search_cmd, embed_text, model_info, models_cmd]

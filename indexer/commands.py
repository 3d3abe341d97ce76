"""The commands that drive the indexer: `clipdex index`, `enqueue`, `resume` and `worker`
(clipdex/cli.py puts them on the command line)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clipdex.commands import settings_of
from clipdex.config import Settings
from clipdex.text import printable
from clipdex.vocabulary import SOURCE_KINDS

SOURCE_CHOICE = click.Choice(["auto", *SOURCE_KINDS])
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


@click.command("index")
@click.argument("path", type=FOLDER)
@click.option("--source", type=SOURCE_CHOICE, default="auto", show_default=True,
              help="Export format; auto detects it per folder.")
@KEEP_MISSING
@click.pass_context
def index(ctx: click.Context, path, source: str, keep_missing: bool) -> None:
    """Index PATH in this process (no broker): the same pipeline the workers run."""
    from clipdex.database import open_database
    from indexer.in_process import index_folder

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


@click.command("enqueue")
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


@click.command("resume")
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


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker_cmd(ctx: click.Context, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on the embed queue (one per GPU); extra arguments go to Celery."""
    from indexer.worker import run_worker

    settings = settings_of(ctx)
    _need_broker(settings)
    run_worker(settings, celery_args)


COMMANDS = [index, enqueue_cmd, resume_cmd, worker_cmd]

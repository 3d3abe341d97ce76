"""The commands that drive the indexer: `clipdex index`, `enqueue`, `resume` and `worker`
(clipdex/cli.py puts them on the command line)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from clipdex.commands import settings_of
from clipdex.config import Settings
from clipdex.status import duration, plural
from clipdex.text import printable
from clipdex.vocabulary import SOURCE_KINDS

SOURCE_CHOICE = click.Choice(["auto", *SOURCE_KINDS])
FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


class FolderOrArchive(click.Path):
    """A folder, or one archive (a Takeout part: .zip, .tgz) read in place."""

    def __init__(self):
        super().__init__(exists=True, path_type=Path)

    def convert(self, value, param, ctx):
        from clipdex.archives import is_archive

        path = super().convert(value, param, ctx)
        if not path.is_dir() and not is_archive(os.fsencode(path.name)):
            self.fail(f"{value!r} is neither a folder nor a .zip or .tgz archive", param, ctx)
        return path


FOLDER_OR_ARCHIVE = FolderOrArchive()


def _print_plan(plan) -> None:
    """What the scan found, before any file is read (stderr: the progress line follows there)."""
    click.echo(f"run {plan.run_id} (root {plan.root}):", err=True)
    for kind, count in sorted(plan.sources.items()):
        if count.seen:
            where = f" at {printable(count.path)}" if count.path else ""
            queued = f"{count.queued} to index" + (f" ({count.vectors_only} known photos needing only this model's "
                                                   f"vectors)" if count.vectors_only else "")
            parts = [plural(count.seen, "file"), queued, f"{count.unchanged} unchanged",
                     f"{count.skipped} skipped (not photos by name)"]
            if count.failed_before:
                parts.append(f"{count.failed_before} failed before and unchanged (--retry-failed tries again)")
            click.echo(f"  {kind}{where}: " + ", ".join(parts), err=True)
        if count.gone:
            click.echo(f"  {kind}: forgot {plural(count.gone, 'file')} no longer on disk", err=True)
    if plan.missing_kept:
        click.echo(f"  kept {plural(plan.missing_kept, 'indexed file')} that "
                   f"{'is' if plan.missing_kept == 1 else 'are'} no longer on disk (see the log)", err=True)
    if plan.problems:
        click.echo(f"  {plural(plan.problems, 'file or folder', 'files or folders')} could not be read "
                   f"(clipdex status {plan.run_id} --failures)", err=True)


KEEP_MISSING = click.option(
    "--keep-missing", is_flag=True,
    help="Keep files indexed earlier that are gone from PATH (default: forget them).")
RETRY_FAILED = click.option(
    "--retry-failed", is_flag=True,
    help="Try again the files that failed in an earlier run and have not changed since.")


MODEL = click.option("--model", "model_name", help=(
    "Embed with this open_clip model instead of CLIPDEX_MODEL: a second model's vectors for photos "
    "already indexed (nothing else is redone); Celery workers must run the same model."))
PRETRAINED = click.option("--pretrained", help="The weights tag of --model (a built-in open_clip name).")


def _run_settings(ctx: click.Context, keep_missing: bool, model_name: str | None = None,
                  pretrained: str | None = None) -> Settings:
    settings = settings_of(ctx)
    if model_name is not None:
        if pretrained is None and not model_name.startswith(("local-dir:", "hf-hub:")):
            raise click.UsageError(f"--model {model_name}: give its weights with --pretrained TAG "
                                   "(python -c 'import open_clip; print(open_clip.list_pretrained())')")
        settings = settings.replace(model=model_name, pretrained=pretrained, model_named=True)
    elif pretrained is not None:
        raise click.UsageError("--pretrained goes with --model")
    return settings.replace(forget_missing=False) if keep_missing else settings


@click.command("index")
@click.argument("path", type=FOLDER_OR_ARCHIVE)
@click.option("--source", type=SOURCE_CHOICE, default="auto", show_default=True,
              help="Export format; auto detects it per folder.")
@KEEP_MISSING
@RETRY_FAILED
@MODEL
@PRETRAINED
@click.pass_context
def index(ctx: click.Context, path, source: str, keep_missing: bool, retry_failed: bool, model_name: str | None,
          pretrained: str | None) -> None:
    """Index PATH in this process (no broker): a folder, or a .zip or .tgz archive read in place; the
    same pipeline the workers run."""
    import time

    from clipdex import status
    from clipdex.database import open_database
    from indexer.in_process import index_planned
    from indexer.producer import plan_run

    started = time.perf_counter()
    settings = _run_settings(ctx, keep_missing, model_name, pretrained)
    database = open_database(settings, repair_indexes=False)
    settings = _library_model(settings, database)
    plan = plan_run(settings, database, path, source=source, mode="local", retry_failed=retry_failed)
    _print_plan(plan)
    result = index_planned(settings, database, plan, out=sys.stderr, started=started)
    with database.connect() as conn:
        run = status.get_run(conn, plan.run_id)
    c = result.counts
    rates = ""
    if run.files_per_second:
        rates = f"; {run.files_per_second:.1f} files/s, {run.images_per_second:.1f} new images/s"
    click.echo(f"indexed {plural(c.get('images_new', 0), 'new image')}, {c.get('images_known', 0)} already known, "
               f"{c.get('ignored', 0)} not images, {c.get('failed', 0)} failed "
               f"in {duration(result.seconds)}{rates}")
    if c.get("failed") or plan.problems:
        click.echo(f"see the failures with: clipdex status {plan.run_id} --failures")
    if settings.ocr:
        _read_texts(settings, database, _scope_of_run(database, plan), run_id=plan.run_id)


def _scope_of_run(database, plan):
    import os

    from indexer.ocr_run import Scope

    with database.connect() as conn:
        path = conn.execute("SELECT path FROM ingest_runs WHERE id = %s", (plan.run_id,)).fetchone()[0]
    return Scope(plan.root, os.fsencode(path))


def _read_texts(settings: Settings, database, scope, *, run_id: int | None = None) -> None:
    """The OCR pass over ``scope``: one progress line, one summary line."""
    from clipdex.roots import known_roots
    from indexer.ocr import OcrEngine
    from indexer.ocr_run import read_texts

    with database.connect(autocommit=True) as conn:
        summary = read_texts(settings, conn, OcrEngine(device=settings.device), known_roots(conn), scope,
                             run_id=run_id, out=sys.stderr)
    if summary.read or summary.failed:
        click.echo(f"read the text of {plural(summary.read, 'photo')}: {summary.with_text} with text, "
                   f"{summary.failed} failed, in {duration(summary.seconds)}")
        for image_id, reason in summary.failures[:5]:
            click.echo(f"  image {image_id}: {printable(reason)}", err=True)


@click.command("ocr")
@click.argument("path", type=FOLDER, required=False)
@click.option("--all", "everything", is_flag=True, help="Every indexed photo, whatever its folder.")
@click.option("--retry-failed", is_flag=True, help="Read again the photos whose reading failed.")
@click.pass_context
def ocr_cmd(ctx: click.Context, path, everything: bool, retry_failed: bool) -> None:
    """Read the text in the indexed photos under PATH (or --all) that have not been read yet."""
    from clipdex.database import open_database
    from indexer.ocr_run import Scope
    from indexer.placement import place

    if (path is None) == (not everything):
        raise click.UsageError("give a folder that was indexed, or --all")
    settings = settings_of(ctx)
    database = open_database(settings, repair_indexes=False)
    scope = Scope(retry_failed=retry_failed)
    if path is not None:
        with database.transaction() as conn:
            placement = place(settings, conn, path)
        scope = Scope(placement.root, placement.relpath, retry_failed)
    _read_texts(settings, database, scope)


def _library_model(settings: Settings, database) -> Settings:
    from clipdex.model_registry import follow_library

    with database.connect() as conn:
        return follow_library(settings, conn)


def _need_broker(settings: Settings) -> None:
    if not settings.broker_url:
        raise click.ClickException(
            "CLIPDEX_BROKER_URL is not set: start Redis and set it (redis://host:6379/0), "
            "or index in this process with `clipdex index`")


@click.command("enqueue")
@click.argument("path", type=FOLDER_OR_ARCHIVE)
@click.option("--source", type=SOURCE_CHOICE, default="auto", show_default=True)
@KEEP_MISSING
@RETRY_FAILED
@MODEL
@PRETRAINED
@click.pass_context
def enqueue_cmd(ctx: click.Context, path, source: str, keep_missing: bool, retry_failed: bool,
                model_name: str | None, pretrained: str | None) -> None:
    """Scan PATH (a folder, or a .zip or .tgz archive) and queue its new files for the Celery workers;
    prints the run id."""
    from clipdex.database import open_database
    from indexer.producer import enqueue, plan_run

    settings = _run_settings(ctx, keep_missing, model_name, pretrained)
    _need_broker(settings)
    database = open_database(settings, repair_indexes=False)
    settings = _library_model(settings, database)
    plan = plan_run(settings, database, path, source=source, mode="celery", retry_failed=retry_failed)
    _print_plan(plan)
    sent = enqueue(settings, database, plan.run_id, plan.batches)
    click.echo(f"run {plan.run_id}: {plural(plan.files, 'file')} in {plural(sent, 'batch', 'batches')} queued "
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
        sent = resume(settings, open_database(settings, repair_indexes=False), run_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id}: {plural(sent, 'batch', 'batches')} queued again")


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--queues", default="embed", show_default=True,
              type=click.Choice(["embed", "ocr", "embed,ocr", "ocr,embed"]),
              help="embed: model work (one worker per GPU); ocr: reading text (CPU); or both.")
@click.option("--gpus", default=None,
              help="GPUs for the embed queue: 'all' (the default) or numbers such as 0,2. Several: one "
                   "worker process per GPU, each seeing only its own.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker_cmd(ctx: click.Context, queues: str, gpus: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on the embed queue (one process per GPU) or the ocr queue; extra
    arguments go to Celery."""
    from indexer.gpus import chosen_gpus, supervise, visible_gpus
    from indexer.worker import run_worker

    from clipdex.database import open_database

    settings = settings_of(ctx)
    _need_broker(settings)
    try:
        devices = chosen_gpus(gpus) if "embed" in queues else []
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if len(devices) > 1:
        if not visible_gpus():
            click.echo("clipdex worker: no GPU is visible here; each worker runs on the CPU", err=True)
        ctx.exit(supervise(settings, devices, queues, celery_args))
    if devices and visible_gpus():   # one GPU, by its number among those this process sees
        settings = settings.replace(device=f"cuda:{devices[0]}")
    if not settings.model_named:
        settings = _library_model(settings, open_database(settings, repair_indexes=False))
    run_worker(settings, celery_args, queues)


@click.command("dupes")
@click.option("--json", "as_json", is_flag=True, help="One group per line: its image ids, best copy first.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many groups (the largest first).")
@click.pass_context
def dupes_cmd(ctx: click.Context, as_json: bool, limit: int | None) -> None:
    """List the groups of photos that are one picture in other bytes (recompressed, resized,
    screenshots, light crops, bursts), with the copy worth keeping first. Photos indexed since the
    last grouping (or before clipdex kept groups) are grouped first."""
    import json

    from clipdex.database import open_database
    from indexer.lookalikes import group_new_images

    database = open_database(settings_of(ctx), repair_indexes=False)
    with database.connect(autocommit=True) as conn:
        grouped = group_new_images(conn)
        if grouped and not as_json:
            click.echo(f"grouped {plural(grouped, 'photo')} not grouped before", err=True)
        rows = conn.execute(
            "SELECT g.group_id, g.copies, g.best_id, g.image_ids, g.bytes_beside_best, "
            "ARRAY(SELECT coalesce((SELECT l.root || '/' || l.relpath FROM locations l WHERE l.image_id = m.id "
            "                       ORDER BY l.album IS NULL, l.first_seen_at, l.id LIMIT 1), '') "
            "      FROM unnest(g.image_ids) WITH ORDINALITY AS m(id, n) ORDER BY m.n) "
            "FROM duplicate_groups g ORDER BY g.copies DESC, g.group_id LIMIT %s", (limit,)).fetchall()
    for group, copies, best, image_ids, spare, paths in rows:
        if as_json:
            click.echo(json.dumps({"group": group, "copies": copies, "best": best, "image_ids": image_ids,
                                   "paths": [printable(p) for p in paths], "bytes_beside_best": int(spare)},
                                  ensure_ascii=False))
            continue
        click.echo(f"group {group}: {copies} copies, {spare / 1e6:.1f} MB beside the best")
        for n, (image_id, path) in enumerate(zip(image_ids, paths)):
            click.echo(f"  {'best ' if n == 0 else '     '}{image_id:>8}  {printable(path)}")
    if not rows and not as_json:
        click.echo("no photo has a look-alike")


@click.command("watch")
@click.argument("paths", nargs=-1, required=True, type=FOLDER)
@click.option("--rescan", type=click.FloatRange(min=1), default=None,
              help="Seconds between whole scans of PATHS (CLIPDEX_WATCH_RESCAN, default 900).")
@click.pass_context
def watch_cmd(ctx: click.Context, paths: tuple[Path, ...], rescan: float | None) -> None:
    """Keep the index of PATHS current: new, changed, moved and deleted photos are indexed as
    they settle (filesystem events, and a whole rescan every CLIPDEX_WATCH_RESCAN seconds for
    what no event announced). Runs here, or queues for the Celery workers when CLIPDEX_BROKER_URL
    is set. Stops on Ctrl-C or SIGTERM; `clipdex status` shows it."""
    import signal
    import threading

    from clipdex.database import open_database
    from indexer.watch import Watcher

    settings = settings_of(ctx)
    if rescan is not None:
        settings = settings.replace(watch_rescan=rescan)
    database = open_database(settings, repair_indexes=False)
    settings = _library_model(settings, database)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    where = "queued for the Celery workers" if settings.broker_url else "indexed in this process"
    click.echo(f"watching {', '.join(str(p) for p in paths)}: changes {where}, "
               f"a whole rescan every {duration(settings.watch_rescan)}", err=True)
    totals = Watcher(settings, database, list(paths), out=sys.stderr).run(stop)
    click.echo(f"stopped watching: {plural(totals.runs, 'run')}, {plural(totals.files, 'file')} indexed, "
               f"{totals.forgotten} forgotten")


COMMANDS = [index, enqueue_cmd, resume_cmd, worker_cmd, ocr_cmd, dupes_cmd, watch_cmd]

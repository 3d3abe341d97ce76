"""The ``clipdex`` command: the composition root.

It reads the settings (environment, then global flags), and assembles the commands, each defined
next to the code it drives: the core's in clipdex/commands.py, the indexer's and the web app's in
their own packages, found through the ``clipdex.commands`` entry points that pyproject.toml
declares. The core therefore never imports the indexer or the web app. Errors a user can act on
become one line on stderr and exit code 1; heavy modules load inside the commands that need them.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points

import click

from clipdex.commands import COMMANDS, user_errors
from clipdex.config import ConfigError, Settings
from clipdex.text import printable

ENTRY_POINT_GROUP = "clipdex.commands"


class ClipdexGroup(click.Group):
    """Adds the packages' commands on first use, and prints user-facing errors as one sentence
    instead of a traceback."""

    _assembled = False

    def _assemble(self) -> None:
        if not self._assembled:
            self._assembled = True
            for entry in entry_points(group=ENTRY_POINT_GROUP):
                for command in entry.load():
                    self.add_command(command)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._assemble()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._assemble()
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except user_errors() as exc:
            click.secho(f"clipdex: {printable(str(exc))}", fg="red", err=True)
            ctx.exit(1)


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


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="clipdex")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `ml-pipeline` command: a click group whose subcommands live in the `*_cmds` modules beside this one.

Each `<topic>_cmds.py` module exposes `COMMANDS`, a list of click commands or groups; they are added here
in module-name order, so a new topic needs no edit to this file. PipelineError subclasses become one line
on stderr and their exit code (2 bad usage/input, 1 job failed).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from ml_pipeline.errors import PipelineError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """VoxGuard ML pipeline: train, evaluate, register, compile and serve fraud models."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _add_topic_commands(group: click.Group) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.endswith("_cmds"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for command in module.COMMANDS:
                group.add_command(command)


_add_topic_commands(cli)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, mapping pipeline errors to exit codes and one-line messages."""
    try:
        cli.main(args=argv, prog_name="ml-pipeline", standalone_mode=False)
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)

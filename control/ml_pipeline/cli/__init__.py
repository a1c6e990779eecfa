"""The `ml-pipeline` command: a click group whose subcommands live in the `*_cmds` modules beside this one.

Each `<topic>_cmds.py` module exposes `COMMANDS`, a list of click commands or groups; they are added here
in module-name order, so a new topic needs no edit to this file. PipelineError subclasses become one line
on stderr and their exit code (2 bad usage/input, 1 job failed); so do click's usage errors and, as a last
resort, an OSError (a folder or file that cannot be written). Every line printed is redacted (no password).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from importlib import metadata

import click

from ml_pipeline.errors import PipelineError
from ml_pipeline.logs import configure_logging
from ml_pipeline.redaction import redact

DISTRIBUTION = "voxguard-ml-pipeline"


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), "--version", prog_name="ml-pipeline", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """VoxGuard ML pipeline: train, evaluate, register, compile and serve fraud models."""
    configure_logging(logging.DEBUG if verbose else logging.INFO)


def _add_topic_commands(group: click.Group) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.endswith("_cmds"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for command in module.COMMANDS:
                group.add_command(command)


_add_topic_commands(cli)


def one_line(text: object) -> str:
    """`text` redacted (no password) and on one line (the lines of a multi-line message joined by "; ")."""
    lines = [line.strip() for line in redact(text).splitlines() if line.strip()]
    return "; ".join(lines) or "unknown error"


def _usage_line(exc: click.ClickException) -> str:
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see `{ctx.command_path} -h`)"
    return message


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, mapping pipeline errors to exit codes and one-line messages."""
    from ml_pipeline.cli.checks import os_error

    try:
        cli.main(args=argv, prog_name="ml-pipeline", standalone_mode=False)
    except PipelineError as exc:
        click.echo(f"error: {one_line(exc.cli_message)}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(_usage_line(exc))}", err=True)
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # last resort: a file or folder that no check of the command foresaw
        logging.getLogger(__name__).debug("unexpected OSError", exc_info=True)
        error = os_error(exc)
        click.echo(f"error: {one_line(error.cli_message)}", err=True)
        sys.exit(error.exit_code)
    sys.exit(0)

"""How commands print results: a table (or key/value list) for people, JSON with --json for machines."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click
from tabulate import tabulate

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{len(value)} items]"
    if isinstance(value, Mapping):
        return f"{{{len(value)} keys}}"
    return value


def emit(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], as_json: bool, title: str | None = None) -> None:
    """Print a mapping as key/value lines or a sequence of mappings as a table; JSON when `as_json`."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str, sort_keys=False))
        return
    if title:
        click.echo(click.style(title, bold=True))
    if isinstance(data, Mapping):
        click.echo(tabulate([(k, _plain(v)) for k, v in data.items()], tablefmt="plain"))
    elif data:
        click.echo(tabulate([{k: _plain(v) for k, v in row.items()} for row in data], headers="keys"))
    else:
        click.echo("(none)")

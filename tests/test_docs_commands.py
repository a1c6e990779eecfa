"""Every `ml-pipeline …` command shown in docs/operations.md and README.md exists: the command path (group and
subcommand) and each option are resolved against the real click CLI, without running anything."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from ml_pipeline.cli import cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "docs" / "operations.md", ROOT / "README.md"]
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)  # also indented (in lists)
INLINE = re.compile(r"`(ml-pipeline [^`]+)`")
COMMAND = re.compile(r"(?:^|(?<=[\s/]))ml-pipeline(?=\s)")
SHELL_END = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "&"}


def shown_commands(text: str) -> list[str]:
    """The `ml-pipeline …` command lines of fenced code blocks (continuations joined) and of inline code."""
    found: list[str] = []
    for block in FENCE.findall(text):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            found += [line[m.start() :] for m in COMMAND.finditer(line)]
    found += INLINE.findall(FENCE.sub("", text))
    return found


def check_command(line: str, root: click.Group = cli) -> str | None:
    """None when `line` names an existing command with existing options, else what is wrong."""
    tokens = shlex.split(line, comments=True)[1:]
    command: click.Command = root
    path = ["ml-pipeline"]
    positional = 0
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token in SHELL_END:
            break
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            option = next((p for p in command.params if name in p.opts + p.secondary_opts), None)
            if option is None and name not in ("-h", "--help"):
                return f"{' '.join(path)}: no option {name}"
            if isinstance(option, click.Option) and not option.is_flag and not option.count and "=" not in token:
                index += 1  # its value
            continue
        if isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), token)
            if sub is None:
                return f"{' '.join(path)}: no command {token!r}"
            command, path = sub, [*path, token]
            continue
        positional += 1
    if isinstance(command, click.Group):
        return f"{' '.join(path)}: a group, not a command"
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    capacity = float("inf") if any(a.nargs == -1 for a in arguments) else sum(a.nargs for a in arguments)
    required = sum(a.nargs for a in arguments if a.required and a.nargs > 0)
    if not required <= positional <= capacity:
        return f"{' '.join(path)}: {positional} arguments, expected {required} to {capacity}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_documented_command_exists(document: Path) -> None:
    problems = [
        f"{line!r}: {problem}" for line in shown_commands(document.read_text()) if (problem := check_command(line))
    ]
    assert problems == []


def test_the_runbook_shows_the_operations_commands() -> None:
    commands = shown_commands((ROOT / "docs" / "operations.md").read_text())
    paths = {" ".join(shlex.split(c)[:3]) for c in commands}
    for expected in (
        "ml-pipeline registry promote",
        "ml-pipeline registry rollback",
        "ml-pipeline rollout start",
        "ml-pipeline rollout abort",
        "ml-pipeline compile",
        "ml-pipeline predict --target",
        "ml-pipeline evaluate --model",
    ):
        assert any(p.startswith(expected) for p in paths), expected


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("ml-pipeline registry frobnicate x", "no command 'frobnicate'"),
        ("ml-pipeline registry promote", "0 arguments, expected 1"),
        ("ml-pipeline registry promote a b", "2 arguments"),
        ("ml-pipeline rollout start m --percent 10", "no option --percent"),
        ("ml-pipeline rollout", "a group, not a command"),
    ],
)
def test_the_checker_refuses_what_the_cli_does_not_have(line: str, problem: str) -> None:
    assert problem in (check_command(line) or "")


def test_the_checker_accepts_options_values_and_pipes() -> None:
    assert check_command('ml-pipeline rollout start "$MODEL" --initial 0.1 --step=0.1 --json | jq .') is None
    assert shown_commands("```sh\nkubectl exec pod -- ml-pipeline registry list \\\n  --status champion\n```") == [
        "ml-pipeline registry list --status champion"
    ]

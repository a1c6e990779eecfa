"""Read the Dockerfile and .dockerignore the way Docker does, so tests can check and replay the image build
without a Docker engine: instructions grouped by stage, and the files of the build context."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    """One FROM … AS name stage: its base and its instructions as (KEYWORD, arguments) pairs."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        """The arguments of every instruction with this keyword, in order."""
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction: continuation lines joined, comment lines dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped[:-1].rstrip() + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            result.append((keyword.upper(), args.strip()))
            pending = ""
    return result


def stages(dockerfile: Path) -> dict[str, Stage]:
    """The stages by name (unnamed stages by index), in file order."""
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, args in instructions(dockerfile):
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(found))
            current = found[name] = Stage(name, parts[0])
        elif current is not None:
            current.instructions.append((keyword, args))
    return found


def _pattern(rule: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/?|\*|\?)", rule.strip("/"))
    translated = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(translated.get(p, re.escape(p)) for p in parts))


class DockerIgnore:
    """The rules of a .dockerignore: the last matching rule wins; a rule matching a folder covers its files."""

    def __init__(self, path: Path) -> None:
        lines = [line.strip() for line in path.read_text().splitlines()]
        self.rules = [
            (line.startswith("!"), _pattern(line.lstrip("!"))) for line in lines if line and not line.startswith("#")
        ]

    def excluded(self, relative: str) -> bool:
        """True when Docker leaves this path (relative, with /) out of the build context."""
        prefixes = [relative[:i] for i, ch in enumerate(relative) if ch == "/"] + [relative]
        verdict = False
        for include, pattern in self.rules:
            if any(pattern.fullmatch(p) for p in prefixes):
                verdict = not include
        return verdict

    def context_files(self, root: Path) -> list[str]:
        """Relative paths of every file Docker would send as the build context of `root`."""
        reincluded = [p.pattern for include, p in self.rules if include]
        files: list[str] = []
        for folder, dirs, names in os.walk(root):
            base = os.path.relpath(folder, root)
            base = "" if base == "." else base + "/"
            # skip folders that are excluded and that no re-include rule can reach into
            dirs[:] = [
                d
                for d in dirs
                if d != ".git"
                and (not self.excluded(base + d) or any(r.startswith(re.escape(base + d)) for r in reincluded))
            ]
            files += [base + n for n in names if not self.excluded(base + n)]
        return sorted(files)

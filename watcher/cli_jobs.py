"""The `import` and `export` commands: start a contact job and watch it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from watcher.config import Config

COMMANDS: frozenset[str] = frozenset()


def add_parsers(with_config: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add this module's commands to the parser."""


def run(command: str, config: Config, args: argparse.Namespace) -> int:
    """Run one of COMMANDS; returns the exit code."""
    raise NotImplementedError(command)

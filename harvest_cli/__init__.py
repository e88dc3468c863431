"""The `harvest` command: the entry-point layer. It sits above `flows/` and `blocks/`, which sit above the
domain package `harvest/`; nothing below imports it (import-linter checks the direction)."""

from harvest_cli.main import app, main

__all__ = ["app", "main"]

"""The `harvest` command: the entry-point layer. It sits above `flows/` and `blocks/`, which sit above the
domain package `harvest/`; nothing below imports it (import-linter checks the direction)."""

from harvest_cli.prefect_defaults import apply_prefect_defaults

# Before anything imports Prefect, which reads its settings at import (see prefect_defaults for why).
apply_prefect_defaults()

from harvest_cli.main import app, console_script, main  # noqa: E402 - must follow the defaults above

__all__ = ["app", "console_script", "main"]

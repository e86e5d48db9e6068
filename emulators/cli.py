"""`catalog-sync emulate …`: each emulator module contributes one command."""

from __future__ import annotations

import typer

emulate = typer.Typer(
    help="Run a local emulator of the catalog API or a shop (for tests, benchmarks, demos).", no_args_is_help=True
)

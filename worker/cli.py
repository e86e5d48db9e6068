"""The admin command `catalog-sync`."""

from __future__ import annotations

import typer

from emulators.cli import emulate

app = typer.Typer(help="Keep the try-on catalog in step with your shops.", no_args_is_help=True)
app.add_typer(emulate, name="emulate")


def main() -> None:
    app()

"""The version catalog-sync reports (the user agent of every request it sends)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final


def _installed_version() -> str:
    # Read from the installed distribution so pyproject.toml is the one place the number is written. A checkout run
    # without being installed (PYTHONPATH=.) has no metadata: it still runs, and says so in its user agent.
    try:
        return version("catalog-sync")
    except PackageNotFoundError:
        return "0+unknown"


__version__: Final = _installed_version()

"""The layers hold: ground <- config <- connectors <- worker, with the emulators beside them and never loaded by
production. `lint-imports` checks every import (even inside functions) against the contracts in pyproject.toml;
a fresh interpreter shows what importing the admin command actually loads."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contracts() -> list[dict[str, object]]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        found: list[dict[str, object]] = tomllib.load(file)["tool"]["importlinter"]["contracts"]
    return found


def test_the_layer_contracts_name_every_package_from_the_ground_up() -> None:
    layers = [contract["layers"] for contract in contracts() if contract["type"] == "layers"]

    assert layers == [["worker", "connectors", "config", "ground"]]


def test_every_import_keeps_the_layer_contracts() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


def test_importing_the_admin_command_loads_no_emulator_and_no_graphql() -> None:
    # Then lists the emulator commands, which must load emulators.cli: proof the look into sys.modules can see one.
    program = (
        "import json, sys\n"
        "def loaded(): return sorted(m for m in sys.modules if m.split('.')[0] in ('emulators', 'graphql'))\n"
        "import worker.cli\n"
        "before = loaded()\n"
        "worker.cli.emulator_group()\n"
        "print(json.dumps([before, loaded()]))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert before == []
    assert "emulators.cli" in after

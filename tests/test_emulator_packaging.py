"""The emulators stay out of production: the worker imports neither them nor graphql-core (which only the Shopify
emulator needs, from the `emulators` extra), and `catalog-sync emulate shopify` says what to install without it.

Each check runs in a fresh interpreter where importing graphql fails, as on a machine that installed the worker alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Makes `import graphql` fail the way a missing package does, then runs the rest of the program.
WITHOUT_GRAPHQL = "import sys\nsys.modules['graphql'] = None\n"
# The demo runs emulators on purpose (it is a tour, not the service); migrations are loaded by Alembic.
NOT_PRODUCTION = ("worker.demo", "worker.migrations")


def python(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_GRAPHQL + program], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_every_production_module_imports_without_graphql_and_without_an_emulator() -> None:
    program = f"""
import importlib, pkgutil
import config, connectors, ground, worker
names = []
for package in (ground, config, connectors, worker):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.startswith({NOT_PRODUCTION!r}):
            importlib.import_module(module.name)
            names.append(module.name)
# The CLI mounts `emulate` lazily: emulators.cli, and through it an emulator, is imported only when its command runs.
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "emulators")
print(len(names), loaded)
"""

    result = python(program)

    assert result.returncode == 0, result.stderr
    count, loaded = result.stdout.split(" ", 1)
    assert int(count) > 10
    assert loaded.strip() == "[]"


def test_no_production_module_imports_an_emulator_even_inside_a_function() -> None:
    offenders = []
    for package in ("ground", "config", "connectors", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if module.startswith(NOT_PRODUCTION):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [f"{module}: {name}" for name in names if name.split(".")[0] == "emulators"]

    # `catalog-sync emulate` is the one door, and emulators.cli opens an emulator only when its command runs.
    assert offenders == ["worker.cli: emulators.cli"]


def test_emulate_shopify_without_graphql_core_says_which_extra_to_install() -> None:
    result = python("from worker.cli import main\nsys.argv = ['catalog-sync', 'emulate', 'shopify']\nmain()\n")

    assert result.returncode == 1
    assert "graphql-core" in result.stderr
    assert "pip install 'catalog-sync[emulators]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_the_other_emulators_still_start_their_command_without_graphql_core() -> None:
    # `--help` parses the command and its options without serving: enough to show nothing imports graphql on the way.
    result = python(
        "from worker.cli import main\nsys.argv = ['catalog-sync', 'emulate', 'woocommerce', '--help']\nmain()\n"
    )

    assert result.returncode == 0, result.stderr
    assert "WooCommerce store" in result.stdout

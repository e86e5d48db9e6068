"""The chaos suite's quick form (bench/chaos.py --quick): real workers, beat, serve, a Redis and a catalog emulator
of each scenario's own, a few hundred products, short recovery settings. Each scenario asserts what the full suite
does: nothing lost, nothing extra, no false `synced` row, no service dead, converged within the bound after the
fault cleared. Needs PostgreSQL (the shared one, and its binaries for a private instance) and `redis-server`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import chaos

from config.settings import get_settings

# Startup of six processes and the scenario itself, on a busy machine: a guard against a hang, not a measure.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def own_environment() -> Iterator[None]:
    """The suite points this process's Celery app at each scenario's broker through CATALOG_SYNC_* variables
    (`configure_publisher`); they are put back afterwards so no later test reads a scenario's settings."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


@pytest.fixture
def quick(postgres_url: str) -> argparse.Namespace:
    """The suite's quick arguments; `postgres_url` fails the test loudly when PostgreSQL does not answer."""
    return argparse.Namespace(products=chaos.QUICK_PRODUCTS, quick=True, keep=False)


def assert_converged(figures: chaos.Figures) -> None:
    assert figures.problems == []
    assert (figures.lost, figures.extra, figures.wrong, figures.false_synced) == (0, 0, 0, 0)
    assert figures.in_catalog == figures.expected > 0
    assert figures.converged_after is not None
    assert figures.converged_after <= chaos.TARGET
    assert figures.ok


def test_killed_workers_and_beat_lose_nothing(quick: argparse.Namespace) -> None:
    [figures] = chaos.scenario_kill(quick)
    assert_converged(figures)


def test_a_redis_restarted_empty_loses_nothing_and_kills_no_worker(quick: argparse.Namespace) -> None:
    [figures] = chaos.scenario_redis(quick)
    assert_converged(figures)


def test_catalog_errors_drops_and_429_bursts_lose_nothing(quick: argparse.Namespace) -> None:
    [figures] = chaos.scenario_catalog(quick)
    assert_converged(figures)


def test_a_postgresql_outage_loses_nothing(quick: argparse.Namespace) -> None:
    [figures] = chaos.scenario_postgres(quick)
    assert_converged(figures)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_webhooks_during_a_sync_all_answered_and_converged(quick: argparse.Namespace, database: str) -> None:
    figures = chaos.webhooks_on(quick, database)
    assert_converged(figures)


def test_an_empty_or_truncated_listing_deletes_nothing(quick: argparse.Namespace) -> None:
    [figures] = chaos.scenario_listing(quick)
    assert_converged(figures)

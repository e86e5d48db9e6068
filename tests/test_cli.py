"""The admin command as an operator runs it: a real process, real exit codes, JSON on stdout."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sync_helpers import (
    SOURCE,
    SyncWorld,
    ext,
    feed_item,
    postgres_schema,
    process_env,
    run_cli,
    sync_world,
    write_feed,
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path) as w:
        yield w


def cli(world: SyncWorld, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    settings = {
        "CATALOG_SYNC_CATALOG_RATE_LIMIT": "500",
        "CATALOG_SYNC_CATALOG_MAX_ATTEMPTS": "1",
        "COLUMNS": "200",
        **(extra_env or {}),
    }
    return run_cli(process_env(world, settings), *args)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def test_an_inline_full_resync_reports_what_happened_as_json(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1"), feed_item("2"), feed_item("bare", images=0), feed_item("3", title="")])

    result = cli(world, "resync", SOURCE, "--full", "--inline", "--json")

    assert result.returncode == 0, result.stderr
    summary = as_json(result)
    assert summary["outcome"] == "converged"
    assert (summary["synced"], summary["skipped"], summary["failed"], summary["pending"]) == (2, 2, 0, 0)

    again = as_json(cli(world, "resync", SOURCE, "--full", "--inline", "--json"))
    assert (again["synced"], again["unchanged"]) == (0, 4)


def test_failed_products_give_exit_status_1_and_are_listed(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1")])
    world.faults(fail_next=1000)

    result = cli(
        world, "resync", SOURCE, "--full", "--inline", "--json", extra_env={"CATALOG_SYNC_PUSH_MAX_ATTEMPTS": "1"}
    )

    assert result.returncode == 1
    assert as_json(result)["failed"] == 1
    failures = as_json(cli(world, "failures", "--json"))
    assert failures[0]["product"] == "1"
    assert failures[0]["code"] == "HTTP_503"

    world.faults(fail_next=0)
    retried = cli(world, "retry", SOURCE, "--inline")
    assert retried.returncode == 0, retried.stderr
    assert ext("1") in world.catalog_products()


def test_a_configuration_error_names_the_field_and_exits_2(world: SyncWorld, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sources]]\nname = "x"\nkind = "feed"\nurl = "f.json"\nexternal_id = "{sku}"\n', encoding="utf-8")

    result = cli(world, "status", extra_env={"CATALOG_SYNC_CONFIG": str(bad)})

    assert result.returncode == 2
    assert "external_id" in result.stderr
    assert "{sku}" in result.stderr or "sku" in result.stderr


def test_an_unknown_source_exits_2(world: SyncWorld) -> None:
    result = cli(world, "resync", "nope", "--inline")

    assert result.returncode == 2
    assert "unknown source 'nope'" in result.stderr


def test_status_shows_products_by_status_and_runs(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1"), feed_item("2", status="draft")])
    cli(world, "resync", SOURCE, "--full", "--inline")

    report = as_json(cli(world, "status", SOURCE, "--json"))

    assert report[SOURCE]["products"]["synced"] == 1
    assert report[SOURCE]["runs"][0]["outcome"] == "completed"


def test_a_mass_deletion_is_held_and_then_confirmed(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(5)])
    cli(world, "resync", SOURCE, "--full", "--inline")
    write_feed(world.feed, [feed_item("0")])

    held = as_json(cli(world, "resync", SOURCE, "--full", "--inline", "--json"))
    assert held["outcome"] == "deletion_blocked"
    assert held["deletion_blocked"] == 4
    assert len(world.catalog_products()) == 5

    confirmed = as_json(cli(world, "resync", SOURCE, "--full", "--inline", "--json", "--allow-mass-delete"))
    assert confirmed["deleted"] == 4
    assert sorted(world.catalog_products()) == [ext("0")]


def test_a_broken_feed_fails_the_run_with_exit_status_1(world: SyncWorld) -> None:
    world.feed.write_text("{not json", encoding="utf-8")

    result = cli(world, "resync", SOURCE, "--full", "--inline", "--json")

    assert result.returncode == 1
    assert as_json(result)["outcome"] == "failed"


def test_sources_checks_that_each_source_can_be_read(world: SyncWorld, tmp_path: Path) -> None:
    write_feed(world.feed, [feed_item("1")])
    config = Path(world.runtime.settings.config)
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[[sources]]\nname = "gone"\nkind = "feed"\nurl = "{tmp_path / "missing.json"}"\n',
        encoding="utf-8",
    )

    result = cli(world, "sources")

    assert result.returncode == 1
    assert SOURCE in result.stdout
    assert "ok" in result.stdout
    assert "SourceError" in result.stdout


def test_an_unmigrated_postgresql_database_is_refused_until_db_upgrade(
    world: SyncWorld, postgres_url: str, unique: str
) -> None:
    with postgres_schema(postgres_url, f"cli_{unique}") as url:
        env = {"CATALOG_SYNC_DATABASE_URL": url}
        refused = cli(world, "status", extra_env=env)
        upgraded = cli(world, "db", "upgrade", extra_env=env)
        accepted = cli(world, "status", "--json", extra_env=env)

    assert refused.returncode == 2
    assert "run `catalog-sync db upgrade`" in refused.stderr
    assert upgraded.returncode == 0, upgraded.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert as_json(accepted)[SOURCE]["products"] == {}

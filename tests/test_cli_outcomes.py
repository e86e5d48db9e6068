"""Honest outcomes and named mistakes, as an operator meets them: the admin command as a real process, its exit
status, stdout, stderr and `--json`. Each test is one of the cases a new user ran into (issue 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.sync_helpers import (
    CLI,
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
from tests.worker_helpers import broker_world, catalog_sync
from worker.state import utcnow

PASSWORD = "s3cret-pw"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path) as w:
        yield w


def cli(
    world: SyncWorld, *args: str, env: dict[str, str | None] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    settings = {"CATALOG_SYNC_CATALOG_RATE_LIMIT": "500", "CATALOG_SYNC_CATALOG_MAX_ATTEMPTS": "1", **(env or {})}
    return run_cli(process_env(world, settings), *args, cwd=cwd)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


# ------------------------------------------------------------------------------- 1. outcomes that tell the truth


def test_an_unreachable_catalog_with_inline_is_not_converged_and_exits_3(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(3)])

    result = cli(
        world,
        *("resync", SOURCE, "--full", "--inline", "--timeout", "1", "--json"),
        env={"CATALOG_SYNC_CATALOG_URL": "http://127.0.0.1:1/tryon/v1"},
    )

    assert result.returncode == 3, result.stderr
    summary = as_json(result)
    assert (summary["outcome"], summary["pending"], summary["synced"]) == ("not_converged", 3, 0)
    assert summary["stopped"] == "timed_out"
    assert "--timeout" in summary["reason"]
    pending = [r for r in summary["reasons"] if r["status"] == "pending"]
    assert pending[0]["code"] == "UNAVAILABLE" and "ConnectError" in pending[0]["message"]


def test_inline_honours_the_timeout_for_the_pushes_themselves(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(5)])

    result = cli(world, "resync", SOURCE, "--full", "--inline", "--timeout", "0", "--json")

    assert result.returncode == 3
    assert as_json(result)["pending"] == 5
    assert world.stats()["upserts"] == 0, "past the timeout nothing is pushed"
    assert world.runtime.store.take_due(limit=10, requeue_after=900) != [], "reconcile sends them at once"


def test_a_refused_key_with_inline_is_not_converged_and_says_why(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1"), feed_item("2")])

    result = cli(world, "resync", SOURCE, "--full", "--inline", "--json", env={"CATALOG_SYNC_CATALOG_API_KEY": "wrong"})

    assert result.returncode == 3
    summary = as_json(result)
    assert (summary["outcome"], summary["stopped"], summary["pending"]) == ("not_converged", "paused", 2)
    assert "the catalog refused the API key (401 INVALID_API_KEY)" in summary["reason"]
    assert f"catalog-sync retry {SOURCE}" in summary["reason"]


@pytest.fixture
def broker(tmp_path: Path, redis_url: str) -> Iterator[SyncWorld]:
    with broker_world(tmp_path, redis_url) as w:
        yield w


def test_wait_stops_at_once_when_the_sources_pushes_are_paused(broker: SyncWorld) -> None:
    write_feed(broker.feed, [feed_item("12")])
    reason = "the catalog refused the API key (401 INVALID_API_KEY); fix CATALOG_SYNC_CATALOG_API_KEY"
    broker.runtime.store.pause_source(SOURCE, until=utcnow() + timedelta(minutes=5), reason=reason)

    # The default timeout is an hour: only stopping at once lets this return
    result = catalog_sync(broker, "resync", SOURCE, "--product", "12", "--wait", "--json")

    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["stopped"]) == ("not_converged", "paused")
    assert reason in summary["reason"]


def test_wait_that_times_out_is_not_converged_and_names_the_missing_worker(broker: SyncWorld) -> None:
    write_feed(broker.feed, [feed_item("1")])

    result = catalog_sync(broker, "resync", SOURCE, "--full", "--wait", "--timeout", "1", "--json")

    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["stopped"]) == ("not_converged", "no_worker")
    assert "catalog-sync worker" in summary["reason"]


# ------------------------------------------------------------------------------------- 2. mistakes named


def test_a_mistyped_variable_is_named_with_the_setting_it_meant(world: SyncWorld, tmp_path: Path) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    result = cli(world, "status", env={"CATALOG_SYNC_DATABASE": "sqlite:///x.db"}, cwd=workdir)

    assert result.returncode == 2
    assert "CATALOG_SYNC_DATABASE: not a catalog-sync setting; did you mean CATALOG_SYNC_DATABASE_URL?" in result.stderr
    assert list(workdir.iterdir()) == [], "no database appears where the command ran"


def test_status_names_the_database_it_reads(world: SyncWorld) -> None:
    result = cli(world, "status")

    assert result.returncode == 0, result.stderr
    assert f"state database: {world.runtime.settings.database_url}" in result.stderr


def test_a_missing_sources_file_is_an_error_except_for_db_upgrade(world: SyncWorld, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")

    status = cli(world, "status", env={"CATALOG_SYNC_CONFIG": missing})
    upgrade = cli(world, "db", "upgrade", env={"CATALOG_SYNC_CONFIG": missing})

    assert status.returncode == 2
    assert f"the sources file {missing} does not exist" in status.stderr
    assert "CATALOG_SYNC_CONFIG" in status.stderr
    assert upgrade.returncode == 0, upgrade.stderr


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_refuse_to_start_without_a_readable_config(
    world: SyncWorld, tmp_path: Path, command: str
) -> None:
    result = cli(world, command, env={"CATALOG_SYNC_CONFIG": str(tmp_path / "nope.toml")})

    assert result.returncode == 2
    assert "does not exist" in result.stderr
    no_traceback(result)


def test_an_unknown_top_level_key_in_the_sources_file_is_named(world: SyncWorld, tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text(f'[[source]]\nname = "x"\nkind = "feed"\nurl = "{world.feed}"\n', encoding="utf-8")

    result = cli(world, "status", env={"CATALOG_SYNC_CONFIG": str(typo)})

    assert result.returncode == 2
    assert "unknown top-level key(s):\n  source: did you mean [[sources]]?" in result.stderr


@pytest.mark.parametrize("command", ["status", "failures"])
def test_an_unknown_source_is_refused(world: SyncWorld, command: str) -> None:
    result = cli(world, command, "nosuch")

    assert result.returncode == 2
    assert f"unknown source 'nosuch' (configured: {SOURCE})" in result.stderr


# ------------------------------------------------------------------------------------ 3. bad database URLs


def _bad_urls(tmp_path: Path) -> list[tuple[str, str]]:
    return [
        (f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test", "is PostgreSQL running at 127.0.0.1:1?"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_catalog_sync", "createdb no_such_db_catalog_sync"),
        (f"sqlite:///{tmp_path / 'no-dir' / 'state.db'}", f"the directory {tmp_path / 'no-dir'} does not exist"),
        ("mysql://root@127.0.0.1/x", "'mysql' is not a supported state database"),
    ]


@pytest.mark.parametrize("case", range(4), ids=["closed-port", "missing-database", "missing-sqlite-dir", "mysql"])
def test_a_bad_database_url_is_a_configuration_error_naming_the_fix(
    world: SyncWorld, tmp_path: Path, case: int, postgres_url: str
) -> None:
    url, fix = _bad_urls(tmp_path)[case]

    result = cli(world, "status", env={"CATALOG_SYNC_DATABASE_URL": url})

    assert result.returncode == 2
    assert "CATALOG_SYNC_DATABASE_URL" in result.stderr
    assert fix in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    no_traceback(result)


@pytest.mark.parametrize("command", [("worker",), ("serve", "--port", "0"), ("db", "upgrade"), ("beat",)])
def test_every_command_reports_an_unreachable_database_the_same_way(world: SyncWorld, command: tuple[str, ...]) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"

    result = cli(world, *command, env={"CATALOG_SYNC_DATABASE_URL": url})

    assert result.returncode == 2
    assert "cannot use the state database postgresql+psycopg://postgres:***@127.0.0.1:1/test" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    no_traceback(result)


def test_a_postgres_url_is_accepted_as_postgresql(world: SyncWorld, postgres_url: str, unique: str) -> None:
    with postgres_schema(postgres_url, f"url_{unique}") as schema_url:
        url = schema_url.replace("postgresql+psycopg://", "postgres://", 1)
        upgraded = cli(world, "db", "upgrade", env={"CATALOG_SYNC_DATABASE_URL": url})
        status = cli(world, "status", "--json", env={"CATALOG_SYNC_DATABASE_URL": url})

    assert upgraded.returncode == 0, upgraded.stderr
    assert status.returncode == 0, status.stderr
    assert "state database: postgresql+psycopg://" in status.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo://broker", "'foo' is not a supported broker"),
        (f"redis://:{PASSWORD}@127.0.0.1:1/0", "cannot reach the broker redis://:***@127.0.0.1:1/0"),
    ],
    ids=["unknown-scheme", "unreachable"],
)
def test_a_bad_broker_url_stops_the_worker_with_exit_2(world: SyncWorld, url: str, expected: str) -> None:
    result = cli(world, "worker", env={"CATALOG_SYNC_BROKER_URL": url})

    assert result.returncode == 2
    assert "CATALOG_SYNC_BROKER_URL" in result.stderr
    assert expected in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


# ------------------------------------------------------------------------------------ 4. no text lost to markup


def test_square_brackets_survive_in_messages(world: SyncWorld, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("sources = 5\n", encoding="utf-8")
    feed = tmp_path / "feed[red].json"
    write_feed(feed, [])
    listed = tmp_path / "listed.toml"
    listed.write_text(f'[[sources]]\nname = "{SOURCE}"\nkind = "feed"\nurl = "{feed}"\n', encoding="utf-8")

    config_error = cli(world, "status", env={"CATALOG_SYNC_CONFIG": str(bad)})
    sources = cli(world, "sources", env={"CATALOG_SYNC_CONFIG": str(listed)})

    assert "write each as [[sources]]" in config_error.stderr
    assert "feed[red].json" in sources.stdout


# ------------------------------------------------------------------------------------ 5. no URL with its password


def test_run_embedded_prints_the_database_url_without_its_password(
    world: SyncWorld, postgres_url: str, unique: str
) -> None:
    with_password = postgres_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    with postgres_schema(with_password, f"emb_{unique}") as url:
        upgraded = cli(world, "db", "upgrade", env={"CATALOG_SYNC_DATABASE_URL": url})
        banner = _first_line_of_embedded(world, url)

    assert upgraded.returncode == 0, upgraded.stderr
    assert PASSWORD not in upgraded.stderr + upgraded.stdout
    assert "state in postgresql+psycopg://postgres:***@" in banner
    assert PASSWORD not in banner


def _first_line_of_embedded(world: SyncWorld, database_url: str) -> str:
    env = process_env(world, {"CATALOG_SYNC_DATABASE_URL": database_url})
    process = subprocess.Popen(
        [*CLI, "run", "--embedded", "--webhook-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "catalog-sync embedded" in line or "error" in line.lower():
                return line
        return ""
    finally:
        process.terminate()
        process.wait(timeout=30)


# --------------------------------------------------------------------- 6. a held deletion, and retry after a pause


def test_a_held_deletion_exits_4_and_status_shows_the_confirming_command(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(5)])
    cli(world, "resync", SOURCE, "--full", "--inline")
    write_feed(world.feed, [feed_item("0")])

    held = cli(world, "resync", SOURCE, "--full", "--inline", "--json")
    status = cli(world, "status", SOURCE)
    status_json = as_json(cli(world, "status", SOURCE, "--json"))

    assert held.returncode == 4
    summary = as_json(held)
    assert (summary["outcome"], summary["deletion_blocked"]) == ("deletion_blocked", 4)
    assert summary["confirm"] == f"catalog-sync resync {SOURCE} --full --allow-mass-delete"
    assert f"confirm with `catalog-sync resync {SOURCE} --full --allow-mass-delete`" in status.stdout
    assert status_json[SOURCE]["deletion_held"]["products"] == 4


def test_retry_after_a_fixed_key_says_how_many_products_go_out_again(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1"), feed_item("2"), feed_item("3")])
    cli(world, "resync", SOURCE, "--full", "--inline", env={"CATALOG_SYNC_CATALOG_API_KEY": "wrong"})

    retried = cli(world, "retry", SOURCE, "--inline")

    assert retried.returncode == 0, retried.stderr
    assert f"pushes of {SOURCE} resumed, 3 pending product(s) go out again" in retried.stderr
    assert "refused the API key" in retried.stderr
    assert sorted(world.catalog_products()) == [ext("1"), ext("2"), ext("3")]


# ------------------------------------------------------------------------------ 7. every skip says why


def test_every_skip_says_why_in_failures_status_and_json(tmp_path: Path) -> None:
    with sync_world(tmp_path, toml_extra='external_id = "{id}"') as world:
        _every_skip_says_why(world)


def _every_skip_says_why(world: SyncWorld) -> None:
    write_feed(
        world.feed,
        [feed_item("ok"), feed_item("ftp", images=0, image_link="ftp://cdn.example/a.jpg"), feed_item("_anon_7")],
    )

    run = as_json(cli(world, "resync", SOURCE, "--full", "--inline", "--json"))
    listed = {row["product"]: row for row in as_json(cli(world, "failures", SOURCE, "--skipped", "--json"))}
    status = as_json(cli(world, "status", SOURCE, "--json"))[SOURCE]
    table = cli(world, "failures", SOURCE, "--skipped")

    assert run["skipped"] == 2
    ftp, anon = listed["ftp"], listed["_anon_7"]
    assert ftp["code"] == "no_images"
    assert "the product has no usable image" in ftp["message"]
    assert anon["code"] == "invalid_product"
    assert "externalId: externalId must not start with '_anon_'" in anon["message"]
    reasons = {(r["status"], r["code"]): r for r in status["reasons"]}
    assert reasons[("skipped", "invalid_product")]["message"] == anon["message"]
    assert reasons[("skipped", "no_images")]["products"] == 1
    assert {(r["code"], r["message"]) for r in run["reasons"]} >= {(anon["code"], anon["message"])}
    assert "must not start with '_anon_'" in table.stdout


def test_a_webhook_driven_skip_says_why(tmp_path: Path, redis_url: str, unique: str) -> None:
    from emulators.server import running
    from tests.webhooks_support import (
        broker_url,
        make_runtime,
        make_sources,
        shopify_headers,
        shopify_product,
        use_broker,
    )
    from worker import schema
    from worker.state import make_engine
    from worker.webhooks import create_app

    database_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(database_url)
    schema.upgrade(engine)
    engine.dispose()
    runtime = make_runtime(database_url, make_sources(unique), broker_url(), tmp_path)
    use_broker(runtime)
    product = shopify_product(7, title="Linen shirt", updated_at="2026-01-01T00:00:00Z")
    product["images"] = [{"id": 70, "src": "ftp://cdn.example/7.jpg", "alt": None}]
    body = json.dumps(product).encode()
    try:
        with running(create_app(runtime)) as server:
            import httpx

            answer = httpx.post(
                f"{server.url}/webhooks/shop-{unique}", content=body, headers=shopify_headers(body), timeout=10
            )
    finally:
        runtime.close()
    config = tmp_path / "sources.toml"
    config.write_text("# the webhook's source is in the state database only\n", encoding="utf-8")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CATALOG_SYNC_")},
        "CATALOG_SYNC_CONFIG": str(config),
        "CATALOG_SYNC_DATABASE_URL": database_url,
    }
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from worker.cli import main; main()",
            "failures",
            f"shop-{unique}",
            "--skipped",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert answer.status_code == 200, answer.text
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["product"], row["code"]) == ("7", "invalid_product")
    assert "images[0].source.url: url must be an absolute http(s) URL, got 'ftp://cdn.example/7.jpg'" in row["message"]


# ---------------------------------------------------------------------------------- 8. counts that add up


def test_drafts_never_in_the_catalog_are_not_counted_as_deleted(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1"), feed_item("d1", status="draft"), feed_item("d2", status="draft")])

    summary = as_json(cli(world, "resync", SOURCE, "--full", "--inline", "--json"))
    status = as_json(cli(world, "status", SOURCE, "--json"))[SOURCE]["products"]

    assert (summary["synced"], summary["deleted"], summary["inactive"]) == (1, 0, 2)
    assert (status.get("deleted", 0), status["inactive"]) == (0, 2)
    assert world.stats()["deletes"] == 0

    write_feed(world.feed, [feed_item("1", status="draft"), feed_item("d1", status="draft")])
    again = as_json(cli(world, "resync", SOURCE, "--full", "--inline", "--json", "--allow-mass-delete"))
    assert again["deleted"] == 1 and world.stats()["deletes"] == 1


def test_a_record_without_an_id_is_listed_with_the_others_skipped(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1"), feed_item("bare", images=0), {"title": "no id", "link": "https://x.io"}])

    result = cli(world, "resync", SOURCE, "--full", "--inline")
    summary = as_json(cli(world, "resync", SOURCE, "--full", "--inline", "--json"))

    assert "skipped 1 record(s) without a product id: missing_id" in result.stdout
    assert "bare" in result.stdout
    assert summary["skipped_without_id"] == {"missing_id": 1}


def test_inline_and_status_agree_on_pending(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item(str(n)) for n in range(4)] + [feed_item("bare", images=0)])

    summary = as_json(
        cli(world, "resync", SOURCE, "--full", "--inline", "--json", env={"CATALOG_SYNC_CATALOG_API_KEY": "wrong"})
    )
    status = as_json(cli(world, "status", SOURCE, "--json"))[SOURCE]["products"]

    assert summary["pending"] == status["pending"] == 4
    assert summary["skipped"] == status["skipped"] == 1

    # A second run changes nothing, and the products it asked for are still pending: it says so
    again = cli(world, "resync", SOURCE, "--full", "--inline", "--json", env={"CATALOG_SYNC_CATALOG_API_KEY": "wrong"})
    assert again.returncode == 3
    assert (as_json(again)["unchanged"], as_json(again)["pending"]) == (5, 4)


# ---------------------------------------------------------------------- 10. the vendor's 402 pauses like a bad key


def test_an_account_without_credits_pauses_pushes_and_status_says_why(world: SyncWorld) -> None:
    write_feed(world.feed, [feed_item("1")])
    world.faults(credits_exhausted=True)

    result = cli(world, "resync", SOURCE, "--full", "--inline", "--json")
    status = cli(world, "status", SOURCE)

    assert result.returncode == 3
    assert as_json(result)["stopped"] == "paused"
    assert "pushes paused: the catalog account has no credits left (402 INSUFFICIENT_CREDITS)" in status.stdout
    assert f"run `catalog-sync retry {SOURCE}`" in status.stdout


def test_a_source_url_with_a_password_is_listed_masked(world: SyncWorld, tmp_path: Path) -> None:
    config = tmp_path / "secret.toml"
    config.write_text(
        f'[[sources]]\nname = "{SOURCE}"\nkind = "feed"\nurl = "https://merchant:{PASSWORD}@127.0.0.1:1/feed.xml"\n'
        'timeout = 1\n[[sources]]\nname = "bad"\nkind = "feed"\nurl = "https://merchant:'
        f'{PASSWORD}@127.0.0.1:1/x.xml"\nformat = "yaml"\n',
        encoding="utf-8",
    )

    invalid = cli(world, "sources", env={"CATALOG_SYNC_CONFIG": str(config)})
    config.write_text(config.read_text(encoding="utf-8").split('[[sources]]\nname = "bad"')[0], encoding="utf-8")
    listed = cli(world, "sources", env={"CATALOG_SYNC_CONFIG": str(config)})

    assert invalid.returncode == 2
    assert "format" in invalid.stderr
    assert "https://merchant:***@127.0.0.1:1/feed.xml" in listed.stdout
    assert PASSWORD not in invalid.stderr + invalid.stdout + listed.stdout + listed.stderr


def test_a_mistyped_key_in_the_env_file_is_named_too(world: SyncWorld, tmp_path: Path) -> None:
    workdir = tmp_path / "with-env"
    workdir.mkdir()
    (workdir / ".env").write_text("CATALOG_SYNC_CATALOG_APIKEY=abc\n", encoding="utf-8")

    result = cli(world, "status", cwd=workdir)

    assert result.returncode == 2
    assert (
        "CATALOG_SYNC_CATALOG_APIKEY (in .env): not a catalog-sync setting; did you mean CATALOG_SYNC_CATALOG_API_KEY?"
        in result.stderr
    )


def test_accounts_are_a_known_top_level_key_and_a_typo_of_them_is_named(world: SyncWorld, tmp_path: Path) -> None:
    typo = tmp_path / "account.toml"
    typo.write_text(
        f'[[account]]\nname = "eu"\napi_key = "env:EU_KEY"\n\n[[sources]]\nname = "{SOURCE}"\nkind = "feed"\n'
        f'url = "{world.feed}"\n',
        encoding="utf-8",
    )

    result = cli(world, "status", env={"CATALOG_SYNC_CONFIG": str(typo)})

    assert result.returncode == 2
    assert "  account: did you mean [[accounts]]?" in result.stderr

"""Catalog accounts: each with its own key, limit, budget and products; nothing of one leaks into another."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from config.accounts import DEFAULT_ACCOUNT, parse_accounts, resolve_accounts
from config.settings import Settings
from ground.errors import ConfigError
from tests.sync_helpers import API_KEY, SyncWorld, feed_item, process_env, run_cli, sync_world, write_feed
from worker.feeder import budget_status
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.ratelimit import ACCOUNT_KEY_PREFIX, DEFAULT_KEY, RedisLimiter, build_limiter
from worker.runtime import Runtime

ACME_KEY = "acme-catalog-key"


def two_account_sources(tmp_path: Path) -> str:
    shop_a, shop_b = tmp_path / "a.json", tmp_path / "b.json"
    write_feed(shop_a, [feed_item("1", title="A one"), feed_item("2", title="A two")])
    write_feed(shop_b, [feed_item("1", title="B one"), feed_item("2", title="B two"), feed_item("3")])
    # Both keep the bare product id: externalIds are unique per account, so the same ids live in both.
    return (
        f'[[accounts]]\nname = "acme"\napi_key = "env:ACME_CATALOG_KEY"\nrate_limit = "600/minute"\n\n'
        f'[[sources]]\nname = "a"\nkind = "feed"\nurl = "{shop_a}"\nformat = "json"\nexternal_id = "{{id}}"\n'
        "check_images = false\n\n"
        f'[[sources]]\nname = "b"\nkind = "feed"\nurl = "{shop_b}"\nformat = "json"\nexternal_id = "{{id}}"\n'
        'check_images = false\naccount = "acme"\n'
    )


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[SyncWorld]:
    monkeypatch.setenv("ACME_CATALOG_KEY", ACME_KEY)
    with sync_world(
        tmp_path, sources=two_account_sources(tmp_path), database_url=database_url, api_keys=(API_KEY, ACME_KEY)
    ) as built:
        yield built


def test_two_accounts_keep_their_own_products_keys_and_budgets(world: SyncWorld) -> None:
    runtime = world.runtime
    dispatcher = InlineDispatcher(runtime)

    run_sync(runtime, "a", "full", dispatcher)
    run_sync(runtime, "b", "full", dispatcher)
    dispatcher.drain("a", timeout=30)
    dispatcher.drain("b", timeout=30)

    default, acme = world.catalog_products(API_KEY), world.catalog_products(ACME_KEY)
    assert {key: product["title"] for key, product in default.items()} == {"1": "A one", "2": "A two"}
    assert {key: product["title"] for key, product in acme.items()} == {"1": "B one", "2": "B two", "3": "Product 3"}
    assert runtime.store.get("b", "1").account == "acme"  # type: ignore[union-attr]
    assert runtime.store.get("a", "1").account == DEFAULT_ACCOUNT  # type: ignore[union-attr]
    # Each account paces with its own limit, on its own limiter.
    assert runtime.limiter_for("acme") is not runtime.limiter
    burst = runtime.settings.catalog_burst  # the account names no burst of its own
    assert runtime.limiter_for("acme").rate == pytest.approx(10 - burst / 60)  # type: ignore[attr-defined]
    statuses = {status.account: status for status in budget_status(runtime)}
    assert set(statuses) == {DEFAULT_ACCOUNT, "acme"}
    assert statuses["acme"].limit == pytest.approx(10.0)
    assert statuses["acme"].used_this_minute is not None
    assert statuses["acme"].used_this_minute + (statuses["acme"].used_last_minute or 0) >= 3
    assert statuses[DEFAULT_ACCOUNT].limit == pytest.approx(runtime.settings.catalog_rate_limit)


def test_a_refused_key_in_one_account_leaves_the_other_accounts_sources_running(world: SyncWorld) -> None:
    runtime = world.runtime
    revoked = runtime.account_configs["acme"].model_copy(update={"api_key": SecretStr("revoked")})
    runtime.account_configs["acme"] = revoked
    dispatcher = InlineDispatcher(runtime)

    run_sync(runtime, "a", "full", dispatcher)
    run_sync(runtime, "b", "full", dispatcher)

    assert runtime.store.source_pause("b") is not None
    assert runtime.store.source_pause("a") is None
    assert set(world.catalog_products(API_KEY)) == {"1", "2"}
    assert world.catalog_products(ACME_KEY) == {}


def test_each_account_has_its_own_budget_key_in_redis(redis_url: str, unique: str) -> None:
    settings = Settings(_env_file=None, redis_url=redis_url, broker_url=redis_url)
    accounts = resolve_accounts(
        parse_accounts(tomllib.loads(f'[[accounts]]\nname = "acme-{unique}"\napi_key = "k"\n')), settings
    )

    default = build_limiter(settings)
    acme = build_limiter(settings, account=accounts[f"acme-{unique}"])

    assert isinstance(default, RedisLimiter) and isinstance(acme, RedisLimiter)
    assert default.key == DEFAULT_KEY
    assert acme.key == f"{ACCOUNT_KEY_PREFIX}acme-{unique}"
    acme.try_acquire()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(acme.key) == 1
    finally:
        client.delete(acme.key, acme.key + ":grants")
        client.close()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "default"\napi_key = "k"', "CATALOG_SYNC_CATALOG_"),
        ('name = "acme"', "api_key"),
        ('name = "acme"\napi_key = "k"\nrate_limt = "100/minute"', "rate_limt: unknown field"),
        ('name = "acme"\napi_key = "k"\nrate_limit = "100/fortnight"', "rate_limit"),
        ('name = "Acme!"\napi_key = "k"', "lower-case"),
    ],
    ids=["default-is-the-environments", "no-key", "misspelled-field", "bad-rate", "bad-name"],
)
def test_account_mistakes_are_named(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_accounts(tomllib.loads(f"[[accounts]]\n{table}\n"))


def test_a_misspelled_key_field_never_echoes_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_accounts(tomllib.loads('[[accounts]]\nname = "acme"\napi_key = "k"\napikey = "sk-live-secret"\n'))

    assert "apikey" in str(caught.value)
    assert "sk-live-secret" not in str(caught.value)


def test_a_source_naming_an_unknown_account_is_a_configuration_error(tmp_path: Path) -> None:
    feed = tmp_path / "f.json"
    write_feed(feed, [])
    config = tmp_path / "catalog-sync.toml"
    config.write_text(
        f'[[sources]]\nname = "a"\nkind = "feed"\nurl = "{feed}"\nformat = "json"\naccount = "acmee"\n',
        encoding="utf-8",
    )
    settings = Settings(_env_file=None, config=config, database_url=f"sqlite:///{tmp_path / 's.db'}")

    with pytest.raises(ConfigError, match="source 'a' writes to account 'acmee'"):
        Runtime.build(settings, embedded=True)


def test_an_accounts_missing_environment_key_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        parse_accounts(tomllib.loads('[[accounts]]\nname = "acme"\napi_key = "env:NOT_SET_ANYWHERE"\n'))


def test_bulk_pushes_of_several_accounts_take_turns_in_the_queue(world: SyncWorld) -> None:
    from worker.feeder import feed

    class Recorder:
        def __init__(self) -> None:
            self.sources: list[str] = []

        def push(self, source: str, product_ids: object, *, priority: bool = False, force: bool = False) -> bool:
            self.sources.append(source)
            return True

    recorder = Recorder()
    for name in ("a", "b"):
        run_sync(world.runtime, name, "full", Recorder())  # plans the rows; this dispatcher drops what it is given
    for name in ("a", "b"):
        world.runtime.store.clear_enqueued(name, ["1", "2", "3"])  # as if those messages were lost

    feed(world.runtime, recorder)

    # A FIFO queue of a's pushes then b's would put every worker slot behind a's budget first.
    assert recorder.sources[:4] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    assert sorted(recorder.sources) == ["a", "a", "b", "b", "b"]


def test_status_shows_each_accounts_budget_backlog_and_when_it_converges(world: SyncWorld) -> None:
    import json
    import subprocess

    class Drop:
        def push(self, source: str, product_ids: object, *, priority: bool = False, force: bool = False) -> bool:
            return False  # a broker that is down: the rows wait in the database

    for name in ("a", "b"):
        run_sync(world.runtime, name, "full", Drop())
    env = process_env(world, {"ACME_CATALOG_KEY": ACME_KEY, "COLUMNS": "200"})

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(env, "status", *args)

    as_json, as_table = status("--json"), status()

    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert (report["a"]["account"], report["b"]["account"]) == (DEFAULT_ACCOUNT, "acme")
    acme = report["b"]["budget"]
    assert acme["limit"] == "600/minute"
    assert (acme["waiting_priority"], acme["waiting_bulk"]) == (0, 3)
    # Three products at just under ten a second.
    assert 0 < acme["converges_in_seconds"] <= 1
    assert report["a"]["budget"]["waiting_bulk"] == 2
    assert report["a"]["budget"]["limit"] == "100/minute", "the environment's default account"
    assert "catalog budget by account" in as_table.stdout
    assert "acme" in as_table.stdout and "600/minute" in as_table.stdout

"""Identity: an externalId belongs to one (source, product) of a catalog account. Real HTTP against the catalog
emulator, real feed files, both state databases."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from config.sources import FeedSource, SourceConfig, load_sources, parse_sources, template_collisions
from emulators.server import running
from tests.sync_helpers import SyncWorld, feed_item, invoke_cli, sync_world, write_feed
from tests.webhooks_support import SHOPIFY_SECRET, shopify_headers, shopify_product
from worker import schema
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.state import DELETED, EXTERNAL_ID_CONFLICT, DesiredRow, Store, make_engine
from worker.webhooks import create_app


def two_feeds(tmp_path: Path, *, template_a: str = "{id}", template_b: str = "{id}", extra_b: str = "") -> str:
    return (
        f'[[sources]]\nname = "a"\nkind = "feed"\nurl = "{tmp_path / "a.json"}"\nformat = "json"\n'
        f'external_id = "{template_a}"\ncheck_images = false\n\n'
        f'[[sources]]\nname = "b"\nkind = "feed"\nurl = "{tmp_path / "b.json"}"\nformat = "json"\n'
        f'external_id = "{template_b}"\ncheck_images = false\n{extra_b}\n'
    )


@pytest.fixture
def colliding(tmp_path: Path, database_url: str) -> Iterator[SyncWorld]:
    write_feed(tmp_path / "a.json", [])
    write_feed(tmp_path / "b.json", [])
    with sync_world(tmp_path, sources=two_feeds(tmp_path), database_url=database_url) as world:
        yield world


def full(world: SyncWorld, source: str, *, allow_mass_delete: bool = False) -> None:
    dispatcher = InlineDispatcher(world.runtime)
    run_sync(world.runtime, source, "full", dispatcher, allow_mass_delete=allow_mass_delete)
    dispatcher.drain(source, timeout=10)


@pytest.mark.parametrize("first", ["a", "b"])
def test_a_product_whose_id_another_source_owns_is_skipped_naming_it_in_either_order(
    colliding: SyncWorld, tmp_path: Path, first: str
) -> None:
    second = "b" if first == "a" else "a"
    write_feed(tmp_path / f"{first}.json", [feed_item("395", title=f"From {first}"), feed_item("1")])
    write_feed(tmp_path / f"{second}.json", [feed_item("395", title=f"From {second}"), feed_item("2")])

    full(colliding, first)
    colliding.reset_stats()
    full(colliding, second)

    catalog = colliding.catalog_products()
    assert catalog["395"]["title"] == f"From {first}"
    assert catalog["395"]["metadata"]["source"] == first
    assert sorted(catalog) == ["1", "2", "395"]
    assert colliding.stats()["upserts"] == 1  # only product 2: the conflicting one never reached the catalog
    row = colliding.runtime.store.get(second, "395")
    assert row is not None and row.status == "skipped" and row.skip_reason == EXTERNAL_ID_CONFLICT
    assert f"source {first!r}" in (row.skip_detail or "")


def test_a_product_refused_again_for_the_same_owner_is_unchanged(colliding: SyncWorld, tmp_path: Path) -> None:
    write_feed(tmp_path / "a.json", [feed_item("395")])
    write_feed(tmp_path / "b.json", [feed_item("395"), feed_item("2")])
    full(colliding, "a")
    full(colliding, "b")
    colliding.reset_stats()

    dispatcher = InlineDispatcher(colliding.runtime)
    report = run_sync(colliding.runtime, "b", "full", dispatcher)

    assert (report.counts["changed"], report.counts["unchanged"]) == (0, 2)
    assert colliding.stats()["total_requests"] == 0


def test_deleting_the_losing_product_never_deletes_the_owners(colliding: SyncWorld, tmp_path: Path) -> None:
    write_feed(tmp_path / "a.json", [feed_item("395"), feed_item("1")])
    write_feed(tmp_path / "b.json", [feed_item("395"), feed_item("2")])
    full(colliding, "a")
    full(colliding, "b")

    write_feed(tmp_path / "b.json", [feed_item("395", status="draft"), feed_item("2")])
    full(colliding, "b")

    assert "395" in colliding.catalog_products()
    owner = colliding.runtime.store.get("a", "395")
    assert owner is not None and owner.status == "synced"


def test_an_id_becomes_free_once_its_owner_left_the_catalog(colliding: SyncWorld, tmp_path: Path) -> None:
    write_feed(tmp_path / "a.json", [feed_item("395"), feed_item("1")])
    write_feed(tmp_path / "b.json", [feed_item("395", title="B's"), feed_item("2")])
    full(colliding, "a")
    full(colliding, "b")

    write_feed(tmp_path / "a.json", [feed_item("395", status="archived"), feed_item("1")])
    full(colliding, "a", allow_mass_delete=True)  # one of two products archived: past the deletion brake
    write_feed(tmp_path / "b.json", [feed_item("395", title="B's, now"), feed_item("2")])
    full(colliding, "b")

    assert colliding.catalog_products()["395"]["title"] == "B's, now"
    assert colliding.runtime.store.get("b", "395").status == "synced"  # type: ignore[union-attr]


def test_a_webhook_for_the_second_source_is_refused_too(tmp_path: Path, database_url: str) -> None:
    sources = (
        f'[[sources]]\nname = "a"\nkind = "feed"\nurl = "{tmp_path / "a.json"}"\nformat = "json"\n'
        'external_id = "{id}"\ncheck_images = false\n\n'
        '[[sources]]\nname = "shop"\nkind = "shopify"\nurl = "https://shop.example"\naccess_token = "t"\n'
        f'webhook_secret = "{SHOPIFY_SECRET}"\nexternal_id = "{{id}}"\ncheck_images = false\n'
    )
    write_feed(tmp_path / "a.json", [feed_item("395")])
    with sync_world(tmp_path, sources=sources, database_url=database_url) as world:
        full(world, "a")
        world.reset_stats()
        dispatcher = InlineDispatcher(world.runtime)
        app = create_app(world.runtime, dispatcher, broker_check=lambda: None)
        body = json.dumps(shopify_product(395, title="Shop's", updated_at="2026-01-02T00:00:00Z")).encode()

        with running(app) as server:
            answer = httpx.post(f"{server.url}/webhooks/shop", content=body, headers=shopify_headers(body), timeout=10)

        assert answer.status_code == 200
        row = world.runtime.store.get("shop", "395")
        assert row is not None and row.skip_reason == EXTERNAL_ID_CONFLICT
        assert "source 'a'" in (row.skip_detail or "")
        assert world.catalog_products()["395"]["metadata"]["source"] == "a"
        assert world.stats()["upserts"] == 0


def test_a_changed_template_moves_the_product_in_one_convergence(tmp_path: Path, database_url: str) -> None:
    write_feed(tmp_path / "a.json", [feed_item("1"), feed_item("2")])
    write_feed(tmp_path / "b.json", [])
    with sync_world(tmp_path, sources=two_feeds(tmp_path), database_url=database_url) as world:
        full(world, "a")
    (tmp_path / "catalog-sync.toml").unlink()
    with sync_world(
        tmp_path, sources=two_feeds(tmp_path, template_a="shop-a/{id}"), database_url=database_url
    ) as world:
        # A new emulator starts empty: put back what the first one held.
        for pid in ("1", "2"):
            world.admin.post(
                "/tryon/v1/products",
                json={"externalId": pid, "title": "old", "images": [{"source": {"url": "https://cdn.example/x.jpg"}}]},
                headers={"x-api-key": "test-key"},
            ).raise_for_status()
        world.reset_stats()

        full(world, "a")

        assert sorted(world.catalog_products()) == ["shop-a/1", "shop-a/2"]
        assert (world.stats()["upserts"], world.stats()["deletes"]) == (2, 2)
        row = world.runtime.store.get("a", "1")
        assert row is not None and row.status == "synced"
        assert row.external_id == row.catalog_external_id == "shop-a/1"


def test_the_default_template_keeps_two_sources_apart(tmp_path: Path, database_url: str) -> None:
    sources = two_feeds(tmp_path, template_a="{source}-{id}", template_b="{source}-{id}")
    write_feed(tmp_path / "a.json", [feed_item("395")])
    write_feed(tmp_path / "b.json", [feed_item("395")])
    with sync_world(tmp_path, sources=sources, database_url=database_url) as world:
        full(world, "a")
        full(world, "b")

        assert sorted(world.catalog_products()) == ["a-395", "b-395"]
        assert FeedSource(name="x", kind="feed", url="f").external_id == "{source}-{id}"


def test_templates_that_can_collide_are_warned_about_and_separated_ones_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def sources(*pairs: tuple[str, str]) -> dict[str, SourceConfig]:
        return parse_sources({"sources": [{"name": n, "kind": "feed", "url": "f", "external_id": t} for n, t in pairs]})

    assert template_collisions(sources(("a", "{source}-{id}"), ("b", "{source}-{id}"))) == []
    assert template_collisions(sources(("a", "shop-a-{id}"), ("b", "shop-b-{handle}"))) == []
    assert len(template_collisions(sources(("a", "{id}"), ("b", "{id}")))) == 1
    assert len(template_collisions(sources(("a", "{source}-{id}"), ("b", "{id}")))) == 1
    # "a-" starts "a-b-": product "b-1" of source a and product "1" of source a-b would both be "a-b-1".
    assert len(template_collisions(sources(("a", "{source}-{id}"), ("a-b", "{source}-{id}")))) == 1

    path = tmp_path / "sources.toml"
    path.write_text(two_feeds(tmp_path), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        load_sources(path)
    assert "'a' ('{id}') and 'b' ('{id}')" in caplog.text
    assert "external_id_conflict" in caplog.text


def test_sources_command_warns_about_colliding_templates(colliding: SyncWorld) -> None:
    result = invoke_cli(colliding, "sources")

    assert "can produce the same id" in result.output


def test_the_upgrade_keeps_one_owner_per_colliding_id_and_records_the_others(tmp_path: Path, database_url: str) -> None:
    engine = make_engine(database_url)
    schema.downgrade(engine, "-1")  # the schema just before identity
    insert = sqlalchemy.text(
        "INSERT INTO products (source, product_id, external_id, desired_payload, desired_hash, synced_hash, status,"
        " attempts, last_synced_at, changed_at) VALUES (:s, :p, :e, :payload, :h, :synced, :status, 0, :at, :at)"
    )
    payload = json.dumps({"externalId": "395"})
    with engine.begin() as conn:
        conn.execute(
            insert,
            {
                "s": "a",
                "p": "395",
                "e": "395",
                "payload": payload,
                "h": "ha",
                "synced": "ha",
                "status": "synced",
                "at": "2026-01-01 00:00:00",
            },
        )
        conn.execute(
            insert,
            {
                "s": "b",
                "p": "395",
                "e": "395",
                "payload": payload,
                "h": "hb",
                "synced": "hb",
                "status": "synced",
                "at": "2026-01-02 00:00:00",
            },
        )
        conn.execute(
            insert,
            {
                "s": "a",
                "p": "7",
                "e": "7",
                "payload": payload,
                "h": "h7",
                "synced": "h7",
                "status": "synced",
                "at": "2026-01-01 00:00:00",
            },
        )

    schema.upgrade(engine)

    with engine.connect() as conn:
        owners = conn.execute(sqlalchemy.text("SELECT external_id, source FROM external_ids ORDER BY 1")).all()
        rows = {
            (r.source, r.product_id): r
            for r in conn.execute(
                sqlalchemy.text(
                    "SELECT source, product_id, desired_hash, synced_hash, status, skip_reason,"
                    " catalog_external_id, account FROM products"
                )
            )
        }
    engine.dispose()
    assert [tuple(o) for o in owners] == [("395", "b"), ("7", "a")]  # b wrote 395 last: the catalog holds b's
    loser = rows[("a", "395")]
    assert (loser.desired_hash, loser.synced_hash, loser.status) == (DELETED, DELETED, "skipped")
    assert loser.skip_reason == EXTERNAL_ID_CONFLICT and loser.catalog_external_id is None
    assert rows[("b", "395")].catalog_external_id == "395" and rows[("b", "395")].status == "synced"
    assert rows[("a", "7")].catalog_external_id == "7" and rows[("a", "7")].account == "default"


def test_two_sources_writing_the_same_ids_at_once_end_with_one_owner_each(store: Store) -> None:
    def rows(source: str) -> list[DesiredRow]:
        return [
            DesiredRow(source, str(n), f"id-{n}", {"externalId": f"id-{n}", "from": source}, f"h-{source}-{n}", None)
            for n in range(300)
        ]

    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(source: str) -> None:
        barrier.wait()
        try:
            for start in range(0, 300, 50):  # many small batches interleave with the other writer's
                store.write_desired(rows(source)[start : start + 50])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(source,)) for source in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    with store.engine.connect() as conn:
        owners: dict[str, str] = dict(
            conn.execute(sqlalchemy.text("SELECT external_id, source FROM external_ids")).all()
        )
    for n in range(300):
        a, b = store.get("a", str(n)), store.get("b", str(n))
        assert a is not None and b is not None
        live = {row.source for row in (a, b) if row.desired_hash != DELETED}
        assert live == {owners[f"id-{n}"]}
        loser = b if owners[f"id-{n}"] == "a" else a
        assert loser.skip_reason == EXTERNAL_ID_CONFLICT

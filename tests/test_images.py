"""The image check against a real local image host: what counts as usable, the cache, the pacing, and what a run
does with products whose images will not load."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators import images as image_host
from emulators.server import BackgroundServer, running
from tests.sync_helpers import SOURCE, SyncWorld, ext, feed_item, sync_world, write_feed
from worker import schema
from worker.images import BAD_TTL, MAX_IMAGE_BYTES, HostPacer, ImageChecker
from worker.inline import InlineDispatcher
from worker.operations import run_sync
from worker.plan import NO_USABLE_IMAGES, RunReport
from worker.state import Store, make_engine, utcnow


@pytest.fixture(scope="module")
def host() -> Iterator[BackgroundServer]:
    with running(image_host.create_app()) as server:
        yield server


def host_requests(host: BackgroundServer) -> int:
    count: int = httpx.get(f"{host.url}/_emulator/stats").json()["requests"]
    return count


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    schema.upgrade(engine)
    yield Store(engine)
    engine.dispose()


@pytest.mark.parametrize(
    ("path", "ok", "reason"),
    [
        ("/ok/a.jpg", True, None),
        ("/redirect/a.jpg", True, None),
        ("/nohead/a.png", True, None),
        ("/signed/a.jpg", True, None),
        ("/norange/a.jpg?size=2048", True, None),
        ("/missing/a.jpg", False, "http_404"),
        ("/html/a.jpg", False, "not_an_image"),
        ("/huge/a.jpg", False, "too_large"),
        ("/norange/a.jpg", False, "too_large"),
        ("/flaky/a.jpg", None, "http_503"),
    ],
    ids=[
        "image",
        "redirect-to-image",
        "no-head-ranged-get",
        "head-forbidden-get-allowed",
        "range-ignored-small",
        "404",
        "html-page",
        "over-10-mb",
        "range-ignored-over-10-mb",
        "5xx-undecided",
    ],
)
def test_each_kind_of_image_url_gets_its_verdict(
    host: BackgroundServer, store: Store, path: str, ok: bool | None, reason: str | None
) -> None:
    with ImageChecker(store) as checker:
        verdict = checker.check([host.url + path])[host.url + path]

    assert (verdict.ok, verdict.reason) == (ok, reason)


def test_an_oversize_image_is_measured_without_downloading_it(host: BackgroundServer, store: Store) -> None:
    with ImageChecker(store) as checker:
        verdict = checker.check_one(f"{host.url}/huge/b.jpg")

    assert verdict.size == image_host.HUGE_BYTES > MAX_IMAGE_BYTES
    assert verdict.describe() == "too_large (11.0 MB)"
    assert checker.stats.requests == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/closed.jpg", "unreachable"),
        ("ftp://cdn.example/a.jpg", "invalid_url"),
        ("https:///no-host.jpg", "invalid_url"),
    ],
    ids=["refused", "not-http", "no-host"],
)
def test_an_url_that_cannot_be_fetched_is_unusable(store: Store, url: str, reason: str) -> None:
    with ImageChecker(store) as checker:
        verdict = checker.check_one(url)

    assert (verdict.ok, verdict.reason) == (False, reason)


def test_verdicts_are_cached_and_undecided_ones_are_asked_again(host: BackgroundServer, store: Store) -> None:
    urls = [f"{host.url}/ok/c.jpg", f"{host.url}/missing/c.jpg", f"{host.url}/flaky/c.jpg"]
    with ImageChecker(store) as first:
        first.check(urls)
    before = host_requests(host)

    with ImageChecker(store) as second:
        verdicts = second.check(urls)

    assert host_requests(host) - before == 1
    assert (second.stats.urls, second.stats.cache_hits, second.stats.requests) == (3, 2, 1)
    assert [verdicts[url].ok for url in urls] == [True, False, None]


def test_an_unusable_verdict_expires_so_a_fixed_image_comes_back(host: BackgroundServer, store: Store) -> None:
    url = f"{host.url}/missing/d.jpg"
    with ImageChecker(store) as checker:
        checker.check([url])
    later = utcnow() + BAD_TTL + timedelta(minutes=1)

    with ImageChecker(store, clock=lambda: later) as checker:
        checker.check([url])

    assert checker.stats.cache_hits == 0
    assert checker.stats.requests == 1


def test_requests_to_one_host_are_spaced_and_other_hosts_do_not_wait() -> None:
    slept: list[float] = []
    pacer = HostPacer(rate=0.01, sleep=slept.append)

    pacer.wait("cdn.example")
    pacer.wait("other.example")
    pacer.wait("cdn.example")
    pacer.wait("cdn.example")

    assert len(slept) == 2
    assert 0 < slept[0] <= 100
    assert 100 < slept[1] <= 200


# ---- a run with the check on ----------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SyncWorld]:
    with sync_world(tmp_path) as w:
        yield w


def checked_sync(world: SyncWorld) -> RunReport:
    source = world.runtime.sources[SOURCE]
    world.runtime.sources[SOURCE] = source.model_copy(update={"check_images": True})
    dispatcher = InlineDispatcher(world.runtime)
    report = run_sync(world.runtime, SOURCE, "full", dispatcher)
    dispatcher.drain(SOURCE, timeout=10)
    return report


def item(pid: str, *urls: str) -> dict[str, Any]:
    return feed_item(pid, images=0, image_link=urls[0], additional_image_links=list(urls[1:]))


def test_a_run_drops_dead_images_and_skips_a_product_with_none_left(world: SyncWorld, host: BackgroundServer) -> None:
    base = host.url
    write_feed(
        world.feed,
        [
            item("mixed", f"{base}/missing/m1.jpg", f"{base}/ok/m2.jpg", f"{base}/html/m3.jpg"),
            item("dead", f"{base}/missing/d1.jpg", f"{base}/huge/d2.jpg"),
            item("fine", f"{base}/ok/f1.jpg"),
        ],
    )

    report = checked_sync(world)

    catalog = world.catalog_products()
    assert sorted(catalog) == [ext("fine"), ext("mixed")]
    assert [image["sourceUrl"] for image in catalog[ext("mixed")]["images"]] == [f"{base}/ok/m2.jpg"]
    dead = world.runtime.store.get(SOURCE, "dead")
    assert dead is not None and (dead.status, dead.skip_reason) == ("skipped", NO_USABLE_IMAGES)
    assert dead.skip_detail == f"{base}/missing/d1.jpg: http_404; {base}/huge/d2.jpg: too_large (11.0 MB)"
    assert report.counts["images_dropped"] == 4
    assert report.counts[f"skipped:{NO_USABLE_IMAGES}"] == 1


def test_a_resync_of_unchanged_products_asks_the_image_host_nothing(world: SyncWorld, host: BackgroundServer) -> None:
    write_feed(world.feed, [item(str(n), f"{host.url}/ok/r{n}.jpg", f"{host.url}/ok/r{n}b.jpg") for n in range(5)])
    checked_sync(world)
    before = host_requests(host)

    checked_sync(world)

    assert host_requests(host) == before


def test_auto_detect_image_roles_is_sent_when_the_source_sets_it(world: SyncWorld, host: BackgroundServer) -> None:
    write_feed(world.feed, [item("1", f"{host.url}/ok/roles.jpg")])
    world.runtime.sources[SOURCE] = world.runtime.sources[SOURCE].model_copy(update={"auto_detect_image_roles": True})

    checked_sync(world)

    assert world.catalog_products()[ext("1")]["autoDetectImageRoles"] is True


def test_images_that_all_die_at_once_are_held_by_the_deletion_brake(world: SyncWorld, host: BackgroundServer) -> None:
    write_feed(world.feed, [item(str(n), f"{host.url}/ok/live{n}.jpg") for n in range(10)])
    checked_sync(world)

    write_feed(world.feed, [item(str(n), f"{host.url}/missing/moved{n}.jpg") for n in range(10)])
    report = checked_sync(world)

    assert report.outcome == "deletion_blocked"
    assert report.counts["kept_out_held"] == 10
    assert len(world.catalog_products()) == 10

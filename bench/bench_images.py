"""Benchmark: what the image check costs the image hosts, on a first sync and on re-syncs.

A generated JSON feed of `--products` products with `--images` images each (a share of them dead, as `--dead`,
some on hosts that refuse HEAD, and one size-chart image every product shares) on the local image host of
`emulators/images.py`, read by the real feed connector and planned into a temp SQLite state file with the image
check on, three times: a first sync, a re-sync of the unchanged feed, and a re-sync after `--changed` of the
products got one new image URL. The baseline, measured in the same run: the same check without its cache (every
image of every product asked on every sync, `ImageChecker.check_one` per image).

    .venv/bin/python bench/bench_images.py --products 500 --images 4

Prints, per pass: image URLs in the feed, requests sent, requests per product, the cache hit rate, and the requests
as a ratio of the uncached baseline's. No catalog calls are made: the check happens while a sync plans.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from config.sources import FeedSource
from connectors.feed import FeedConnector
from emulators import images as image_host
from emulators.server import running
from worker import schema
from worker.images import ImageChecker
from worker.plan import plan_source
from worker.state import Store, make_engine

SOURCE = "bench-images"
# Local host: pace far above what a real CDN would get, so the figures count requests, not waits.
HOST_RATE = 10_000.0


def feed_items(base: str, products: int, images: int, dead: float, seed: int, version: int) -> list[dict[str, Any]]:
    """The feed; `version` > 0 gives the first `version` products a new image URL."""
    rng = random.Random(seed)
    items = []
    for n in range(products):
        urls = []
        for k in range(images - 1):
            roll = rng.random()
            kind = "missing" if roll < dead else "nohead" if roll < dead + 0.1 else "ok"
            urls.append(f"{base}/{kind}/p{n}-{k}.jpg")
        if n < version:
            urls[0] = f"{base}/ok/p{n}-new.jpg"
        urls.append(f"{base}/ok/size-chart.jpg")
        items.append(
            {
                "id": f"p{n}",
                "title": f"Product {n}",
                "link": f"https://shop.example/p/{n}",
                "image_link": urls[0],
                "additional_image_links": urls[1:],
            }
        )
    return items


def plan_pass(store: Store, feed: Path) -> tuple[int, int, int, int]:
    """One full sync's planning with the check: (image URLs in the feed, distinct URLs, cache hits, requests)."""
    source = FeedSource(name=SOURCE, kind="feed", url=str(feed), format="json")
    connector = FeedConnector(source)
    with ImageChecker(store, host_rate=HOST_RATE) as checker:
        try:
            plan_source(
                store,
                connector,
                source,
                mode="full",
                on_changed=lambda *_: None,
                mass_delete_share=1.0,
                image_checker=checker,
            )
        finally:
            connector.close()
        stats = checker.stats
    listed = sum(1 + len(item["additional_image_links"]) for item in json.loads(feed.read_text()))
    return listed, stats.urls, stats.cache_hits, stats.requests


def baseline_pass(feed: Path, store: Store) -> int:
    """Every image of every product asked, no cache, no de-duplication: requests sent."""
    with ImageChecker(store, host_rate=HOST_RATE) as checker:
        for item in json.loads(feed.read_text()):
            for url in (item["image_link"], *item["additional_image_links"]):
                checker.check_one(url)
        return checker.stats.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=500)
    parser.add_argument("--images", type=int, default=4, help="images per product, the shared size chart included")
    parser.add_argument("--dead", type=float, default=0.1, help="share of product images that answer 404")
    parser.add_argument("--changed", type=float, default=0.1, help="share of products given a new image URL")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir, running(image_host.create_app()) as host:
        engine = make_engine(f"sqlite:///{Path(workdir) / 'state.db'}")
        schema.upgrade(engine)
        store = Store(engine)
        feed = Path(workdir) / "feed.json"
        rows = []
        changed = int(args.products * args.changed)
        for label, version in (("first sync", 0), ("re-sync, unchanged", 0), (f"re-sync, {changed} changed", changed)):
            items = feed_items(host.url, args.products, args.images, args.dead, args.seed, version)
            feed.write_text(json.dumps(items), encoding="utf-8")
            listed, distinct, hits, requests = plan_pass(store, feed)
            baseline = baseline_pass(feed, store)
            rows.append((label, listed, distinct, hits, requests, baseline))
        engine.dispose()

    print(f"{args.products} products x {args.images} images, {args.dead:.0%} dead; baseline = no cache, every image")
    header = f"{'pass':<24}{'images':>8}{'asked':>8}{'hit rate':>10}{'requests':>10}{'req/product':>13}"
    print(header + f"{'baseline':>10}{'ratio':>8}")
    for label, listed, distinct, hits, requests, baseline in rows:
        hit_rate = hits / distinct if distinct else 0.0
        ratio = requests / baseline if baseline else 0.0
        print(
            f"{label:<24}{listed:>8}{distinct:>8}{hit_rate:>10.3f}{requests:>10}"
            f"{requests / args.products:>13.3f}{baseline:>10}{ratio:>8.3f}"
        )


if __name__ == "__main__":
    main()

"""Benchmark: webhook → catalog latency while a full sync saturates the catalog's rate limit.

The whole production path, as separate processes: `catalog-sync serve` (the webhook server), `catalog-sync beat`,
two `catalog-sync worker` processes (Celery on a Redis broker, queues `push.priority,sync,push` consumed
priority-first), a state database (a throwaway PostgreSQL schema, or SQLite), and the catalog emulator with a rate
limit (50 requests a second by default, matched by the workers' global limiter). Two sources: a 5,000-product CSV
feed (the full sync) and a Shopify source whose signed `products/update` deliveries this process POSTs.

Measured, in the same run:

- baseline: signed updates while nothing else runs;
- under load: the same while the feed's full sync has thousands of pushes waiting in the state database and the
  catalog's budget is spent (the broker's `push` queue depth is printed beside each phase: the feeder keeps it to what
  the budget serves in a few seconds).

Latency is from the start of the POST to the product's new title being visible in the catalog emulator. The emulator
runs in this process and is read in memory: its GET is rate limited like every API call, so polling it over HTTP
would spend the budget being measured. Prints p50 / p99 / max of both phases, load ÷ baseline, and the targets
(p50 ≤ 100 ms, p99 ≤ 1 s).

    .venv/bin/python bench/bench_webhook_latency.py                      # PostgreSQL, 50 req/s, 100 samples
    .venv/bin/python bench/bench_webhook_latency.py --database sqlite --rate 50 --samples 200 --concurrency 1

Needs Redis (broker, db 15 by default) and PostgreSQL for `--database postgres`. Its queued messages are removed
afterwards (only those of its own sources), and the schema is dropped.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_webhook_intake import (
    CLI,
    DEFAULT_REDIS_DB,
    REDIS_HOST,
    WEBHOOK_SECRET,
    delivery,
    environment,
    free_port,
    percentile,
    remove_messages,
    state_database,
    subprocess_group,
    wait_healthy,
)

from emulators import catalog as catalog_emulator
from emulators.server import running

API_KEY = "bench-key"
# Products the webhook updates rotate over: each is edited every few seconds, never twice at once.
WEBHOOK_PRODUCTS = 20
# Pause between two samples: deliveries are measured one at a time, like a merchant editing products.
SAMPLE_GAP = 0.2
# Longest wait for one update to appear in the catalog before the sample counts as lost.
VISIBLE_TIMEOUT = 60.0
# How often the catalog's memory is checked while waiting (seconds).
POLL_INTERVAL = 0.0005
# The full sync must have this many pushes waiting before the loaded phase starts.
MIN_BACKLOG = 500
# Longest wait for the full sync to build that backlog.
BACKLOG_TIMEOUT = 120.0


def write_feed(path: Path, count: int, token: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "description", "link", "image_link"])
        for n in range(count):
            writer.writerow(
                [
                    f"feed-{token}-{n}",
                    f"Feed product {n}",
                    f"A garment from the benchmark feed, number {n}.",
                    f"https://shop.example/products/{n}",
                    f"https://cdn.example/feed/{n}.jpg",
                ]
            )


class Catalog:
    """The emulator's products of our API key, read in memory."""

    def __init__(self, app: object) -> None:
        self.emulator: catalog_emulator.CatalogEmulator = app.state.emulator  # type: ignore[attr-defined]

    def title(self, external_id: str) -> str | None:
        product = self.emulator.accounts[API_KEY].by_id.get(external_id)
        return None if product is None else product.title

    def count(self) -> int:
        return len(self.emulator.accounts[API_KEY])

    def wait_for(self, external_id: str, title: str, started: float) -> float:
        deadline = started + VISIBLE_TIMEOUT
        while time.perf_counter() < deadline:
            if self.title(external_id) == title:
                return time.perf_counter() - started
            time.sleep(POLL_INTERVAL)
        return float("inf")


class Webhooks:
    def __init__(self, url: str, source: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        self.source = source
        self.sequence = 0

    def update(self, product_id: int, title: str) -> None:
        self.sequence += 1
        body, headers = delivery(product_id, title, datetime.now(UTC), f"bench-{uuid.uuid4().hex}")
        response = self.client.post(f"/webhooks/{self.source}", content=body, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"the webhook server answered {response.status_code}: {response.text}")


def measure(webhooks: Webhooks, catalog: Catalog, samples: int, queue: redis.Redis, label: str) -> list[float]:
    latencies: list[float] = []
    depths: list[int] = []
    for n in range(samples):
        product_id = 1 + n % WEBHOOK_PRODUCTS
        title = f"{label} {n}"
        started = time.perf_counter()
        webhooks.update(product_id, title)
        latencies.append(catalog.wait_for(str(product_id), title, started))
        depths.append(int(queue.llen("push")))
        time.sleep(SAMPLE_GAP)
    lost = sum(1 for value in latencies if value == float("inf"))
    print(
        f"  {label:<9} n={samples}  p50 {percentile(latencies, 0.5) * 1000:7.1f} ms  "
        f"p99 {percentile(latencies, 0.99) * 1000:7.1f} ms  max {max(latencies) * 1000:7.1f} ms  "
        f"mean {statistics.fmean(v for v in latencies if v != float('inf')) * 1000:6.1f} ms"
        f"{f'  LOST {lost}' if lost else ''}  |  bulk pushes queued: {min(depths)}-{max(depths)}"
    )
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--products", type=int, default=5000, help="Products in the feed's full sync.")
    parser.add_argument("--rate", type=float, default=50.0, help="The catalog's rate limit, requests per second.")
    parser.add_argument("--samples", type=int, default=100, help="Webhook updates measured per phase.")
    parser.add_argument("--workers", type=int, default=2, help="`catalog-sync worker` processes.")
    parser.add_argument("--concurrency", type=int, default=1, help="Pool processes per worker.")
    parser.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB, help="Redis db number of the broker.")
    args = parser.parse_args()
    if args.redis_db == 0:
        parser.error("use a dedicated Redis db number, not 0")

    token = uuid.uuid4().hex[:8]
    feed, shop = f"bench-feed-{token}", f"bench-shop-{token}"
    broker_url = f"redis://{REDIS_HOST}/{args.redis_db}"
    queue = redis.Redis.from_url(broker_url)
    faults = catalog_emulator.Faults(account_limit=None, rate_limit=args.rate)
    catalog_app = catalog_emulator.create_app([API_KEY], faults)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhook-latency-")))
        stack.callback(queue.close)
        stack.callback(lambda: print(f"cleaned {remove_messages(broker_url, {feed, shop})} queued messages"))
        database_url = stack.enter_context(state_database(args.database, workdir))
        catalog_server = stack.enter_context(running(catalog_app))
        catalog = Catalog(catalog_app)
        write_feed(workdir / "feed.csv", args.products, token)
        (workdir / "catalog-sync.toml").write_text(
            f'[[sources]]\nname = "{feed}"\nkind = "feed"\nurl = "{workdir / "feed.csv"}"\nformat = "csv"\n'
            "check_images = false\n\n"
            f'[[sources]]\nname = "{shop}"\nkind = "shopify"\nurl = "https://bench.example"\n'
            f'access_token = "shpat_bench"\nwebhook_secret = "{WEBHOOK_SECRET}"\ncheck_images = false\n',
            encoding="utf-8",
        )
        env = environment(
            workdir,
            database_url,
            broker_url,
            CATALOG_SYNC_CATALOG_URL=f"{catalog_server.url}/tryon/v1",
            CATALOG_SYNC_CATALOG_API_KEY=API_KEY,
            CATALOG_SYNC_CATALOG_RATE_LIMIT=str(args.rate),
        )
        port = free_port()
        serve_log = workdir / "serve.log"
        server = stack.enter_context(
            subprocess_group([CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env, serve_log)
        )
        for n in range(args.workers):
            stack.enter_context(
                subprocess_group(
                    [CLI, "worker", f"--concurrency={args.concurrency}", "--loglevel=WARNING"],
                    env,
                    workdir / f"worker-{n}.log",
                )
            )
        # Beat's reconcile ticks feed the bulk pushes once the sync has finished reading the feed.
        stack.enter_context(subprocess_group([CLI, "beat", "--loglevel=WARNING"], env, workdir / "beat.log"))
        wait_healthy(f"http://127.0.0.1:{port}", server, serve_log)
        webhooks = Webhooks(f"http://127.0.0.1:{port}", shop)
        stack.callback(webhooks.client.close)

        print(
            f"{args.workers} worker process(es) x {args.concurrency}, catalog limit {args.rate:g} req/s, "
            f"{args.database} state, feed of {args.products} products, {os.cpu_count()} CPU(s)"
        )
        # The webhook products exist before anything is measured (creation and the workers' start-up are not).
        for product_id in range(1, WEBHOOK_PRODUCTS + 1):
            webhooks.update(product_id, "created")
        for product_id in range(1, WEBHOOK_PRODUCTS + 1):
            if catalog.wait_for(str(product_id), "created", time.perf_counter()) == float("inf"):
                raise SystemExit("the workers did not push the seed products; see their logs in " + str(workdir))

        idle = measure(webhooks, catalog, args.samples, queue, "baseline")

        os.environ["CATALOG_SYNC_BROKER_URL"] = broker_url
        from config.settings import get_settings
        from worker.celery_app import app as celery
        from worker.celery_app import configure
        from worker.tasks import sync_source_task

        get_settings.cache_clear()
        configure(celery, get_settings())
        sync_source_task.apply_async((feed, "full"))
        deadline = time.monotonic() + BACKLOG_TIMEOUT
        from worker.state import Store

        store = Store.from_url(database_url)
        stack.callback(store.close)
        while store.unconverged_count(feed) < MIN_BACKLOG:
            if time.monotonic() > deadline:
                raise SystemExit("the full sync did not queue its pushes; see the worker logs in " + str(workdir))
            time.sleep(0.1)
        refused_before = catalog.emulator.stats.rate_limited
        started, count_before = time.monotonic(), catalog.count()
        loaded = measure(webhooks, catalog, args.samples, queue, "full sync")
        elapsed, synced = time.monotonic() - started, catalog.count() - count_before
        refused = catalog.emulator.stats.rate_limited - refused_before

        print(
            f"\n  during the loaded phase the catalog gained {synced} feed products in {elapsed:.1f} s "
            f"({synced / elapsed:.1f}/s against a limit of {args.rate:g}/s, webhook pushes included in the budget); "
            f"429s from the catalog: {refused}"
        )
        p50, p99 = percentile(loaded, 0.5), percentile(loaded, 0.99)
        print(
            f"  under load / baseline: p50 x{p50 / percentile(idle, 0.5):.2f}, p99 x{p99 / percentile(idle, 0.99):.2f}"
        )
        print(
            f"  targets under load: p50 <= 100 ms {'met' if p50 <= 0.1 else 'NOT met'} ({p50 * 1000:.0f} ms), "
            f"p99 <= 1 s {'met' if p99 <= 1.0 else 'NOT met'} ({p99 * 1000:.0f} ms); "
            f"1-minute load average {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()

"""Benchmark: converging under the catalog's real budget (100 requests a minute per account).

The whole production path as separate processes: two `catalog-sync worker` processes, one `catalog-sync beat`, the
webhook server (`catalog-sync serve`), a state database (a throwaway PostgreSQL schema, or SQLite), Redis as broker
and limiter, and the catalog emulator in this process enforcing the vendor's limit per account in fixed windows,
with 50 ms of latency. Scenarios:

- `saturation`: a full sync of a feed (3,000 products by default) on one account while signed Shopify updates arrive
  spread over the run. Prints accepted writes per window ÷ the limit over the windows in which the budget was
  saturated, the share of calls that earned a 429, and the webhooks' latency (POST to the new title in the catalog)
  beside a baseline measured before the sync started.
- `fairness`: a big and a small feed (5,000 and 100 products) start full syncs together on one account. Prints the
  small one's time to converge ÷ the time it would take alone at half of the budget, and total throughput ÷ limit.
- `depth`: plans a large feed (100,000 products) and samples the broker's queue lengths, Redis memory and the
  workers' RSS while it converges for `--seconds`; prints the maxima and the RSS growth (last ÷ first).
- `accounts`: 20 catalog accounts, each with its own source of 200 products, converge at once; prints each account's
  write rate ÷ its own limit (between its first and last accepted write) and the aggregate rate.

`--time-scale S` runs the vendor's window shape S times faster: the emulator counts 100 requests per 60/S seconds and
every time setting of the workers (rate window, push horizon, reconcile interval, longest in-call wait) is divided by
S, so a 30-minute real run takes 30/S minutes with the same arithmetic. `--rate-setting default` leaves
`CATALOG_SYNC_CATALOG_RATE_LIMIT` unset (its default is the vendor's 100/minute; only at time scale 1).

    .venv/bin/python bench/bench_budget.py saturation --time-scale 10
    .venv/bin/python bench/bench_budget.py saturation --rate-setting default --products 1300   # real time, ~14 min
    .venv/bin/python bench/bench_budget.py fairness --time-scale 10
    .venv/bin/python bench/bench_budget.py depth --products 100000 --seconds 120

Needs Redis (broker in db 15 by default, flushed of this run's messages afterwards) and PostgreSQL for
`--database postgres`.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

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
LIMIT = 100  # requests per window per account: the vendor's documented default
WINDOW = 60.0  # seconds, at time scale 1
LATENCY_MS = 50.0
# Products the webhooks update, each edited at most once at a time.
WEBHOOK_PRODUCTS = 20
# Longest wait for one webhook update to show in the catalog before it counts as lost.
VISIBLE_TIMEOUT = 120.0
POLL_INTERVAL = 0.002
PAGE_SIZE = 4096


@dataclass
class Scale:
    factor: float

    def seconds(self, value: float) -> float:
        return value / self.factor

    @property
    def window(self) -> float:
        return WINDOW / self.factor


class CatalogProbe:
    """The emulator app with the arrival time of every accepted upsert, and in-memory reads of our products."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.emulator: catalog_emulator.CatalogEmulator = app.state.emulator
        self.stamps: list[float] = []
        self.stamps_by_key: dict[str, list[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != catalog_emulator.PRODUCTS_PATH:
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        key = next((bytes(v).decode() for k, v in scope["headers"] if k == b"x-api-key"), "")

        async def send_and_stamp(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.stamps.append(arrived)
                self.stamps_by_key.setdefault(key, []).append(arrived)
            await send(message)

        await self.app(scope, receive, send_and_stamp)

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
        return math.inf

    def saturated_ratio(self, window: float, since: float, until: float) -> tuple[float, int]:
        """Accepted writes per full window ÷ the limit, over the full windows between `since` and `until`."""
        first = math.ceil(since / window) * window
        windows = int((until - first) // window)
        if windows <= 0:
            return math.nan, 0
        end = first + windows * window
        writes = sum(1 for stamp in self.stamps if first <= stamp < end)
        return writes / (windows * LIMIT), windows


def write_feed(path: Path, prefix: str, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "description", "link", "image_link"])
        for n in range(count):
            writer.writerow(
                [
                    f"{prefix}-{n}",
                    f"Garment {n}",
                    f"A garment from the benchmark feed {prefix}, number {n}.",
                    f"https://shop.example/{prefix}/{n}",
                    f"https://cdn.example/{prefix}/{n}.jpg",
                ]
            )


@dataclass
class Stack:
    workdir: Path
    catalog: CatalogProbe
    env: dict[str, str]
    webhook_url: str | None
    broker: redis.Redis
    worker_pids: list[int]
    sources: dict[str, str]


@contextmanager
def production(
    args: argparse.Namespace, feeds: dict[str, int], *, webhooks: bool, accounts: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Workers, beat, optionally the webhook server, and the emulator; feeds written, nothing started yet.
    `accounts` puts a feed in a catalog account of its own (feed name -> account name, whose API key is the name)."""
    scale = Scale(args.time_scale)
    token = uuid.uuid4().hex[:8]
    broker_url = f"redis://{REDIS_HOST}/{args.redis_db}"
    accounts = accounts or {}
    faults = catalog_emulator.Faults(account_limit=LIMIT, account_window=scale.window, latency_ms=LATENCY_MS)
    probe = CatalogProbe(catalog_emulator.create_app([API_KEY, *accounts.values()], faults))
    names = {name: f"{name}-{token}" for name in feeds}
    shop = f"shop-{token}"
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-budget-")))
        broker = redis.Redis.from_url(broker_url)
        stack.callback(broker.close)
        stack.callback(lambda: remove_messages(broker_url, {*names.values(), shop}))
        database_url = stack.enter_context(state_database(args.database, workdir))
        catalog_server = stack.enter_context(running(probe))
        sources = [f'[[accounts]]\nname = "{account}"\napi_key = "{account}"\n' for account in accounts.values()]
        for name, count in feeds.items():
            write_feed(workdir / f"{name}.csv", name, count)
            account = f'account = "{accounts[name]}"\n' if name in accounts else ""
            sources.append(
                f'[[sources]]\nname = "{names[name]}"\nkind = "feed"\nurl = "{workdir / f"{name}.csv"}"\n'
                f'format = "csv"\nexternal_id = "{{id}}"\nincremental_interval = 86400\nfull_interval = 864000\n'
                f"check_images = false\n{account}"
            )
        sources.append(
            f'[[sources]]\nname = "{shop}"\nkind = "shopify"\nurl = "https://bench.example"\n'
            f'access_token = "shpat_bench"\nwebhook_secret = "{WEBHOOK_SECRET}"\nexternal_id = "{{id}}"\n'
            "incremental_interval = 86400\nfull_interval = 864000\ncheck_images = false\n"
        )
        (workdir / "catalog-sync.toml").write_text("\n".join(sources), encoding="utf-8")
        extra = {
            "CATALOG_SYNC_CATALOG_URL": f"{catalog_server.url}/tryon/v1",
            "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
            "CATALOG_SYNC_CATALOG_RATE_WINDOW": f"{scale.window:g}",
            "CATALOG_SYNC_PUSH_HORIZON": f"{scale.seconds(10):g}",
            "CATALOG_SYNC_RECONCILE_INTERVAL": f"{scale.seconds(5):g}",
            "CATALOG_SYNC_CATALOG_MAX_RETRY_AFTER": f"{scale.seconds(10):g}",
            "CATALOG_SYNC_REQUEUE_AFTER": f"{scale.seconds(60):g}",
        }
        if args.rate_setting == "limit":
            extra["CATALOG_SYNC_CATALOG_RATE_LIMIT"] = f"{LIMIT * args.time_scale:g}/minute"
        env = environment(workdir, database_url, broker_url, **extra)
        pids = []
        for n in range(args.workers):
            process = stack.enter_context(
                subprocess_group(
                    [CLI, "worker", f"--concurrency={args.concurrency}", "--loglevel=WARNING", f"--hostname=b{n}@%h"],
                    env,
                    workdir / f"worker-{n}.log",
                )
            )
            pids.append(process.pid)
        stack.enter_context(subprocess_group([CLI, "beat", "--loglevel=WARNING"], env, workdir / "beat.log"))
        webhook_url = None
        if webhooks:
            port = free_port()
            server = stack.enter_context(
                subprocess_group([CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env, workdir / "serve.log")
            )
            webhook_url = f"http://127.0.0.1:{port}"
            wait_healthy(webhook_url, server, workdir / "serve.log")
        configure_publisher(env)
        yield Stack(workdir, probe, env, webhook_url, broker, pids, {**names, "shop": shop})


def configure_publisher(env: dict[str, str]) -> None:
    """Make this process's Celery app publish to the broker of `env` (the settings the workers were started with)."""
    os.environ.update({key: value for key, value in env.items() if key.startswith("CATALOG_SYNC_")})
    from config.settings import get_settings
    from worker.celery_app import app as celery
    from worker.celery_app import configure

    get_settings.cache_clear()
    configure(celery, get_settings())


def start_full_sync(source: str) -> None:
    from worker.tasks import sync_source_task

    sync_source_task.apply_async((source, "full"))


class WebhookSender:
    def __init__(self, url: str, source: str, catalog: CatalogProbe) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        self.source = source
        self.catalog = catalog

    def update(self, product_id: int, title: str) -> float:
        started = time.perf_counter()
        body, headers = delivery(product_id, title, datetime.now(UTC), f"bench-{uuid.uuid4().hex}")
        response = self.client.post(f"/webhooks/{self.source}", content=body, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"the webhook server answered {response.status_code}: {response.text}")
        return self.catalog.wait_for(str(product_id), title, started)


def report_latency(label: str, values: list[float]) -> None:
    lost = sum(1 for value in values if value == math.inf)
    kept = [value for value in values if value != math.inf] or [math.nan]
    print(
        f"  {label:<22} n={len(values):3d}  p50 {percentile(values, 0.5) * 1000:8.1f} ms  "
        f"max {max(values) * 1000:8.1f} ms  mean {statistics.fmean(kept) * 1000:8.1f} ms"
        f"{f'  LOST {lost}' if lost else ''}"
    )


def saturation(args: argparse.Namespace) -> None:
    scale = Scale(args.time_scale)
    with production(args, {"feed": args.products}, webhooks=True) as stack:
        names = stack.sources
        assert stack.webhook_url is not None
        webhooks = WebhookSender(stack.webhook_url, names["shop"], stack.catalog)
        print(
            f"saturation: {args.products} feed products, catalog limit {LIMIT} per {scale.window:g} s per account "
            f"(time scale {args.time_scale:g}), {LATENCY_MS:g} ms latency, {args.workers} workers x "
            f"{args.concurrency}, rate setting: {args.rate_setting}, {args.database} state"
        )
        for product_id in range(1, WEBHOOK_PRODUCTS + 1):
            if webhooks.update(product_id, "seed") == math.inf:
                raise SystemExit(f"the seed webhooks never reached the catalog; logs in {stack.workdir}")
        baseline = [webhooks.update(1 + n % WEBHOOK_PRODUCTS, f"idle {n}") for n in range(args.samples // 2)]
        requests_before = stack.catalog.emulator.stats_body()["total_requests"]
        limited_before = stack.catalog.emulator.stats.rate_limited
        started = time.monotonic()
        start_full_sync(names["feed"])
        # Spread the samples over the expected run: products ÷ (limit per second), at least one per window.
        expected = args.products / (LIMIT / scale.window)
        gap = max(scale.window / 4, expected / (args.samples + 1))
        loaded: list[float] = []
        n = 0
        feed_prefix = "feed-"
        while True:
            synced = sum(1 for key in stack.catalog.emulator.accounts[API_KEY].by_id if key.startswith(feed_prefix))
            if synced >= args.products:
                break
            if time.monotonic() - started > expected * 3 + 300:
                raise SystemExit(f"the sync did not converge ({synced} of {args.products}); logs in {stack.workdir}")
            if len(loaded) < args.samples:
                loaded.append(webhooks.update(1 + n % WEBHOOK_PRODUCTS, f"loaded {n}"))
                n += 1
            time.sleep(gap if len(loaded) < args.samples else 1.0)
        finished = time.monotonic()
        stats = stack.catalog.emulator.stats_body()
        calls = stats["total_requests"] - requests_before
        limited = stack.catalog.emulator.stats.rate_limited - limited_before
        ratio, windows = stack.catalog.saturated_ratio(scale.window, started + scale.window, finished - scale.window)
        elapsed = finished - started
        print(
            f"  converged {args.products} products in {elapsed:.1f} s ({elapsed * args.time_scale / 60:.1f} vendor "
            f"minutes); {calls} catalog calls, {limited} answered 429 ({limited / max(calls, 1):.2%})"
        )
        print(
            f"  writes per window / limit over {windows} saturated windows: {ratio:.3f}  (target >= 0.97; "
            f"{windows * scale.window * args.time_scale / 60:.1f} vendor minutes of saturation)"
        )
        report_latency("webhooks, idle", baseline)
        report_latency("webhooks, under load", loaded)
        p50, most = percentile(loaded, 0.5), max(loaded)
        print(
            f"  under load / idle: p50 x{p50 / percentile(baseline, 0.5):.2f}; max {most:.2f} s "
            f"({'meets' if most <= 2.0 else 'MISSES'} the 2 s target at this time scale); load average "
            f"{os.getloadavg()[0]:.2f}"
        )


def fairness(args: argparse.Namespace) -> None:
    scale = Scale(args.time_scale)
    small_count = args.small
    with production(args, {"big": args.products, "small": small_count}, webhooks=False) as stack:
        names = stack.sources
        per_second = LIMIT / scale.window
        fair_alone = small_count / (per_second / 2)
        print(
            f"fairness: {args.products} + {small_count} products on one account, limit {LIMIT} per "
            f"{scale.window:g} s (time scale {args.time_scale:g}); the small source alone at half the budget "
            f"would take {fair_alone:.1f} s"
        )
        started = time.monotonic()
        start_full_sync(names["big"])
        start_full_sync(names["small"])
        small_done = math.nan
        deadline = started + (args.products + small_count) / per_second * 3 + 300
        while time.monotonic() < deadline:
            keys = stack.catalog.emulator.accounts[API_KEY].by_id
            small = sum(1 for key in keys if key.startswith("small-"))
            if math.isnan(small_done) and small >= small_count:
                small_done = time.monotonic() - started
            if not math.isnan(small_done) and time.monotonic() - started >= small_done + args.seconds:
                break
            time.sleep(0.05)
        until = time.monotonic()
        ratio, windows = stack.catalog.saturated_ratio(scale.window, started + scale.window, until - scale.window)
        print(f"  small source converged in {small_done:.1f} s: {small_done / fair_alone:.2f} x its fair time alone")
        print(f"  total writes per window / limit over {windows} windows: {ratio:.3f} (target >= 0.95)")


def rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, KiB (Linux /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) != pid and int(stat[2]) != pid and not _descends(int(entry.name), pid):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


def depth(args: argparse.Namespace) -> None:
    with production(args, {"feed": args.products}, webhooks=False) as stack:
        names = stack.sources
        print(f"depth: planning {args.products} products, sampling for {args.seconds:g} s after planning finished")
        start_full_sync(names["feed"])
        queues, memory, rss = [], [], []
        stop = threading.Event()
        started = time.monotonic()
        planned_at = math.nan
        from worker.state import Store

        store = Store.from_url(stack.env["CATALOG_SYNC_DATABASE_URL"])
        try:
            while not stop.is_set():
                lengths = sum(int(stack.broker.llen(queue)) for queue in ("push", "push.priority"))
                queues.append(lengths)
                memory.append(int(stack.broker.info("memory")["used_memory"]))
                rss.append(sum(rss_kib(pid) for pid in stack.worker_pids))
                run = store.latest_run(names["feed"])
                if math.isnan(planned_at) and run is not None and run.outcome != "running":
                    planned_at = time.monotonic()
                    print(f"  planned in {planned_at - started:.1f} s: {run.outcome} {dict(run.counts)}")
                if not math.isnan(planned_at) and time.monotonic() - planned_at >= args.seconds:
                    break
                time.sleep(0.5)
        finally:
            store.close()
        converged = stack.catalog.count()
        print(f"  broker queue length max {max(queues)} (push + push.priority), catalog writes so far {converged}")
        print(f"  Redis used_memory max {max(memory) / 1024 / 1024:.1f} MiB (first {memory[0] / 1024 / 1024:.1f})")
        quarter = max(1, len(rss) // 4)
        early, late = statistics.fmean(rss[quarter : 2 * quarter]), statistics.fmean(rss[-quarter:])
        print(
            f"  workers' RSS: {early / 1024:.1f} MiB early, {late / 1024:.1f} MiB late: x{late / early:.3f}; "
            f"queue length / products: {max(queues) / args.products:.5f}"
        )


def many_accounts(args: argparse.Namespace) -> None:
    scale = Scale(args.time_scale)
    feeds = {f"shop{n:02d}": args.products for n in range(args.accounts)}
    accounts = {name: f"account-{name}" for name in feeds}
    with production(args, feeds, webhooks=False, accounts=accounts) as stack:
        per_second = LIMIT / scale.window
        print(
            f"accounts: {args.accounts} accounts, each one source of {args.products} products, limit {LIMIT} per "
            f"{scale.window:g} s each (time scale {args.time_scale:g}), {args.workers} workers x {args.concurrency}"
        )
        started = time.monotonic()
        for name in feeds:
            start_full_sync(stack.sources[name])
        deadline = started + args.products / per_second * 3 + 300
        while time.monotonic() < deadline:
            counts = [len(stack.catalog.emulator.accounts[key]) for key in accounts.values()]
            if min(counts) >= args.products:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        ratios = []
        for key in accounts.values():
            stamps = sorted(stack.catalog.stamps_by_key.get(key, []))
            # Between the first and the last accepted write: the account's steady rate, the first burst aside.
            span = stamps[-1] - stamps[0] if len(stamps) > 1 else math.nan
            ratios.append((len(stamps) - 1) / span / per_second)
        total = sum(len(stack.catalog.stamps_by_key.get(key, [])) for key in accounts.values())
        limited = stack.catalog.emulator.stats.rate_limited
        print(f"  every account converged in {elapsed:.1f} s; {total} writes, {limited} answered 429")
        print(
            f"  per-account rate / its limit: min {min(ratios):.3f}, median {statistics.median(ratios):.3f}, "
            f"max {max(ratios):.3f} (target: every account >= 0.95)"
        )
        print(
            f"  aggregate {total / elapsed:.1f} writes/s against {args.accounts * per_second:.1f}/s of limits "
            f"({total / elapsed / (args.accounts * per_second):.3f}, start-up included); load average "
            f"{os.getloadavg()[0]:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["saturation", "fairness", "depth", "accounts"])
    parser.add_argument("--accounts", type=int, default=20, help="accounts: how many catalog accounts.")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--products", type=int, default=None, help="Products of the (big) feed.")
    parser.add_argument("--small", type=int, default=100, help="fairness: products of the small feed.")
    parser.add_argument("--samples", type=int, default=24, help="saturation: webhook updates under load.")
    parser.add_argument("--seconds", type=float, default=60.0, help="depth/fairness: how long to keep sampling.")
    parser.add_argument("--time-scale", type=float, default=1.0, help="Run the vendor's window this many times faster.")
    parser.add_argument("--rate-setting", choices=["limit", "default"], default="limit")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB)
    args = parser.parse_args()
    if args.rate_setting == "default" and args.time_scale != 1:
        parser.error("--rate-setting default is the vendor's 100/minute: only at --time-scale 1")
    if args.redis_db == 0:
        parser.error("use a dedicated Redis db number, not 0")
    defaults = {"saturation": 3000, "fairness": 5000, "depth": 100_000, "accounts": 200}
    args.products = args.products or defaults[args.scenario]
    scenarios = {"saturation": saturation, "fairness": fairness, "depth": depth, "accounts": many_accounts}
    scenarios[args.scenario](args)


if __name__ == "__main__":
    main()

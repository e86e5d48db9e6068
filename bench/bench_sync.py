"""Benchmark: how close does a full sync through real workers come to the catalog's rate limit, and at what 429 cost?

One run, two passes, each against its own catalog emulator with the SAME faults (a token bucket of `--rate`
requests/s, `--latency-ms` added to every response):

1. catalog-sync: a Google Merchant feed of `--products` items, `--workers` real `catalog-sync worker --concurrency N`
   subprocesses and one `catalog-sync beat` (reconcile) on a Redis broker database of their own, the global Redis
   limiter at `CATALOG_SYNC_CATALOG_RATE_LIMIT=--rate`, and a temp SQLite state file (WAL) or a throwaway
   PostgreSQL schema. The clock runs from publishing the full sync until every row is `synced`.
2. The baseline: a naive loop in this process, one `httpx.Client`, upserting the same products one after another
   with no limiter, sleeping `Retry-After` on a 429.

For each pass it prints the products, elapsed seconds, the achieved catalog rate ÷ the limit and the share of 429s
among all catalog requests. The rate is measured on the emulator's side: accepted upserts per second between the
first and the last one to arrive (stamped by a thin ASGI wrapper around the emulator, cross-checked against the
emulator's own counters). Target: ≥ 0.95 of the limit with ≤ 1 % 429s.

    .venv/bin/python bench/bench_sync.py                          # 5,000 products at 50/s: about 6.5 minutes
    .venv/bin/python bench/bench_sync.py --products 500 --rate 25  # a quick look
    .venv/bin/python bench/bench_sync.py --database postgres

Needs Redis; the broker database (default redis://127.0.0.1:6379/13) is FLUSHED before and after. PostgreSQL only
with `--database postgres`: a uniquely named schema is created and dropped.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape

import httpx
import redis
import sqlalchemy
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from config.settings import Settings
from config.sources import FeedSource
from connectors.feed import FeedConnector
from emulators.catalog import PRODUCTS_PATH, CatalogEmulator, Faults, create_app
from emulators.server import running
from ground.errors import SkippedProduct
from worker import schema
from worker.catalog import ProductUpsert
from worker.celery_app import app as celery
from worker.celery_app import configure
from worker.plan import catalog_payload
from worker.state import Store, make_engine

API_KEY = "bench-key"
SOURCE = "bench"
# The pass of interest must fall inside this share of the limit, with at most this share of 429s.
TARGET_RATIO = 0.95
TARGET_429_SHARE = 0.01
# Images per generated product: a typical garment page (front, back, detail).
IMAGES_PER_PRODUCT = 3
# Seconds to collect ping replies from the workers; the clock starts only once all of them consume.
PING_TIMEOUT = 0.5
# Seconds a worker or beat may take to start, or to stop after SIGTERM, before it is given up on / killed.
PROCESS_TIMEOUT = 60.0
# How often convergence is polled: coarse, so the poll costs nothing next to the run it watches.
POLL_INTERVAL = 0.5
# A pass that has not converged after this many times its ideal duration (products ÷ rate) is stuck, not slow.
STUCK_FACTOR = 5.0
# Floor of that deadline, for tiny runs whose ideal duration is all start-up.
MIN_DEADLINE = 120.0
# /proc counts CPU time in these ticks per second.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Lines of each worker's log shown when a pass fails.
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class PassResult:
    label: str
    products: int
    elapsed: float
    upserts: int
    rate: float  # accepted upserts per second, first to last, on the emulator's clock
    requests: int
    rate_limited: int
    cpu_seconds: float  # CPU used by the pass's own processes: workers, beat and emulator, or this process
    load: float  # the machine's 1-minute load average as the pass ended: other work competing for the CPUs

    def ratio(self, limit: float) -> float:
        return self.rate / limit

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


class UpsertStamps:
    """The emulator app, with the arrival time of every upsert it accepts (2xx) recorded on its own clock."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.emulator: CatalogEmulator = app.state.emulator
        self.stamps: list[float] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PRODUCTS_PATH:
            await self.app(scope, receive, send)
            return
        # Stamped on arrival, where the emulator's token bucket admits or refuses the request.
        arrived = time.monotonic()

        async def send_and_stamp(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.stamps.append(arrived)
            await send(message)

        await self.app(scope, receive, send_and_stamp)

    def result(self, label: str, products: int, elapsed: float, cpu_seconds: float) -> PassResult:
        stats = self.emulator.stats_body()
        stamps = sorted(self.stamps)
        if stats["upserts"] != len(stamps):
            raise RuntimeError(f"{label}: the emulator counted {stats['upserts']} upserts, the stamps {len(stamps)}")
        window = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
        rate = (len(stamps) - 1) / window if window > 0 else 0.0
        return PassResult(
            label,
            products,
            elapsed,
            len(stamps),
            rate,
            stats["total_requests"],
            stats["rate_limited"],
            cpu_seconds,
            os.getloadavg()[0],
        )


# ------------------------------------------------------------------------------------------------------ the feed


def write_feed(path: Path, products: int) -> None:
    """A Google Merchant RSS feed of `products` distinct, valid, active items."""
    with path.open("w", encoding="utf-8") as out:
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write('<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0"><channel><title>bench</title>\n')
        for n in range(products):
            pid = f"sku-{n:06d}"
            images = [f"https://cdn.example.com/{pid}/{k}.jpg" for k in range(IMAGES_PER_PRODUCT)]
            out.write(
                f"<item><g:id>{pid}</g:id><g:title>{escape(f'Garment {n} & co')}</g:title>"
                f"<g:description>{escape(f'<p>Cotton garment number {n}</p>')}</g:description>"
                f"<g:link>https://shop.example.com/p/{pid}</g:link><g:image_link>{images[0]}</g:image_link>"
                + "".join(f"<g:additional_image_link>{url}</g:additional_image_link>" for url in images[1:])
                + f"<g:brand>Brand {n % 7}</g:brand><g:product_type>Apparel &gt; Tops</g:product_type></item>\n"
            )
        out.write("</channel></rss>\n")


def sources_toml(feed: Path, interval: float) -> str:
    # Scheduled syncs far beyond the run, so beat only reconciles; the benchmark publishes the one full sync.
    return (
        f'[[sources]]\nname = "{SOURCE}"\nkind = "feed"\nurl = "{feed}"\nformat = "google-merchant"\n'
        f"full_interval = {interval}\nincremental_interval = {interval}\ncheck_images = false\n"
    )


def upsert_bodies(feed: Path) -> list[bytes]:
    """The exact request bodies the sync sends for this feed, built by the same functions, ahead of any clock."""
    source = FeedSource(name=SOURCE, kind="feed", url=str(feed), format="google-merchant")
    connector = FeedConnector(source)
    bodies: list[bytes] = []
    try:
        for product in connector.iter_products(None):
            if isinstance(product, SkippedProduct):
                raise RuntimeError(f"the generated feed has a bad item: {product}")
            bodies.append(ProductUpsert.model_validate(catalog_payload(product, source)).payload_json().encode())
    finally:
        connector.close()
    return bodies


# ------------------------------------------------------------------------------------------------ state database


@contextmanager
def state_database(kind: str, workdir: Path, postgres_url: str) -> Iterator[str]:
    """A migrated, empty state database URL: a SQLite file (WAL) in `workdir`, or a throwaway PostgreSQL schema."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'state.db'}"
        _upgrade(url)
        yield url
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{name}"'))
    try:
        url = f"{postgres_url}?options=-csearch_path%3D{name}"
        _upgrade(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _upgrade(url: str) -> None:
    # Done once here: workers refuse an out-of-date PostgreSQL schema, and two workers must not migrate SQLite at once.
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()


# ------------------------------------------------------------------------------------------------------ processes


def command(*args: str) -> list[str]:
    """`catalog-sync ARGS` from this interpreter's environment."""
    script = Path(sys.executable).with_name("catalog-sync")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from worker.cli import main; main()", *args]


def start(args: Sequence[str], env: dict[str, str], workdir: Path, log_name: str) -> subprocess.Popen[bytes]:
    with (workdir / log_name).open("wb") as log:
        return subprocess.Popen(command(*args), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # Celery's warm shutdown: the main process stops its own children
    try:
        process.wait(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(processes: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]) -> None:
    """Until every worker answers a broker ping (they share a node name, so replies are counted, not named)."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while len(celery.control.ping(timeout=PING_TIMEOUT)) < len(processes):
        for process, log in zip(processes, logs, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"{log.name}: the worker exited with {process.returncode}\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not answer in time:\n" + "\n".join(tail(log) for log in logs))


def tree_cpu(roots: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and all their descendants, read from /proc
    (NaN where there is no /proc: the figure is then unknown, not zero)."""
    if not Path("/proc/self/stat").exists():
        return math.nan
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        # After "pid (comm) ": state, ppid, ... with utime and stime the 12th and 13th fields.
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    wanted = set(roots)
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in wanted} - wanted
        wanted |= found
        grew = bool(found)
    return sum(ticks.get(pid, 0) for pid in wanted) / CLOCK_TICKS


def without_password(url: str) -> str:
    """A URL fit to print: any password replaced by asterisks."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def tail(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"--- {log.name}\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the passes


def sync_pass(args: argparse.Namespace, faults: Faults, feed: Path, workdir: Path) -> PassResult:
    """The full sync through real worker processes; returns once every product is synced."""
    broker = redis.Redis.from_url(args.broker_url)
    broker.flushdb()  # the dedicated db: no stale messages, limiter budget or cool-down from an earlier run
    stack = ExitStack()
    try:
        catalog_app = UpsertStamps(create_app([API_KEY], faults))
        catalog = stack.enter_context(running(catalog_app))
        database_url = stack.enter_context(state_database(args.database, workdir, args.postgres_url))
        config = workdir / "catalog-sync.toml"
        config.write_text(sources_toml(feed, interval=10 * 86_400), encoding="utf-8")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CATALOG_SYNC_")},
            "CATALOG_SYNC_CONFIG": str(config),
            "CATALOG_SYNC_DATABASE_URL": database_url,
            "CATALOG_SYNC_BROKER_URL": args.broker_url,
            "CATALOG_SYNC_REDIS_URL": args.broker_url,
            "CATALOG_SYNC_CATALOG_URL": f"{catalog.url}/tryon/v1",
            "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
            "CATALOG_SYNC_CATALOG_RATE_LIMIT": f"{args.rate:g}",
            "CATALOG_SYNC_CATALOG_BURST": str(args.limiter_burst),
        }
        logs = [workdir / f"worker-{n}.log" for n in range(args.workers)]
        workers = [
            start(
                ["worker", "--concurrency", str(args.concurrency), "--loglevel", args.loglevel], env, workdir, log.name
            )
            for log in logs
        ]
        beat = start(["beat", "--loglevel", "WARNING"], env, workdir, "beat.log")
        for process in (*workers, beat):
            stack.callback(stop, process)
        settings = Settings(
            config=config,
            database_url=database_url,
            broker_url=args.broker_url,
            catalog_api_key=SecretStr(API_KEY),
            _env_file=None,  # a stray .env in the working directory must not redirect the benchmark
        )
        configure(celery, settings)
        wait_ready(workers, logs)

        store = Store.from_url(database_url)
        stack.callback(store.close)

        pids = [process.pid for process in (*workers, beat)]
        cpu_before, own_before = tree_cpu(pids), time.process_time()
        started = time.monotonic()
        celery.send_task("catalog_sync.sync_source", (SOURCE, "full"), queue="sync")
        deadline = started + max(MIN_DEADLINE, STUCK_FACTOR * args.products / args.rate)
        while True:
            counts = store.status_counts(SOURCE).get(SOURCE, {})
            if counts.get("synced", 0) >= args.products:
                break
            if counts.get("failed", 0):
                failures = [(row.product_id, row.last_error_code, row.last_error_message) for row in store.failures()]
                raise RuntimeError(f"products failed: {counts}; first failures: {failures[:5]}")
            if time.monotonic() > deadline or any(p.poll() is not None for p in workers):
                raise RuntimeError(
                    f"sync did not converge: {counts}, catalog {catalog_app.emulator.stats_body()}\n"
                    + "\n".join(tail(log) for log in logs)
                )
            time.sleep(POLL_INTERVAL)
        elapsed = time.monotonic() - started
        cpu = tree_cpu(pids) - cpu_before
        emulator_cpu = time.process_time() - own_before
        print(
            f"sync pass: {elapsed:.1f} s; CPU per product: workers and beat {1000 * cpu / args.products:.1f} ms, "
            f"emulator (this process) {1000 * emulator_cpu / args.products:.1f} ms",
            flush=True,
        )
        label = f"catalog-sync ({args.workers} workers x {args.concurrency}, {args.database})"
        return catalog_app.result(label, args.products, elapsed, cpu + emulator_cpu)
    finally:
        stack.close()
        broker.flushdb()
        broker.close()


def baseline_pass(faults: Faults, bodies: Sequence[bytes]) -> PassResult:
    """The naive loop: one client, one product after another, no limiter, `Retry-After` slept on a 429."""
    catalog_app = UpsertStamps(create_app([API_KEY], faults))
    with (
        running(catalog_app) as catalog,
        httpx.Client(
            base_url=catalog.url,
            headers={"x-api-key": API_KEY, "Content-Type": "application/json"},
            timeout=30.0,
        ) as client,
    ):
        own_before = time.process_time()
        started = time.monotonic()
        for body in bodies:
            while True:
                response = client.post(PRODUCTS_PATH, content=body)
                if response.status_code != 429:
                    response.raise_for_status()
                    break
                time.sleep(float(response.headers.get("Retry-After", "1")))
        elapsed = time.monotonic() - started
        cpu = time.process_time() - own_before
        return catalog_app.result("naive sequential loop", len(bodies), elapsed, cpu)


# ------------------------------------------------------------------------------------------------------- report


def report(results: Sequence[PassResult], limit: float) -> None:
    print()
    print("=" * 119)
    print(f"{os.cpu_count()} CPUs; load = 1-minute load average when the pass ended (all processes on the machine)")
    print(
        f"{'pass':<40}{'products':>9}{'upserts':>9}{'elapsed s':>11}{'upserts/s':>11}{'rate/limit':>12}"
        f"{'429 share':>11}{'CPU ms/product':>16}{'load':>7}"
    )
    for result in results:
        print(
            f"{result.label:<40}{result.products:>9}{result.upserts:>9}{result.elapsed:>11.1f}{result.rate:>11.2f}"
            f"{result.ratio(limit):>12.3f}{result.share_429:>11.2%}{1000 * result.cpu_seconds / result.products:>16.1f}"
            f"{result.load:>7.1f}"
        )
    sync = results[0]
    met = sync.ratio(limit) >= TARGET_RATIO and sync.share_429 <= TARGET_429_SHARE
    print(
        f"target for catalog-sync: rate/limit >= {TARGET_RATIO} and 429 share <= {TARGET_429_SHARE:.0%}: "
        + ("MET" if met else "NOT MET")
    )
    if len(results) > 1 and results[1].rate > 0:
        print(f"catalog-sync vs the naive loop: {sync.rate / results[1].rate:.2f}x the upsert rate")
    print("=" * 119)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--products", type=int, default=5000, help="feed products to sync (default 5000)")
    parser.add_argument("--rate", type=float, default=50.0, help="catalog limit, requests/s (default 50)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every catalog response (default 50)")
    parser.add_argument(
        "--emulator-burst", type=int, default=None, help="the emulator's token bucket size (default: the rate)"
    )
    parser.add_argument("--limiter-burst", type=int, default=10, help="CATALOG_SYNC_CATALOG_BURST (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="`catalog-sync worker` processes (default 2)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="--concurrency of each worker (default 8: a push waits ~60 ms on the catalog, so holding 50/s takes "
        "at least 3-4 pushes in flight; 16 keep the limit even when other work slows every push down)",
    )
    parser.add_argument("--loglevel", default="INFO", help="the workers' --loglevel (default INFO, their default)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/13", help="a Redis db this run may FLUSH")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--baseline-products",
        type=int,
        default=None,
        help="upsert only the first N products in the naive loop (default: all; 0 skips it). The loop is bound by "
        "latency, not the limit, so its rate does not depend on N; all 5,000 take about 270 s at 50 ms",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (feed, logs, SQLite state)")
    args = parser.parse_args()
    if args.baseline_products is not None and not (
        args.baseline_products == 0 or 2 <= args.baseline_products <= args.products
    ):
        parser.error("--baseline-products must be 0 (skip) or from 2 to --products")
    if args.products < 2 or args.workers < 1 or args.concurrency < 1 or args.limiter_burst < 1:
        parser.error("--products must be at least 2; --workers, --concurrency and --limiter-burst at least 1")
    if not (math.isfinite(args.rate) and args.rate > 0) or args.latency_ms < 0:
        parser.error("--rate must be positive and --latency-ms not negative")
    if args.emulator_burst is not None and args.emulator_burst < 1:
        parser.error("--emulator-burst must be at least 1")
    if not args.broker_url.startswith(("redis://", "rediss://")):
        parser.error("--broker-url must be a redis:// URL (it also holds the global limiter)")

    # The per-second bucket replaces the vendor's per-minute account limit here: this benchmark measures throughput.
    faults = Faults(account_limit=None, rate_limit=args.rate, burst=args.emulator_burst, latency_ms=args.latency_ms)
    print(
        f"{args.products} products; catalog limit {args.rate:g}/s (emulator bucket {faults.bucket_size}), "
        f"+{args.latency_ms:g} ms per response; {args.workers} workers x concurrency {args.concurrency}, "
        f"limiter burst {args.limiter_burst}, state {args.database}, broker {without_password(args.broker_url)}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        feed = workdir / "feed.xml"
        write_feed(feed, args.products)
        bodies = upsert_bodies(feed)
        if len(bodies) != args.products:
            raise RuntimeError(f"the feed yielded {len(bodies)} products, expected {args.products}")
        results = [sync_pass(args, faults, feed, workdir)]
        baseline = bodies if args.baseline_products is None else bodies[: args.baseline_products]
        if baseline:
            results.append(baseline_pass(faults, baseline))
        report(results, args.rate)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

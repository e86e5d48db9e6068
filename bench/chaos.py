"""The chaos suite: the production processes under faults, and proof that nothing is lost and recovery is fast.

Every scenario starts the real thing as separate processes: two `catalog-sync worker`, one `catalog-sync beat`
(and `catalog-sync serve` where webhooks arrive), a Redis of the suite's own (`redis-server --save ""` on a free
port in a temp dir: never the shared one on 6379), a state database (a throwaway schema on the shared PostgreSQL,
a PostgreSQL of the suite's own made with `initdb`, or SQLite) and the catalog emulator as its own server
(`catalog-sync emulate catalog`) with a per-account limit of 3,000 requests a minute: the suite's rate, thirty
times the vendor's default, so 5,000 products take minutes rather than hours. Then it injects a fault, clears it,
and waits for the catalog to equal the source's active products.

    kill      a full sync while a worker is killed with SIGKILL five times and beat once (each restarted)
    redis     the broker's Redis killed mid-sync and started again empty (its messages and limiter state lost)
    catalog   the catalog answering 10 % 5xx, dropping 5 % of connections, and 429 bursts
    postgres  the suite's own PostgreSQL stopped for 20 s mid-sync (immediate shutdown), then started again
    webhooks  2,000 signed webhooks at high concurrency while a full sync (of 1,000) runs: SQLite, then PostgreSQL
    listing   the source answering an empty, then a truncated listing on full runs: the deletion brake holds

Each prints products expected, in the catalog, lost, extra, duplicated writes (upserts of a product the catalog held
already), false `synced` rows (a row `synced` whose payload the catalog does not hold) and the time to converge
after the fault cleared; it fails (exit status 1) on any loss, extra product, false `synced` row, a service that
died on its own, or convergence later than 2 minutes after the fault cleared.

    .venv/bin/python bench/chaos.py all                  # 5,000 products per scenario, about 25 minutes
    .venv/bin/python bench/chaos.py kill --products 2000
    .venv/bin/python bench/chaos.py all --quick          # the CI form: 120 products, short recovery settings

`--quick` runs small product counts at 600 requests a minute and shortens the recovery settings (lease 10 s,
requeue after 10 s, horizon 2 s) so each scenario takes well under a minute; the full form keeps the product's
defaults (lease 60 s, requeue after 60 s, horizon 10 s). Needs `redis-server`, PostgreSQL at 127.0.0.1:5432 (the
`test` database) and the PostgreSQL binaries under /usr/lib/postgresql/*/bin for the `postgres` scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_budget import configure_publisher, start_full_sync, write_feed
from bench_webhook_intake import (
    CLI,
    ROOT,
    STARTUP_TIMEOUT,
    WEBHOOK_SECRET,
    delivery,
    environment,
    free_port,
    state_database,
    stop_group,
    wait_healthy,
)

from worker.state import Store

API_KEY = "chaos-key"
FEED = "chaos-feed"
SHOP = "chaos-shop"
FEED_PREFIX = "feed"
# Every scenario must converge within this many seconds of its fault clearing.
TARGET = 120.0
# How long past the target a scenario keeps waiting, so a miss reports by how much.
OVERTIME = 120.0
POLL = 1.0
WORKERS = 2
CONCURRENCY = 4
# Deliveries in flight at once against `catalog-sync serve`.
WEBHOOK_CONCURRENCY = 64
# Products of the full sync that runs while the webhooks arrive.
WEBHOOK_SYNC_PRODUCTS = 1000
# The suite's per-account limit, requests a minute (the vendor's default is 100).
RATE = 3000
QUICK_RATE = 600
QUICK_PRODUCTS = 120
QUICK_WEBHOOKS = 200
# The quick form's recovery settings (seconds): short, so CI sees a lost message or a dead worker's row come back.
QUICK_SETTINGS = {
    "CATALOG_SYNC_LEASE_SECONDS": "10",
    "CATALOG_SYNC_CATALOG_TIMEOUT": "5",
    "CATALOG_SYNC_REQUEUE_AFTER": "10",
    "CATALOG_SYNC_PUSH_HORIZON": "2",
    "CATALOG_SYNC_RECONCILE_INTERVAL": "2",
}
# Share of the products in the catalog before a mid-sync fault is injected.
FAULT_AT = 0.25
# Lines in the logs that must never appear.
FATAL_LINES = ("Unrecoverable error", "database is locked")


# ------------------------------------------------------------------------------------------------ services


class Service:
    """One process group (a Celery worker forks its pool) that can be killed and started again."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.env, self.log = name, list(args), env, log
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.args, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL to the whole group, as a host or a container dies: no shutdown, no message acknowledged."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class OwnRedis:
    """A Redis of the suite's own on a free port, without persistence: a restart loses every message."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.service = Service(
            "redis",
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            dict(os.environ),
            workdir / "redis.log",
        )

    def start(self) -> None:
        self.service.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise SystemExit(f"redis-server on port {self.port} did not answer; see {self.service.log}")

    def crash(self) -> None:
        self.service.kill()

    def stop(self) -> None:
        self.service.stop()


def postgres_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda path: int(path.split("/")[4]))
    if not found:
        raise SystemExit(f"no {name} under /usr/lib/postgresql/*/bin: install the PostgreSQL server package")
    return found[-1]


class OwnPostgres:
    """A PostgreSQL of the suite's own: `initdb` in a temp dir, `pg_ctl` on a free port (as `postgres` under root,
    which initdb refuses to run as)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(postgres_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args[:2])} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", options,
                  "start")

    def crash(self) -> None:
        """Immediate shutdown: every connection is cut, as when the server or its host dies."""
        self._run(postgres_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(SystemExit):
            self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


class Catalog:
    """The catalog emulator as its own server process, driven over HTTP (faults, stats, the listing)."""

    def __init__(self, workdir: Path, rate: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service = Service(
            "catalog",
            [CLI, "emulate", "catalog", "--port", str(self.port), "--api-key", API_KEY, "--account-limit", str(rate),
             "--account-window", "60"],
            dict(os.environ),
            workdir / "catalog.log",
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> None:
        self.service.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                self.stats()
                return
            time.sleep(0.1)
        raise SystemExit(f"the catalog emulator did not start; see {self.service.log}")

    def faults(self, **changes: Any) -> None:
        self.client.post("/_emulator/config", json=changes).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.client.get("/_emulator/stats")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def count(self) -> int:
        return sum(self.stats()["products"].values())

    def listing(self) -> dict[str, dict[str, Any]]:
        """Every product of our account, by externalId (the API's own paging)."""
        products: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            response = self.client.get("/tryon/v1/products", params=params, headers={"x-api-key": API_KEY})
            if response.status_code == 429:
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            response.raise_for_status()
            page = response.json()
            products.update({item["externalId"]: item for item in page["items"]})
            if not page["hasMore"]:
                return products
            cursor = page["nextCursor"]

    def stop(self) -> None:
        self.client.close()
        self.service.stop()


# -------------------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    redis: OwnRedis
    catalog: Catalog
    store: Store
    feed: Path
    products: int
    services: dict[str, Service]
    webhook_url: str | None = None
    # externalId -> title: what the catalog must hold once everything converged.
    expected: dict[str, str] = field(default_factory=dict)

    @property
    def workers(self) -> list[Service]:
        return [service for name, service in sorted(self.services.items()) if name.startswith("worker")]

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.workdir.glob("*.log")))


def feed_titles(count: int) -> dict[str, str]:
    """The products `write_feed(path, FEED_PREFIX, count)` lists, as externalId -> title."""
    return {f"{FEED}-{FEED_PREFIX}-{n}": f"Garment {n}" for n in range(count)}


def sources_file(workdir: Path, feed: Path) -> Path:
    path = workdir / "catalog-sync.toml"
    intervals = "incremental_interval = 86400\nfull_interval = 864000\ncheck_images = false\n"
    template = 'external_id = "{source}-{id}"\n'
    path.write_text(
        f'[[sources]]\nname = "{FEED}"\nkind = "feed"\nurl = "{feed}"\nformat = "csv"\n{template}{intervals}\n'
        f'[[sources]]\nname = "{SHOP}"\nkind = "shopify"\nurl = "https://chaos.example"\n'
        f'access_token = "shpat_chaos"\nwebhook_secret = "{WEBHOOK_SECRET}"\n{template}{intervals}',
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def own_postgres_database(workdir: Path) -> Iterator[tuple[str, OwnPostgres]]:
    from worker import schema
    from worker.state import make_engine

    server = OwnPostgres()
    try:
        server.start()
        engine = make_engine(server.url)
        schema.upgrade(engine)
        engine.dispose()
        yield server.url, server
    finally:
        server.remove()


@contextlib.contextmanager
def production(
    args: argparse.Namespace, *, database: str, webhooks: bool = False, products: int | None = None
) -> Iterator[tuple[Stack, OwnPostgres | None]]:
    """Redis, the catalog, the state database, two workers, beat (and serve): started, the feed written."""
    rate = QUICK_RATE if args.quick else RATE
    products = products or args.products
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="chaos-kept-"))
            print(f"  work directory kept: {workdir}")
        own: OwnPostgres | None = None
        if database == "own-postgres":
            database_url, own = stack.enter_context(own_postgres_database(workdir))
        else:
            database_url = stack.enter_context(state_database(database, workdir))
        broker = OwnRedis(workdir)
        broker.start()
        stack.callback(broker.stop)
        catalog = Catalog(workdir, rate)
        catalog.start()
        stack.callback(catalog.stop)
        feed = workdir / "feed.csv"
        write_feed(feed, FEED_PREFIX, products)
        extra = {
            "CATALOG_SYNC_CATALOG_URL": f"{catalog.url}/tryon/v1",
            "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
            "CATALOG_SYNC_CATALOG_RATE_LIMIT": f"{rate}/minute",
            "CATALOG_SYNC_CATALOG_BURST": "10",
            **(QUICK_SETTINGS if args.quick else {}),
        }
        env = environment(workdir, database_url, broker.url, **extra)
        env["CATALOG_SYNC_CONFIG"] = str(sources_file(workdir, feed))
        services: dict[str, Service] = {}
        webhook_url = None
        if webhooks:
            # First, before the workers open their connections: a port picked free can be taken by any outgoing
            # connection until the server binds it, so a failed bind is retried on another port.
            webhook_url, services["serve"] = _serve(env, workdir)
            stack.callback(services["serve"].stop)
        for n in range(WORKERS):
            services[f"worker{n}"] = Service(
                f"worker{n}",
                [CLI, "worker", f"--concurrency={CONCURRENCY}", "--loglevel=WARNING", f"--hostname=chaos{n}@%h"],
                env,
                workdir / f"worker{n}.log",
            )
        services["beat"] = Service("beat", [CLI, "beat", "--loglevel=WARNING"], env, workdir / "beat.log")
        for name, service in services.items():
            if name != "serve":
                service.start()
                stack.callback(service.stop)
        configure_publisher(env)
        store = Store.from_url(database_url)
        stack.callback(store.close)
        yield (
            Stack(workdir, env, broker, catalog, store, feed, products, services, webhook_url, feed_titles(products)),
            own,
        )


def _serve(env: dict[str, str], workdir: Path, attempts: int = 3) -> tuple[str, Service]:
    """A healthy `catalog-sync serve` on a free port: (its URL, the service)."""
    for attempt in range(attempts):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        service = Service("serve", [CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env,
                          workdir / "serve.log")
        service.start()
        assert service.process is not None
        try:
            wait_healthy(url, service.process, service.log)
        except SystemExit:
            service.stop()
            if attempt == attempts - 1:
                raise
            continue
        return url, service
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------ the figures


@dataclass
class Figures:
    scenario: str
    expected: int = 0
    in_catalog: int = 0
    lost: int = 0
    extra: int = 0
    wrong: int = 0
    duplicated: int = 0
    false_synced: int = 0
    converged_after: float | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.lost == 0
            and self.extra == 0
            and self.wrong == 0
            and self.false_synced == 0
            and self.converged_after is not None
            and self.converged_after <= TARGET
        )

    def print(self) -> None:
        converged = "never" if self.converged_after is None else f"{self.converged_after:.1f} s"
        print(
            f"  expected {self.expected}  in catalog {self.in_catalog}  lost {self.lost}  extra {self.extra}  "
            f"wrong content {self.wrong}  duplicated writes {self.duplicated}  false synced {self.false_synced}  "
            f"converged {converged} after the fault cleared (target {TARGET:.0f} s)"
        )
        for note in self.notes:
            print(f"  {note}")
        for problem in self.problems:
            print(f"  PROBLEM: {problem}")
        print(f"  {self.scenario}: {'OK' if self.ok else 'FAILED'}", flush=True)


def _payload_matches(payload: dict[str, Any], held: dict[str, Any] | None) -> bool:
    if held is None:
        return False
    urls = [image["source"]["url"] for image in payload.get("images") or []]
    held_urls = [image["sourceUrl"] for image in held.get("images") or []]
    return (
        payload.get("title") == held.get("title")
        and payload.get("description") == held.get("description")
        and urls == held_urls
    )


def measure(stack: Stack, figures: Figures) -> bool:
    """Compare the catalog with what it must hold and with every `synced` row; True when all converged."""
    listing = stack.catalog.listing()
    expected = stack.expected
    figures.expected = len(expected)
    figures.in_catalog = sum(1 for key in expected if key in listing)
    figures.lost = len(expected) - figures.in_catalog
    figures.extra = sum(1 for key in listing if key not in expected)
    figures.wrong = sum(1 for key, title in expected.items() if key in listing and listing[key]["title"] != title)
    false_synced = 0
    for source in (FEED, SHOP):
        for row in stack.store.products(source, statuses=["synced"]):
            if row.desired_payload is not None and not _payload_matches(
                row.desired_payload, listing.get(row.external_id)
            ):
                false_synced += 1
    figures.false_synced = false_synced
    figures.duplicated = int(stack.catalog.stats()["updates"])
    unconverged = sum(stack.store.unconverged_count(source) for source in (FEED, SHOP))
    return not (figures.lost or figures.extra or figures.wrong or figures.false_synced or unconverged)


def _looks_converged(stack: Stack) -> bool:
    """The cheap test polled every second before the full comparison: counts only."""
    run = stack.store.latest_run(FEED)
    if run is None or run.outcome == "running":
        return False
    if stack.catalog.count() != len(stack.expected):
        return False
    return sum(stack.store.unconverged_count(source) for source in (FEED, SHOP)) == 0


def wait_converged(stack: Stack, figures: Figures, cleared_at: float) -> None:
    """Poll until the catalog equals the source and every row converged, or TARGET + OVERTIME after the fault
    cleared; records the time since `cleared_at` (None when it never converged) and the final comparison."""
    from sqlalchemy.exc import SQLAlchemyError

    deadline = cleared_at + TARGET + OVERTIME
    while time.monotonic() < deadline:
        with contextlib.suppress(SQLAlchemyError, httpx.HTTPError):
            if _looks_converged(stack) and measure(stack, figures):
                figures.converged_after = max(0.0, time.monotonic() - cleared_at)
                break
        time.sleep(POLL)
    else:
        measure(stack, figures)
        counts = stack.store.status_counts()
        figures.notes.append(f"state when it gave up: {counts}")
    check_services(stack, figures)


def check_services(stack: Stack, figures: Figures) -> None:
    for service in stack.services.values():
        if not service.alive:
            figures.problems.append(f"{service.name} died on its own (see {service.log.name})")
    logs = stack.logs()
    for line in FATAL_LINES:
        if line in logs:
            figures.problems.append(f"the logs say {line!r} {logs.count(line)} time(s)")
    stats = stack.catalog.stats()
    figures.notes.append(
        f"catalog: {stats['total_requests']} requests, {stats['creates']} creates, {stats['updates']} updates, "
        f"{stats['deletes']} deletes, {stats['rate_limited']} answered 429, {stats['injected_errors']} injected "
        f"5xx, {stats['dropped']} dropped"
    )
    failed = stack.store.status_counts().get(FEED, {}).get("failed", 0)
    if failed:
        figures.problems.append(f"{failed} feed product(s) ended `failed`")


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(SQLAlchemyError, httpx.HTTPError):
            if condition():
                return
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")


def planned(stack: Stack, after_run: int = 0) -> Callable[[], bool]:
    def done() -> bool:
        run = stack.store.latest_run(FEED)
        return run is not None and run.id > after_run and run.outcome != "running"

    return done


def in_catalog_share(stack: Stack, share: float) -> Callable[[], bool]:
    return lambda: stack.catalog.count() >= share * len(stack.expected)


def sync_duration(args: argparse.Namespace, products: int) -> float:
    """Seconds the catalog's budget needs for `products` writes at the suite's rate."""
    return products / ((QUICK_RATE if args.quick else RATE) / 60)


def heading(args: argparse.Namespace, text: str) -> None:
    rate = QUICK_RATE if args.quick else RATE
    print(
        f"== {text}\n  {WORKERS} workers x {CONCURRENCY}, beat; catalog emulator limited to {rate} requests a "
        f"minute per account (the suite's rate, not the vendor's 100/minute)"
        f"{'; quick recovery settings ' + str(QUICK_SETTINGS) if args.quick else '; recovery settings: defaults'}",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------ scenarios


def scenario_kill(args: argparse.Namespace) -> list[Figures]:
    kills = 2 if args.quick else 5
    heading(args, f"kill: a {args.products}-product full sync, SIGKILL x{kills} on the workers and once on beat")
    figures = Figures("kill")
    with production(args, database="postgres") as (stack, _):
        start_full_sync(FEED)
        wait_for("the plan", planned(stack), sync_duration(args, args.products) + 300)
        gap = max(1.0, sync_duration(args, args.products) * 0.5 / kills)
        for n in range(kills):
            time.sleep(gap)
            victim = stack.workers[n % len(stack.workers)]
            victim.kill()
            time.sleep(0.5)
            victim.start()
            if n == 1:
                stack.services["beat"].kill()
                stack.services["beat"].start()
        cleared_at = time.monotonic()
        figures.notes.append(f"killed {kills} worker(s) {gap:.1f} s apart and beat once; each restarted at once")
        wait_converged(stack, figures, cleared_at)
    figures.print()
    return [figures]


def scenario_redis(args: argparse.Namespace) -> list[Figures]:
    down = 3.0
    heading(args, f"redis: the broker's Redis killed mid-sync, down {down:g} s, started again empty")
    figures = Figures("redis")
    with production(args, database="postgres") as (stack, _):
        start_full_sync(FEED)
        wait_for("the first products", in_catalog_share(stack, FAULT_AT), sync_duration(args, args.products) + 300)
        stack.redis.crash()
        time.sleep(down)
        stack.redis.start()
        cleared_at = time.monotonic()
        figures.notes.append(f"Redis killed with {stack.catalog.count()} products in the catalog; its data is lost")
        wait_converged(stack, figures, cleared_at)
    figures.print()
    return [figures]


def scenario_catalog(args: argparse.Namespace) -> list[Figures]:
    heading(args, "catalog: 10 % 5xx, 5 % dropped connections and 429 bursts until 60 % of the products converged")
    figures = Figures("catalog")
    with production(args, database="postgres") as (stack, _):
        stack.catalog.faults(error_rate=0.1, drop_rate=0.05, seed=15)
        stop = threading.Event()

        def bursts() -> None:
            # Every few seconds the catalog answers 429 to nearly everything for a while.
            while not stop.wait(4.0):
                stack.catalog.faults(rate_limit=0.5, burst=1)
                if stop.wait(1.5):
                    break
                stack.catalog.faults(rate_limit=None)

        burster = threading.Thread(target=bursts, daemon=True)
        burster.start()
        start_full_sync(FEED)
        try:
            wait_for("60 % of the products", in_catalog_share(stack, 0.6), sync_duration(args, args.products) * 4 + 300)
        finally:
            stop.set()
            burster.join()
        stack.catalog.faults(error_rate=0.0, drop_rate=0.0, rate_limit=None)
        cleared_at = time.monotonic()
        wait_converged(stack, figures, cleared_at)
    figures.print()
    return [figures]


def scenario_postgres(args: argparse.Namespace) -> list[Figures]:
    down = 5.0 if args.quick else 20.0
    heading(args, f"postgres: the suite's own PostgreSQL stopped (immediate) for {down:g} s mid-sync")
    figures = Figures("postgres")
    with production(args, database="own-postgres") as (stack, own):
        assert own is not None
        start_full_sync(FEED)
        wait_for("the plan", planned(stack), sync_duration(args, args.products) + 300)
        wait_for("the first products", in_catalog_share(stack, FAULT_AT), sync_duration(args, args.products) + 300)
        own.crash()
        time.sleep(down)
        own.start()
        cleared_at = time.monotonic()
        handed_back = stack.logs().count("the message goes back to the queue")
        figures.notes.append(f"push messages handed back to the queue during the outage: {handed_back}")
        wait_converged(stack, figures, cleared_at)
    figures.print()
    return [figures]


async def _send_webhooks(url: str, count: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(WEBHOOK_CONCURRENCY)
    limits = httpx.Limits(max_connections=WEBHOOK_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(product_id: int) -> None:
            body, headers = delivery(product_id, f"Webhook {product_id}", datetime.now(UTC), f"chaos-{product_id}")
            async with gate:
                try:
                    response = await client.post(f"/webhooks/{SHOP}", content=body, headers=headers)
                    statuses[response.status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1

        await asyncio.gather(*(one(product_id) for product_id in range(1, count + 1)))
    return statuses


def scenario_webhooks(args: argparse.Namespace) -> list[Figures]:
    return [webhooks_on(args, database) for database in ("sqlite", "postgres")]


def webhooks_on(args: argparse.Namespace, database: str) -> Figures:
    """Signed webhooks at high concurrency during a full sync, on `database` (`sqlite` or `postgres`)."""
    count = QUICK_WEBHOOKS if args.quick else 2000
    # The sync beside them is smaller than the other scenarios': every webhook is a new product too, and the
    # whole backlog must fit the budget's two minutes after the last delivery.
    products = min(args.products, WEBHOOK_SYNC_PRODUCTS)
    heading(args, f"webhooks-{database}: {count} signed webhooks, {WEBHOOK_CONCURRENCY} at once, during a full "
                  f"sync of {products} products")
    figures = Figures(f"webhooks-{database}")
    with production(args, database=database, webhooks=True, products=products) as (stack, _):
        assert stack.webhook_url is not None
        start_full_sync(FEED)
        started = time.monotonic()
        statuses = asyncio.run(_send_webhooks(stack.webhook_url, count))
        cleared_at = time.monotonic()
        stack.expected.update({f"{SHOP}-{n}": f"Webhook {n}" for n in range(1, count + 1)})
        figures.notes.append(
            f"deliveries answered in {cleared_at - started:.1f} s: "
            + ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(statuses.items()))
        )
        if statuses[200] != count:
            figures.problems.append(f"{count - statuses[200]} delivery(ies) not answered 200")
        wait_converged(stack, figures, cleared_at)
    figures.print()
    return figures


def _full_run(stack: Stack, args: argparse.Namespace) -> tuple[str, dict[str, int]]:
    before = stack.store.latest_run(FEED)
    start_full_sync(FEED)
    wait_for("the full run", planned(stack, before.id if before else 0), sync_duration(args, args.products) + 300)
    run = stack.store.latest_run(FEED)
    assert run is not None
    return run.outcome, dict(run.counts)


def scenario_listing(args: argparse.Namespace) -> list[Figures]:
    heading(args, "listing: full runs that read an empty, then a truncated listing; the brake must hold")
    figures = Figures("listing")
    with production(args, database="postgres") as (stack, _):
        start_full_sync(FEED)
        wait_converged(stack, Figures("listing-first-sync"), time.monotonic())
        complete = stack.feed.read_text(encoding="utf-8")
        lines = complete.splitlines(keepends=True)
        cut = "".join(lines[: max(2, len(lines) * 2 // 5)])
        variants = {"empty": lines[0], "truncated": cut[: len(cut) - len(lines[1]) // 2]}
        for name, text in variants.items():
            stack.feed.write_text(text, encoding="utf-8")
            outcome, counts = _full_run(stack, args)
            in_catalog = stack.catalog.count()
            figures.notes.append(f"{name} listing: run {outcome} {counts}; {in_catalog} in the catalog")
        stack.feed.write_text(complete, encoding="utf-8")
        outcome, counts = _full_run(stack, args)
        cleared_at = time.monotonic()
        figures.notes.append(f"listing restored: run {outcome} {counts}")
        wait_converged(stack, figures, cleared_at)
        deletes = int(stack.catalog.stats()["deletes"])
        if deletes:
            figures.problems.append(f"{deletes} product(s) deleted from the catalog by a broken listing")
    figures.print()
    return [figures]


SCENARIOS: dict[str, Callable[[argparse.Namespace], list[Figures]]] = {
    "kill": scenario_kill,
    "redis": scenario_redis,
    "catalog": scenario_catalog,
    "postgres": scenario_postgres,
    "webhooks": scenario_webhooks,
    "listing": scenario_listing,
}


def run(names: Sequence[str], args: argparse.Namespace) -> list[Figures]:
    results: list[Figures] = []
    for name in names:
        results.extend(SCENARIOS[name](args))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["all", *SCENARIOS])
    parser.add_argument("--products", type=int, default=None, help="Feed products (default 5,000; quick: 120).")
    parser.add_argument("--quick", action="store_true", help="The CI form: few products, short recovery settings.")
    parser.add_argument("--keep", action="store_true", help="Keep each scenario's work directory (logs, feed).")
    args = parser.parse_args(argv)
    args.products = args.products or (QUICK_PRODUCTS if args.quick else 5000)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    started = time.monotonic()
    results = run(names, args)
    print(f"== summary ({time.monotonic() - started:.0f} s)")
    for figures in results:
        converged = "never" if figures.converged_after is None else f"{figures.converged_after:.1f} s"
        print(
            f"  {figures.scenario:<18} {'OK' if figures.ok else 'FAILED':<7} expected {figures.expected:5d}  "
            f"lost {figures.lost}  extra {figures.extra}  duplicated {figures.duplicated}  "
            f"false synced {figures.false_synced}  converged {converged}"
        )
    return 0 if all(figures.ok for figures in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the audit of a large catalog account: catalog calls, time against the rate limit, and memory.

A catalog emulator holding `--products` products (default 20,000) of one feed source, a state database (temp
SQLite, or a throwaway PostgreSQL schema with `--database postgres`) that records all of them as synced, and some
drift made in the emulator behind the state's back (`--drift` products each deleted, edited, and added without our
metadata). The emulator enforces `--rate` per account in fixed 60 s windows (its default, like the vendor: 100 a
minute), and the audit's process paces itself with the global Redis limiter set to the same limit
(`CATALOG_SYNC_CATALOG_RATE_LIMIT`, with the default burst), as a worker would.

Three child processes, each a fresh interpreter that builds the same runtime (settings, sources, the state engine,
the catalog client, the Redis limiter):

1. idle: builds the runtime, reads the state's status counts, and exits: the memory any command costs;
2. listing: pages through the whole catalog with the same client and limiter and does nothing else: the time the
   listing alone takes at the limit;
3. the audit: `run_audit` of the account, no repair.

Printed: the catalog calls the audit made ÷ the ideal number of list pages (ceil(products ÷ 200); 1.00 means
nothing per product), its elapsed seconds ÷ the bare listing's (the cost of comparing with the state) and against
the time the limiter's pacing allows for those pages ((pages − burst) ÷ steady rate), and its peak RSS ÷ the idle
process's, with the drift it found (which must equal what was made).

    .venv/bin/python bench/bench_audit.py                         # 20,000 products at 100/minute: about 2.5 minutes
    .venv/bin/python bench/bench_audit.py --rate 600/minute       # a quicker look
    .venv/bin/python bench/bench_audit.py --database postgres

Needs Redis (the limiter key is unique to the run) and, with `--database postgres`, PostgreSQL (a uniquely named
schema is created and dropped).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from bench_sync import state_database

from config.rates import parse_rate
from config.settings import Settings
from config.sources import FeedSource
from connectors.base import ImageRef, SourceProduct
from emulators.catalog import Faults, create_app, parse_upsert
from emulators.server import running
from worker.catalog import MAX_PAGE_SIZE
from worker.plan import desired_row
from worker.ratelimit import default_account, pacing
from worker.state import Store

API_KEY = "bench-audit-key"
SOURCE = "bench"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Rows per state transaction while populating.
WRITE_BATCH = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--drift", type=int, default=50, help="products deleted, edited and added behind our back")
    parser.add_argument("--rate", default="100/minute", help="the account's limit (emulator and limiter)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--child", choices=("idle", "listing", "audit"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    per_minute = round(parse_rate(args.rate) * 60)
    with (
        tempfile.TemporaryDirectory(prefix="bench-audit-") as work,
        state_database(args.database, Path(work), POSTGRES_URL) as url,
    ):
        feed = Path(work) / "feed.json"
        feed.write_text("[]", encoding="utf-8")
        config = Path(work) / "catalog-sync.toml"
        config.write_text(f'[[sources]]\nname = "{SOURCE}"\nkind = "feed"\nurl = "{feed}"\nformat = "json"\n')
        app = create_app([API_KEY], Faults(account_limit=per_minute, account_window=60.0))
        started = time.perf_counter()
        made = populate(app, url, args.products, args.drift)
        print(f"populated {args.products} products (+ drift) in {time.perf_counter() - started:.1f}s")
        with running(app) as server:
            env = {
                **os.environ,
                "CATALOG_SYNC_CONFIG": str(config),
                "CATALOG_SYNC_DATABASE_URL": url,
                "CATALOG_SYNC_CATALOG_URL": f"{server.url}/tryon/v1",
                "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
                "CATALOG_SYNC_CATALOG_RATE_LIMIT": f"{per_minute}/minute",
                "CATALOG_SYNC_REDIS_URL": args.redis_url,
            }
            idle = run_child("idle", env)
            listing = run_child("listing", env)
            # A fresh window at the emulator (changing the limit clears the windows) and a fresh limiter key: the
            # audit starts with the whole budget, as the listing did.
            app.state.emulator.configure({"account_limit": per_minute})
            app.state.emulator.reset(stats_only=True)
            audit = run_child("audit", env)
            stats = app.state.emulator.stats_body()
            settings = Settings(catalog_rate_limit=f"{per_minute}/minute")
    report(args, audit, idle, listing, stats, made, pacing(default_account(settings)))


def populate(app: Any, url: str, count: int, drift: int) -> dict[str, int]:
    """The catalog and the state agree on `count` products, then the catalog drifts."""
    source = FeedSource(name=SOURCE, kind="feed", url="unused.json")
    emulator = app.state.emulator
    account = emulator.accounts[API_KEY]
    store = Store.from_url(url)
    now = datetime.now(UTC)
    try:
        for start in range(0, count, WRITE_BATCH):
            rows = [desired_row(product(str(n), now), source) for n in range(start, min(count, start + WRITE_BATCH))]
            store.write_desired(rows)
            for row in rows:
                emulator.upsert(account, parse_upsert(row.payload), {})
        with store.engine.begin() as conn:
            conn.execute(
                sqlalchemy.text(
                    "UPDATE products SET synced_hash = desired_hash, status = 'synced', enqueued_at = NULL, "
                    "catalog_external_id = external_id, last_synced_at = :at"
                ),
                {"at": (now - timedelta(minutes=1)).replace(tzinfo=None)},
            )
    finally:
        store.close()
    step = max(1, count // (3 * drift)) if drift else count
    for n in range(drift):
        emulator.delete(account, f"{SOURCE}-{n * step}")
        edited = parse_upsert({"externalId": f"{SOURCE}-{n * step + 1}", "title": "Edited in the dashboard"})
        emulator.upsert(account, edited, {})
        stranger = {"externalId": f"vendor-{n}", "title": "Not ours", "images": [{"source": {"url": image(n)}}]}
        emulator.upsert(account, parse_upsert(stranger), {})
    return {"missing": drift, "differs": drift, "unknown": drift}


def product(pid: str, now: datetime) -> SourceProduct:
    return SourceProduct(
        SOURCE,
        pid,
        now,
        "active",
        f"Product {pid}",
        description=f"A garment, number {pid}, in organic cotton.",
        images=tuple(ImageRef(image(int(pid), n)) for n in range(3)),
        url=f"https://shop.example/p/{pid}",
        vendor="Acme",
        product_type="Shirt",
        tags=("cotton", "summer"),
    )


def image(number: int, index: int = 0) -> str:
    return f"https://cdn.example/{number}/{index}.jpg"


def run_child(kind: str, env: dict[str, str]) -> dict[str, Any]:
    env = {**env, "BENCH_LIMITER_KEY": f"bench-audit:{uuid.uuid4().hex}"}
    completed = subprocess.run(
        [sys.executable, __file__, "--child", kind], env=env, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        sys.exit(f"the {kind} process failed:\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def child(kind: str) -> None:
    """One fresh process: build the runtime as every command does, then (for `audit`) audit the account."""
    from config.settings import get_settings
    from config.sources import load_sources
    from worker.operations import run_audit
    from worker.ratelimit import build_limiter
    from worker.runtime import Runtime

    settings = get_settings()
    runtime = Runtime(
        settings,
        load_sources(Path(settings.config)),
        Store.from_url(settings.database_url),
        build_limiter(settings, key=os.environ["BENCH_LIMITER_KEY"]),
    )
    started = time.perf_counter()
    body: dict[str, Any] = {}
    if kind == "idle":
        runtime.store.status_counts()
    elif kind == "listing":
        body["listed"] = sum(1 for _ in runtime.catalog().iter_products())
    else:
        body = run_audit(runtime).as_dict()
    elapsed = time.perf_counter() - started
    runtime.close()
    print(json.dumps({"elapsed": elapsed, "peak_rss_mb": peak_rss_mb(), "report": body}))


def peak_rss_mb() -> float:
    """This process's own peak resident set (`VmHWM`): `ru_maxrss` would carry the parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def report(
    args: argparse.Namespace,
    audit: dict[str, Any],
    idle: dict[str, Any],
    listing: dict[str, Any],
    stats: dict[str, Any],
    made: dict[str, int],
    paced: tuple[float, int, int],
) -> None:
    steady, burst, _reserve = paced
    body = audit["report"]
    listed = body["listed"]
    ideal_pages = math.ceil(listed / MAX_PAGE_SIZE)
    calls = stats["total_requests"]
    allowed = max(ideal_pages - burst, 0) / steady
    counts = body["counts"]
    found = {kind: counts[kind] for kind in made}
    print(
        f"database: {args.database}; catalog limit {args.rate} (limiter: {steady * 60:.0f}/minute steady, burst "
        f"{burst}); {listed} products listed"
    )
    print(f"catalog calls: {calls} ({stats['lists']} list pages, {stats['gets']} gets, {stats['upserts']} upserts)")
    print(f"  ÷ ideal pages ceil({listed} ÷ {MAX_PAGE_SIZE}) = {ideal_pages}: {calls / ideal_pages:.2f}")
    print(f"  429 answers: {stats['rate_limited']}")
    print(f"audit time: {audit['elapsed']:.1f}s")
    print(f"  ÷ the bare listing's {listing['elapsed']:.1f}s: {audit['elapsed'] / listing['elapsed']:.2f}")
    if allowed > 0:
        ratio = audit["elapsed"] / allowed
        print(f"  ÷ the time the limit allows for {ideal_pages} pages ({allowed:.1f}s): {ratio:.2f}")
    else:
        print(f"  ({ideal_pages} pages fit in the limiter's burst of {burst}: the limit does not bound this run)")
    print(
        f"peak RSS: audit {audit['peak_rss_mb']:.0f} MB, idle process {idle['peak_rss_mb']:.0f} MB: "
        f"{audit['peak_rss_mb'] / idle['peak_rss_mb']:.2f}"
    )
    print(f"found: {counts}; made: {made}; {'OK' if found == made else 'MISMATCH'}")


if __name__ == "__main__":
    main()

"""Benchmark: the webhook server's memory under a long flood of forged deliveries.

Starts `catalog-sync serve` as a subprocess (SQLite state, a Redis broker on a dedicated db number, one Shopify
source with a webhook secret), sends `--warmup` forged deliveries (a body signed with the wrong key, each body
different), reads the server's resident memory (the baseline, measured in the same run), then sends `--requests`
more (default 100,000) in rounds, reading the memory after each round. A forged delivery is refused with 401 after
one HMAC per secret: nothing of it may stay behind. Prints the memory after each round, the last ÷ the baseline
(target: ≤ 1.10, flat), the refusal rate and whether every answer was 401.

    .venv/bin/python bench/bench_intake_flood.py                      # 100,000 forged deliveries, about 2 minutes
    .venv/bin/python bench/bench_intake_flood.py --requests 20000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from bench_webhook_intake import DEFAULT_REDIS_DB, REDIS_HOST, drive, render, shop_server, sign, state_database

# Requests per round: the memory is read between rounds, and a round's requests are built just before it is sent.
ROUND = 10_000


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux `/proc`), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def forged(source: str, count: int, first: int) -> list[bytes]:
    requests = []
    for n in range(first, first + count):
        body = json.dumps({"id": n, "title": f"Forged {n}", "pad": uuid.uuid4().hex}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "products/update",
            "X-Shopify-Hmac-Sha256": sign(body, "not-the-secret"),
            "X-Shopify-Event-Id": f"forged-{n}",
        }
        requests.append(render(f"/webhooks/{source}", body, headers))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000, help="Forged deliveries measured.")
    parser.add_argument("--warmup", type=int, default=10_000, help="Forged deliveries before the baseline.")
    parser.add_argument("--connections", type=int, default=32, help="Concurrent keep-alive connections.")
    parser.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB, help="Redis db number of the broker.")
    args = parser.parse_args()
    if args.redis_db == 0:
        parser.error("use a dedicated Redis db number, not 0")
    source = f"flood-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-intake-flood-") as tmp, state_database("sqlite", Path(tmp)) as db:
        broker_url = f"redis://{REDIS_HOST}/{args.redis_db}"
        with shop_server(Path(tmp), db, broker_url, source) as (port, server):
            sent = 0
            while sent < args.warmup:
                batch = min(ROUND, args.warmup - sent)
                drive(port, forged(source, batch, sent), args.connections)
                sent += batch
            baseline = rss_bytes(server.pid)
            print(f"one `catalog-sync serve`, {os.cpu_count()} CPU(s), {args.connections} connections")
            print(f"after {args.warmup:>7,} forged (warm-up, baseline): {baseline / 2**20:7.1f} MB")
            refused = 0
            elapsed = 0.0
            measured = 0
            while measured < args.requests:
                batch = min(ROUND, args.requests - measured)
                started = time.perf_counter()
                _, _, answers = drive(port, forged(source, batch, sent), args.connections)
                elapsed += time.perf_counter() - started
                refused += sum(1 for status, _ in answers if status == 401)
                sent += batch
                measured += batch
                print(f"after {measured:>7,} more forged:                {rss_bytes(server.pid) / 2**20:7.1f} MB")
            final = rss_bytes(server.pid)
    ratio = final / baseline
    print(
        f"\nmemory after {args.requests:,} forged deliveries = {ratio:.3f} x the baseline "
        f"(target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})\n"
        f"refused 401: {refused:,}/{args.requests:,}{'' if refused == args.requests else '  <-- FAILED'}; "
        f"{args.requests / elapsed:,.0f} refusals/s; 1-minute load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()

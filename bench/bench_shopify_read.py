"""Benchmark: a full read of a Shopify shop, page by page versus the bulk export (the default for full runs).

A Shopify emulator with `--products` generated products (default 5,000) runs in its own process at its DEFAULT
cost bucket (1,000 points restored at 50 a second, as a standard plan) and bulk timeline. The GraphQL connector
reads the whole shop twice, each pass from a freshly reset shop (same seed, so the same products, and a full
bucket): with `bulk = "auto"` (the default: a full run exports in bulk) and with `bulk = "never"` (the baseline:
cost-paced pages, sized by the actual cost the shop reports). No state database or catalog is involved: this is
the read alone, which is what a full sync waits for before its first push.

    .venv/bin/python bench/bench_shopify_read.py                     # the paged pass takes about half an hour
    .venv/bin/python bench/bench_shopify_read.py --products 1000     # about six minutes

Prints, per pass: products read, elapsed seconds, HTTP requests the shop answered (GraphQL and the bulk download),
products per second, THROTTLED answers, and for the paged pass the page sizes it used and the products it read
again alone; then the ratio of the paged time to the bulk time. Paged reads are bound by the bucket: each product
costs its actual query cost (about 18 points here), restored at 50 points a second, whatever the page size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from config.sources import BulkMode, ShopifySource
from connectors.base import SourceProduct
from connectors.shopify import ShopifyGraphQL
from emulators.server import answers_when_up, free_port

TOKEN = "shpat_bench"  # noqa: S105 - the emulator's token for this run, not a credential
# How long the emulator process may take to answer its first request.
STARTUP_TIMEOUT = 60.0

_SERVE = (
    "import uvicorn\n"
    "from emulators.shopify import create_app\n"
    "uvicorn.run(create_app(products={products}, seed={seed}, access_token={token!r}), host='127.0.0.1',"
    " port={port}, log_level='warning')\n"
)


@dataclass
class Pass:
    name: str
    products: int
    seconds: float
    requests: int
    throttled: int
    cpu_seconds: float
    pages: Counter[int]
    refetched: int

    @property
    def per_second(self) -> float:
        return self.products / self.seconds if self.seconds else 0.0


@contextmanager
def emulator(products: int, seed: int) -> Iterator[str]:
    port = free_port()
    script = _SERVE.format(products=products, seed=seed, token=TOKEN, port=port)
    process = subprocess.Popen([sys.executable, "-c", script])
    url = f"http://127.0.0.1:{port}"
    try:
        if not answers_when_up(url, process, timeout=STARTUP_TIMEOUT):
            raise SystemExit("the Shopify emulator did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def stats(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/_emulator/stats", timeout=30.0)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def requests_answered(body: dict[str, Any]) -> int:
    kinds = ("graphql", "bulk_download")
    return sum(count for kind in kinds for count in body["requests"].get(kind, {}).values())


def read_pass(url: str, name: str, bulk: BulkMode, products: int, seed: int) -> Pass:
    httpx.post(f"{url}/_emulator/reset", json={"products": products, "seed": seed}, timeout=120.0).raise_for_status()
    source = ShopifySource(name="bench", kind="shopify", url=url, access_token=SecretStr(TOKEN), timeout=300.0)
    connector = ShopifyGraphQL(source, bulk=bulk)
    read = 0
    cpu = time.process_time()
    started = time.monotonic()
    try:
        for item in connector.iter_products(None):
            if isinstance(item, SourceProduct):
                read += 1
    finally:
        connector.close()
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    after = stats(url)
    if connector.notes.get("bulk_fallback"):
        print(f"  {name}: the bulk export fell back to pages: {dict(connector.notes)}")
    return Pass(
        name=name,
        products=read,
        seconds=elapsed,
        requests=requests_answered(after),
        throttled=int(after["throttled"]),
        cpu_seconds=cpu,
        pages=Counter(connector.page_sizes),
        refetched=connector.refetched,
    )


def report(result: Pass) -> None:
    print(
        f"{result.name:>6}: {result.products:>6} products in {result.seconds:8.1f} s, {result.requests:>5} requests, "
        f"{result.per_second:8.1f} products/s, THROTTLED {result.throttled}, "
        f"client CPU {result.cpu_seconds:.1f} s"
    )
    if result.pages:
        shown = ", ".join(f"{first} x{count}" for first, count in sorted(result.pages.items()))
        print(f"        page sizes (first x pages): {shown}; products read again alone: {result.refetched}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=5_000, help="products in the emulated shop")
    parser.add_argument("--seed", type=int, default=5, help="seed of the generated shop")
    args = parser.parse_args()
    print(f"Shopify read of {args.products} products at the emulator's default bucket (1,000 points, 50/s)")
    with emulator(args.products, args.seed) as url:
        bulk = read_pass(url, "bulk", "auto", args.products, args.seed)
        report(bulk)
        paged = read_pass(url, "paged", "never", args.products, args.seed)
        report(paged)
    ratio = paged.seconds / bulk.seconds if bulk.seconds else float("inf")
    print(f"paged / bulk time: {ratio:.1f}x; requests {paged.requests} / {bulk.requests}")
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

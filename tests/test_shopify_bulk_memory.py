"""A bulk export streams: reading a 20,000-product shop takes no more memory than reading a 2,000-product one.

The emulator runs in its own process so `tracemalloc` sees only the connector's allocations (the emulator builds the
JSONL as it serves it). This file is slow by nature, a minute or two: the emulator generates each export twice (once
to count it while the operation is RUNNING, once to serve it), and the 20,000-product export is tens of megabytes.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydantic import SecretStr

from config.sources import ShopifySource
from connectors.base import SourceProduct
from connectors.shopify import ShopifyGraphQL
from emulators.server import answers_when_up, free_port

# How long the emulator process may take to answer its first request.
STARTUP_TIMEOUT = 30.0
# Polls of the bulk operation sleep at most this long: the test swaps the connector's growing poll interval for a
# short one so it does not sit out the last, longest wait after the export is ready.
POLL_SLEEP_CAP = 0.2
SMALL, LARGE = 2_000, 20_000
# Memory that grew with the shop would be ~10x for 10x the products; streaming stays well under this.
MAX_GROWTH = 2.0

_SERVE = (
    "import uvicorn\n"
    "from emulators.shopify import create_app\n"
    "uvicorn.run(create_app(products={products}, seed=4, bulk_duration=0.0), host='127.0.0.1', port={port},"
    " log_level='warning')\n"
)


@contextmanager
def emulator_process(products: int) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", _SERVE.format(products=products, port=port)])
    url = f"http://127.0.0.1:{port}"
    try:
        if not answers_when_up(url, process, timeout=STARTUP_TIMEOUT):
            pytest.fail(f"the Shopify emulator process for {products} products did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def peak_of_bulk_export(products: int) -> tuple[int, int]:
    """(products read, tracemalloc peak in bytes) of one full bulk read of an emulated shop of `products`."""
    with emulator_process(products) as url:
        source = ShopifySource(name="bulk", kind="shopify", url=url, access_token=SecretStr("shpat_test"))
        connector = ShopifyGraphQL(
            source, bulk="always", sleep=lambda seconds: time.sleep(min(seconds, POLL_SLEEP_CAP))
        )
        tracemalloc.start()
        try:
            read = sum(1 for item in connector.iter_products(None) if isinstance(item, SourceProduct))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            connector.close()
    return read, peak


@pytest.mark.timeout(600)
def test_a_20000_product_bulk_export_streams_in_the_memory_of_a_2000_product_one() -> None:
    small_read, small_peak = peak_of_bulk_export(SMALL)
    large_read, large_peak = peak_of_bulk_export(LARGE)

    assert (small_read, large_read) == (SMALL, LARGE)
    growth = large_peak / small_peak
    assert growth < MAX_GROWTH, f"peak grew {growth:.1f}x ({small_peak} -> {large_peak} bytes) for 10x the products"

"""The catalog client counts its calls, 429s, cool-downs and budget waits where they happen (unit tests of the
counting with a scripted transport; tests/test_worker_process.py scrapes them from a real worker over HTTP)."""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY

from worker import work_metrics
from worker.catalog import CatalogClient
from worker.ratelimit import LocalLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_429_is_counted_with_its_cool_down_and_the_calls_by_endpoint_and_code() -> None:
    answers = iter(
        [
            httpx.Response(429, json={"code": "RATE_LIMITED", "message": "slow down", "status": 429},
                           headers={"Retry-After": "2"}),
            httpx.Response(404, json={"code": "PRODUCT_NOT_FOUND", "message": "gone", "status": 404}),
        ]
    )  # fmt: skip
    fake = FakeTime()
    limiter = LocalLimiter(100.0, 5, clock=fake.clock, sleep=fake.sleep)
    client = CatalogClient(
        "http://catalog.test/tryon/v1",
        "k",
        limiter=limiter,
        sleep=fake.sleep,
        clock=fake.clock,
        transport=httpx.MockTransport(lambda request: next(answers)),
    )
    endpoint = {"method": "DELETE", "endpoint": "products/{externalId}"}
    before = {
        "429": value("catalog_sync_catalog_calls_total", code="429", **endpoint),
        "404": value("catalog_sync_catalog_calls_total", code="404", **endpoint),
        "limited": value("catalog_sync_catalog_rate_limited_total"),
        "cool": value("catalog_sync_catalog_cool_down_seconds_total"),
        "waits": value("catalog_sync_budget_wait_seconds_count", priority="priority"),
        "latency": value("catalog_sync_catalog_call_seconds_count", **endpoint),
    }

    client.delete("shirt-42", priority=True)
    client.close()

    assert value("catalog_sync_catalog_calls_total", code="429", **endpoint) - before["429"] == 1
    assert value("catalog_sync_catalog_calls_total", code="404", **endpoint) - before["404"] == 1
    assert value("catalog_sync_catalog_rate_limited_total") - before["limited"] == 1
    assert value("catalog_sync_catalog_cool_down_seconds_total") - before["cool"] == 2.0
    assert value("catalog_sync_budget_wait_seconds_count", priority="priority") - before["waits"] == 2
    assert value("catalog_sync_catalog_call_seconds_count", **endpoint) - before["latency"] == 2


def test_a_products_external_id_never_becomes_a_label() -> None:
    assert work_metrics.endpoint("products/shirt-42") == "products/{externalId}"
    assert work_metrics.endpoint("/products") == "products"


def test_the_admin_command_does_not_import_prometheus_client_before_worker_chooses_its_mode() -> None:
    import subprocess
    import sys

    # prometheus_client picks single- or multi-process values when first imported; `worker --metrics-port` sets
    # the multiprocess directory after the command module is loaded, so loading it must not import the client.
    probe = "import sys, worker.cli; print('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)

    assert result.stdout.strip() == "False"

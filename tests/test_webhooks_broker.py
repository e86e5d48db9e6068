"""The broker stops while deliveries arrive: every delivery is still acknowledged and committed, `/readyz` says
the broker is down but stays ready (intake works), and once it is back a reconcile pass dispatches every row that
missed its push.

The broker is real Redis behind a TCP proxy that the test stops and starts, so the shared server is never touched.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx

from emulators.server import running
from tests.webhooks_support import (
    Queues,
    broker_url,
    make_runtime,
    make_sources,
    proxy_to_redis,
    shopify_headers,
    shopify_product,
    stored,
    use_broker,
)
from worker.operations import reconcile
from worker.state import DELETED
from worker.webhooks import create_app

# Reconcile re-sends a push whose message was never consumed after this many seconds; here the rows must be due at
# once.
REQUEUE_AFTER = 0.0


def test_deliveries_while_the_broker_is_down_are_committed_and_dispatched_once_it_returns(
    clean_env: None, database_url: str, redis_url: str, tmp_path: Path, unique: str
) -> None:
    sources = make_sources(unique)
    shop = f"shop-{unique}"
    queues = Queues(broker_url(), sources)
    with proxy_to_redis() as proxy:
        runtime = make_runtime(database_url, sources, broker_url(proxy.port), tmp_path, requeue_after=REQUEUE_AFTER)
        use_broker(runtime)
        try:
            with running(create_app(runtime)) as server, httpx.Client(base_url=server.url, timeout=30) as client:

                def deliver(product_id: int, title: str, event: str) -> httpx.Response:
                    body = json.dumps(shopify_product(product_id, title=title, updated_at="2024-05-01T10:00:00Z"))
                    return client.post(
                        f"/webhooks/{shop}", content=body, headers=shopify_headers(body.encode(), event_id=event)
                    )

                # Given a healthy broker and one delivery that went through
                assert deliver(1, "Before the outage", "e-1").json() == {"outcome": "updated"}
                assert client.get("/readyz").status_code == 200

                # When the broker stops and more deliveries come, including a deletion
                proxy.stop()
                during = [deliver(n, f"During the outage {n}", f"e-{n}") for n in range(2, 6)]
                deletion = client.post(
                    f"/webhooks/{shop}",
                    content=b'{"id":1}',
                    headers=shopify_headers(
                        b'{"id":1}', topic="products/delete", event_id="e-del", triggered_at=datetime.now(UTC)
                    ),
                )
                health_down = client.get("/readyz")
                published_during = queues.pushed()

                # ... and comes back
                proxy.start()
                health_up = client.get("/readyz")

            from worker.tasks import dispatcher

            dispatched = reconcile(runtime, dispatcher)
            rows = {pid: stored(runtime.store, shop, pid) for pid in ("1", "2", "3", "4", "5")}
            requeued = {product_id for _, product_id in queues.pushed("push.priority")}
        finally:
            queues.clear()
            queues.close()
            runtime.close()

    # Then every delivery was acknowledged and committed, though nothing could be published meanwhile
    assert [r.status_code for r in during] == [200] * 4
    assert [r.json()["outcome"] for r in during] == ["updated"] * 4
    assert deletion.json() == {"outcome": "deleted"}
    assert [product_id for _, product_id in published_during] == ["1"]
    assert all(row.status == "pending" for row in rows.values())
    assert rows["1"].desired_hash == DELETED
    # ... the readiness check said so without taking intake out of the load balancer, and recovered
    assert health_down.status_code == 200
    assert health_down.json()["broker"].startswith("unavailable")
    assert health_down.json()["database"] == "ok"
    assert health_up.status_code == 200
    assert health_up.json()["broker"] == "ok"
    # ... and reconcile delivered every product that missed its push, still ahead of bulk work
    assert dispatched >= 5
    assert {"1", "2", "3", "4", "5"} <= requeued

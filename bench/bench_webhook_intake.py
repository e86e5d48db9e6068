"""Benchmark: verified webhook deliveries per second accepted by one `catalog-sync serve` process.

Starts `catalog-sync serve` as a subprocess (its own settings from `CATALOG_SYNC_*`: a state database, a Redis
broker on a dedicated db number, a sources file with one Shopify source), then drives it from this process with a
small asyncio HTTP/1.1 client over keep-alive connections, in two phases of the same run:

- baseline: the same server answering the same requests for a source it does not know (404 before the body is
  even read): what uvicorn, HTTP parsing and routing alone allow on this machine;
- intake: signed `products/update` deliveries, each a different product with its own event id, so every one is
  verified, looked up, written, remembered and published as a push on `push.priority` (nothing is a replay).

Prints both rates, intake ÷ baseline, the server's CPU time per request in each phase (read from `/proc`: steadier
than a rate when other work shares the machine), the deliveries' p50/p99 answer time, and whether every delivery
answered 200 `updated` (a delivery that did not is a failure of the run, not a slower figure). Target: ≥ 500/s.

    .venv/bin/python bench/bench_webhook_intake.py --database postgres --requests 5000 --connections 32
    .venv/bin/python bench/bench_webhook_intake.py --database sqlite

Needs Redis (the broker, default db 15) and, for `--database postgres`, PostgreSQL (a throwaway schema, dropped
after). The push messages it published are removed from the broker afterwards (only those of its own source).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("catalog-sync"))
POSTGRES_URL = os.environ.get("CATALOG_SYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST = "127.0.0.1:6379"
# A Redis database of the benchmarks' own: the Celery queues and the limiter key live there, never in db 0.
DEFAULT_REDIS_DB = 15
WEBHOOK_SECRET = "bench-webhook-secret"  # noqa: S105 - a throwaway secret the benchmark signs with
# Seconds a subprocess may take to answer its health check before the benchmark gives up.
STARTUP_TIMEOUT = 60.0
# Seconds a subprocess gets to stop on SIGTERM before it is killed.
STOP_TIMEOUT = 15.0
# Requests sent before each measured phase, so connections, pools and caches are warm.
WARMUP_REQUESTS = 200


# ---------------------------------------------------------------------------------------------- shared helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_product(product_id: int, title: str, updated_at: datetime) -> dict[str, object]:
    """A `products/update` body with the fields Shopify sends that the connector reads."""
    return {
        "id": product_id,
        "admin_graphql_api_id": f"gid://shopify/Product/{product_id}",
        "title": title,
        "body_html": f"<p>{title}</p>",
        "handle": f"bench-{product_id}",
        "vendor": "Bench",
        "product_type": "Shirt",
        "status": "active",
        "tags": "bench",
        "published_at": "2024-01-01T00:00:00Z",
        "updated_at": updated_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "images": [{"id": product_id, "src": f"https://cdn.example/bench/{product_id}.jpg", "alt": None}],
        "variants": [{"id": product_id * 10, "price": "10.00"}],
    }


def delivery(product_id: int, title: str, updated_at: datetime, event_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(shopify_product(product_id, title, updated_at)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "products/update",
        "X-Shopify-Hmac-Sha256": sign(body),
        "X-Shopify-Event-Id": event_id,
        "X-Shopify-Webhook-Id": event_id,
        "X-Shopify-Triggered-At": updated_at.isoformat().replace("+00:00", "Z"),
        "X-Shopify-Shop-Domain": "bench.example",
    }
    return body, headers


@contextlib.contextmanager
def state_database(kind: str, workdir: Path) -> Iterator[str]:
    """A migrated state database: a SQLite file in `workdir`, or a throwaway PostgreSQL schema."""
    from worker import schema
    from worker.state import make_engine

    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'state.db'}"
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{name}"'))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{name}"
    try:
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def environment(workdir: Path, database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CATALOG_SYNC_")}
    env.update(
        CATALOG_SYNC_CONFIG=str(workdir / "catalog-sync.toml"),
        CATALOG_SYNC_DATABASE_URL=database_url,
        CATALOG_SYNC_BROKER_URL=broker_url,
        CATALOG_SYNC_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


@contextlib.contextmanager
def subprocess_group(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in its own process group (a Celery worker forks its pool), stopped with the group."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's group, SIGKILL if it has not stopped after STOP_TIMEOUT."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode}; its log:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(
        f"{url} did not become healthy within {STARTUP_TIMEOUT:.0f} s; its log:\n{log.read_text()[-4000:]}"
    )


@contextlib.contextmanager
def shop_server(
    workdir: Path, database_url: str, broker_url: str, source: str, secret: str = WEBHOOK_SECRET
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A healthy `catalog-sync serve` whose sources file holds one Shopify source with `secret`: (port, process)."""
    (workdir / "catalog-sync.toml").write_text(
        f'[[sources]]\nname = "{source}"\nkind = "shopify"\nurl = "https://bench.example"\n'
        f'access_token = "shpat_bench"\nwebhook_secret = "{secret}"\n',
        encoding="utf-8",
    )
    port = free_port()
    log = workdir / "serve.log"
    env = environment(workdir, database_url, broker_url)
    with subprocess_group([CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env, log) as server:
        wait_healthy(f"http://127.0.0.1:{port}", server, log)
        yield port, server


def remove_messages(broker_url: str, sources: set[str]) -> int:
    """Delete the Celery messages of `sources` from the project's queues; returns how many."""
    client = redis.Redis.from_url(broker_url)
    removed = 0
    try:
        for queue in ("push.priority", "push", "sync"):
            keep = []
            mine = 0
            for raw in client.lrange(queue, 0, -1):
                args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
                if args and args[0] in sources:
                    mine += 1
                else:
                    keep.append(raw)
            if mine:
                # Rewrite the list without our messages in one transaction (LREM per message is quadratic).
                with client.pipeline() as pipe:
                    pipe.delete(queue)
                    if keep:
                        pipe.rpush(queue, *keep)
                    pipe.execute()
                removed += mine
    finally:
        client.close()
    return removed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux `/proc`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# -------------------------------------------------------------------------------------------- the load client


def render(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _drive(
    port: int, requests: list[bytes], connections: int
) -> tuple[float, list[float], list[tuple[int, bytes]]]:
    """Send every request over `connections` keep-alive connections; (elapsed seconds, latencies, answers)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)
    latencies = [0.0] * len(requests)
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                index = queue.get_nowait()
                started = time.perf_counter()
                writer.write(requests[index])
                answers[index] = await _read_response(reader)
                latencies[index] = time.perf_counter() - started
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return time.perf_counter() - started, latencies, answers


def drive(port: int, requests: list[bytes], connections: int) -> tuple[float, list[float], list[tuple[int, bytes]]]:
    return asyncio.run(_drive(port, requests, connections))


# ------------------------------------------------------------------------------------------------------- main


def deliveries(source: str, count: int, first_id: int) -> list[bytes]:
    moment = datetime.now(UTC)
    out = []
    for n in range(count):
        product_id = first_id + n
        body, headers = delivery(product_id, f"Product {product_id}", moment, f"bench-{uuid.uuid4().hex}")
        out.append(render(f"/webhooks/{source}", body, headers))
    return out


def run(args: argparse.Namespace, database: str) -> dict[str, float]:
    token = uuid.uuid4().hex[:8]
    source = f"bench-shop-{token}"
    broker_url = f"redis://{REDIS_HOST}/{args.redis_db}"
    with tempfile.TemporaryDirectory(prefix="bench-webhook-intake-") as tmp, state_database(database, Path(tmp)) as db:
        try:
            with shop_server(Path(tmp), db, broker_url, source) as (port, server):
                unknown = deliveries(f"nobody-{token}", args.requests + WARMUP_REQUESTS, 1)
                drive(port, unknown[:WARMUP_REQUESTS], args.connections)
                cpu = cpu_seconds(server.pid)
                base_elapsed, _, base_answers = drive(port, unknown[WARMUP_REQUESTS:], args.connections)
                base_cpu = cpu_seconds(server.pid) - cpu
                signed = deliveries(source, args.requests + WARMUP_REQUESTS, 1)
                drive(port, signed[:WARMUP_REQUESTS], args.connections)
                cpu = cpu_seconds(server.pid)
                elapsed, latencies, answers = drive(port, signed[WARMUP_REQUESTS:], args.connections)
                intake_cpu = cpu_seconds(server.pid) - cpu
        finally:
            removed = remove_messages(broker_url, {source})
    accepted = sum(1 for status, body in answers if status == 200 and b'"updated"' in body)
    baseline_ok = sum(1 for status, _ in base_answers if status == 404)
    return {
        "baseline_rate": args.requests / base_elapsed,
        "baseline_ok": baseline_ok,
        "rate": args.requests / elapsed,
        "accepted": accepted,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "removed": removed,
        "baseline_cpu_ms": base_cpu / args.requests * 1000,
        "cpu_ms": intake_cpu / args.requests * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--requests", type=int, default=5000, help="Measured requests per phase.")
    parser.add_argument("--connections", type=int, default=32, help="Concurrent keep-alive connections.")
    parser.add_argument("--redis-db", type=int, default=DEFAULT_REDIS_DB, help="Redis db number of the broker.")
    args = parser.parse_args()
    if args.redis_db == 0:
        parser.error("use a dedicated Redis db number, not 0")
    print(
        f"one `catalog-sync serve` process, {os.cpu_count()} CPU(s), {args.requests} requests per phase, "
        f"{args.connections} connections"
    )
    for database in ("sqlite", "postgres") if args.database == "both" else (args.database,):
        result = run(args, database)
        ok = result["accepted"] == args.requests and result["baseline_ok"] == args.requests
        print(
            f"\n[{database}] baseline (404, same server): {result['baseline_rate']:8.0f} req/s\n"
            f"[{database}] verified deliveries:        {result['rate']:8.0f} /s   "
            f"= {result['rate'] / result['baseline_rate']:.2f} x baseline   target >= 500/s: "
            f"{'met' if result['rate'] >= 500 else 'NOT met'}\n"
            f"[{database}] server CPU per request: baseline {result['baseline_cpu_ms']:.2f} ms, "
            f"delivery {result['cpu_ms']:.2f} ms (one free core would allow {1000 / result['cpu_ms']:.0f}/s)\n"
            f"[{database}] answer time p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms "
            f"(mean {result['mean_ms']:.1f} ms at {args.connections} in flight)\n"
            f"[{database}] 1-minute load average after the run: {os.getloadavg()[0]:.2f}\n"
            f"[{database}] answered 200 updated: {result['accepted']:.0f}/{args.requests}"
            f"{'' if ok else '  <-- FAILED'}; push messages cleaned from the broker: {result['removed']:.0f}"
        )


if __name__ == "__main__":
    main()

"""The compose stack end to end in a real Docker daemon (run by deploy/smoke.sh after it built the image).

What runs is deploy/compose.yaml itself, adapted only where this kind of machine requires it:

- Containers share the host's network (no bridge network here), so published ports are dropped, every service
  uses `network_mode: host`, and the services listen on free ports chosen now.
- No image registry is reachable, so the `redis` and `postgres` services stand in for the host's own Redis (a
  database claimed like the tests claim theirs) and PostgreSQL (a database created for this run): each stand-in
  is healthy when that server accepts connections, so `depends_on` still orders the start.
- Two services are added: the catalog emulator and a Shopify emulator, run from the same image.

Then, from outside as an operator would: the migration finished; the webhook server is ready; a full sync of
the shop through the workers reaches the catalog emulator; an edit in the shop sends a signed webhook that reaches
the catalog through the webhook server and a worker; `worker --check` answers. Any failed step prints the
services' logs and exits non-zero.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
API_KEY = "smoke-catalog-key"
SHOP_TOKEN = "shpat_smoke"  # noqa: S105 (the emulator's token for this run, not a credential)
WEBHOOK_SECRET = "smoke-webhook-secret"  # noqa: S105
SHOP_PRODUCTS = 30
WORKERS = 2
# Guards against a hung stack, not performance targets: container starts copy the image on vfs storage.
START_TIMEOUT = 300.0
CONVERGE_TIMEOUT = 300.0


class SmokeFailure(Exception):
    pass


def log(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(command: Sequence[str], *, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)  # noqa: S603
    if check and result.returncode != 0:
        raise SmokeFailure(f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    if not quiet and result.stdout.strip():
        print(result.stdout.rstrip(), flush=True)
    return result


def wait_for(what: str, check: Callable[[], bool], timeout: float, stack: Stack | None = None) -> None:
    """Poll `check` until it holds; fail at once when one of the stack's long-running services crashed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if stack is not None:
            crashed = stack.crashed()
            if crashed:
                raise SmokeFailure(f"{', '.join(crashed)} crashed while waiting for {what}")
        time.sleep(1.0)
    raise SmokeFailure(f"timed out after {timeout:.0f}s waiting for {what}")


# ----------------------------------------------------------------------------------------- the adapted stack


class Stack:
    def __init__(self, image: str, work: Path) -> None:
        self.image = image
        self.work = work
        self.project = f"catalogsmoke{uuid.uuid4().hex[:8]}"
        self.ports = {name: free_port() for name in ("catalog", "shop", "webhooks")}
        self.database = f"catalog_smoke_{uuid.uuid4().hex[:8]}"
        self.redis_db: int | None = None
        self.file = work / "compose.smoke.yaml"
        # The emulator serves the API under the same path as the real one.
        self.catalog_url = f"http://127.0.0.1:{self.ports['catalog']}/tryon/v1"

    # ---- host services ------------------------------------------------------------------------------------

    def claim_redis_db(self) -> int:
        """A Redis database of this run's own, claimed with the same keys the test runs use."""
        for number in range(1, 16):
            claimed = run(
                ["redis-cli", "-n", "0", "SET", f"catalog-sync:test-claim:{number}", self.project, "NX", "EX", "7200"],
                quiet=True,
            )
            if claimed.stdout.strip() == "OK":
                self.redis_db = number
                run(["redis-cli", "-n", str(number), "FLUSHDB"], quiet=True)
                return number
        raise SmokeFailure("no free Redis database among 1..15 (catalog-sync:test-claim:* keys in db 0)")

    def release(self) -> None:
        if self.redis_db is not None:
            run(["redis-cli", "-n", str(self.redis_db), "FLUSHDB"], check=False, quiet=True)
            run(["redis-cli", "-n", "0", "DEL", f"catalog-sync:test-claim:{self.redis_db}"], check=False, quiet=True)
        run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", self.database], check=False, quiet=True)

    # ---- the compose file -----------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """What an operator puts in deploy/.env, for compose's interpolation."""
        return {
            **os.environ,
            "CATALOG_SYNC_IMAGE": self.image,
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "unused-with-trust-auth",
            "POSTGRES_DB": self.database,
            "CATALOG_SYNC_CATALOG_URL": self.catalog_url,
            "CATALOG_SYNC_CATALOG_API_KEY": API_KEY,
            # The vendor's default limit, which the catalog emulator enforces too.
            "CATALOG_SYNC_CATALOG_RATE_LIMIT": "100/minute",
            "CATALOG_SYNC_SOURCES_FILE": str(self.work / "catalog-sync.toml"),
            "CATALOG_SYNC_LOG_FORMAT": "json",
            # Docker's vfs storage (the only driver here) copies the whole image for each container it creates:
            # on a busy machine one create outlasts compose's default 60 s wait for the daemon.
            "COMPOSE_HTTP_TIMEOUT": os.environ.get("COMPOSE_HTTP_TIMEOUT", "900"),
        }

    def write(self) -> None:
        (self.work / "catalog-sync.toml").write_text(
            '[[sources]]\nname = "shop"\nkind = "shopify"\n'
            f'url = "http://127.0.0.1:{self.ports["shop"]}"\naccess_token = "{SHOP_TOKEN}"\n'
            f'webhook_secret = "{WEBHOOK_SECRET}"\nexternal_id = "shop-{{id}}"\n'
            # The emulated shop's image URLs name a CDN this machine cannot reach.
            "check_images = false\n"
            # Scheduled syncs out of the way: the smoke test triggers its own.
            "incremental_interval = 86400\nfull_interval = 86400\n"
        )
        document = yaml.safe_load(COMPOSE.read_text())
        services: dict[str, Any] = document["services"]
        database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.database}"
        broker_url = f"redis://127.0.0.1:6379/{self.redis_db}"
        for name, service in services.items():
            service.pop("ports", None)
            service.pop("build", None)
            service["network_mode"] = "host"
            environment = service.get("environment")
            if isinstance(environment, dict) and "CATALOG_SYNC_DATABASE_URL" in environment:
                environment["CATALOG_SYNC_DATABASE_URL"] = database_url
                environment["CATALOG_SYNC_BROKER_URL"] = broker_url
            if name == "flower":
                environment["CELERY_BROKER_URL"] = broker_url
        services["redis"] = self.stand_in(6379)
        services["postgres"] = self.stand_in(5432)
        # Two workers on the host's network cannot both listen on the metrics port: the first one does.
        worker = services["worker"]
        position = worker["command"].index("--metrics-port")
        worker["command"] = worker["command"][:position] + worker["command"][position + 2 :]
        port = str(self.ports["webhooks"])
        webhooks = services["webhooks"]
        webhooks["command"] = [port if part == "8080" else part for part in webhooks["command"]]
        probe = webhooks["healthcheck"]["test"]
        webhooks["healthcheck"]["test"] = [part.replace(":8080/", f":{port}/") for part in probe]
        emulator = {"image": self.image, "network_mode": "host", "restart": "no"}
        services["catalog"] = {
            **emulator,
            "command": ["emulate", "catalog", "--port", str(self.ports["catalog"]), "--api-key", API_KEY],
        }
        services["shop"] = {
            **emulator,
            "command": [
                "emulate", "shopify", "--port", str(self.ports["shop"]), "--products", str(SHOP_PRODUCTS),
                "--access-token", SHOP_TOKEN,
            ],
        }  # fmt: skip
        for name in ("worker", "beat", "webhooks", "migrate"):
            services[name].setdefault("depends_on", {})["catalog"] = {"condition": "service_started"}
        self.file.write_text(yaml.safe_dump(document, sort_keys=False))

    def stand_in(self, port: int) -> dict[str, Any]:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2).close()"
        return {
            "image": self.image,
            "network_mode": "host",
            "entrypoint": ["sleep", "infinity"],
            "healthcheck": {"test": ["CMD", "python3", "-c", probe], "interval": "2s", "timeout": "3s", "retries": 30},
        }

    # ---- compose ----------------------------------------------------------------------------------------------

    def compose(self, *args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "--project-name", self.project, "--file", str(self.file), *args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.environment(), check=False)  # noqa: S603
        if check and result.returncode != 0:
            raise SmokeFailure(f"`docker-compose {' '.join(args)}` exited {result.returncode}:\n{result.stderr}")
        if not quiet and result.stdout.strip():
            print(result.stdout.rstrip(), flush=True)
        return result

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service, quiet=True).stdout.split()
        if not ids:
            raise SmokeFailure(f"no container for {service}")
        return ids[0]

    def state(self, service: str) -> dict[str, Any]:
        inspected = run(["docker", "inspect", "--format", "{{json .State}}", self.container(service)], quiet=True)
        state: dict[str, Any] = json.loads(inspected.stdout)
        return state

    def crashed(self) -> list[str]:
        """Long-running services whose container exited or restarted."""
        names = []
        for service in ("worker", "beat", "webhooks", "catalog", "shop"):
            for container in self.compose("ps", "-q", service, quiet=True).stdout.split():
                state = ["docker", "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", container]
                inspected = run(state, quiet=True)
                status, restarts = inspected.stdout.split()
                if status in ("exited", "dead", "restarting") or int(restarts) > 0:
                    names.append(service)
        return sorted(set(names))

    def dump_logs(self) -> None:
        result = self.compose("logs", "--no-color", "--tail", "60", check=False, quiet=True)
        print(result.stdout[-20000:], file=sys.stderr)


# ----------------------------------------------------------------------------------------------------- steps


def smoke(stack: Stack) -> None:
    started = time.monotonic()
    stack.claim_redis_db()
    run(["createdb", "-h", "127.0.0.1", "-U", "postgres", stack.database], quiet=True)
    stack.write()
    log(f"project {stack.project}: ports {stack.ports}, database {stack.database}, redis db {stack.redis_db}")
    stack.compose("up", "-d", "--scale", f"worker={WORKERS}")

    # The migration ran to completion before the others started.
    wait_for("the migration to finish", lambda: stack.state("migrate")["Status"] == "exited", START_TIMEOUT)
    exit_code = stack.state("migrate")["ExitCode"]
    if exit_code != 0:
        raise SmokeFailure(f"migrate exited {exit_code}")
    log("migrate: `db upgrade` exited 0")

    webhooks = f"http://127.0.0.1:{stack.ports['webhooks']}"
    catalog = httpx.Client(base_url=stack.catalog_url, headers={"x-api-key": API_KEY})
    shop = httpx.Client(base_url=f"http://127.0.0.1:{stack.ports['shop']}")
    ready = lambda: httpx.get(f"{webhooks}/readyz").status_code == 200  # noqa: E731
    wait_for("the webhook server to be ready", ready, START_TIMEOUT, stack)
    log(f"webhooks: /readyz {httpx.get(f'{webhooks}/readyz').json()}")
    wait_for(
        "the webhook container to be healthy",
        lambda: stack.state("webhooks").get("Health", {}).get("Status") == "healthy",
        START_TIMEOUT,
        stack,
    )
    log("webhooks: docker health status healthy")

    # A full sync through the workers, asked for and followed the way an operator does.
    sync = stack.compose(
        "exec", "-T", "--index=1", "worker", "catalog-sync", "resync", "shop", "--full", "--wait", "--json",
        "--timeout", str(int(CONVERGE_TIMEOUT)), check=False, quiet=True,
    )  # fmt: skip
    if sync.returncode != 0:
        raise SmokeFailure(f"resync exited {sync.returncode}: {sync.stdout}{sync.stderr}")
    summary = json.loads(sync.stdout)
    log(f"resync shop --full --wait: {summary}")
    if summary["outcome"] != "converged" or summary["failed"] or summary["pending"] or not summary["synced"]:
        raise SmokeFailure(f"the sync did not converge: {summary}")
    listed = catalog.get("/products", params={"limit": 200}).json()
    if listed["count"] != summary["synced"]:
        raise SmokeFailure(f"the catalog holds {listed['count']} products, the sync reported {summary['synced']}")
    log(f"catalog emulator: {listed['count']} products")

    # An edit in the shop: the emulator sends a signed products/update webhook to the webhook server.
    target = f"{webhooks}/webhooks/shop"
    shop.post("/_emulator/webhooks", json={"url": target, "secret": WEBHOOK_SECRET}).raise_for_status()
    external_id = listed["items"][0]["externalId"]
    product_id = external_id.removeprefix("shop-")
    title = f"Edited by the smoke test {uuid.uuid4().hex[:6]}"
    shop.patch(f"/_emulator/products/{product_id}", json={"title": title}).raise_for_status()
    wait_for(
        "the webhook's edit to reach the catalog",
        lambda: catalog.get(f"/products/{external_id}").json().get("title") == title,
        CONVERGE_TIMEOUT,
        stack,
    )
    log(f"webhook: {external_id} reached the catalog as {title!r}")
    access = [
        line
        for line in stack.compose("logs", "--no-color", "webhooks", quiet=True).stdout.splitlines()
        if "catalog_sync.access" in line and '"outcome": "updated"' in line
    ]
    if not access:
        raise SmokeFailure("the webhook server logged no access line for the delivery")
    log(f"webhooks access log: {access[-1].split('|', 1)[-1].strip()}")

    # The orchestrator's view of the workers.
    check = stack.compose("exec", "-T", "--index=1", "worker", "catalog-sync", "worker", "--check", check=False)
    if check.returncode != 0:
        raise SmokeFailure(f"worker --check exited {check.returncode}: {check.stderr}")
    log(f"worker --check: exit 0 ({check.stderr.strip()})")
    beats = stack.compose("ps", "-q", "beat", quiet=True).stdout.split()
    if len(beats) != 1:
        raise SmokeFailure(f"expected exactly one beat, found {len(beats)}")
    log(f"passed in {time.monotonic() - started:.0f}s")


def main() -> int:
    image = sys.argv[1] if len(sys.argv) > 1 else "catalog-sync:smoke"
    with tempfile.TemporaryDirectory(prefix="catalog-sync-smoke-") as work:
        stack = Stack(image, Path(work))
        try:
            smoke(stack)
        except (SmokeFailure, httpx.HTTPError, KeyError, ValueError) as exc:
            print(f"smoke: FAILED: {exc}", file=sys.stderr, flush=True)
            if stack.file.exists():
                stack.dump_logs()
            return 1
        finally:
            if stack.file.exists():
                stack.compose("down", "--volumes", "--timeout", "30", check=False, quiet=True)
            stack.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`catalog-sync demo`: the whole data path on one machine with nothing installed beyond the package.

It starts the catalog emulator and a server for the sample feed shipped in the repo, then runs a full sync through
the real queue path (Celery on the in-process broker, SQLite state), prints what was synced, skipped and failed and
why, and re-syncs to show that an unchanged source costs no catalog call.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from config.settings import Settings
from emulators import catalog as catalog_emulator
from emulators import files
from ground.serving import running
from worker.embedded import embedded_worker
from worker.runtime import Runtime
from worker.state import RunRow, utcnow

SOURCE = "demo-feed"
API_KEY = "demo-key"
# The emulator stands in for the vendor's limit so the demo shows pacing without taking long.
RATE_LIMIT = 100.0
# A demo that has not converged by then is broken; say so instead of hanging.
CONVERGE_TIMEOUT = 120.0


def demo_feed() -> Path:
    return Path(str(resources.files("emulators") / "data" / "demo-feed.xml"))


def run_demo(out: Console, *, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="catalog-sync-demo-"))
    try:
        return _run(out, workdir)
    finally:
        if keep:
            out.print(f"state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(out: Console, workdir: Path) -> int:
    catalog_app = catalog_emulator.create_app([API_KEY])
    feed_app = files.create_app({"demo-feed.xml": demo_feed()})
    with running(catalog_app) as catalog, running(feed_app) as feed_server:
        config = workdir / "catalog-sync.toml"
        config.write_text(
            f'[[sources]]\nname = "{SOURCE}"\nkind = "feed"\nurl = "{feed_server.url}/demo-feed.xml"\n'
            # The sample feed's images are placeholders on cdn.example.com: nothing there to check.
            'format = "google-merchant"\ncheck_images = false\n',
            encoding="utf-8",
        )
        settings = Settings(
            config=config,
            database_url=f"sqlite:///{workdir / 'state.db'}",
            catalog_url=f"{catalog.url}/tryon/v1",
            catalog_api_key=SecretStr(API_KEY),
            catalog_rate_limit=RATE_LIMIT,
            catalog_burst=10,
        )
        out.print(f"catalog emulator on {catalog.url}, sample feed on {feed_server.url}/demo-feed.xml")
        out.print(f"state database {workdir / 'state.db'}\n")
        runtime = Runtime.build(settings, embedded=True)
        with embedded_worker(runtime), httpx.Client(base_url=catalog.url) as admin:
            first = _sync(runtime, out, "first full sync")
            if first is None:
                return 1
            _print_products(out, runtime)
            before = admin.get("/_emulator/stats").json()
            out.print(f"catalog calls in the first sync: {before['total_requests']} ({before['upserts']} upserts)\n")
            admin.post("/_emulator/reset", json={"stats_only": True})
            second = _sync(runtime, out, "second full sync (nothing changed)")
            if second is None:
                return 1
            after = admin.get("/_emulator/stats").json()
            calls = after["total_requests"]
            out.print(
                f"second sync: {second.counts.get('unchanged', 0)} unchanged, "
                f"{second.counts.get('changed', 0)} changed, catalog calls: [bold]{calls}[/bold]"
            )
        runtime.close()
    return 0 if calls == 0 else 1


def _sync(runtime: Runtime, out: Console, label: str) -> RunRow | None:
    from worker.tasks import sync_source_task

    started = utcnow()
    sync_source_task.delay(SOURCE, "full")
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    store = runtime.store
    with out.status(label):
        while time.monotonic() < deadline:
            run = store.latest_run(SOURCE, started_after=started)
            if run is not None and run.outcome != "running" and store.unconverged_count(SOURCE) == 0:
                out.print(f"{label}: run {run.id} {run.outcome} in {(utcnow() - started).total_seconds():.1f}s")
                return run
            time.sleep(0.1)
    out.print(f"[red]{label} did not converge within {CONVERGE_TIMEOUT:.0f}s[/red]")
    return None


def _print_products(out: Console, runtime: Runtime) -> None:
    rows = runtime.store.products(SOURCE)
    table = Table(title=f"{SOURCE}: {len(rows)} products")
    for column in ("product", "external id", "status", "reason"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: (r.status != "synced", r.status, r.product_id)):
        reason = row.skip_reason or row.last_error_code or ""
        # A draft the catalog never held is `inactive`, as `status` counts it: "deleted" means a catalog delete.
        status = "inactive" if row.status == "deleted" and row.last_synced_at is None else row.status
        if status == "inactive" and not reason:
            reason = "not active in the source"
        if row.last_error_message and row.status == "failed":
            reason = f"{reason}: {row.last_error_message}"
        table.add_row(row.product_id, row.external_id, status, reason)
    out.print(table)
    counts = runtime.store.status_breakdown(SOURCE)
    run = runtime.store.latest_run(SOURCE)
    unrecorded = run.counts.get("skipped_without_id", 0) if run is not None else 0
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    out.print(f"{summary}; {unrecorded} feed item(s) without an id skipped (not recordable)\n")

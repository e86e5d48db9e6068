"""The admin command `catalog-sync`.

Exit status (`worker/outcome.py` has the full table): 0 converged, 1 products (or the run) failed, 2 usage or
configuration errors, 3 not converged when the command stopped following the work (timeout, catalog unreachable,
pushes paused), 4 a deletion held by the brake. `--json` prints one object on stdout with the same `outcome`;
human output goes to the terminal through rich, with every message escaped so no text is lost to markup.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer import _click as click  # typer vendors click; the types its groups override with are named only here
from typer.core import TyperGroup

from config.rates import format_rate
from config.redact import redact_url
from config.urls import redact
from ground.errors import ConfigError, SourceError, SyncError
from worker.cli_webhooks import webhooks_app
from worker.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from worker.state import RunMode, utcnow

if TYPE_CHECKING:
    from worker.feeder import BudgetStatus

app = typer.Typer(
    help="Keep the try-on catalog in step with your shops.", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="The state database.", no_args_is_help=True)


class EmulatorCommands(TyperGroup):
    """`catalog-sync emulate`, whose commands live in `emulators.cli`. That module is imported only when an emulator
    command (or the list of them) is asked for: the emulators are test servers, and no worker, beat or webhook
    process may load them (nor graphql-core, which only the Shopify emulator needs)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return emulator_group().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return emulator_group().get_command(ctx, cmd_name)


@functools.cache
def emulator_group() -> TyperGroup:
    from emulators.cli import emulate

    return typer.main.get_group(emulate)


app.add_typer(
    typer.Typer(
        cls=EmulatorCommands,
        help="Run a local emulator of the catalog API or a shop (for tests, benchmarks, demos).",
        no_args_is_help=True,
    ),
    name="emulate",
)
app.add_typer(db_app, name="db")
app.add_typer(webhooks_app, name="webhooks")

console = Console(stderr=True)
out = Console()

# How often `--wait` looks at the state database.
WAIT_POLL_SECONDS = 0.5
# How long `worker --check` waits for the worker's answer: a busy prefork worker answers pings from its main
# process, so a few seconds is plenty; an orchestrator's probe timeout must be longer.
WORKER_PING_TIMEOUT = 5.0

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def main() -> None:
    from worker.logs import configure_from_settings

    # Commands are quiet unless CATALOG_SYNC_LOG_LEVEL asks for more (DEBUG to see every request, URLs redacted);
    # text or JSON lines (CATALOG_SYNC_LOG_FORMAT). The admin commands speak through rich; logs are for trouble.
    level = logging.getLevelName(os.environ.get("CATALOG_SYNC_LOG_LEVEL", "WARNING").upper())
    level = level if isinstance(level, int) else logging.WARNING
    configure_from_settings(level)
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)


def _runtime(*, embedded: bool = False) -> Any:
    from worker.runtime import Runtime

    return Runtime.build(embedded=embedded)


def _database(runtime: Any) -> str:
    """The state database's URL as it may be shown: password masked."""
    return redact_url(runtime.settings.database_url)


def _check_broker(runtime: Any) -> None:
    """A worker or beat that cannot reach its broker would retry in its own log forever; say so and stop."""
    from worker.webhooks import celery_broker_check

    try:
        celery_broker_check()
    except Exception as exc:  # kombu's connection errors have no common base worth naming
        url = runtime.settings.broker_url
        raise ConfigError(
            f"cannot reach the broker {redact_url(url)} (CATALOG_SYNC_BROKER_URL): {type(exc).__name__}: "
            f"{redact(str(exc), url)}; start it, or fix CATALOG_SYNC_BROKER_URL"
        ) from None


# ------------------------------------------------------------------------------------------------------ resync


@app.command()
def resync(
    source: Annotated[str, typer.Argument(help="The source's name in the sources file.")],
    full: Annotated[bool, typer.Option("--full", help="Read every product and delete what is gone.")] = False,
    product: Annotated[list[str] | None, typer.Option("--product", help="Re-sync only this product id.")] = None,
    inline: Annotated[bool, typer.Option("--inline", help="Do all the work in this process, no broker.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the work until every product converged.")] = False,
    as_json: JsonOption = False,
    allow_mass_delete: Annotated[
        bool, typer.Option("--allow-mass-delete", help="Confirm a full run that deletes many products.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Longest --wait/--inline follows the work, seconds (pushing included).")
    ] = 3600.0,
    bulk: Annotated[
        bool | None,
        typer.Option(
            "--bulk/--no-bulk",
            help='Shopify: read this run with a bulk export (as bulk = "always") or page by page ("never").',
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Push every product read, whatever the state believes the catalog holds.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; send nothing, change nothing.")
    ] = False,
) -> None:
    """Re-sync a source (incremental unless --full), or single products with --product.

    Exit status: 0 converged, 1 products (or the run) failed, 2 usage or configuration, 3 not converged when it
    stopped (timeout, catalog unreachable, pushes paused), 4 a deletion held by the brake.
    """
    from worker.outcome import Stop, stop_reason

    runtime = _runtime()
    runtime.source(source)
    if dry_run:
        _dry_run(runtime, source, "full" if full else "incremental", product or None, as_json)
        return
    started = utcnow()
    mode: RunMode = "product" if product else ("full" if full else "incremental")
    run_id: int | None = None
    stop: Stop | None = None
    if inline:
        from worker.inline import InlineDispatcher

        dispatcher = InlineDispatcher(runtime, timeout=timeout)
        from worker.operations import SyncInProgress

        _terminate_cleanly()
        try:
            if product:
                for product_id in product:
                    _sync_one(runtime, source, product_id, dispatcher, resend=force)
            else:
                from worker.operations import run_sync

                report = run_sync(
                    runtime, source, mode, dispatcher, allow_mass_delete=allow_mass_delete, bulk=bulk, force=force
                )
                run_id = report.run_id
        except SourceError as exc:
            _fail_run(runtime, source, started, as_json, str(exc))
        except SyncInProgress as exc:
            _report_deferred(source, exc, as_json)
        if dispatcher.drain(source):
            stop = stop_reason(runtime.store, source, timeout=timeout)
    else:
        from worker.celery_app import app as celery
        from worker.celery_app import configure

        configure(celery, runtime.settings, runtime.sources)
        from worker.tasks import sync_product_task, sync_source_task

        try:
            if product:
                for product_id in product:
                    sync_product_task.apply_async((source, product_id), {"force": True, "resend": force})
            else:
                sync_source_task.apply_async(
                    (source, mode), {"allow_mass_delete": allow_mass_delete, "bulk": bulk, "force": force}
                )
        except Exception as exc:  # kombu's connection errors have no common base worth naming
            broker = runtime.settings.broker_url
            console.print(
                f"[red]cannot reach the broker {escape(redact_url(broker))}[/red] "
                f"({type(exc).__name__}: {escape(redact(str(exc), broker))}); try --inline",
                highlight=False,
            )
            raise typer.Exit(EXIT_USAGE) from None
        if not wait:
            if as_json:
                out.print_json(json.dumps({"source": source, "mode": mode, "enqueued": True}))
            else:
                console.print(f"enqueued a {mode} sync of {source}; follow it with `catalog-sync status {source}`")
            return
        run_id, stop = _wait(runtime, source, started, product or None, mode, timeout=timeout, quiet=as_json)
    _report(runtime, source, started, run_id, product or None, as_json, stop)


def _dry_run(runtime: Any, source: str, mode: RunMode, products: list[str] | None, as_json: bool) -> None:
    """Read the source and say what a sync would do; nothing is sent and the state is only read."""
    from worker.preview import preview_products, preview_source

    connector = runtime.connector(source)
    try:
        if products:
            preview = preview_products(runtime.store, connector, runtime.source(source), products)
        else:
            preview = preview_source(
                runtime.store,
                connector,
                runtime.source(source),
                mode=mode,
                mass_delete_share=runtime.settings.mass_delete_share,
                mass_delete_window=runtime.settings.mass_delete_window,
            )
    except SourceError as exc:
        _fail_run(runtime, source, utcnow(), as_json, str(exc))
    finally:
        connector.close()
    body = preview.as_dict()
    if as_json:
        out.print_json(json.dumps(body))
        return
    from rich.markup import escape

    counts = ", ".join(f"{action} {count}" for action, count in body["counts"].items())
    out.print(
        f"dry run of a {preview.mode} sync of {source} (nothing sent, nothing changed): {counts}", highlight=False
    )
    table = Table()
    for column in ("action", "product", "externalId", "detail"):
        table.add_column(column)
    for action, changes in body["changes"].items():
        for change in changes:
            table.add_row(action, *(escape(change[k]) for k in ("product_id", "external_id", "detail")))
    if table.row_count:
        out.print(table)
    blocked = body.get("deletion_blocked")
    if blocked:
        out.print(
            f"[yellow]{blocked['deletions']} of {blocked['wanted']} product(s) would be deleted: more than the "
            f"deletion brake allows, so the run would delete nothing without --allow-mass-delete.[/yellow]"
        )


def _sync_one(runtime: Any, source: str, product_id: str, dispatcher: Any, *, resend: bool) -> None:
    from worker.operations import sync_product

    sync_product(runtime, source, product_id, dispatcher, force=True, resend=resend)


def _report_deferred(source: str, exc: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"source": source, "outcome": "deferred", "waiting": exc.waiting}))
    else:
        console.print(f"[yellow]deferred:[/yellow] {exc}", highlight=False)
    raise typer.Exit(EXIT_OK)


def _fail_run(runtime: Any, source: str, started: datetime, as_json: bool, message: str) -> None:
    if as_json:
        out.print_json(json.dumps({"source": source, "outcome": "failed", "error": message}))
    else:
        console.print(f"[red]the run failed:[/red] {escape(message)} (nothing was deleted)", highlight=False)
    raise typer.Exit(EXIT_FAILED)


def _wait(
    runtime: Any,
    source: str,
    started: datetime,
    products: Sequence[str] | None,
    mode: RunMode,
    *,
    timeout: float,
    quiet: bool,
) -> tuple[int | None, Any]:
    """Follow enqueued work in the state database until the run finished and every touched row converged, the
    source's pushes are paused (reported at once: nothing converges until someone acts), or the timeout passes.
    Returns the run's id and why it stopped early (None when everything converged)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.outcome import stop_reason

    store = runtime.store
    deadline = time.monotonic() + timeout
    run_id: int | None = None
    stop = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet, transient=True) as progress:
        task = progress.add_task(f"{mode} sync of {source}", total=None)
        while True:
            finished = True
            if products is None:
                run = store.latest_run(source, started_after=started)
                finished = run is not None and run.outcome != "running"
                run_id = run.id if run is not None else None
            counts = store.outcome_counts(source, since=started, product_ids=products)
            total = sum(counts.values())
            # Everything asked for: rows an earlier run left pending count too.
            pending = store.unconverged_count(source, product_ids=products)
            progress.update(task, total=max(total, pending) or None, completed=max(total - pending, 0))
            if finished and pending == 0 and (products is None or total >= len(products)):
                break
            if store.source_pause(source) is not None or time.monotonic() >= deadline:
                started_work = products is not None or run_id is not None
                stop = stop_reason(store, source, timeout=timeout, run_started=started_work)
                break
            time.sleep(WAIT_POLL_SECONDS)
    return run_id, stop


def _report(
    runtime: Any,
    source: str,
    started: datetime,
    run_id: int | None,
    products: Sequence[str] | None,
    as_json: bool,
    stop: Any,
) -> None:
    from worker.outcome import exit_code, summarize

    store = runtime.store
    run = store.get_run(run_id) if run_id is not None else None
    summary = summarize(store, source, started, run, products, stop)
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        _print_summary(summary)
        rows = store.rows_changed_since(source, started, limit=50)
        problems = [r for r in rows if r.status in ("failed", "skipped") and (not products or r.product_id in products)]
        if problems:
            out.print(_product_table(problems, title="Skipped and failed"))
    raise typer.Exit(exit_code(summary))


def _print_summary(summary: dict[str, Any]) -> None:
    from worker.outcome import COUNT_KEYS

    table = Table(title=escape(f"{summary['source']}: {summary['outcome']}"), show_header=False)
    for key in COUNT_KEYS:
        table.add_row(key, str(summary[key]))
    out.print(table)
    for reason, count in sorted(summary.get("skipped_without_id", {}).items()):
        out.print(f"skipped {count} record(s) without a product id: {escape(reason)}", highlight=False)
    if summary.get("deletion_blocked"):
        out.print(
            f"[yellow]{summary['deletion_blocked']} product(s) would have been deleted; nothing was. Confirm with "
            f"`{escape(summary['confirm'])}`.[/yellow]",
            highlight=False,
        )
    if summary.get("bulk_fallback"):
        reasons = ", ".join(summary["bulk_fallback"])
        out.print(f"[yellow]bulk export unavailable ({escape(reasons)}): read page by page[/yellow]", highlight=False)
    if summary.get("reason"):
        out.print(f"[yellow]not converged:[/yellow] {escape(summary['reason'])}", highlight=False)
        for item in summary["reasons"]:
            if item["status"] == "pending":
                text = f"{item['products']} pending, last error {item['code']}: {item['message']}"
                out.print(f"  {escape(text[:300])}", highlight=False)
    if summary.get("error"):
        out.print(f"[red]error:[/red] {escape(summary['error'])}", highlight=False)


def _product_table(rows: Sequence[Any], *, title: str) -> Table:
    table = Table(title=title)
    for column in ("source", "product", "status", "reason", "attempts"):
        table.add_column(column)
    for row in rows:
        code, message = (row.skip_reason, row.skip_detail) if row.status == "skipped" else (None, None)
        code, message = code or row.last_error_code, message or row.last_error_message
        reason = code or ""
        if message:
            reason = f"{reason}: {message}" if reason else message
        table.add_row(escape(row.source), escape(row.product_id), row.status, escape(reason[:300]), str(row.attempts))
    return table


# ------------------------------------------------------------------------------------------ status, failures, retry


def _known_source(runtime: Any, name: str) -> None:
    """Refuse a name that is neither configured nor in the state database (a typo would print a table of zeros)."""
    if name not in runtime.sources and name not in runtime.store.status_counts(name):
        runtime.source(name)


def _say_database(runtime: Any) -> None:
    console.print(f"state database: {escape(_database(runtime))}", highlight=False)


@app.command()
def status(
    source: Annotated[str | None, typer.Argument(help="Only this source.")] = None, as_json: JsonOption = False
) -> None:
    """Products by status (and why they are skipped, failed or pending), the last runs, any pause or held deletion,
    and per catalog account the budget in use, what waits and when it converges."""
    from worker.feeder import budget_status
    from worker.outcome import bulk_fallback_reasons, confirm_command, held_deletion

    runtime = _runtime()
    store = runtime.store
    _say_database(runtime)
    if source:
        _known_source(runtime, source)
    names = [source] if source else sorted(set(runtime.sources) | set(store.status_counts()))
    budgets = {budget.account: _budget_json(budget) for budget in budget_status(runtime)}
    report: dict[str, Any] = {}
    for name in names:
        account = runtime.sources[name].account if name in runtime.sources else None
        runs = store.recent_runs(name, limit=20)
        blocked = held_deletion(runs)
        held = None
        if blocked is not None:
            held = {
                "run_id": blocked.id,
                "mode": blocked.mode,
                "products": int(dict(blocked.counts).get("deletion_blocked", 0)),
                "confirm": confirm_command(name, blocked.mode),
            }
        report[name] = {
            "account": account,
            "budget": budgets.get(account) if account is not None else None,
            "products": store.status_breakdown(name),
            "paused": store.source_pause(name),
            "deletion_held": held,
            "reasons": [
                {"status": status, "code": code, "products": count, "message": message}
                for status, code, count, message in store.problem_summary(name)
            ],
            "sync": store.sync_state(name),
            "runs": [
                {
                    "id": r.id,
                    "mode": r.mode,
                    "outcome": r.outcome,
                    "started_at": r.started_at.isoformat(),
                    "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                    "counts": r.counts,
                    "error": r.error,
                }
                for r in runs[:3]
            ],
        }
    if as_json:
        out.print_json(json.dumps(report))
        return
    columns = ("pending", "synced", "skipped", "deleted", "inactive", "failed", "expired")
    for name, item in report.items():
        table = Table(title=escape(name))
        for column in columns:
            table.add_column(column)
        table.add_row(*(str(item["products"].get(c, 0)) for c in columns))
        out.print(table)
        if item["paused"]:
            out.print(f"[red]pushes paused:[/red] {escape(item['paused'])}", highlight=False)
        if item["deletion_held"]:
            held = item["deletion_held"]
            out.print(
                f"[yellow]deletion held:[/yellow] the last {held['mode']} run (run {held['run_id']}) would delete "
                f"{held['products']} product(s) and deleted nothing; if that is right, confirm with "
                f"`{escape(held['confirm'])}`",
                highlight=False,
            )
        for reason in item["reasons"]:
            text = f"  {reason['status']} {reason['products']}: {reason['code']}"
            if reason["message"]:
                text += f" (e.g. {reason['message']})"
            out.print(escape(text[:300]), highlight=False)
        if item["sync"]["running"]:
            out.print(f"  a sync is running (its lock's lease runs until {item['sync']['lease_until']})")
        waiting = item["sync"]["waiting"]
        if waiting:
            out.print(
                escape(
                    f"  a {waiting['mode']} sync waits (since {waiting['since']}) and runs when the running one "
                    f"finishes: {waiting['reason']}"
                ),
                highlight=False,
            )
        for r in item["runs"]:
            line = f"  run {r['id']} {r['mode']} {r['outcome']} started {r['started_at']} {r['error'] or ''}"
            if r["counts"].get("bulk_fallback"):
                reasons = ", ".join(bulk_fallback_reasons(r["counts"]))
                line += f" (bulk export unavailable ({reasons}): read page by page)"
            out.print(escape(line), highlight=False)
    shown = {item["account"] for item in report.values()}
    _print_budgets({account: budget for account, budget in budgets.items() if account in shown})


def _budget_json(budget: BudgetStatus) -> dict[str, Any]:
    return {
        "limit": format_rate(budget.limit),
        "paced_at_per_minute": round(budget.rate * 60, 1),
        "used_this_minute": budget.used_this_minute,
        "used_last_minute": budget.used_last_minute,
        "in_flight": budget.in_flight,
        "waiting_priority": budget.waiting_priority,
        "waiting_bulk": budget.waiting_bulk,
        "converges_in_seconds": round(budget.converges_in, 1),
    }


def _print_budgets(budgets: dict[str, dict[str, Any]]) -> None:
    """The catalog's budget per account: what it allows, what it used, what waits and when that is done."""
    table = Table(title="catalog budget by account")
    for column in ("account", "limit", "used this / last minute", "in flight", "waiting (priority + bulk)", "done in"):
        table.add_column(column)
    for name, budget in budgets.items():
        this, last = budget["used_this_minute"], budget["used_last_minute"]
        used = "? (Redis does not answer)" if this is None else f"{this} / {last}"
        table.add_row(
            escape(name),
            budget["limit"],
            used,
            str(budget["in_flight"]),
            f"{budget['waiting_priority']} + {budget['waiting_bulk']}",
            _duration(budget["converges_in_seconds"]),
        )
    out.print(table)


def _duration(seconds: float) -> str:
    """`0 s`, `45 s`, `12 min`, `3 h 20 min`: how long a backlog takes, to a merchant's precision."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


@app.command()
def failures(
    source: Annotated[str | None, typer.Argument(help="Only this source.")] = None,
    as_json: JsonOption = False,
    skipped: Annotated[
        bool, typer.Option("--skipped", help="List the products kept out on purpose instead, with why.")
    ] = False,
) -> None:
    """Products that failed: the API's code, message and attempts (with --skipped: products kept out of the
    catalog, filtered or unusable, and why)."""
    runtime = _runtime()
    _say_database(runtime)
    if source:
        _known_source(runtime, source)
    store = runtime.store
    rows = store.skipped(source) if skipped else store.failures(source)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "source": r.source,
                        "product": r.product_id,
                        "code": r.skip_reason if skipped else r.last_error_code,
                        "message": r.skip_detail if skipped else r.last_error_message,
                        "attempts": r.attempts,
                    }
                    for r in rows
                ]
            )
        )
        return
    if not rows:
        out.print("no skipped products" if skipped else "no failures")
        return
    out.print(_product_table(rows, title="Skipped" if skipped else "Failures"))


@app.command()
def retry(
    source: Annotated[str | None, typer.Argument(help="Only this source.")] = None,
    product: Annotated[list[str] | None, typer.Option("--product", help="Only this product id.")] = None,
    inline: Annotated[bool, typer.Option("--inline", help="Push in this process, no broker.")] = False,
    timeout: Annotated[float, typer.Option(help="Longest --inline pushes, seconds.")] = 600.0,
) -> None:
    """Put failed products back in line, and resume a paused source (after fixing the key or topping up)."""
    from worker.operations import dispatch

    runtime = _runtime()
    store = runtime.store
    if source:
        _known_source(runtime, source)
    rows = [r for r in store.failures(source) if not product or r.product_id in product]
    count = store.retry_failed(source, product)
    names = {source} if source else set(runtime.sources) | set(store.status_counts())
    messages = [f"{count} failed product(s) back in line"]
    resumed: set[str] = set()
    for name in sorted(names | {r.source for r in rows}):
        pause = store.source_pause(name)
        if pause is None:
            continue
        store.resume_source(name)
        resumed.add(name)
        waiting = store.unconverged_count(name) - sum(1 for r in rows if r.source == name)
        messages.append(f"pushes of {name} resumed, {waiting} pending product(s) go out again (paused: {pause})")
    dispatcher = _dispatcher(runtime, inline, timeout=timeout)
    for name in {r.source for r in rows}:
        dispatch(runtime, dispatcher, name, [r.product_id for r in rows if r.source == name], priority=True)
    console.print(escape("; ".join(messages)), highlight=False)
    if inline:
        from worker.outcome import exit_code, stop_reason, summarize

        worst = EXIT_OK
        for name in sorted({r.source for r in rows} | resumed | ({source} if source else set())):
            stop = stop_reason(store, name, timeout=timeout) if dispatcher.drain(name, timeout=timeout) else None
            summary = summarize(store, name, None, None, product or None, stop)
            if summary.get("reason"):
                console.print(f"[yellow]{escape(name)} not converged:[/yellow] {escape(summary['reason'])}")
            worst = max(worst, exit_code(summary))
        raise typer.Exit(worst)


def _dispatcher(runtime: Any, inline: bool, *, timeout: float | None = None) -> Any:
    if inline:
        from worker.inline import InlineDispatcher

        return InlineDispatcher(runtime, timeout=timeout)
    from worker.celery_app import app as celery
    from worker.celery_app import configure

    configure(celery, runtime.settings, runtime.sources)
    from worker.tasks import dispatcher

    return dispatcher


# ------------------------------------------------------------------------------------------------------- audit


@app.command()
def audit(
    source: Annotated[str | None, typer.Argument(help="Only this source's products.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="The catalog account to audit.")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Push missing and differing products again; delete orphans.")
    ] = False,
    allow_mass_delete: Annotated[
        bool, typer.Option("--allow-mass-delete", help="Confirm a repair that deletes many orphans.")
    ] = False,
    inline: Annotated[bool, typer.Option("--inline", help="Push repairs in this process, no broker.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Compare the catalog with the state: missing, differing, orphaned and unknown products.

    Exit status 0 when the catalog matches (or everything found was repaired), 1 when drift remains."""
    if source is not None and account is not None:
        console.print("give a SOURCE or --account, not both")
        raise typer.Exit(EXIT_USAGE)
    from worker.operations import run_audit

    runtime = _runtime()
    if source is not None:
        runtime.source(source)
    dispatcher: Any = _dispatcher(runtime, inline) if repair else None
    report = run_audit(
        runtime, dispatcher, account=account, source=source, repair=repair, allow_mass_delete=allow_mass_delete
    )
    if repair and inline:
        for name in sorted(runtime.sources):
            dispatcher.drain(name, timeout=600)
    body = report.as_dict()
    if as_json:
        out.print_json(json.dumps(body))
    else:
        _print_audit(body)
    unrepaired = report.drift > 0 and (not repair or report.deletion_blocked is not None)
    raise typer.Exit(EXIT_FAILED if unrepaired else EXIT_OK)


def _print_audit(body: dict[str, Any]) -> None:
    from rich.markup import escape

    scope = f"source {body['source']}" if body["source"] else f"account {body['account']}"
    out.print(f"audit of {scope}: {body['listed']} listed in {body['pages']} page(s)", highlight=False)
    table = Table(show_header=False)
    for kind, count in body["counts"].items():
        table.add_row(kind, str(count))
    out.print(table)
    examples = Table(title="examples")
    for column in ("kind", "externalId", "source", "product", "detail"):
        examples.add_column(column)
    for kind, found in body["examples"].items():
        for item in found:
            cells = (item["external_id"], item["source"] or "", item["product_id"] or "", item["detail"])
            examples.add_row(kind, *(escape(cell) for cell in cells))
    if examples.row_count:
        out.print(examples)
    if body["repaired"]:
        out.print("repaired: " + ", ".join(f"{k} {v}" for k, v in body["repaired"].items()), highlight=False)
    blocked = body.get("deletion_blocked")
    if blocked:
        out.print(
            f"[yellow]{blocked['orphans']} orphan(s) of {blocked['ours']} products of ours would have been deleted; "
            "nothing was. Confirm with `catalog-sync audit --repair --allow-mass-delete`.[/yellow]"
        )


# ------------------------------------------------------------------------------------------------------ sources


@app.command()
def sources() -> None:
    """List the configured sources and check that each can be read."""
    from connectors import build_connector

    runtime = _runtime()
    if not runtime.sources:
        console.print(f"no sources in {escape(str(runtime.settings.config))}", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    table = Table(title=escape(f"sources ({runtime.settings.config})"))
    for column in ("name", "kind", "url", "check"):
        table.add_column(column)
    bad = False
    for source in runtime.sources.values():
        try:
            connector = build_connector(source)
            try:
                first = next(iter(connector.iter_products(None)), None)
                check = "[green]ok[/green]" + ("" if first is not None else " (no products)")
                warnings: list[str] = getattr(connector, "warnings", list)()
                if warnings:
                    check += "".join(f"\n[yellow]warning:[/yellow] {escape(w)}" for w in warnings)
            finally:
                connector.close()
        except SyncError as exc:
            bad = True
            check = f"[red]{type(exc).__name__}:[/red] {escape(str(exc))}"
        table.add_row(source.name, source.kind, escape(source.display_url), check)
    out.print(table)
    _print_template_collisions(runtime.sources)
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)


def _print_template_collisions(configured: dict[str, Any]) -> None:
    from rich.markup import escape

    from config.sources import template_collisions

    for warning in template_collisions(configured):
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------- processes


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    queues: Annotated[str, typer.Option(help="Queues, highest priority first.")] = "push.priority,sync,push",
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    hostname: Annotated[
        str | None, typer.Option(help="Node name, e.g. push1@%h: give each worker on one host its own.")
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Health check: exit 0 if this host's worker (--hostname) answers a ping."),
    ] = False,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve the worker's metrics (all its processes) on this port at /metrics.")
    ] = None,
) -> None:
    """A Celery worker (run as many as you like, on any hosts)."""
    if metrics_port is not None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Before anything imports prometheus_client (it reads this once): every process of this worker counts in
        # files of a fresh directory, which the main process adds up (worker/work_metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="catalog-sync-metrics-")
    from worker.celery_app import app as celery
    from worker.celery_app import configure

    if check:
        raise typer.Exit(_ping_worker(hostname))
    from worker.logs import install_celery_hooks

    install_celery_hooks()
    runtime = _runtime()  # refuses a missing sources file and an out-of-date schema before any task runs
    configure(celery, runtime.settings, runtime.sources)
    _check_broker(runtime)
    runtime.close()
    argv = ["worker", f"--concurrency={concurrency}", f"--queues={queues}", f"--loglevel={loglevel}"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if runtime.settings.log_format == "json":
        # The startup banner is plain text on stdout: a JSON log stream must hold JSON lines only.
        argv.insert(0, "--quiet")
    if metrics_port is not None:
        _serve_worker_metrics(metrics_port)
    celery.worker_main(argv)


def _serve_worker_metrics(port: int) -> None:
    from celery.signals import worker_process_shutdown

    from worker.work_metrics import process_exited, serve_multiprocess

    def child_exited(pid: int | None = None, **_: Any) -> None:
        if pid is not None:
            process_exited(pid)

    worker_process_shutdown.connect(child_exited, weak=False)
    serve_multiprocess(port)
    logging.getLogger(__name__).info("worker metrics: http://0.0.0.0:%d/metrics", port)


def _ping_worker(hostname: str | None) -> int:
    """`worker --check`: ping the worker this host runs under that node name, over the broker (Celery's
    `inspect ping` for one destination); exit 0 when it answers, 1 otherwise."""
    from celery.utils.nodenames import default_nodename, host_format

    from config.settings import get_settings
    from worker.celery_app import app as celery
    from worker.celery_app import configure

    configure(celery, get_settings())
    node = host_format(default_nodename(hostname))
    try:
        replies = celery.control.ping(destination=[node], timeout=WORKER_PING_TIMEOUT)
    except Exception as exc:  # kombu's connection errors have no common base worth naming
        console.print(f"[red]{node}: cannot reach the broker[/red] ({type(exc).__name__})", highlight=False)
        return EXIT_FAILED
    if not any(node in reply for reply in replies):
        console.print(f"[red]{node} did not answer within {WORKER_PING_TIMEOUT:.0f}s[/red]", highlight=False)
        return EXIT_FAILED
    console.print(f"{node}: ok", highlight=False)
    return EXIT_OK


@app.command()
def beat(loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO") -> None:
    """The scheduler (run exactly one): syncs on each source's intervals and reconciles every few seconds."""
    from worker.celery_app import app as celery
    from worker.celery_app import configure
    from worker.logs import install_celery_hooks

    install_celery_hooks()
    runtime = _runtime()
    configure(celery, runtime.settings, runtime.sources)
    _check_broker(runtime)
    runtime.close()
    celery.start(["beat", f"--loglevel={loglevel}"])


@app.command()
def run(
    embedded: Annotated[bool, typer.Option("--embedded", help="Worker and beat in this process, no broker.")] = False,
    concurrency: Annotated[int, typer.Option(help="Worker threads.")] = 4,
    host: Annotated[str, typer.Option(help="Webhook server interface.")] = "127.0.0.1",
    webhook_port: Annotated[int, typer.Option(help="Webhook server port (0: no webhook server).")] = 8080,
) -> None:
    """Run everything in one process on the in-process broker: worker, beat and the webhook server."""
    if not embedded:
        console.print("use `catalog-sync worker`, `beat` and `serve` with a broker, or pass --embedded")
        raise typer.Exit(EXIT_USAGE)
    from contextlib import ExitStack

    from ground.serving import BackgroundServer
    from worker.embedded import embedded_worker

    runtime = _runtime(embedded=True)
    logging.getLogger().setLevel(logging.INFO)
    console.print(
        f"catalog-sync embedded: {len(runtime.sources)} source(s), state in {escape(_database(runtime))}",
        highlight=False,
    )
    with ExitStack() as stack:
        stack.enter_context(embedded_worker(runtime, concurrency=concurrency, beat=True))
        if webhook_port:
            from worker.http_guard import server_options
            from worker.webhooks import create_app

            options = server_options(runtime.settings)
            app_ = create_app(runtime, process_metrics=True)
            server = BackgroundServer(app_, host=host, port=webhook_port, **options).start()
            stack.callback(server.stop)
            console.print(
                f"webhooks: POST {server.url}/webhooks/<source>; health: {server.url}/healthz; "
                f"metrics (webhooks and the worker's): {server.url}/metrics"
            )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            console.print("stopping")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo's state directory.")] = False,
) -> None:
    """A full sync of a sample feed into a local catalog emulator, then a no-op re-sync."""
    from worker.demo import run_demo

    raise typer.Exit(run_demo(out, keep=keep))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the state database's tables."""
    from config.settings import get_settings
    from worker import schema

    settings = get_settings()
    engine = schema.open_database(settings.database_url, upgrade_to_head=True)
    engine.dispose()
    console.print(
        f"{escape(redact_url(settings.database_url))} is at revision {schema.head_revision()}", highlight=False
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """The webhook server: POST /webhooks/{source}, GET /healthz, GET /readyz, GET /metrics."""
    from worker.webhooks import serve as serve_webhooks

    serve_webhooks(host=host, port=port)


# ------------------------------------------------------------------------------------------------ sync lock


class Terminated(SystemExit):
    """The process was asked to stop (SIGTERM): raised where it runs, so `finally` blocks record the run as failed
    and release the source's sync lock instead of leaving both to expire."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


def _terminate_cleanly() -> None:
    def handler(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)


@app.command()
def unlock(
    source: Annotated[str, typer.Argument(help="The source's name in the sources file.")],
    force: Annotated[
        bool, typer.Option("--force", help="Clear it even while a running sync keeps renewing its lease.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Clear a source's sync lock, and mark the runs it left `running` as failed.

    A lock left by a stopped process expires by itself within CATALOG_SYNC_SYNC_LOCK_SECONDS; this clears it at
    once. While a live sync renews the lock it is refused unless --force (the running sync then stops at its
    next page). Exit status: 0 cleared, 1 refused.
    """
    runtime = _runtime()
    _known_source(runtime, source)
    result = runtime.store.clear_sync_lock(source, force=force)
    lease_until = result.lease_until.isoformat() if result.lease_until is not None else None
    if as_json:
        body = {
            "source": source,
            "cleared": result.cleared,
            "live": result.live,
            "lease_until": lease_until,
            "runs_failed": result.runs_failed,
        }
        out.print_json(json.dumps(body))
    elif not result.cleared:
        console.print(
            f"[yellow]not cleared:[/yellow] a running sync of {escape(source)} renews its lock (lease until "
            f"{lease_until}); stop it, or clear the lock anyway with `catalog-sync unlock {escape(source)} --force`",
            highlight=False,
        )
    else:
        console.print(
            f"cleared the sync lock of {escape(source)}; {result.runs_failed} run(s) left running marked failed",
            highlight=False,
        )
    if not result.cleared:
        raise typer.Exit(EXIT_FAILED)

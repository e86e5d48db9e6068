"""What an admin command reports about the work it asked for: numbers that add up, an outcome that tells the truth,
and the exit status that follows from it.

Outcomes, and the exit status of `catalog-sync resync` / `retry --inline`:

    converged                 0  every product asked for is in the state the source wants (skips included: a
                                 skipped product is, by design, not in the catalog, and says why)
    converged_with_failures   1  the rest converged, some products failed (listed by `catalog-sync failures`)
    failed                    1  the run itself failed (the source could not be read); nothing was deleted
    (usage or configuration)  2  a mistake in the command, the environment or the sources file
    not_converged             3  products were still pending when the command stopped following them: the
                                 timeout passed, the catalog was unreachable, or pushes are paused (a refused key,
                                 an account without credits); `reason` says which
    deletion_blocked          4  the full run would have deleted more than the brake allows and deleted nothing;
                                 `confirm` holds the command that confirms

The counts come from the product rows, the same way `status` counts them: `synced`, `deleted` (what the catalog
confirmed removing), `inactive` (products not active in the source that were never in the catalog: no call was
needed) and `skipped` are what this command changed; `failed` and `pending` are the state of everything it asked
for (the whole source, or the products named), since a product left failed or pending by an earlier run has not
converged either. So a run's `pending` and `failed` are `status`'s.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.state import RunRow, Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_CONVERGED, EXIT_DELETION_BLOCKED = 0, 1, 2, 3, 4
# The counts of a summary, in the order they are shown.
COUNT_KEYS = ("synced", "unchanged", "deleted", "inactive", "skipped", "failed", "pending")


class Verdict(enum.StrEnum):
    CONVERGED = "converged"
    CONVERGED_WITH_FAILURES = "converged_with_failures"
    FAILED = "failed"
    NOT_CONVERGED = "not_converged"
    DELETION_BLOCKED = "deletion_blocked"


EXIT_CODES: dict[Verdict, int] = {
    Verdict.CONVERGED: EXIT_OK,
    Verdict.CONVERGED_WITH_FAILURES: EXIT_FAILED,
    Verdict.FAILED: EXIT_FAILED,
    Verdict.NOT_CONVERGED: EXIT_NOT_CONVERGED,
    Verdict.DELETION_BLOCKED: EXIT_DELETION_BLOCKED,
}


@dataclass(frozen=True, slots=True)
class Stop:
    """Why the command stopped following work that had not converged."""

    kind: str  # "paused" | "timed_out" | "no_worker"
    message: str


def confirm_command(source: str, mode: str = "full") -> str:
    """The command that confirms deletions the brake held: a full run's, or an incremental run's (the products
    the shop's events say were deleted)."""
    return f"catalog-sync resync {source}{' --full' if mode == 'full' else ''} --allow-mass-delete"


def held_deletion(runs: Sequence[RunRow]) -> RunRow | None:
    """The run whose deletions the brake holds, from a source's runs (newest first): the last full run when it
    was blocked, else the last incremental run when it was blocked and no full run came after it (a full run
    decides every deletion again)."""
    last_full = next((r for r in runs if r.mode == "full"), None)
    if last_full is not None and last_full.outcome == "deletion_blocked":
        return last_full
    last_incremental = next((r for r in runs if r.mode == "incremental"), None)
    if last_incremental is None or last_incremental.outcome != "deletion_blocked":
        return None
    if last_full is not None and last_full.id > last_incremental.id:
        return None
    return last_incremental


def stop_reason(store: Store, source: str, *, timeout: float, run_started: bool = True) -> Stop:
    """Why products are still pending: a pause (its own reason), no worker, or the timeout."""
    pause = store.source_pause(source)
    if pause is not None:
        return Stop("paused", f"pushes of {source} are paused: {pause}")
    if not run_started:
        return Stop(
            "no_worker",
            f"no worker picked the sync up within {timeout:g}s: is `catalog-sync worker` running with the same "
            "broker and database?",
        )
    return Stop("timed_out", f"stopped following the work after {timeout:g}s (--timeout); workers carry on")


def summarize(
    store: Store,
    source: str,
    started: datetime | None,
    run: RunRow | None,
    products: Sequence[str] | None,
    stop: Stop | None,
) -> dict[str, Any]:
    """The summary of one command: counts, outcome, and every reason a product or the run did not converge.

    `started` None: every row of the source (or of `products`), not only those the command changed."""
    # Products named on the command line are judged whole, whatever changed; a run by what it changed.
    since = None if products else started
    counts = store.status_breakdown(source, since=since, product_ids=products)
    state = counts if since is None else store.status_breakdown(source, product_ids=products)
    run_counts = dict(run.counts) if run is not None else {}
    summary: dict[str, Any] = {
        "source": source,
        "run_id": run.id if run is not None else None,
        "run_outcome": run.outcome if run is not None else None,
        "synced": counts.get("synced", 0),
        "unchanged": int(run_counts.get("unchanged", 0)),
        "deleted": counts.get("deleted", 0),
        "inactive": counts.get("inactive", 0),
        "skipped": counts.get("skipped", 0) + int(run_counts.get("skipped_without_id", 0)),
        "failed": state.get("failed", 0),
        "pending": state.get("pending", 0),
        "reasons": _reasons(store, source, since, products),
    }
    if run_counts.get("skipped_without_id"):
        # Imported here: the admin command imports this module at start, and the plan brings in the catalog client
        # and with it prometheus_client, which must not be imported before `worker --metrics-port` chose its mode.
        from worker.plan import WITHOUT_ID_PREFIX

        # Records without a product id have no row to list; the run counted them by reason.
        summary["skipped_without_id"] = {
            key.removeprefix(WITHOUT_ID_PREFIX): int(value)
            for key, value in run_counts.items()
            if key.startswith(WITHOUT_ID_PREFIX)
        }
    if run is not None and run.error:
        summary["error"] = run.error
    if run_counts.get("bulk_fallback"):
        summary["bulk_fallback"] = bulk_fallback_reasons(run_counts)
    verdict = _verdict(summary, run, stop)
    summary["outcome"] = str(verdict)
    if verdict is Verdict.DELETION_BLOCKED:
        summary["deletion_blocked"] = int(run_counts.get("deletion_blocked", 0))
        summary["confirm"] = confirm_command(source, run.mode if run is not None else "full")
    if stop is not None:
        summary["reason"] = stop.message
        summary["stopped"] = stop.kind
    elif verdict is Verdict.NOT_CONVERGED:
        summary["reason"] = f"{summary['pending']} product(s) still pending; `catalog-sync status {source}` says why"
    return summary


def bulk_fallback_reasons(counts: dict[str, Any]) -> list[str]:
    """Why a run read page by page although it meant to use a bulk export (`bulk_fallback:<why>` counts)."""
    return sorted(key.split(":", 1)[1] for key in counts if key.startswith("bulk_fallback:")) or ["unknown"]


def _reasons(store: Store, source: str, since: datetime | None, products: Sequence[str] | None) -> list[dict[str, Any]]:
    """Why products are skipped (those this command changed), failed or pending (all of them)."""
    changed = store.problem_summary(source, statuses=("skipped",), since=since, product_ids=products)
    standing = store.problem_summary(source, statuses=("failed", "pending"), product_ids=products)
    return [
        {"status": status, "code": code, "products": count, "message": message}
        for status, code, count, message in (*standing, *changed)
    ]


def exit_code(summary: dict[str, Any]) -> int:
    return EXIT_CODES[Verdict(summary["outcome"])]


def _verdict(summary: dict[str, Any], run: RunRow | None, stop: Stop | None) -> Verdict:
    if run is not None and run.outcome == "failed":
        return Verdict.FAILED
    if run is not None and run.outcome == "deletion_blocked":
        return Verdict.DELETION_BLOCKED
    if summary["pending"] or stop is not None:
        # A stop is only ever reported before convergence; a product whose row is not even written yet (no worker
        # took its message) counts no pending row but did not converge either.
        return Verdict.NOT_CONVERGED
    if summary["failed"]:
        return Verdict.CONVERGED_WITH_FAILURES
    return Verdict.CONVERGED

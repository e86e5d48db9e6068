"""`catalog-sync webhooks`: register a source's product webhooks in its shop, and list what is registered.

Exit status: 0 done (register) or everything matches (list), 1 a failure (the shop refused, could not be reached)
or, for list, a topic that does not deliver where it should, 2 a configuration mistake (unknown source, a kind
without a webhook API, a URL a shop cannot deliver to, no webhook secret). `--json` prints one object on stdout;
errors are one line on stderr, never a traceback, and never show a secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ground.errors import ConfigError, SyncError
from worker.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from config.sources import SourceConfig
    from connectors.subscriptions import SubscriptionApi

Work = Callable[["SourceConfig", "SubscriptionApi"], None]

webhooks_app = typer.Typer(help="The product webhooks registered in each shop.", no_args_is_help=True)

console = Console(stderr=True)
out = Console()

SourceArgument = Annotated[str, typer.Argument(help="The source's name in the sources file.")]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Where the shop delivers: https://<your host>/webhooks/SOURCE (default: the source's webhook_url).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


@contextmanager
def _failures(source: str, as_json: bool) -> Iterator[None]:
    """Report a SyncError as one line (and in the JSON object) and exit: 2 for configuration, 1 otherwise."""
    try:
        yield
    except SyncError as exc:
        status = EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
        kind = "configuration error" if status == EXIT_USAGE else "failed"
        if as_json:
            out.print_json(json.dumps({"source": source, "outcome": kind, "error": str(exc)}))
        console.print(f"[red]{kind}:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(status) from None


def _with_api(source_name: str, as_json: bool, work: Work) -> None:
    """Load the source, open its connector's webhook API, run `work(source, api)`, close the connector."""
    from connectors import build_connector
    from worker.webhook_registration import load_source, subscription_api

    with _failures(source_name, as_json):
        source = load_source(source_name)
        connector = build_connector(source)
        try:
            work(source, subscription_api(source, connector))
        finally:
            close = getattr(connector, "close", None)
            if close is not None:
                close()


@webhooks_app.command("register")
def register(
    source: SourceArgument,
    url: UrlOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Update matching subscriptions too (WooCommerce: re-send the secret).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create or update the source's product webhooks in its shop so they deliver to --url; safe to run again."""
    from worker.webhook_registration import register as register_topics
    from worker.webhook_registration import require_secret, required_url

    def work(config: SourceConfig, api: SubscriptionApi) -> None:
        target = required_url(config, url)
        require_secret(config)
        registration = register_topics(config, api, target, force=force)
        if as_json:
            out.print_json(json.dumps(registration.as_dict()))
            return
        for result in registration.results:
            removed = f" (removed {len(result.removed)} duplicate(s))" if result.removed else ""
            out.print(f"{result.topic}: {result.action}{removed}", highlight=False)
        out.print(f"deliveries of {escape(config.name)} go to {escape(target)}", highlight=False)

    _with_api(source, as_json, work)


@webhooks_app.command("list")
def list_(
    source: SourceArgument,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the product webhooks registered in the source's shop and whether each delivers to --url.

    Exit status 1 names every topic that does not deliver there (not registered, another URL, paused)."""
    from worker.webhook_registration import inspect_subscriptions, target_url

    problems: list[str] = []

    def work(config: SourceConfig, api: SubscriptionApi) -> None:
        target = target_url(config, url)
        inspection = inspect_subscriptions(config, api, target)
        problems.extend(inspection.problems)
        if as_json:
            out.print_json(json.dumps(inspection.as_dict()))
            return
        if not inspection.rows:
            out.print(f"no product webhooks registered for {escape(config.name)}", highlight=False)
        table = Table(title=escape(f"webhooks of {config.name}" + (f" (expected: {target})" if target else "")))
        for column in ("topic", "url", "status", "matches"):
            table.add_column(column)
        for row in inspection.rows:
            matches = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[row.matches]
            s = row.subscription
            table.add_row(escape(s.topic), escape(s.url), escape(s.status), matches)
        if table.row_count:
            out.print(table)
        for problem in inspection.problems:
            console.print(f"[red]does not match:[/red] {escape(problem)}", highlight=False, soft_wrap=True)

    _with_api(source, as_json, work)
    raise typer.Exit(EXIT_FAILED if problems else EXIT_OK)

"""`catalog-sync emulate …`: each emulator module contributes one command."""

from __future__ import annotations

from typing import Annotated

import typer

# graphql-core is installed with the `emulators` extra (which `dev` includes), not with the worker: only the Shopify
# emulator runs GraphQL.
GRAPHQL_MODULE = "graphql"
MISSING_GRAPHQL = (
    "The Shopify emulator needs graphql-core, which the worker does not install. Install the emulators extra: "
    "pip install 'catalog-sync[emulators]' (in a checkout: pip install -e '.[emulators]', or '.[dev]')."
)
# The exit status when an emulator cannot start for want of a package (the worker CLI's "failed", not "usage").
EXIT_MISSING_DEPENDENCY = 1

# Mounted by the admin command (`worker.cli`, which imports this module only when an emulator command runs and
# carries the group's help).
emulate = typer.Typer(no_args_is_help=True)


@emulate.command("catalog")
def catalog(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="An accepted API key (repeatable; default: test-key).")
    ] = None,
    account_limit: Annotated[
        int, typer.Option(min=0, help="Requests per account per --account-window, the vendor's limit (0: off).")
    ] = 100,
    account_window: Annotated[float, typer.Option(help="Seconds in one window of --account-limit.")] = 60.0,
    rate_limit: Annotated[float | None, typer.Option(help="Requests per second before answering 429.")] = None,
    burst: Annotated[int | None, typer.Option(help="Token bucket size for --rate-limit (default: the rate).")] = None,
    latency_ms: Annotated[float, typer.Option(help="Delay added to every API response, in ms.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Probability (0-1) of answering 500 or 503.")] = 0.0,
    drop_rate: Annotated[float, typer.Option(help="Probability (0-1) of dropping the connection.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the random faults.")] = None,
) -> None:
    """The try-on catalog API (`/tryon/v1/products`), in memory, with optional faults. See emulators/catalog/."""
    from pydantic import ValidationError

    from emulators.catalog import Faults, serve

    try:
        faults = Faults(
            account_limit=account_limit or None,
            account_window=account_window,
            rate_limit=rate_limit,
            burst=burst,
            latency_ms=latency_ms,
            error_rate=error_rate,
            drop_rate=drop_rate,
            seed=seed,
        )
    except ValidationError as exc:
        problems = "; ".join(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}" for error in exc.errors())
        raise typer.BadParameter(problems) from None
    keys = api_key or ["test-key"]
    typer.echo(f"Catalog emulator: http://{host}:{port}/tryon/v1")
    typer.echo(f"API keys (header x-api-key): {', '.join(keys)}")
    if account_limit:
        typer.echo(f"Rate limit: {account_limit} requests per {account_window:g} s per account (0 turns it off)")
    serve(host, port, keys, faults)


@emulate.command("woocommerce")
def woocommerce(
    products: Annotated[int, typer.Option(min=0, help="How many products the generated store holds.")] = 100,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8902,
    seed: Annotated[int, typer.Option(help="Seed of the generated store (same seed, same products).")] = 0,
    consumer_key: Annotated[str, typer.Option(help="The REST key's consumer key.")] = "ck_test",
    consumer_secret: Annotated[str, typer.Option(help="The REST key's consumer secret.")] = "cs_test",  # noqa: S107
    key_permissions: Annotated[
        str, typer.Option(help="The key's permissions: read, write or read_write (webhooks register needs write).")
    ] = "read_write",
) -> None:
    """A WooCommerce store: REST API v3 (`/wp-json/wc/v3/products`, `/webhooks`) and a control API. See
    emulators/woocommerce/."""
    from emulators.woocommerce import serve

    if key_permissions not in ("read", "write", "read_write"):
        raise typer.BadParameter("use read, write or read_write", param_hint="--key-permissions")
    typer.echo(f"WooCommerce emulator: http://{host}:{port}/wp-json/wc/v3 ({products} products, seed {seed})")
    typer.echo(
        f"Consumer key: {consumer_key}, {key_permissions} (plain HTTP: sign with OAuth 1.0a, as WooCommerce requires)"
    )
    typer.echo(f"Control API: http://{host}:{port}/_emulator/ (products, webhooks, stats, reset)")
    serve(
        host,
        port,
        products=products,
        seed=seed,
        consumer_key=consumer_key,
        consumer_secret=consumer_secret,
        key_permissions=key_permissions,
    )


@emulate.command("shopify")
def shopify(
    products: Annotated[int, typer.Option(min=0, help="How many products the generated shop holds.")] = 1_000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8901,
    seed: Annotated[int, typer.Option(help="Seed of the generated shop (same seed, same products).")] = 1,
    access_token: Annotated[str, typer.Option(help="The Admin API token the shop accepts.")] = "shpat_test",  # noqa: S107
    restore_rate: Annotated[float, typer.Option(min=0, help="GraphQL cost points restored per second.")] = 50.0,
    bucket_size: Annotated[float, typer.Option(min=1, help="GraphQL cost bucket size (maximumAvailable).")] = 1_000.0,
    app_secret: Annotated[
        str, typer.Option(help="The app's client secret, which signs its webhook subscriptions' deliveries.")
    ] = "shpss_emulator_app_secret",  # noqa: S107
) -> None:
    """A Shopify shop: Admin GraphQL (cost throttling, bulk export), legacy REST, storefront products.json and a
    control API. See emulators/shopify/."""
    try:
        from emulators.shopify import DEFAULT_API_VERSION, serve
    except ModuleNotFoundError as exc:
        if exc.name != GRAPHQL_MODULE:
            raise
        typer.echo(MISSING_GRAPHQL, err=True)
        raise typer.Exit(EXIT_MISSING_DEPENDENCY) from None

    typer.echo(f"Shopify emulator: http://{host}:{port} ({products} products, seed {seed})")
    typer.echo(f"Admin GraphQL: http://{host}:{port}/admin/api/{DEFAULT_API_VERSION}/graphql.json")
    typer.echo(f"Access token (header X-Shopify-Access-Token): {access_token}")
    typer.echo(f"App client secret (signs webhook deliveries; a source's webhook_secret): {app_secret}")
    typer.echo(f"Control API: http://{host}:{port}/_emulator/ (products, webhooks, stats, config, reset)")
    serve(
        products=products,
        host=host,
        port=port,
        seed=seed,
        access_token=access_token,
        restore_rate=restore_rate,
        bucket_size=bucket_size,
        app_secret=app_secret,
    )

"""Each kind of source is its own model, picked by `kind`, holding only the fields that kind uses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from config.sources import (
    FeedSource,
    ShopifyRestSource,
    ShopifySource,
    SourceBase,
    StorefrontSource,
    WooCommerceSource,
    parse_source,
    parse_sources,
)
from ground.errors import ConfigError

SHOP = "https://acme.myshopify.com"
WOO = {"consumer_key": "ck_k3y", "consumer_secret": "cs_s3cret"}


def invalid(table: dict[str, Any]) -> str:
    """The configuration error for a sources file holding only `table`, named "s"."""
    with pytest.raises(ConfigError) as caught:
        parse_sources({"sources": [{"name": "s", **table}]})
    return str(caught.value)


@pytest.mark.parametrize(
    ("table", "model"),
    [
        ({"kind": "feed", "url": "f.csv", "format": "csv", "columns": {"id": "SKU"}}, FeedSource),
        ({"kind": "shopify", "url": SHOP, "access_token": "t", "bulk": "never"}, ShopifySource),
        ({"kind": "shopify-rest", "url": SHOP, "access_token": "t", "api_version": "2025-10"}, ShopifyRestSource),
        ({"kind": "shopify-storefront", "url": SHOP, "page_size": 50, "webhook_secret": "w"}, StorefrontSource),
        ({"kind": "woocommerce", "url": "https://store.example", "split_by": "color", **WOO}, WooCommerceSource),
    ],
    ids=["feed", "shopify", "shopify-rest", "storefront", "woocommerce"],
)
def test_each_kind_parses_into_its_own_model_with_the_common_fields(
    table: dict[str, Any], model: type[SourceBase]
) -> None:
    source = parse_source({"name": "s", "account": "acme", "valid_for_days": 30, **table})

    assert type(source) is model
    assert (source.name, source.kind, source.account, source.valid_for_days) == ("s", table["kind"], "acme", 30)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"kind": "feed", "url": "f.json", "access_token": "shpat_s3cret"},
            "  access_token applies to kind 'shopify' or 'shopify-rest' only, not 'feed': remove it, or check the "
            "source's kind",
        ),
        (
            {"kind": "shopify", "url": SHOP, "access_token": "t", "consumer_key": "ck_s3cret"},
            "  consumer_key applies to kind 'woocommerce' only, not 'shopify'",
        ),
        (
            {"kind": "woocommerce", "url": "https://store.example", **WOO, "columns": {"id": "SKU"}},
            "  columns applies to kind 'feed' only, not 'woocommerce'",
        ),
        (
            {"kind": "shopify-rest", "url": SHOP, "access_token": "t", "bulk": "always"},
            "  bulk applies to kind 'shopify' only, not 'shopify-rest'",
        ),
        (
            {"kind": "shopify-storefront", "url": SHOP, "webhook_url": "https://h.example/webhooks/s"},
            "  webhook_url applies to kind 'shopify' or 'shopify-rest' or 'woocommerce' only, not 'shopify-storefront'",
        ),
        (
            {"kind": "feed", "url": "f.json", "webhook_secret": "whsec_s3cret"},
            "  webhook_secret applies to kind 'shopify' or 'shopify-rest' or 'shopify-storefront' or 'woocommerce' "
            "only, not 'feed'",
        ),
    ],
    ids=["token-on-feed", "woo-key-on-shopify", "columns-on-woo", "bulk-on-rest", "url-on-storefront", "secret-feed"],
)
def test_a_field_of_another_kind_names_the_source_the_field_and_the_kinds_that_take_it(
    table: dict[str, Any], message: str
) -> None:
    error = invalid(table)

    assert error.startswith("sources file: source 's' is invalid:\n")
    assert message in error
    assert "s3cret" not in error


def test_a_missing_or_unknown_kind_lists_the_kinds() -> None:
    kinds = "'feed', 'shopify', 'shopify-rest', 'shopify-storefront', 'woocommerce'"

    assert invalid({"url": "f.json"}).endswith(f"\n  kind: use one of {kinds}")
    assert invalid({"kind": "shopfy", "url": SHOP}).endswith(f"\n  kind: use one of {kinds} (got 'shopfy')")


def test_missing_credentials_are_named_with_the_kind_beside_the_other_mistakes() -> None:
    error = invalid({"kind": "woocommerce", "url": "https://store.example", "consumer_key": "k", "pagesize": 5})

    assert error.splitlines()[1:] == [
        "  consumer_secret: kind 'woocommerce' needs consumer_key and consumer_secret (a REST key with Read access)",
        "  pagesize: unknown field; remove it or check its spelling",
    ]
    assert "needs access_token (an Admin API token with read_products)" in invalid({"kind": "shopify", "url": SHOP})


def test_a_model_built_in_code_refuses_a_field_of_another_kind() -> None:
    with pytest.raises(ValidationError, match="access_token"):
        FeedSource.model_validate({"name": "s", "kind": "feed", "url": "f.json", "access_token": "t"})

"""Shop and feed connectors. `build_connector` turns a source's settings into its connector."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from config.sources import SourceConfig
    from connectors.base import Connector


def build_connector(source: SourceConfig, *, client: httpx.Client | None = None, bulk: bool | None = None) -> Connector:
    """The connector for a source. Modules are imported on demand so a feed-only install stays light.

    `bulk` is the admin command's `--bulk/--no-bulk` for one run: True reads Shopify with a bulk export whatever the
    run (`bulk = "always"`), False page by page (`"never"`); None keeps the source's `bulk` setting.
    """
    if source.kind == "feed":
        from connectors.feed import FeedConnector

        return FeedConnector(source, client=client)
    if source.kind == "woocommerce":
        from connectors.woocommerce import WooCommerceConnector

        return WooCommerceConnector(source, client=client)
    from connectors.shopify import connector_for

    return connector_for(source, client=client, bulk=None if bulk is None else ("always" if bulk else "never"))

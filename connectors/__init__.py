"""Shop and feed connectors. `build_connector` turns a source's settings into its connector."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

    from config.sources import SourceConfig
    from connectors.base import Connector


def build_connector(source: SourceConfig, *, client: httpx.Client | None = None, bulk: bool | None = None) -> Connector:
    """The connector for a source. Modules are imported on demand so a feed-only install stays light.

    `bulk` forces (True) or forbids (False) Shopify's bulk export; None lets the source's threshold decide.
    """
    if source.kind == "feed":
        from connectors.feed import FeedConnector

        return FeedConnector(source, client=client)
    if source.kind == "woocommerce":
        from connectors.woocommerce import WooCommerceConnector

        return WooCommerceConnector(source, client=client)
    from connectors.shopify import connector_for

    return connector_for(source, client=client, bulk=bulk)

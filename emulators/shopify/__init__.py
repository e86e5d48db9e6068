"""A local Shopify shop that answers the way the real one does, for tests, benchmarks and the demo.

Surfaces (all on one Starlette app; `create_app()`, state at `app.state.shop`), each in a module of its own:

- Admin GraphQL `POST /admin/api/{version}/graphql.json` (`execution`, over `schema`): a schema subset (products,
  product, node, productsCount, events, currentBulkOperation, shop; bulkOperationRunQuery / bulkOperationCancel) run by
  graphql-core, with Shopify's calculated query cost (`cost`): the requested cost is computed from the parsed query
  before running, over 1,000 is refused with `MAX_COST_EXCEEDED`, the requested cost must fit in a leaky bucket
  (`buckets`; `THROTTLED` otherwise, HTTP 200 as Shopify does), and the unused part is refunded after execution
  (`actualQueryCost` counts what was returned). Fields are read from the product records generically (`views`).
- Bulk operations (`bulk`; CREATED → RUNNING → COMPLETED on the clock, or a configured FAILED/CANCELED/EXPIRED): the
  JSONL result is generated on the fly from a snapshot of product references and streamed
  (`GET /_emulator/bulk/{id}.jsonl`, the operation's `url`); each nested connection's nodes are separate lines with
  `__parentId`, right after their parent when grouped (`groupObjects`, whose default is true before API version
  2026-01 and false from it). The validated bulk query is compiled once and projected through the same field
  resolver the GraphQL endpoint uses, because graphql-core's executor would take minutes for a 20,000-product shop.
- Legacy REST `GET /admin/api/{version}/products.json` (`rest`: Link `page_info` paging,
  `X-Shopify-Shop-Api-Call-Limit`, 429 + `Retry-After: 2.0`), `products/{id}.json` (GET and DELETE),
  `products/count.json`.
- Events (`events`): deleting a product, by the control API or REST, records a `destroy` `BasicEvent` (and sends
  `products/delete`), which the `events` connection serves with its search syntax (`subject_type:PRODUCT AND
  action:destroy AND created_at:>='…'`), as a sync reads deletions.
- Storefront `GET /products.json?limit=&page=` (`storefront`: active products only; silently empty past page×limit
  25,000).
- Options and variants: each variant has its option values (`selectedOptions`, REST `option1`…`option3`) and may
  show one of the product's images (GraphQL `image`, REST `image_id` and the images' `variant_ids`); the product's
  `options` are derived from its variants. Generated products vary by size only; created or edited ones take
  `variants: [{options: {"Color": "Red", "Size": "S"}, price, sku, inventory_quantity, image: one of its image URLs}]`.
- Webhook subscriptions of the app (`webhooks`): GraphQL `webhookSubscriptions`, `webhookSubscriptionCreate` /
  `Update` / `Delete` (`callbackUrl`, or `uri` from API version 2025-10) and REST `webhooks.json`; their deliveries
  are signed with the app's client secret (`app_secret`).
- Control `/_emulator/…` (`control`): create, edit, delete products (each sends signed `products/*` webhooks to
  registered receivers from a background task, `webhooks`), replay deliveries, stats, runtime config (buckets,
  latency, bulk faults), reset.

The products (`products`, `store`, `search`, `shapes`, `ids`) are generated from a seed and rebuilt on demand. The
clock is injectable (epoch seconds): it drives both leaky buckets, the bulk operation timeline and the timestamps of
edits, so tests advance time instead of sleeping.
"""

from __future__ import annotations

from emulators.shopify.app import create_app, serve
from emulators.shopify.defaults import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_API_VERSION,
    DEFAULT_APP_SECRET,
    DEFAULT_DOMAIN,
    MAX_PAGE_SIZE,
)
from emulators.shopify.schema import SCHEMA, SCHEMA_SDL
from emulators.shopify.shop import Shop, Stats
from emulators.shopify.webhooks import WEBHOOK_TOPICS, sign_webhook

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_API_VERSION",
    "DEFAULT_APP_SECRET",
    "DEFAULT_DOMAIN",
    "MAX_PAGE_SIZE",
    "SCHEMA",
    "SCHEMA_SDL",
    "WEBHOOK_TOPICS",
    "Shop",
    "Stats",
    "create_app",
    "serve",
    "sign_webhook",
]

"""Webhook subscriptions in a shop: what a connector that can register them offers, and what one looks like.

A shop with a webhook API (Shopify's Admin API, WooCommerce's REST API) lists, creates, updates and deletes
subscriptions; each connector translates that into `Subscription` records named by the topics its shop sends in
the delivery headers (`products/update`, `product.updated`), so the registration logic above it is written once.
Feeds and Shopify's public storefront have no such API and do not implement `SubscriptionApi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["ACTIVE", "Subscription", "SubscriptionApi"]

# The status of a subscription that delivers. Shopify has no other; WooCommerce also has `paused` and `disabled`
# (switched off by hand, or by WooCommerce itself after repeated delivery failures).
ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class Subscription:
    """One registered webhook: the shop's id for it, its topic (as the delivery header names it), where it
    delivers, and whether it delivers. `name` is WooCommerce's label (empty elsewhere)."""

    id: str
    topic: str
    url: str
    status: str = ACTIVE
    name: str = ""


@runtime_checkable
class SubscriptionApi(Protocol):
    """A connector whose shop can list and change its webhook subscriptions. Failures raise `AuthError` (the
    credentials may not manage webhooks) or `SourceError` (unreachable, refused, a shape we cannot read)."""

    def webhook_topics(self) -> tuple[str, ...]:
        """The product topics catalog-sync needs, as this shop names them."""
        ...

    def list_subscriptions(self) -> list[Subscription]:
        """The shop's subscriptions to `webhook_topics()` (others are none of our business)."""
        ...

    def create_subscription(self, topic: str, url: str) -> Subscription:
        """Register `url` for `topic` (active, signed with the source's webhook secret where the shop takes one)."""
        ...

    def update_subscription(self, subscription: Subscription, url: str) -> Subscription:
        """Point an existing subscription at `url` and make it deliver again."""
        ...

    def delete_subscription(self, subscription: Subscription) -> None:
        """Remove a subscription; one already gone counts as removed."""
        ...

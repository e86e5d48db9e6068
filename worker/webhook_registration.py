"""Registering a source's product webhooks in its shop, idempotently, and checking what is registered.

`register` brings the shop to one active subscription per product topic, delivering to the given URL: a topic
with such a subscription is left alone (`unchanged`), one whose subscription of this source points elsewhere or is
switched off is updated (`updated`, never a second subscription), and a topic without one gets one (`created`).
A subscription counts as this source's when it delivers to the URL asked for or to any address ending in
`/webhooks/{source}`, where `catalog-sync serve` receives it; subscriptions of other receivers (another app, a
Zapier hook on a WooCommerce store) are never touched. Duplicates of this source's subscription on one topic would
deliver every change twice, so they are removed.

`inspect_subscriptions` says, per topic, whether an active subscription delivers to the expected URL.

Shops never show a webhook's secret: WooCommerce's "matches" can only be topic, URL and status (an update sends
the secret again, so `force` re-sends it to every subscription after a rotation); Shopify signs with the app's
client secret, which no subscription holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from config.settings import get_settings
from config.sources import ShopSource, SourceConfig, WebhookSource, load_sources
from config.webhook_urls import check_webhook_url, webhook_path
from connectors.base import Connector
from connectors.subscriptions import ACTIVE, Subscription, SubscriptionApi
from ground.errors import ConfigError

Action = Literal["created", "updated", "unchanged"]

# What each kind without a webhook API does instead, for the refusal.
_NO_WEBHOOK_API = {
    "feed": "a feed has no webhook API: its scheduled syncs read it",
    "shopify-storefront": (
        'the public storefront has no webhook API: use kind "shopify" with an Admin API access token to receive '
        "webhooks"
    ),
}


def load_source(name: str) -> SourceConfig:
    """A source of the sources file (`CATALOG_SYNC_CONFIG`), without opening the state database."""
    path = Path(get_settings().config)
    sources = load_sources(path)
    if name not in sources:
        known = ", ".join(sorted(sources)) or "none"
        raise ConfigError(f"unknown source {name!r} (configured: {known}); sources are read from {path}")
    return sources[name]


def subscription_api(source: SourceConfig, connector: Connector) -> SubscriptionApi:
    """The connector's webhook API; `ConfigError` for a kind that has none."""
    if not isinstance(connector, SubscriptionApi):
        why = _NO_WEBHOOK_API.get(source.kind, f"kind {source.kind!r} has no webhook API")
        raise ConfigError(f"source {source.name!r}: {why}")
    return connector


def target_url(source: SourceConfig, given: str | None) -> str | None:
    """The URL deliveries should reach: `--url`, else the source's `webhook_url` (None when neither is set);
    `ConfigError` when a shop could not deliver there."""
    if given is None:
        return source.webhook_url if isinstance(source, WebhookSource) else None
    try:
        return check_webhook_url(given, source.name)
    except ValueError as exc:
        raise ConfigError(f"--url {given!r}: {exc}") from None


def required_url(source: SourceConfig, given: str | None) -> str:
    """`target_url`, which must be known."""
    url = target_url(source, given)
    if url is None:
        raise ConfigError(
            f"source {source.name!r}: no webhook URL: pass --url https://<your host>{webhook_path(source.name)} "
            "or set webhook_url in the sources file"
        )
    return url


def require_secret(source: SourceConfig) -> None:
    """Deliveries are verified with the source's webhook secret: without one every delivery would be refused."""
    secrets = source.webhook_secrets if isinstance(source, ShopSource) else ()
    if not any(secret.get_secret_value() for secret in secrets):
        what = (
            "the app's client secret (API secret key), which Shopify signs every delivery with"
            if source.kind.startswith("shopify")
            else "a long random string, which the store signs every delivery with"
        )
        raise ConfigError(
            f"source {source.name!r}: webhook_secret is not set, so catalog-sync serve would refuse every delivery; "
            f"set webhook_secret to {what}"
        )


def _is_ours(subscription: Subscription, source: str, url: str | None) -> bool:
    if url is not None and subscription.url == url:
        return True
    try:
        path = urlsplit(subscription.url).path
    except ValueError:
        return False
    return path.endswith(webhook_path(source))


def _delivers(subscription: Subscription, url: str | None) -> bool:
    return subscription.status == ACTIVE and (url is None or subscription.url == url)


# ---------------------------------------------------------------------------------------------------- register


@dataclass(frozen=True, slots=True)
class TopicResult:
    topic: str
    action: Action
    subscription: Subscription
    # Duplicates of this source's subscription on the topic, removed.
    removed: tuple[Subscription, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "action": self.action,
            "id": self.subscription.id,
            "url": self.subscription.url,
            "status": self.subscription.status,
            "removed": [{"id": s.id, "url": s.url} for s in self.removed],
        }


@dataclass(frozen=True, slots=True)
class Registration:
    source: str
    url: str
    results: list[TopicResult]

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "url": self.url, "topics": [result.as_dict() for result in self.results]}


def register(source: SourceConfig, api: SubscriptionApi, url: str, *, force: bool = False) -> Registration:
    """One active subscription per product topic delivering to `url` (see the module docstring). `force` updates
    subscriptions that already match, which re-sends the webhook secret where the shop takes one."""
    existing = api.list_subscriptions()
    results: list[TopicResult] = []
    for topic in api.webhook_topics():
        ours = [s for s in existing if s.topic == topic and _is_ours(s, source.name, url)]
        # The one to keep: one already delivering to the URL, else one at the URL, else any of ours.
        ours.sort(key=lambda s: (not _delivers(s, url), s.url != url))
        if not ours:
            results.append(TopicResult(topic, "created", api.create_subscription(topic, url)))
            continue
        kept, extra = ours[0], tuple(ours[1:])
        for duplicate in extra:
            api.delete_subscription(duplicate)
        if _delivers(kept, url) and not force:
            results.append(TopicResult(topic, "unchanged", kept, extra))
        else:
            results.append(TopicResult(topic, "updated", api.update_subscription(kept, url), extra))
    return Registration(source.name, url, results)


# ------------------------------------------------------------------------------------------------------ inspect


@dataclass(frozen=True, slots=True)
class Row:
    subscription: Subscription
    # None when no URL was given to compare with.
    matches: bool | None

    def as_dict(self) -> dict[str, Any]:
        s = self.subscription
        return {"id": s.id, "topic": s.topic, "url": s.url, "status": s.status, "matches": self.matches}


@dataclass(frozen=True, slots=True)
class Inspection:
    source: str
    url: str | None
    rows: list[Row]
    # One line per topic that does not deliver as it should.
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "url": self.url,
            "subscriptions": [row.as_dict() for row in self.rows],
            "problems": self.problems,
            "ok": not self.problems,
        }


def inspect_subscriptions(source: SourceConfig, api: SubscriptionApi, url: str | None) -> Inspection:
    """What is registered for the product topics, and per topic whether an active subscription delivers to `url`
    (or, with no URL to compare, whether any active one exists)."""
    existing = api.list_subscriptions()
    topics = api.webhook_topics()
    rows = [
        Row(s, None if url is None else _delivers(s, url))
        for s in sorted(existing, key=lambda s: (topics.index(s.topic) if s.topic in topics else len(topics), s.id))
    ]
    problems: list[str] = []
    for topic in topics:
        registered = [s for s in existing if s.topic == topic]
        if any(_delivers(s, url) for s in registered):
            continue
        at_url = [s for s in registered if s.url == url]
        if not registered:
            problems.append(f"{topic}: not registered")
        elif at_url:
            problems.append(f"{topic}: {at_url[0].status}, so it delivers nothing; `register` switches it back on")
        elif url is None:
            problems.append(f"{topic}: no active subscription ({', '.join(f'{s.status} {s.url}' for s in registered)})")
        else:
            found = ", ".join(f"{s.url} ({s.status})" for s in registered)
            problems.append(f"{topic}: registered for {found}, not for {url}")
    return Inspection(source.name, url, rows, problems)

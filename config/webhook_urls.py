"""The address a shop delivers a source's webhooks to: the shape accepted, and the fix for any other.

`catalog-sync serve` receives a source's deliveries at `POST /webhooks/{source}`, so the address must end there
(a proxy in front may add a prefix). Shops send over the internet: HTTPS only, except to this machine, which is
where a local shop emulator or a tunnel's local end lives.
"""

from __future__ import annotations

from urllib.parse import urlsplit

# Hosts plain http:// is accepted for: this machine.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def webhook_path(source: str) -> str:
    """The path `catalog-sync serve` receives `source`'s deliveries at."""
    return f"/webhooks/{source}"


def check_webhook_url(url: str, source: str) -> str:
    """`url` stripped of surrounding space; `ValueError` naming the fix when a shop could not deliver `source`'s
    webhooks there."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise ValueError(f"not a URL; give https://<your host>{webhook_path(source)}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"not an http(s) URL; give https://<your host>{webhook_path(source)}")
    if scheme == "http" and host.lower() not in LOOPBACK_HOSTS:
        raise ValueError(
            "plain http://: shops deliver webhooks over HTTPS only (http:// is accepted for localhost); "
            "put catalog-sync serve behind a TLS proxy and give its https:// address"
        )
    if parts.username or parts.password:
        raise ValueError("the webhook URL must not carry a user name or password; deliveries are signed instead")
    if parts.query or parts.fragment:
        raise ValueError(f"the webhook URL must not have a query or fragment; end it with {webhook_path(source)}")
    if not parts.path.endswith(webhook_path(source)):
        raise ValueError(
            f"the path does not end with {webhook_path(source)}, where catalog-sync serve receives this source's "
            f"deliveries; give https://<your host>{webhook_path(source)}"
        )
    return url

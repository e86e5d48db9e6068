"""What the emulated shop is when nobody says otherwise, and the page-size limit every API shares."""

from __future__ import annotations

DEFAULT_API_VERSION = "2025-07"
DEFAULT_DOMAIN = "catalog-sync-demo.myshopify.com"
# The emulator's well-known token, printed by the CLI; never a real credential.
DEFAULT_ACCESS_TOKEN = "shpat_test"  # noqa: S105
# Connections may ask for at most this many nodes per page, GraphQL and REST alike.
MAX_PAGE_SIZE = 250
# The app's client secret, which signs the deliveries of subscriptions made through the Admin API; never real.
DEFAULT_APP_SECRET = "shpss_emulator_app_secret"  # noqa: S105

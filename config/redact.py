"""Credentials out of anything shown: URLs in reprs, tables, messages and logs.

A database, broker or feed URL may carry a password (`scheme://user:password@host`), a token as its user name
(`https://token@host`) or a key in its query string (`?key=…`). `redact_url` keeps what an operator needs to
recognise the URL (scheme, host, port, path, the user name beside a password, the query's parameter names) and
masks the rest.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """`url` with its password (or a lone user name, which is then the credential) and query values masked.

    Text that is not a URL with a network location or a query (a file path, a SQLite URL) comes back unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{name}={MASK}" for name, _ in pairs) if pairs else MASK
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

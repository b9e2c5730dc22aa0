"""The rules of a hub, written once: the admin (Hub.clean), the console and API, and project import call these.

Each function returns the message a person reads (never quoting a secret), or None when the value is fine;
callers put it on their field (a form field, a JSON path such as ``hubs[0].url``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

HUB_URL_MESSAGE = "must be a WebSocket URL: ws:// or wss:// (TLS) and a host, e.g. ws://10.10.20.8/connect"


def hub_url_problem(url: str) -> str | None:
    """Why ``url`` is not a hub endpoint (hub protocol v1: a WebSocket URL, ``ws://`` or ``wss://``, with a
    host), or None. The message does not repeat the URL: it may carry credentials."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number or out of range)
    except (ValueError, AttributeError):
        return HUB_URL_MESSAGE
    if parts.scheme.lower() not in {"ws", "wss"} or not host or url != url.strip():
        return HUB_URL_MESSAGE
    return None

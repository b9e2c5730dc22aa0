"""The webhook adapter: one HTTP POST of the JSON body; raises ``WebhookError`` on anything but a 2xx."""

from __future__ import annotations

import requests

from hubsched.secrets import text_mask, url_mask

TIMEOUT_S = 10.0


class WebhookError(Exception):
    """The POST failed: ``status`` is the HTTP answer (None when there was none); the message has no secret."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


def webhook_post(*, url: str, body: dict, headers: dict[str, str]) -> int:
    """POST ``body`` as JSON to ``url`` with ``headers`` added; return the HTTP status (2xx). Raises
    ``WebhookError`` (secrets of the URL and the headers masked in its text)."""
    secrets = tuple(v for v in headers.values() if v)
    try:
        answer = requests.post(url, json=body, headers={"User-Agent": "hubsched", **headers}, timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise WebhookError(text_mask(f"{url_mask(url)}: {type(exc).__name__}: {exc}", secrets=secrets)) from None
    if not 200 <= answer.status_code < 300:
        raise WebhookError(f"{url_mask(url)} answered HTTP {answer.status_code}", status=answer.status_code)
    return answer.status_code

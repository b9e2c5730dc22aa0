"""Writes to the durable log: the workers' appends, with the retries a brief outage of the log needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from .log import LogError, log

logger = logging.getLogger(__name__)

APPEND_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)  # then 1 s between tries


def log_append(*, stream: str, bodies: Sequence[bytes], deadline_s: float) -> list[int] | None:
    """Append ``bodies`` to ``stream`` of this process's log and return once they are durable
    (``Log.append``: their offsets, or None on RabbitMQ Streams).

    A failure that may pass (``LogError.permanent`` false: the server away, a timeout, the SQLite file
    locked) is tried again with a growing pause until ``deadline_s`` seconds have gone; then, or at
    once for a permanent one, the last LogError is raised. At least once: a try that failed may have
    stored some of them, and the next try stores them again (the consumers keep the first of a tick).
    """
    if not bodies:
        return []
    give_up = time.monotonic() + deadline_s
    tries = 0
    while True:
        try:
            return log().append(stream, bodies, timeout=max(0.05, give_up - time.monotonic()))
        except LogError as exc:
            pause = APPEND_BACKOFF_S[min(tries, len(APPEND_BACKOFF_S) - 1)]
            tries += 1
            if exc.permanent or time.monotonic() + pause > give_up:
                raise
            logger.warning("log: append of %d records to %s failed (%s); trying again in %.2f s",
                           len(bodies), stream, exc.message, pause)
            time.sleep(pause)

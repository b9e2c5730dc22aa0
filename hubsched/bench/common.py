"""What the benchmarks share: the beats compared, running each path, running a set-up command, weighted percentiles, dropping a test queue."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository: where manage.py is

# the paths a benchmark compares, and the beat scheduler (``celery beat -S``) of each
BEATS = {"stock": "hubsched.bench.scheduler:StockScheduler", "hubsched": "groups.scheduler:Scheduler"}


def paths_measure(result: dict, *, paths: str, measure: Callable[[str], dict], log, name: str) -> dict:
    """Add ``measure(path)`` to ``result`` for each comma-separated path of ``BEATS``, in order.

    Raises ValueError for an unknown path."""
    for path in [p.strip() for p in paths.split(",") if p.strip()]:
        if path not in BEATS:
            raise ValueError(f"unknown path {path!r}; known: {', '.join(BEATS)}")
        log(f"{name}: {path} ...")
        result[path] = measure(path)
        log(f"{name}: {path}: {json.dumps(result[path])}")
    return result


def paths_ratio(result: dict, key: str) -> float | None:
    """hubsched's ``key`` over stock's, to one decimal; None unless both paths ran and stock's is not 0."""
    stock, ours = result.get("stock"), result.get("hubsched")
    return round(ours[key] / stock[key], 1) if stock and ours and stock[key] else None


def check(cmd: list[str], env: dict) -> None:
    """Run ``cmd`` in the repository with ``env``; raises RuntimeError with its output when it fails."""
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{done.stdout}{done.stderr}")


def percentile(weighted: list[tuple[float, int]], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted ``(value, count)`` pairs, rounded to 0.1; None when empty."""
    total = sum(n for _, n in weighted)
    if not total:
        return None
    rank, seen = q * total, 0
    for value, n in weighted:
        seen += n
        if seen >= rank:
            return round(value, 1)
    return round(weighted[-1][0], 1)


def delete_queue(broker: str, queue: str) -> None:
    """Drop a benchmark's queue from the broker; a broker that is gone is no error here."""
    from kombu import Connection

    try:
        with Connection(broker) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:
        pass


def queue_consume(broker: str, queue: str, on_message: Callable, ready: str) -> None:
    """Call ``on_message(body, message)`` for every message on ``queue`` (a direct exchange of that name, no
    acknowledgement) until SIGTERM; touches the file ``ready`` once consuming. For the benchmarks' stand-in
    workers, which count what reaches a worker."""
    import signal
    import socket

    from kombu import Connection, Exchange, Queue

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with Connection(broker) as conn:
        q = Queue(queue, Exchange(queue, "direct"), routing_key=queue)
        with conn.Consumer(q, callbacks=[on_message], accept=["json"], no_ack=True):
            Path(ready).touch()
            while not stopping:
                try:
                    conn.drain_events(timeout=0.2)
                except socket.timeout:
                    pass

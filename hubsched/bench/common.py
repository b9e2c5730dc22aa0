"""What the benchmarks share: running a set-up command, weighted percentiles, dropping a test queue."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository: where manage.py is


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

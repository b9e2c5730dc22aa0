"""A cumulative histogram kept in a process (no Django): observations in, a JSON-able snapshot out.

Used where the database holds no record to build a distribution from at scrape time: the hub client's call
latency (hubs/client.py), the beat's dispatch lag (groups/scheduler/beat.py). Each process reports its snapshot
(hubsched/metrics/reports.py); ``/metrics`` adds the snapshots of every process up into one Prometheus histogram
(hubsched/metrics/collectors.py). Like a Prometheus client's own histogram it only grows while its process lives.

Observing costs a ``bisect`` and two additions. ``observe`` is not locked: give each histogram one writing
thread (the hub client's reader thread, the beat's loop); a snapshot read from another thread may be one
observation behind, never wrong by more.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) of the call-latency and dispatch-lag buckets; +Inf is implied.
SECONDS_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket (``buckets``: ascending upper bounds, ``le`` as Prometheus has it)."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """Add ``n`` observations of ``value`` (a value on a bound falls in that bucket: ``le``)."""
        self.counts[bisect_left(self.buckets, value)] += n
        self.sum += value * n

    def snapshot(self) -> dict:
        """``{"le": [bounds], "counts": [per bucket, not cumulative, +Inf last], "sum": float}``."""
        return {"le": list(self.buckets), "counts": list(self.counts), "sum": self.sum}


def add_snapshots(snapshots: list[dict]) -> tuple[list[tuple[str, float]], float] | None:
    """The Prometheus buckets ``[(le, cumulative count)]`` (``+Inf`` last) and the sum of ``snapshots`` of one
    layout; snapshots of another layout than the first (a process of another version) are left out. None if empty."""
    if not snapshots:
        return None
    bounds = snapshots[0].get("le")
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for snap in snapshots:
        if snap.get("le") != bounds or len(snap.get("counts") or ()) != len(counts):
            continue
        for i, n in enumerate(snap["counts"]):
            counts[i] += int(n)
        total += float(snap.get("sum") or 0.0)
    cumulative, running = [], 0
    for bound, n in zip([*map(repr, map(float, bounds)), "+Inf"], counts):
        running += n
        cumulative.append((bound, running))
    return cumulative, total

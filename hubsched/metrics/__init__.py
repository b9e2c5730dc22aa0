"""Prometheus metrics at ``/metrics``: one collector that reads, at scrape time, what hubsched keeps in its
database (docs/metrics.md): the counters of groups, forwarders and alarms, and what worker and beat processes
report of the numbers only they hold (``reports``: hub connections, call latency, dispatch lag)."""

"""Prometheus metrics at ``/metrics``: one collector that reads, at scrape time, what hubsched already keeps in
its database (docs/metrics.md). Nothing is observed in the workers: any number of worker processes is counted
right because they already add up into the database."""

"""``bench metrics``: the time of one ``GET /metrics`` scrape with ``--groups`` groups (10,000 by default).

Creates a project of its own (``bench-metrics-<pid>``) with ``--hubs`` hubs sharing the groups, a GroupStats row per
group (a third of them with failures, so the per-group top N is full), and ``--runs`` runs scheduled in the last
minute (the recent-runs histograms read them). Scrapes ``--rounds`` times through the real view (Django's test
Client, a bearer token); reports the median and worst time, the bytes and the series. Deletes what it made. Runs
against ``DATABASE_URL`` (use a database of its own: ``createdb``, ``migrate``)."""

from __future__ import annotations

import os
import statistics
import time
from datetime import timedelta

HELP = "time one GET /metrics scrape with 10,000 groups (per-hub aggregates, the top-N groups, recent runs)"


def add_arguments(parser) -> None:
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--hubs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20_000, help="runs scheduled in the last minute")
    parser.add_argument("--rounds", type=int, default=5)


def run(*, log, groups: int = 10_000, hubs: int = 10, runs: int = 20_000, rounds: int = 5, **_options) -> dict:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from api.testing import token_client, user_with
    from groups.models import Group, GroupRun, GroupStats
    from hubs.models import Hub, Project

    if "testserver" not in settings.ALLOWED_HOSTS:
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    name = f"bench-metrics-{os.getpid()}"
    project = Project.objects.create(name=name)
    user = user_with(perms=("groups.view_group",), name=name)
    try:
        hub_rows = [Hub.objects.create(project=project, name=f"hub{h}", url="ws://127.0.0.1:1/") for h in range(hubs)]
        rows = Group.objects.bulk_create([Group(hub=hub_rows[i % hubs], name=f"g{i:05d}", period=1.0)
                                          for i in range(groups)], batch_size=2000)
        GroupStats.objects.bulk_create([GroupStats(group=g, dispatched=1000, started=990, done=980, failed=i % 3,
                                                   skipped=5, missed=i % 7, values=9800, lag_ms_total=49_500)
                                        for i, g in enumerate(rows)], batch_size=2000)
        now = timezone.now()
        GroupRun.objects.bulk_create([GroupRun(group=rows[i % groups], status="ok", values_count=10,
                                               scheduled_for=now - timedelta(seconds=1 + i // groups),
                                               started_at=now - timedelta(seconds=1 + i // groups) + timedelta(milliseconds=20),
                                               finished_at=now - timedelta(seconds=1 + i // groups) + timedelta(milliseconds=90))
                                      for i in range(runs)], batch_size=2000)
        log(f"made {groups} groups on {hubs} hubs, {runs} recent runs")
        client = token_client(user)
        times, size, series = [], 0, 0
        for round_ in range(rounds):
            started = time.perf_counter()
            response = client.get("/metrics")
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"/metrics answered {response.status_code}: {response.content[:300]!r}")
            size = len(response.content)
            series = sum(1 for line in response.content.splitlines() if line and not line.startswith(b"#"))
            log(f"round {round_ + 1}: {times[-1]:.3f} s, {size} bytes, {series} series")
    finally:
        project.delete()
        get_user_model().objects.filter(pk=user.pk).delete()
    return {"database": connection.vendor, "groups": groups, "hubs": hubs, "runs": runs, "rounds": rounds,
            "scrape_s_median": round(statistics.median(times), 3), "scrape_s_max": round(max(times), 3),
            "bytes": size, "series": series}


def report(result: dict) -> str:
    return (f"{result['groups']} groups on {result['hubs']} hubs, {result['runs']} recent runs, {result['database']}: "
            f"scrape median {result['scrape_s_median']:.3f} s, max {result['scrape_s_max']:.3f} s, "
            f"{result['bytes']} bytes, {result['series']} series")

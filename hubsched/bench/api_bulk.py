"""``bench api_bulk``: the API's bulk group writes, timed through the real view (Django's test Client, a bearer token).

Creates a project of its own (``bench-api-bulk-<pid>``) with one hub holding a synced entity tree, then, ``--rounds``
times: ``POST /api/v1/groups/bulk`` with ``--groups`` groups of ``--keys`` keys each (one request, one transaction),
``POST /groups/bulk/disable`` and ``/enable`` by filter, ``POST /groups/bulk/delete`` by filter. Checks after the
create that every group has its keys and an enabled PeriodicTask. Deletes what it made at the end. Runs against
``DATABASE_URL`` (use a database of its own: ``createdb``, ``migrate``).
"""

from __future__ import annotations

import os
import statistics
import time

HELP = "time the API's bulk create, enable/disable and delete of groups (1,000 groups of 10 keys by default)"


def add_arguments(parser) -> None:
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)


def run(*, log, groups: int = 1000, keys: int = 10, rounds: int = 3, **_options) -> dict:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django_celery_beat.models import PeriodicTask

    from api.testing import token_client, user_with
    from groups.models import Group, GroupKey
    from hubs.models import Hub, Project
    from hubs.project_document.importer import entity_tree_write

    if "testserver" not in settings.ALLOWED_HOSTS:
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    settings.HUBSCHED_API_RATE = "1000000/m"
    name = f"bench-api-bulk-{os.getpid()}"
    project = Project.objects.create(name=name)
    hub = Hub.objects.create(project=project, name="hub", url="ws://127.0.0.1:1/")
    entity_tree_write(hub=hub, tree=[{"id": f"e{e}", "params": [{"key": f"p{p}", "type": "number"} for p in range(keys)]}
                                     for e in range(10)])
    user = user_with(role="admin", name=name)
    client = token_client(user)
    times: dict[str, list[float]] = {"create": [], "disable": [], "enable": [], "delete": []}
    try:
        for round_ in range(rounds):
            items = [{"hub": hub.pk, "name": f"g{i:05d}", "period": 1.0,
                      "keys": [{"entity": f"e{k % 10}", "key": f"p{k}"} for k in range(keys)]} for i in range(groups)]
            started = time.perf_counter()
            made = client.post("/api/v1/groups/bulk", {"groups": items}, content_type="application/json")
            times["create"].append(time.perf_counter() - started)
            if made.status_code != 201:
                raise RuntimeError(f"bulk create answered {made.status_code}: {made.content[:500]!r}")
            qs = Group.objects.filter(hub=hub)
            assert qs.count() == groups and GroupKey.objects.filter(group__hub=hub).count() == groups * keys
            assert PeriodicTask.objects.filter(hubsched_group__hub=hub, enabled=True).count() == groups
            for action in ("disable", "enable", "delete"):
                started = time.perf_counter()
                done = client.post(f"/api/v1/groups/bulk/{action}", {"filter": {"hub": hub.pk}},
                                   content_type="application/json")
                times[action].append(time.perf_counter() - started)
                if done.status_code != 200 or done.json()["changed"] != groups:
                    raise RuntimeError(f"bulk {action} answered {done.status_code}: {done.content[:500]!r}")
            log(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    finally:
        PeriodicTask.objects.filter(hubsched_group__hub=hub).delete()
        project.delete()
        get_user_model().objects.filter(pk=user.pk).delete()
    from django.db import connection

    return {"database": connection.vendor, "groups": groups, "keys": keys, "rounds": rounds,
            **{f"{k}_s_median": round(statistics.median(v), 3) for k, v in times.items()},
            **{f"{k}_s_max": round(max(v), 3) for k, v in times.items()}}


def report(result: dict) -> str:
    lines = [f"{result['groups']} groups x {result['keys']} keys on {result['database']}, {result['rounds']} rounds:"]
    for action in ("create", "disable", "enable", "delete"):
        lines.append(f"  bulk {action:8} median {result[f'{action}_s_median']:.3f} s, max {result[f'{action}_s_max']:.3f} s")
    return "\n".join(lines)

"""``bench rules``: what alarm rules cost the worker per execution and per value (alarms/evaluation.py).

Makes a project of its own (``bench-rules-<pid>``) with ``--groups`` groups of ``--keys`` keys and one rule on every
group (``--rule``: a two-leaf ``any`` of a threshold on the first key and ``quality_bad`` on the second, which never
holds: the steady state, no alarm writes), builds one Outcome per group as a hub's answer would fill it, and times
what the worker adds after the values are durable: ``groups.services._alarm_rules_evaluate`` (the bindings by name,
then ``rules_evaluate``) over every group, ``--rounds`` times. Also times the same call for groups without a rule.
Reports microseconds per execution and nanoseconds per value. Runs against ``DATABASE_URL``; deletes what it made."""

from __future__ import annotations

import os
import statistics
import time

HELP = "time alarm rule evaluation per execution and per value (1,000 groups x 100 keys, one rule each)"


def add_arguments(parser) -> None:
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)


def _outcomes(groups, keys: int):
    from django.utils import timezone

    from groups.execution import Outcome

    now = timezone.now()
    out = []
    for group in groups:
        read = [("bench/e", [{"key": f"k{n:03d}", "value": float(n), "ts": None, "quality": "good"} for n in range(keys)])]
        out.append(Outcome(group=group, scheduled_for=now, started_at=now, finished_at=now, read=read, values=keys))
    return out


def run(*, log, groups: int = 1000, keys: int = 100, rounds: int = 20, **_options) -> dict:
    from alarms.evaluation import rules_cache_clear
    from alarms.models import AlarmRule
    from groups.models import Group, GroupKey
    from groups.services import _alarm_rules_evaluate
    from hubs.models import Hub, Project

    project = Project.objects.create(name=f"bench-rules-{os.getpid()}")
    try:
        hub = Hub.objects.create(project=project, name="hub", url="ws://127.0.0.1:1/")
        rows = Group.objects.bulk_create([Group(hub=hub, name=f"g{i:05d}", period=1.0) for i in range(2 * groups)])
        GroupKey.objects.bulk_create([GroupKey(group=g, entity="bench/e", key=f"k{n:03d}", position=n)
                                      for g in rows for n in range(keys)], batch_size=5000)
        ruled, plain = rows[:groups], rows[groups:]
        condition = {"any": [{"binding": "k000", "op": ">", "value": 1e12}, {"binding": "k001", "op": "quality_bad"}]}
        AlarmRule.objects.bulk_create([AlarmRule(project=project, name=f"r{g.pk}", group=g, condition=condition,
                                                 severity="low") for g in ruled])
        groups_by_pk = {g.pk: g for g in Group.objects.filter(pk__in=[g.pk for g in rows]).prefetch_related("keys")}
        with_rule = _outcomes([groups_by_pk[g.pk] for g in ruled], keys)
        without = _outcomes([groups_by_pk[g.pk] for g in plain], keys)
        rules_cache_clear()
        _alarm_rules_evaluate(with_rule)  # warm-up: loads the rules, builds the read plans
        _alarm_rules_evaluate(without)
        timed = {"with_rule": [], "without_rule": []}
        for _ in range(rounds):
            for name, outcomes in (("with_rule", with_rule), ("without_rule", without)):
                started = time.perf_counter()
                _alarm_rules_evaluate(outcomes)
                timed[name].append(time.perf_counter() - started)
        log(f"{groups} groups x {keys} keys, {rounds} rounds")
        result = {"params": {"groups": groups, "keys": keys, "rounds": rounds}}
        for name, times in timed.items():
            median = statistics.median(times)
            result[name] = {"batch_ms_median": round(median * 1000, 3),
                            "us_per_execution": round(median / groups * 1e6, 2),
                            "ns_per_value": round(median / (groups * keys) * 1e9, 1)}
        return result
    finally:
        project.delete()
        rules_cache_clear()


def report(result: dict) -> str:
    p = result["params"]
    lines = [f"alarm rules: {p['groups']} groups x {p['keys']} keys, median of {p['rounds']} rounds"]
    for name in ("with_rule", "without_rule"):
        r = result[name]
        lines.append(f"  {name.replace('_', ' '):<13} {r['batch_ms_median']:>9.3f} ms a round, "
                     f"{r['us_per_execution']:>7.2f} us per execution, {r['ns_per_value']:>7.1f} ns per value")
    return "\n".join(lines)

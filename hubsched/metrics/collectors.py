"""``HubschedCollector``: the ``hubsched_*`` metric families, built at scrape time with a few aggregate queries.

Bounded label sets (docs/metrics.md, "Cardinality"): per hub (``project``, ``hub``) for every hub; per group
(``project``, ``hub``, ``group``) only for the ``HUBSCHED_METRICS_GROUPS_MAX`` groups (default 100, 0 = none)
with the most failed + missed + skipped + killed ticks; per forwarder (``forwarder``); alarms per
(``severity``, ``state``). Counters come from GroupStats / Forwarder rows (they reset when those rows do;
Prometheus' ``rate()`` handles resets). The start-lag and execution-time distributions are gauge histograms
of the last minute's runs of a sample of groups (``HUBSCHED_METRICS_RUNS_GROUPS``, default 500, spread evenly
over every hub), at most ``HUBSCHED_METRICS_RUNS_SAMPLE`` runs (default 5000)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Iterator

from django.conf import settings
from django.db.models import Count, F, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from hubsched.metrics.histogram import add_snapshots

OUTCOMES = ("ok", "failed", "skipped", "missed", "killed")
_OUTCOME_FIELD = {"ok": "done", "failed": "failed", "skipped": "skipped", "missed": "missed", "killed": "killed"}
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WINDOW_S = 60


def groups_max() -> int:
    return max(0, int(getattr(settings, "HUBSCHED_METRICS_GROUPS_MAX", 100)))


def runs_sample() -> int:
    return max(0, int(getattr(settings, "HUBSCHED_METRICS_RUNS_SAMPLE", 5000)))


def runs_groups() -> int:
    return max(1, int(getattr(settings, "HUBSCHED_METRICS_RUNS_GROUPS", 500)))


def _hist(name: str, doc: str, labels: list[str], buckets: tuple[float, ...],
          samples: dict[tuple, list[float]]) -> GaugeHistogramMetricFamily:
    family = GaugeHistogramMetricFamily(name, doc, labels=labels)
    for key, values in sorted(samples.items()):
        counts = [sum(1 for v in values if v <= b) for b in buckets]
        family.add_metric(list(key), [(repr(b), c) for b, c in zip(buckets, counts)] + [("+Inf", len(values))],
                          gsum_value=sum(values))
    return family


class HubschedCollector(Collector):
    """Yields every ``hubsched_*`` family; each scrape runs about ten queries (none per group or per hub)."""

    def collect(self) -> Iterator:
        yield from self._groups()
        yield from self._runs_window()
        yield from self._hubs()
        yield from self._reported()
        yield from self._forwarders()
        yield from self._beat()
        yield from self._redundancy()
        yield from self._alarms()
        yield from self._jobs()

    # --- groups: per hub always, per group for the worst N ---------------------------------------------
    def _groups(self):
        from groups.models import GroupStats

        fields = ("dispatched", "started", "done", "failed", "skipped", "missed", "killed", "values", "lag_ms_total")
        per_hub = (GroupStats.objects.values("group__hub__project__name", "group__hub__name")
                   .annotate(**{f"s_{f}": Sum(f) for f in fields}).order_by())
        n = groups_max()
        worst = []
        if n:
            worst = list(GroupStats.objects
                         .annotate(bad=F("failed") + F("missed") + F("skipped") + F("killed"))
                         .filter(bad__gt=0).order_by("-bad", "group_id")
                         .values("group__hub__project__name", "group__hub__name", "group__name", *fields)[:n])
        hub_labels, group_labels = ["project", "hub"], ["project", "hub", "group"]
        execs = CounterMetricFamily("hubsched_hub_executions", "Executions of the hub's groups by outcome (every due "
                                    "tick ends in one: ok, failed, skipped, missed, killed).", labels=hub_labels + ["outcome"])
        values = CounterMetricFamily("hubsched_hub_values", "Values acquired by the hub's groups (durable in the log).", labels=hub_labels)
        dispatched = CounterMetricFamily("hubsched_hub_ticks_dispatched", "Ticks the beat sent to workers for the hub's groups.", labels=hub_labels)
        started = CounterMetricFamily("hubsched_hub_executions_started", "Executions a worker began, for the hub's groups.", labels=hub_labels)
        lag = CounterMetricFamily("hubsched_hub_start_lag_seconds", "Sum of start lag behind the tick over started "
                                  "executions; rate() of it over rate(hubsched_hub_executions_started_total) is the mean lag.", labels=hub_labels)
        g_execs = CounterMetricFamily("hubsched_group_executions", f"Executions by outcome of the {n} groups with the "
                                      "most failed, missed, skipped or killed ticks (HUBSCHED_METRICS_GROUPS_MAX).", labels=group_labels + ["outcome"])
        g_values = CounterMetricFamily("hubsched_group_values", "Values acquired, for the groups of hubsched_group_executions_total.", labels=group_labels)
        g_lag = CounterMetricFamily("hubsched_group_start_lag_seconds", "Sum of start lag, for the groups of hubsched_group_executions_total.", labels=group_labels)
        for row in per_hub:
            key = [row["group__hub__project__name"], row["group__hub__name"]]
            for outcome in OUTCOMES:
                execs.add_metric(key + [outcome], row[f"s_{_OUTCOME_FIELD[outcome]}"] or 0)
            values.add_metric(key, row["s_values"] or 0)
            dispatched.add_metric(key, row["s_dispatched"] or 0)
            started.add_metric(key, row["s_started"] or 0)
            lag.add_metric(key, (row["s_lag_ms_total"] or 0) / 1000.0)
        for row in worst:
            key = [row["group__hub__project__name"], row["group__hub__name"], row["group__name"]]
            for outcome in OUTCOMES:
                g_execs.add_metric(key + [outcome], row[_OUTCOME_FIELD[outcome]])
            g_values.add_metric(key, row["values"])
            g_lag.add_metric(key, row["lag_ms_total"] / 1000.0)
        yield from (execs, values, dispatched, started, lag, g_execs, g_values, g_lag)
        last = GaugeMetricFamily("hubsched_hub_groups_last_status", "The hub's groups by the outcome of their latest "
                                 "tick (none: not run yet); every one failed = the hub unreachable or refusing.",
                                 labels=hub_labels + ["status"])
        for row in (GroupStats.objects.values("group__hub__project__name", "group__hub__name", "last_status")
                    .annotate(n=Count("group_id")).order_by()):
            last.add_metric([row["group__hub__project__name"], row["group__hub__name"], row["last_status"] or "none"], row["n"])
        yield last
        ticks = GaugeMetricFamily("hubsched_groups", "Groups configured, by hub and enabled.", labels=hub_labels + ["enabled"])
        from groups.models import Group

        for row in (Group.objects.values("hub__project__name", "hub__name", "enabled").annotate(n=Count("id")).order_by()):
            ticks.add_metric([row["hub__project__name"], row["hub__name"], "true" if row["enabled"] else "false"], row["n"])
        yield ticks

    # --- the last minute's runs: start lag and execution time, per hub ---------------------------------
    def _runs_window(self):
        from groups.models import Group, GroupRun

        by_hub: dict[int, list[int]] = defaultdict(list)
        for group_id, hub_id in Group.objects.filter(enabled=True).values_list("id", "hub_id").order_by("id"):
            by_hub[hub_id].append(group_id)
        sample: list[int] = []
        if by_hub:
            per_hub = max(5, runs_groups() // len(by_hub))
            for ids in by_hub.values():  # evenly spaced over each hub's groups: every hub is seen
                step = max(1, len(ids) // per_hub)
                sample.extend(ids[::step][:per_hub])
        since = timezone.now() - timedelta(seconds=WINDOW_S)
        # group_id IN (...) AND scheduled_for >= since: the (group, scheduled_for) unique index, never a table scan
        rows = (GroupRun.objects.filter(group_id__in=sample, scheduled_for__gte=since, started_at__isnull=False)
                .values_list("group__hub__project__name", "group__hub__name", "scheduled_for", "started_at", "finished_at")
                .order_by()[:runs_sample()]) if sample else []
        lags: dict[tuple, list[float]] = defaultdict(list)
        durations: dict[tuple, list[float]] = defaultdict(list)
        for project, hub, tick, started, finished in rows:
            lags[(project, hub)].append(max(0.0, (started - tick).total_seconds()))
            if finished is not None:
                durations[(project, hub)].append(max(0.0, (finished - started).total_seconds()))
        yield _hist("hubsched_hub_start_lag_seconds_recent", f"Start lag behind the tick of the runs scheduled in the "
                    f"last {WINDOW_S} s, of a sample of the hub's groups (HUBSCHED_METRICS_RUNS_GROUPS).", ["project", "hub"], LAG_BUCKETS, lags)
        yield _hist("hubsched_hub_execution_seconds_recent", f"Execution time (start to end) of the runs scheduled in "
                    f"the last {WINDOW_S} s, of a sample of the hub's groups (HUBSCHED_METRICS_RUNS_GROUPS).", ["project", "hub"], DURATION_BUCKETS, durations)

    # --- hubs ----------------------------------------------------------------------------------------
    def _hubs(self):
        from hubs.models import Hub

        family = GaugeMetricFamily("hubsched_hub_enabled", "1 when the hub is enabled (its groups run).", labels=["project", "hub"])
        for project, name, enabled in Hub.objects.values_list("project__name", "name", "enabled").order_by():
            family.add_metric([project, name], 1 if enabled else 0)
        yield family

    # --- what worker and beat processes reported (hubsched/metrics/reports.py) -------------------------
    def _reported(self):
        from hubs.models import Hub

        from .models import ProcessReport
        from .reports import report_interval_s

        hubs = {str(pk): [project, name] for pk, project, name in Hub.objects.values_list("pk", "project__name", "name")}
        fresh_after = timezone.now() - timedelta(seconds=3 * (report_interval_s() or 15.0))
        labels = ["project", "hub"]
        connected = GaugeMetricFamily("hubsched_hub_connected", "1 when a worker process reporting in the last three "
                                      "intervals holds an open connection to the hub, 0 when they use it and none does.", labels=labels)
        connections = GaugeMetricFamily("hubsched_hub_connections", "Worker processes with an open connection to the hub "
                                        "(one per process: hub protocol v1).", labels=labels)
        in_flight = GaugeMetricFamily("hubsched_hub_calls_in_flight", "Calls sent to the hub and not answered yet, every "
                                      "worker process.", labels=labels)
        latency = HistogramMetricFamily("hubsched_hub_call_duration_seconds", "Seconds from sending a call to the hub to "
                                        "its answer (answered calls, errors included), every worker process.", labels=labels)
        errors = CounterMetricFamily("hubsched_hub_call_errors", "Calls that failed, by kind: hub (answered with an "
                                     "error), timeout (no answer in time), connection (the connection was lost).", labels=labels + ["kind"])
        connects = CounterMetricFamily("hubsched_hub_connects", "Connections made to the hub, every worker process.", labels=labels)
        connect_failures = CounterMetricFamily("hubsched_hub_connect_failures", "Connection attempts to the hub that failed.", labels=labels)
        lag = HistogramMetricFamily("hubsched_beat_dispatch_lag_seconds", "Seconds from a group tick's time to the beat "
                                    "sending it (0: sent ahead with its ETA), per group tick, every beat process.", labels=labels)
        processes = GaugeMetricFamily("hubsched_processes_reporting", "Worker and beat processes that reported in the last "
                                      "three intervals (HUBSCHED_METRICS_REPORT_S).", labels=["program"])
        per_hub: dict[str, dict] = defaultdict(lambda: {"procs": 0, "up": 0, "in_flight": 0, "latency": [], "errors":
                                                        defaultdict(int), "connects": 0, "failures": 0})
        lags: dict[str, list] = defaultdict(list)
        programs: dict[str, int] = defaultdict(int)
        for program, data, reported_at in ProcessReport.objects.values_list("program", "data", "reported_at").order_by():
            fresh = reported_at >= fresh_after
            if fresh:
                programs[program] += 1
            data = data if isinstance(data, dict) else {}
            for hub_id, stats in (data.get("hubs") or {}).items():
                if hub_id not in hubs or not isinstance(stats, dict):
                    continue
                agg = per_hub[hub_id]
                if fresh:  # gauges: what live processes say now
                    agg["procs"] += 1
                    agg["up"] += 1 if stats.get("connected") else 0
                    agg["in_flight"] += int(stats.get("in_flight") or 0)
                if stats.get("latency"):  # counters: every report kept, a process's last one included
                    agg["latency"].append(stats["latency"])
                for kind, n in (stats.get("errors") or {}).items():
                    agg["errors"][kind] += int(n or 0)
                agg["connects"] += int(stats.get("connects") or 0)
                agg["failures"] += int(stats.get("connect_failures") or 0)
            for hub_id, snap in ((data.get("beat") or {}).get("dispatch_lag") or {}).items():
                if hub_id in hubs:
                    lags[hub_id].append(snap)
        for hub_id, agg in sorted(per_hub.items(), key=lambda item: hubs[item[0]]):
            key = hubs[hub_id]
            if agg["procs"]:
                connected.add_metric(key, 1 if agg["up"] else 0)
                connections.add_metric(key, agg["up"])
                in_flight.add_metric(key, agg["in_flight"])
            summed = add_snapshots(agg["latency"])
            if summed is not None:
                latency.add_metric(key, summed[0], sum_value=summed[1])
            for kind in ("hub", "timeout", "connection"):
                errors.add_metric(key + [kind], agg["errors"].get(kind, 0))
            connects.add_metric(key, agg["connects"])
            connect_failures.add_metric(key, agg["failures"])
        for hub_id, snaps in sorted(lags.items(), key=lambda item: hubs[item[0]]):
            summed = add_snapshots(snaps)
            if summed is not None:
                lag.add_metric(hubs[hub_id], summed[0], sum_value=summed[1])
        for program in ("worker", "beat"):
            processes.add_metric([program], programs.get(program, 0))
        yield from (connected, connections, in_flight, latency, errors, connects, connect_failures, lag, processes)

    # --- sinks' forwarders and the quarantine --------------------------------------------------------
    def _forwarders(self):
        from streams.models import Forwarder, QuarantinedExecution

        labels = ["forwarder", "kind"]
        f = {
            "executions": CounterMetricFamily("hubsched_sink_executions_written", "Executions the forwarder committed "
                                              "since its leader started (as last reported).", labels=labels),
            "values": CounterMetricFamily("hubsched_sink_values_written", "Values the forwarder committed since its leader started.", labels=labels),
            "dropped": CounterMetricFamily("hubsched_sink_records_dropped", "Records the log's retention dropped before the forwarder read them.", labels=labels),
            "lag_s": GaugeMetricFamily("hubsched_sink_backlog_seconds", "Age of the oldest record the forwarder has not committed.", labels=labels),
            "lag_r": GaugeMetricFamily("hubsched_sink_backlog_records", "Records the forwarder has not committed yet.", labels=labels),
            "pct": GaugeMetricFamily("hubsched_sink_backlog_ratio", "Backlog as a fraction of the log's retention (1 = about to drop).", labels=labels),
            "lead": GaugeMetricFamily("hubsched_sink_leading", "1 when a process leads the forwarder (its lease holds).", labels=labels),
            "quar": GaugeMetricFamily("hubsched_sink_quarantined_executions", "Executions set aside because the sink refused them.", labels=labels),
            "age": GaugeMetricFamily("hubsched_sink_report_age_seconds", "Seconds since the forwarder's leader last reported.", labels=labels),
            "write": HistogramMetricFamily("hubsched_sink_write_duration_seconds", "Seconds each batch's commit to the sink "
                                           "took (its values and the offset, one transaction), since its leader started.", labels=labels),
        }
        now = timezone.now()
        for row in Forwarder.objects.annotate(q=Count("quarantine")).order_by("name"):
            key = [row.name, row.kind]
            f["executions"].add_metric(key, row.executions_total)
            f["values"].add_metric(key, row.values_total)
            f["dropped"].add_metric(key, row.dropped_records)
            f["lag_s"].add_metric(key, row.lag_seconds or 0.0)
            f["lag_r"].add_metric(key, row.lag_records or 0)
            f["pct"].add_metric(key, (row.backlog_percent or 0.0) / 100.0)
            f["lead"].add_metric(key, 1 if row.lease_until and row.lease_until > now else 0)
            f["quar"].add_metric(key, row.q)
            if row.reported_at:
                f["age"].add_metric(key, max(0.0, (now - row.reported_at).total_seconds()))
            summed = add_snapshots([row.write_seconds]) if row.write_seconds else None
            if summed is not None:
                f["write"].add_metric(key, summed[0], sum_value=summed[1])
        yield from f.values()
        total = GaugeMetricFamily("hubsched_quarantine_executions", "Executions in the quarantine, every sink.")
        total.add_metric([], QuarantinedExecution.objects.count())
        yield total

    # --- beat ----------------------------------------------------------------------------------------
    def _beat(self):
        from groups.scheduler.leader import beat_leader

        leading = GaugeMetricFamily("hubsched_beat_leader", "1 while a beat leads (holds the lease), 0 while none does.")
        up = GaugeMetricFamily("hubsched_beat_lease_store_up", "1 when the beat lease store (Redis) answered this scrape.")
        try:
            leader = beat_leader()
        except Exception:  # noqa: BLE001 - the scrape must answer without the lease store
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        leading.add_metric([], 1 if leader else 0)
        yield leading
        yield up

    # --- redundancy, alarms, jobs --------------------------------------------------------------------
    def _redundancy(self):
        from hubs.models import RedundancyEvent

        family = GaugeMetricFamily("hubsched_redundancy_disagreements", "Disagreements of redundant hubs not cleared yet, per set.", labels=["set"])
        for row in (RedundancyEvent.objects.filter(cleared_at=None).values("redundancy_set__name")
                    .annotate(n=Count("id")).order_by()):
            family.add_metric([row["redundancy_set__name"]], row["n"])
        yield family

    def _alarms(self):
        try:
            from alarms.models import Alarm
        except (ImportError, LookupError):  # the alarms app absent: no family
            return
        family = GaugeMetricFamily("hubsched_alarms", "Alarms not cleared, by severity and state (active, acknowledged).",
                                   labels=["severity", "state"])
        counts = {(r["severity"], r["state"]): r["n"] for r in
                  Alarm.objects.exclude(state="cleared").values("severity", "state").annotate(n=Count("id")).order_by()}
        for severity in ("critical", "high", "medium", "low"):
            for state in ("active", "acknowledged"):
                family.add_metric([severity, state], counts.get((severity, state), 0))
        yield family

    def _jobs(self):
        try:
            from jobs.models import JobRun, JobRunStatus
        except (ImportError, LookupError):
            return
        family = GaugeMetricFamily("hubsched_job_runs", "Job runs recorded, by status.", labels=["status"])
        counts = {row["status"]: row["n"] for row in JobRun.objects.values("status").annotate(n=Count("id")).order_by()}
        for status in sorted(set(JobRunStatus.values) | set(counts)):
            family.add_metric([str(status)], counts.get(status, 0))
        yield family

"""GET /metrics: who may read it, what it says for a database with data, promtool's verdict on the output, the
series bound with 10,000 groups, and the dashboard and alert rules reading only metrics it emits."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from api.testing import token_client, user_with
from hubsched.testing import in_ci

DOCS = Path(__file__).resolve().parents[2] / "docs"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if in_ci():
            pytest.fail("promtool is missing under CI (apt-get install prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


def site(*, groups: int = 3):
    """A project with two hubs, ``groups`` groups with stats on hub-a, runs of the last minute, a forwarder with a
    quarantined execution and write times, an open redundancy disagreement, a worker's and a beat's process report."""
    from groups.models import Group, GroupRun, GroupStats
    from hubsched.metrics.histogram import Histogram
    from hubsched.metrics.models import ProcessReport
    from hubs.models import Hub, Project, RedundancyEvent, RedundancySet
    from streams.models import Forwarder, QuarantinedExecution

    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:1", api_key="k")
    Hub.objects.create(project=project, name="hub-b", url="ws://127.0.0.1:2", api_key="k", enabled=False)
    rows = Group.objects.bulk_create([Group(hub=hub, name=f"g{i}", period=1.0) for i in range(groups)])
    GroupStats.objects.bulk_create([GroupStats(group=g, dispatched=10 + i, started=9, done=7, failed=i % 3, skipped=1,
                                               missed=0, values=70, lag_ms_total=900) for i, g in enumerate(rows)])
    now = timezone.now()
    tick = now - timedelta(seconds=10)
    GroupRun.objects.create(group=rows[0], scheduled_for=tick, started_at=tick + timedelta(milliseconds=40),
                            finished_at=tick + timedelta(milliseconds=240), status="ok", values_count=7)
    GroupRun.objects.create(group=rows[1], scheduled_for=tick, started_at=tick + timedelta(seconds=2),
                            finished_at=tick + timedelta(seconds=3), status="failed")
    three_ms = Histogram()
    three_ms.observe(0.003, n=3)
    fwd = Forwarder.objects.create(name="sink:1", kind="sink", stream="executions", state="running", reported_at=now,
                                   lease_until=now + timedelta(seconds=30), lag_records=12, lag_values=240,
                                   lag_seconds=3.5, backlog_percent=10.0, executions_total=100, values_total=700,
                                   write_seconds=three_ms.snapshot())
    client = {"connected": True, "in_flight": 2, "latency": three_ms.snapshot(), "connects": 1, "connect_failures": 0,
              "errors": {"hub": 1, "timeout": 0, "connection": 0}}
    ProcessReport.objects.create(host="w1", pid=1, program="worker", data={"hubs": {str(hub.pk): client}},
                                 started_at=now, reported_at=now)
    ProcessReport.objects.create(host="b1", pid=2, program="beat", started_at=now, reported_at=now,
                                 data={"beat": {"dispatch_lag": {str(hub.pk): three_ms.snapshot()}}})
    QuarantinedExecution.objects.create(forwarder=fwd, stream="executions", offset=1, group_id=rows[0].pk, tick=tick,
                                        project="plant", hub="hub-a", group="g0", values_count=2, body=b"x", error="e")
    rset = RedundancySet.objects.create(project=project, name="pair")
    RedundancyEvent.objects.create(redundancy_set=rset, master="hub-a", member="hub-b", entity="e", key="p1",
                                   master_value=1, member_value=2, raised_at=now)
    return rows


def scrape() -> str:
    response = token_client(user_with(perms=("groups.view_group",))).get("/metrics")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.content.decode()


def sample(text: str, name: str, **labels) -> float:
    """The value of the one sample ``name`` whose labels include ``labels``."""
    found = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(m.group(4)))
    assert len(found) == 1, (name, labels, found)
    return found[0]


def metric_names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


@pytest.mark.django_db
def test_metrics_need_a_caller_with_the_permission():
    assert Client().get("/metrics").status_code == 401
    assert Client(HTTP_AUTHORIZATION="Bearer hs_not-a-token").get("/metrics").status_code == 401
    assert Client(HTTP_AUTHORIZATION="Basic eDp5").get("/metrics").status_code == 401
    assert token_client(user_with()).get("/metrics").status_code == 403
    assert token_client(user_with(perms=("groups.view_group",))).post("/metrics").status_code == 405
    session = Client()
    session.force_login(user_with(role="viewer"))
    assert session.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_metrics_say_what_the_database_holds_and_promtool_accepts_them(tmp_path):
    site(groups=3)
    text = scrape()
    assert sample(text, "hubsched_hub_executions_total", hub="hub-a", outcome="ok") == 21
    assert sample(text, "hubsched_hub_executions_total", hub="hub-a", outcome="failed") == 0 + 1 + 2
    assert sample(text, "hubsched_hub_ticks_dispatched_total", hub="hub-a") == 10 + 11 + 12
    assert sample(text, "hubsched_hub_values_total", hub="hub-a") == 210
    assert sample(text, "hubsched_hub_start_lag_seconds_total", hub="hub-a") == 2.7
    assert sample(text, "hubsched_group_executions_total", group="g2", outcome="failed") == 2
    assert sample(text, "hubsched_hub_enabled", hub="hub-b") == 0
    assert sample(text, "hubsched_hub_groups_last_status", hub="hub-a", status="none") == 3
    assert sample(text, "hubsched_hub_start_lag_seconds_recent_bucket", hub="hub-a", le="0.05") == 1
    assert sample(text, "hubsched_hub_start_lag_seconds_recent_bucket", hub="hub-a", le="+Inf") == 2
    assert sample(text, "hubsched_hub_execution_seconds_recent_bucket", hub="hub-a", le="0.25") == 1
    assert sample(text, "hubsched_hub_execution_seconds_recent_gsum", hub="hub-a") == pytest.approx(1.2)
    assert sample(text, "hubsched_sink_backlog_seconds", forwarder="sink:1") == 3.5
    assert sample(text, "hubsched_sink_backlog_ratio", forwarder="sink:1") == 0.1
    assert sample(text, "hubsched_sink_values_written_total", forwarder="sink:1") == 700
    assert sample(text, "hubsched_sink_leading", forwarder="sink:1") == 1
    assert sample(text, "hubsched_quarantine_executions") == 1
    assert sample(text, "hubsched_redundancy_disagreements", set="pair") == 1
    assert sample(text, "hubsched_hub_connected", hub="hub-a") == 1 and sample(text, "hubsched_hub_calls_in_flight", hub="hub-a") == 2
    assert sample(text, "hubsched_hub_call_duration_seconds_bucket", hub="hub-a", le="0.0025") == 0
    assert sample(text, "hubsched_hub_call_duration_seconds_bucket", hub="hub-a", le="0.005") == 3
    assert sample(text, "hubsched_beat_dispatch_lag_seconds_count", hub="hub-a") == 3
    assert sample(text, "hubsched_sink_write_duration_seconds_sum", forwarder="sink:1") == pytest.approx(0.009)
    assert "hubsched_beat_lease_store_up" in metric_names(text)
    assert all(name.startswith("hubsched_") for name in metric_names(text))
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr  # no lint


@pytest.mark.django_db
def test_active_alarms_are_counted_by_severity():
    pytest.importorskip("alarms.models")
    from alarms.models import Alarm

    now = timezone.now()
    for n, (severity, state) in enumerate([("high", "active"), ("high", "active"), ("low", "acknowledged"),
                                           ("critical", "cleared")]):
        Alarm.objects.create(source="system", kind="quarantine", subject=f"s{n}", identity=f"system:test:{n}",
                             severity=severity, state=state, message="m", raised_at=now)
    text = scrape()
    assert sample(text, "hubsched_alarms", severity="high", state="active") == 2
    assert sample(text, "hubsched_alarms", severity="low", state="active") == 0
    assert sample(text, "hubsched_alarms", severity="low", state="acknowledged") == 1
    assert sample(text, "hubsched_alarms", severity="critical", state="active") == 0  # cleared is not counted


@pytest.mark.django_db
@override_settings(HUBSCHED_METRICS_GROUPS_MAX=100)
def test_ten_thousand_groups_make_a_bounded_number_of_series():
    site(groups=10_000)
    text = scrape()
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    group_series = [line for line in series if line.startswith("hubsched_group_")]
    groups = {re.search(r'group="([^"]*)"', line).group(1) for line in group_series}
    assert len(groups) == 100  # 6,666 of them have failures: only the worst 100 are named
    assert len(group_series) == 100 * (5 + 2)
    assert len(series) < 1000, len(series)


def test_alert_rules_pass_promtool():
    result = subprocess.run([promtool(), "check", "rules", str(DOCS / "prometheus-alerts.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _expr_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once label matchers, ranges, ``by``/``on``/
    ``without`` label lists, function calls' names, operators' words and numbers are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\b[a-zA-Z_]\w*\s*(?=\()", "", expr)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)", expr))
    return names - {"and", "or", "unless", "bool", "offset", "e"}


def test_the_expression_reader_finds_every_metric_name():
    assert _expr_metrics('sum by (hub, le) (rate(a_total{x="y"}[5m])) / on (hub) b or vector(0) > 1e-9') == {"a_total", "b"}


@pytest.mark.django_db
def test_dashboard_and_rules_read_only_metrics_that_are_emitted():
    import yaml

    site(groups=3)
    emitted = metric_names(scrape())
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    used = set().union(*(_expr_metrics(e) for e in exprs))
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    used_by_rules = set().union(*(_expr_metrics(r["expr"]) for g in rules["groups"] for r in g["rules"])) - {"up"}
    assert used and used_by_rules
    assert used - emitted == set(), used - emitted
    assert used_by_rules - emitted == set(), used_by_rules - emitted
    wanted = {"hubsched_hub_executions_total", "hubsched_sink_backlog_seconds", "hubsched_beat_leader",
              "hubsched_quarantine_executions", "hubsched_redundancy_disagreements"}
    assert wanted <= used and wanted <= used_by_rules

"""What only a process holds, in /metrics through its process report (hubsched/metrics/reports.py): a worker's hub
client (connection state, calls in flight, call latency, errors) against a real reference hub, the beat's dispatch
lag, a sink forwarder's write time; the report written by a real Celery worker's signals; promtool on the output."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import nullcontext
from datetime import timedelta

import pytest
from django.utils import timezone

from groups.models import Group
from groups.scheduler.beat import Scheduler
from groups.tests.test_scheduler import T0, FakeClock, run_until
from hubs.hubsim.server import serve_in_thread
from hubs.models import Hub, Project
from hubsched.celery import app
from hubsched.metrics import reports
from hubsched.metrics.histogram import Histogram, add_snapshots
from hubsched.metrics.models import ProcessReport
from hubsched.tests.test_metrics import promtool, sample, scrape

KEY = "metrics-key"


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_a_histogram_counts_each_value_in_its_bucket_and_snapshots_add_up_cumulatively():
    a, b = Histogram((0.1, 1.0)), Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        a.observe(value)
    b.observe(0.5, n=2)
    assert a.snapshot() == {"le": [0.1, 1.0], "counts": [2, 1, 1], "sum": pytest.approx(3.65)}
    other_layout = Histogram((0.5,)).snapshot()  # a process of another version: left out, not mixed in
    buckets, total = add_snapshots([a.snapshot(), b.snapshot(), other_layout])
    assert buckets == [("0.1", 2), ("1.0", 5), ("+Inf", 6)] and total == pytest.approx(4.65)
    assert add_snapshots([]) is None


@pytest.mark.django_db(transaction=True)
def test_a_workers_hub_client_is_connected_with_its_calls_and_latency_then_disconnected_with_its_lost_calls():
    from groups.execution import client_for

    with serve_in_thread(key=KEY, name="hub-a") as running:
        project = Project.objects.create(name="plant")
        hub = Hub.objects.create(project=project, name="hub-a", url=running.url, api_key=KEY, timeout=2.0)
        Hub.objects.create(project=project, name="never-used", url="ws://127.0.0.1:9/connect", api_key=KEY)
        client = client_for(hub)
        for _ in range(5):
            client.call("getInfo")
        with pytest.raises(Exception):
            client.call("noSuchMethod")  # the hub answers with an error
        reports.report_source("hubs", reports.hubs_snapshot)
        reporter = reports.Reporter()
        assert reporter.report_once()
        row = ProcessReport.objects.get(host=socket.gethostname(), pid=os.getpid())
        assert row.data["hubs"][str(hub.pk)]["connected"] is True

        text = scrape()
        assert sample(text, "hubsched_hub_connected", hub="hub-a") == 1
        assert sample(text, "hubsched_hub_connections", hub="hub-a") == 1
        assert sample(text, "hubsched_hub_calls_in_flight", hub="hub-a") == 0
        answered = sample(text, "hubsched_hub_call_duration_seconds_count", hub="hub-a")
        assert answered == 6  # five getInfo and the refused call: every answer, errors included
        assert sample(text, "hubsched_hub_call_duration_seconds_bucket", hub="hub-a", le="+Inf") == answered
        assert 0 < sample(text, "hubsched_hub_call_duration_seconds_sum", hub="hub-a") < 6 * 2.0
        assert sample(text, "hubsched_hub_call_errors_total", hub="hub-a", kind="hub") == 1
        assert sample(text, "hubsched_hub_connects_total", hub="hub-a") == 1
        reported = [line for line in text.splitlines() if line.startswith(("hubsched_hub_connect", "hubsched_hub_call"))]
        assert reported and not [line for line in reported if 'hub="never-used"' in line]  # no client for it: no series
        assert sample(text, "hubsched_processes_reporting", program="worker") == 1

        future = client.call_async("getInfo")
        running.drop_connections()  # the hub goes away with a call in flight (or just answered)
        wait_for(lambda: not client.stats()["connected"])
        try:
            future.result(5)
        except Exception:
            pass
    assert reporter.report_once()
    text = scrape()
    assert sample(text, "hubsched_hub_connected", hub="hub-a") == 0
    assert sample(text, "hubsched_hub_connections", hub="hub-a") == 0
    lost = sample(text, "hubsched_hub_call_errors_total", hub="hub-a", kind="connection")
    assert lost + sample(text, "hubsched_hub_call_duration_seconds_count", hub="hub-a") == 7  # the 7th: lost or answered
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.mark.django_db(transaction=True)
def test_a_process_that_stopped_reporting_keeps_its_counters_but_not_its_gauges_and_goes_after_the_retention(settings):
    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect", api_key=KEY)
    latency = Histogram()
    latency.observe(0.02, n=4)
    stats = {"connected": True, "in_flight": 3, "latency": latency.snapshot(), "errors": {"timeout": 2}, "connects": 1}
    settings.HUBSCHED_METRICS_REPORT_S = 15.0  # gauges read rows reported within 45 s
    old = timezone.now() - timedelta(seconds=10 * settings.HUBSCHED_METRICS_REPORT_S)
    ProcessReport.objects.create(host="gone", pid=1, program="worker", data={"hubs": {str(hub.pk): stats}},
                                 started_at=old, reported_at=old)
    text = scrape()
    assert sample(text, "hubsched_hub_call_duration_seconds_count", hub="hub-a") == 4
    assert sample(text, "hubsched_hub_call_errors_total", hub="hub-a", kind="timeout") == 2
    assert "hubsched_hub_connected{" not in text and "hubsched_hub_calls_in_flight{" not in text
    assert sample(text, "hubsched_processes_reporting", program="worker") == 0
    settings.HUBSCHED_METRICS_REPORT_RETAIN_S = 60
    ProcessReport.objects.filter(host="gone").update(reported_at=timezone.now() - timedelta(seconds=61))
    assert reports.Reporter().report_once()  # any process's report deletes the rows nobody reported for that long
    assert not ProcessReport.objects.filter(host="gone").exists()


class FakePublisher:
    """The broker edge of the real Scheduler._publish: records what is sent."""

    def __init__(self):
        self.sent = []

    def send(self, hub_id, ticks, limit, eta, fence):
        self.sent.append((hub_id, ticks))

    def batch(self):
        return nullcontext()


@pytest.mark.django_db
def test_the_beats_dispatch_lag_is_zero_for_ticks_sent_ahead_and_the_delay_for_a_late_one():
    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect", max_in_flight=4)
    Group.objects.create(hub=hub, name="a", period=1)
    Group.objects.create(hub=hub, name="b", period=1)
    clock = FakeClock(T0 + 0.2)
    scheduler = Scheduler(app, clock=clock, max_interval=5)
    scheduler.publisher = FakePublisher()
    scheduler._batch = nullcontext
    try:
        run_until(scheduler, T0 + 1)  # the tick of T0 + 1 goes out ahead, with its ETA
        clock.set(T0 + 2.5)  # the beat was held up: the tick of T0 + 2 goes out 0.5 s late
        scheduler.tick()
    finally:
        scheduler.subscriptions.stop()
    assert [ticks[0][0] for _, ticks in scheduler.publisher.sent] == [T0 + 1, T0 + 2]
    snapshot = scheduler.metrics_snapshot()["dispatch_lag"][str(hub.pk)]
    (buckets, total) = add_snapshots([snapshot])
    assert buckets[-1] == ("+Inf", 4)  # two groups, two ticks: one observation per group tick
    assert dict(buckets)["0.001"] == 2 and total == pytest.approx(2 * 0.5)
    ProcessReport.objects.create(host="beat-host", pid=2, program="beat", data={"beat": scheduler.metrics_snapshot()},
                                 started_at=timezone.now(), reported_at=timezone.now())
    text = scrape()
    assert sample(text, "hubsched_beat_dispatch_lag_seconds_count", hub="hub-a") == 4
    assert sample(text, "hubsched_beat_dispatch_lag_seconds_bucket", hub="hub-a", le="0.25") == 2
    assert sample(text, "hubsched_beat_dispatch_lag_seconds_sum", hub="hub-a") == pytest.approx(1.0)
    assert sample(text, "hubsched_processes_reporting", program="beat") == 1


@pytest.mark.django_db(transaction=True)
def test_a_real_celery_worker_reports_its_process_from_start_to_shutdown(settings):
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    settings.HUBSCHED_METRICS_REPORT_S = 0.2
    worker_app = Celery("metrics-worker-test", broker="memory://", set_as_current=False)
    worker_app.conf.update(task_ignore_result=True, result_backend=None, worker_hijack_root_logger=False)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    ProcessReport.objects.filter(**me).delete()
    with start_worker(worker_app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as worker:  # worker_init
        wait_for(lambda: ProcessReport.objects.filter(**me).exists())
        first = ProcessReport.objects.get(**me)
        assert first.program == "worker" and "hubs" in first.data
        wait_for(lambda: ProcessReport.objects.get(**me).reported_at > first.reported_at)  # again every interval
        before = ProcessReport.objects.get(**me).reported_at
        worker.stop()  # Celery's warm shutdown, what SIGTERM runs: worker_shutdown
        last = ProcessReport.objects.get(**me).reported_at
        assert last > before  # the last report, written at shutdown
    time.sleep(0.5)
    assert ProcessReport.objects.get(**me).reported_at == last  # and stopped

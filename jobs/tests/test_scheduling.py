"""Jobs on the beat scheduler (jobs/scheduling.py): ticks sent beside the groups', on the jobs queue, counted."""

from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import datetime, timezone

import pytest
from celery import Celery

from groups.models import Group, GroupStats
from groups.scheduler.beat import Scheduler
from groups.scheduler.clock import FakeClock
from groups.scheduler.publish import BatchPublisher
from hubs.models import Hub, Project
from jobs.models import Job, JobRun, JobStats
from jobs.scheduling import job_spec_id, job_specs
from jobs.tasks import TICK_TASK

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


class CapturingScheduler(Scheduler):
    """The real Scheduler reading real rows; only the broker (the edge) is replaced: it keeps what would be sent."""

    def __init__(self, *args, **kwargs):
        self.sent: list[tuple[int, list, float | None]] = []
        super().__init__(*args, **kwargs)

    def _publish(self, hub_id, ticks, limit, eta):
        self.sent.append((hub_id, ticks, eta))

    def _batch(self):
        return nullcontext()


@pytest.fixture
def project():
    return Project.objects.create(name="plant")


def run_beat(scheduler, until: float) -> None:
    try:
        while scheduler.clock.now() < until:
            scheduler.tick()
    finally:
        scheduler.subscriptions.stop()


def test_a_job_ticks_on_the_groups_grid_as_a_message_of_its_own(project):
    from hubsched.celery import app

    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    group = Group.objects.create(hub=hub, name="pumps", period=1)
    job = Job.objects.create(project=project, name="export", period=1, kind="http", url="http://127.0.0.1:9/x")
    Job.objects.create(project=project, name="off", period=1, kind="http", url="http://127.0.0.1:9/x", enabled=False)
    scheduler = CapturingScheduler(app, clock=FakeClock(T0 + 0.2), max_interval=5, lead=0.0)
    run_beat(scheduler, T0 + 3.1)
    jobs = [(ticks, eta) for hub_id, ticks, eta in scheduler.sent if hub_id < 0]
    groups = [ticks for hub_id, ticks, eta in scheduler.sent if hub_id == hub.pk]
    assert {hub_id for hub_id, _, _ in scheduler.sent} == {hub.pk, job_spec_id(job.pk)}  # the disabled job sends nothing
    assert [ticks[0][0] for ticks, _ in jobs] == [T0 + 1, T0 + 2, T0 + 3]  # the same instants as the group's
    assert [ticks[0][0] for ticks in groups] == [T0 + 1, T0 + 2, T0 + 3]
    assert all(ticks[0][1] == 1.0 and ticks[0][3] == [job_spec_id(job.pk)] for ticks, _ in jobs)  # grace: on time
    scheduler.flush()
    assert JobStats.objects.get(job=job).dispatched == 3
    assert GroupStats.objects.get(group=group).dispatched == 3
    assert not GroupStats.objects.filter(group_id__lt=0).exists()


def test_a_job_changed_or_deleted_is_followed_without_touching_the_groups(project):
    from hubsched.celery import app

    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    Group.objects.create(hub=hub, name="pumps", period=1)
    job = Job.objects.create(project=project, name="export", period=1, kind="http", url="http://127.0.0.1:9/x")
    scheduler = CapturingScheduler(app, clock=FakeClock(T0 + 0.2), max_interval=5, lead=0.0)
    try:
        scheduler.setup_schedule()
        assert scheduler.engine.jobs == 1 and len(scheduler.engine.specs) == 2
        job.misfire, job.misfire_grace = "run_late", 30.0
        job.save()
        scheduler.source.poll()
        scheduler.jobs.poll()
        assert scheduler.engine.specs[job_spec_id(job.pk)].expires == 30.0
        job.delete()
        scheduler.source.poll()  # the groups' deletion check must not take the job for a deleted group
        assert len(scheduler.engine.specs) == 2
        scheduler.jobs.poll()
        assert scheduler.engine.jobs == 0 and len(scheduler.engine.specs) == 1
    finally:
        scheduler.subscriptions.stop()


def test_a_once_job_that_ran_is_not_scheduled_again(project):
    run_at = datetime(2026, 6, 1, 12, 0, 5, tzinfo=timezone.utc)
    job = Job.objects.create(project=project, name="once", trigger="once", run_at=run_at, kind="http",
                             url="http://127.0.0.1:9/x")
    assert job_specs()[0].active
    JobStats.objects.create(job=job, last_run_at=run_at)
    assert not job_specs()[0].active


def test_missed_gap_ticks_of_a_job_become_missed_runs_and_the_groups_stay_theirs(project, monkeypatch):
    from hubsched.celery import app

    logged = []  # the groups' untaken ticks go to the durable log (its run recorder writes GroupRuns later)
    monkeypatch.setattr("groups.services.ticks_untaken_log", lambda *, untaken: logged.extend(untaken))

    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    group = Group.objects.create(hub=hub, name="pumps", period=1)
    job = Job.objects.create(project=project, name="export", period=1, kind="http", url="http://127.0.0.1:9/x")
    scheduler = CapturingScheduler(app, clock=FakeClock(T0), max_interval=5)
    try:
        scheduler._untaken = [(job_spec_id(job.pk), T0 + 1, "missed"), (group.pk, T0 + 1, "missed")]
        scheduler.flush()
    finally:
        scheduler.subscriptions.stop()
    run = JobRun.objects.get(job=job)
    assert run.status == "missed" and run.scheduled_for.timestamp() == T0 + 1 and "no beat" in run.error
    assert logged == [(group.pk, T0 + 1, "missed")]


def test_the_publisher_sends_a_jobs_ticks_as_job_tick_run_on_the_jobs_queue():
    app = Celery("jobs-route-test", broker="memory://", set_as_current=False)
    app.conf.update(task_routes={"jobs.tasks.*": {"queue": "jobs"}}, task_serializer="json", accept_content=["json"])
    app.loader.import_module("jobs.tasks")
    ticks = [[T0 + 1, 1.0, 3, [-7]]]
    with app.connection() as conn:
        with app.producer_or_acquire() as producer:
            publisher = BatchPublisher(app, lambda: producer, spec_of=lambda sid: None)
            publisher.send_job(7, ticks, T0 + 1, [4, 2])
        queue = conn.SimpleQueue("jobs")
        try:
            message = queue.get(timeout=2)
        finally:
            queue.close()
    assert message.headers["task"] == TICK_TASK
    assert message.headers["eta"].startswith("2026-06-01T12:00:01")
    assert message.headers["argsrepr"] == "job #7 (#7): tick 2026-06-01T12:00:01Z"
    args, _kwargs, _embed = message.decode()
    assert args == [7, ticks, [4, 2]]


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_on_the_jobs_queue_runs_what_the_beat_publishes(tmp_path, settings):
    """The beat's message (BatchPublisher.send_job), a real Celery worker consuming only the jobs queue, a real
    command: the run is recorded ok."""
    from celery.contrib.testing.worker import start_worker

    settings.HUBSCHED_JOBS_DIR = tmp_path
    folders = {sub: tmp_path / sub for sub in ("in", "control")}
    for folder in folders.values():
        folder.mkdir()
    app = Celery("jobs-worker-test", broker="filesystem://", set_as_current=False)
    app.conf.update(
        broker_transport="hubsched.broker_files:Transport",
        broker_transport_options={"data_folder_in": str(folders["in"]), "data_folder_out": str(folders["in"]),
                                  "control_folder": str(folders["control"]), "store_processed": False,
                                  "polling_interval": 0.05},
        task_routes={"jobs.tasks.*": {"queue": "jobs"}}, task_ignore_result=True, result_backend=None,
        task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False,
    )
    app.loader.import_module("jobs.tasks")
    project = Project.objects.create(name="plant")
    job = Job.objects.create(project=project, name="export", kind="shell", argv=["bash", "-c", "echo ran > out.txt"])
    with start_worker(app, pool="solo", queues=["jobs"], perform_ping_check=False, shutdown_timeout=10):
        with app.producer_or_acquire() as producer:
            BatchPublisher(app, lambda: producer).send_job(job.pk, [[time.time(), 5.0, 0, [job_spec_id(job.pk)]]])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not JobRun.objects.filter(job=job, status="ok").exists():
            time.sleep(0.1)
    run = JobRun.objects.get(job=job)
    assert run.status == "ok" and (tmp_path / "out.txt").read_text() == "ran\n"

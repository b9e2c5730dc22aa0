"""What Flower shows of a batch (docs/flower.md): readable arguments from the beat, the outcome as the result."""

from __future__ import annotations

import ast
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timezone

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from groups.models import Group, GroupKey, GroupRun
from groups.scheduler.beat import Scheduler
from groups.scheduler.clock import FakeClock
from groups.scheduler.engine import GroupSpec
from groups.scheduler.publish import BatchPublisher, batch_argsrepr
from groups.tasks import BATCH_TASK
from hubs.models import Hub

from .conftest import HUB_KEY

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def specs(*names, hub_name="hub-a"):
    return {n: GroupSpec(id=n, hub_id=3, trigger="interval", name=name, hub_name=hub_name)
            for n, name in enumerate(names, start=1)}


def test_a_batch_names_its_hub_and_its_first_three_groups_and_counts_the_others():
    known = specs("line1-pumps", "burner-stage", "mixer", "boiler", "dryer")
    assert batch_argsrepr(3, [[T0, 1.0, 0, [1, 2, 3, 4, 5]]], known.get) == (
        "hub hub-a (#3): 5 groups line1-pumps, burner-stage, mixer and 2 more; tick 2026-06-01T12:00:00Z")
    assert batch_argsrepr(3, [[T0 + 0.25, 1.0, 0, [2]]], known.get) == (
        "hub hub-a (#3): 1 group burner-stage; tick 2026-06-01T12:00:00.250Z")


def test_a_batch_of_several_ticks_gives_their_span_and_names_a_group_once():
    known = specs("a", "b")
    assert batch_argsrepr(3, [[T0 + 2, 1.0, 0, [1]], [T0 + 1, 1.0, 0, [1, 2]]], known.get) == (
        "hub hub-a (#3): 3 groups a, b and 1 more; 2 ticks 2026-06-01T12:00:01Z to 2026-06-01T12:00:02Z")


def test_a_group_the_beat_does_not_know_is_shown_by_its_id():
    assert batch_argsrepr(3, [[T0, 1.0, 0, [7, 1]]], specs("a").get) == (
        "hub hub-a (#3): 2 groups #7, a; tick 2026-06-01T12:00:00Z")
    assert batch_argsrepr(3, [[T0, 1.0, 0, [7]]]) == "hub #3: 1 group #7; tick 2026-06-01T12:00:00Z"


class ArgsreprScheduler(Scheduler):
    """The real Scheduler, reading real groups; only the broker (the edge) is replaced: it keeps each argsrepr."""

    def __init__(self, *args, **kwargs):
        self.argsreprs: list[str] = []
        super().__init__(*args, **kwargs)

    def _publish(self, hub_id, ticks, limit, eta):
        self.argsreprs.append(batch_argsrepr(hub_id, ticks, self.publisher.spec_of))

    def _batch(self):
        return nullcontext()


def test_the_beat_names_the_hub_and_groups_of_each_batch_it_sends(project):
    from hubsched.celery import app

    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    ids = [Group.objects.create(hub=hub, name=f"line{n}", period=1).pk for n in range(1, 6)]
    scheduler = ArgsreprScheduler(app, clock=FakeClock(T0 + 0.2), max_interval=5)
    try:
        while scheduler.clock.now() < T0 + 1:
            scheduler.tick()
        scheduler.tick()
    finally:
        scheduler.subscriptions.stop()
    first = sorted(ids)[:3]
    names = ", ".join(Group.objects.get(pk=pk).name for pk in first)
    assert scheduler.argsreprs == [f"hub hub-a (#{hub.pk}): 5 groups {names} and 2 more; tick 2026-06-01T12:00:01Z"]


@pytest.fixture
def events_app(tmp_path):
    """A Celery app of the test's own on the embedded broker (hubsched.broker_files) in ``tmp_path``, with events."""
    folders = {sub: tmp_path / sub for sub in ("in", "control")}
    for folder in folders.values():
        folder.mkdir()
    app = Celery("flower-test", broker="filesystem://", set_as_current=False)
    app.conf.update(
        broker_transport="hubsched.broker_files:Transport",
        broker_transport_options={"data_folder_in": str(folders["in"]), "data_folder_out": str(folders["in"]),
                                  "control_folder": str(folders["control"]), "store_processed": False,
                                  "polling_interval": 0.05},
        task_ignore_result=True, result_backend=None, worker_send_task_events=True, task_send_sent_event=True,
        task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False,
    )
    app.loader.import_module("groups.tasks")
    return app


class Events:
    """The events Flower would capture (``celery.events.EventReceiver``, as ``flower.events`` does), in a thread."""

    def __init__(self, app):
        self.app, self.seen, self.ready = app, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        with self.app.connection() as conn:
            self.receiver = receiver = self.app.events.Receiver(conn, handlers={"*": self.seen.append})
            consume_ready = receiver.on_consume_ready

            def ready(*args, **kwargs):  # the event queue is bound: what is sent from now on reaches it
                consume_ready(*args, **kwargs)
                self.ready.set()

            receiver.on_consume_ready = ready
            receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, task_id: str, kind: str) -> dict | None:
        return next((e for e in list(self.seen) if e.get("uuid") == task_id and e["type"] == kind), None)

    def close(self):
        self.receiver.should_stop = True
        self.thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_a_real_batch_run_shows_its_arguments_and_its_outcome_in_the_events_flower_reads(
        events_app, project, reference_hub, make_hub, forward):
    hub = make_hub(reference_hub.url, key=HUB_KEY)
    groups = [Group.objects.create(hub=hub, name=f"pumps-{n}", period=60) for n in range(4)]
    for group in groups:
        for position, key in enumerate(("flow", "pressure")):
            GroupKey.objects.create(group=group, entity="plant/line1/pump1", key=key, position=position)
    from groups.scheduler.source import group_specs

    known = {spec.id: spec for spec in group_specs()}
    events = Events(events_app)
    try:
        with start_worker(events_app, pool="solo", perform_ping_check=False, shutdown_timeout=20):
            with events_app.connection_for_write() as conn:
                producer = events_app.amqp.Producer(conn, auto_declare=True)
                publisher = BatchPublisher(events_app, lambda: producer, spec_of=known.get)
                tick = time.time()
                task_id = publisher.send(hub.pk, [[tick, 30.0, 0, sorted(g.pk for g in groups)]], 4)
            deadline = time.monotonic() + 60
            while events.of(task_id, "task-succeeded") is None and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        events.close()
    received, succeeded = events.of(task_id, "task-received"), events.of(task_id, "task-succeeded")
    assert received is not None and succeeded is not None, [e["type"] for e in events.seen]
    assert received["args"] == batch_argsrepr(hub.pk, [[tick, 30.0, 0, sorted(g.pk for g in groups)]], known.get)
    assert received["args"].startswith(f"hub hub-a (#{hub.pk}): 4 groups pumps-0, pumps-1, pumps-2 and 1 more; tick ")
    outcome = ast.literal_eval(succeeded["result"])  # Flower's "Result": the repr of the return value
    forward()  # the run recorder stores the runs from the log: the outcome agrees with them
    runs = list(GroupRun.objects.filter(group__in=groups))
    assert outcome == {"ran": 4, "ok": sum(r.status == "ok" for r in runs),
                       "failed": sum(r.status == "failed" for r in runs), "killed": 0, "skipped": 0, "missed": 0,
                       "values": sum(r.values_count for r in runs)}
    assert len(runs) == 4 and outcome["ok"] == 4 and outcome["values"] == 8  # two keys a group

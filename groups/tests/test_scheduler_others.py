"""The beat for PeriodicTasks that are not hubsched groups leaves the groups' mirror entries alone."""

from __future__ import annotations

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from groups.models import Group
from groups.scheduler.others import OtherTasksScheduler
from hubsched.celery import app
from hubs.models import Hub, Project


@pytest.mark.django_db
def test_it_schedules_other_periodic_tasks_but_not_the_mirrors_of_groups():
    hub = Hub.objects.create(project=Project.objects.create(name="p"), name="h", url="ws://127.0.0.1:1/connect")
    group = Group.objects.create(hub=hub, name="g", period=1.0)
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="nightly report", task="reports.nightly", interval=every_minute)
    scheduler = OtherTasksScheduler(app=app, lazy=True)
    names = {task.name for task in scheduler.enabled_models()}
    assert "nightly report" in names
    assert Group.objects.get(pk=group.pk).periodic_task.name not in names

"""Fixtures of the alarms' tests: a project with one hub and two groups, and a fresh evaluation cache."""

from __future__ import annotations

import pytest

from groups.models import Group
from hubs.models import Hub, Project


@pytest.fixture
def project(db):
    return Project.objects.create(name="plant")


@pytest.fixture
def hub(project):
    return Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:8765/connect", api_key="k")


@pytest.fixture
def group(hub):
    return Group.objects.create(hub=hub, name="pumps", period=1.0)


@pytest.fixture
def other_group(hub):
    return Group.objects.create(hub=hub, name="boiler", period=1.0)


@pytest.fixture(autouse=True)
def _fresh_cache():
    from alarms.evaluation import rules_cache_clear

    rules_cache_clear()
    yield
    rules_cache_clear()

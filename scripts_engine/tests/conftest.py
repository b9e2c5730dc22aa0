"""Fixtures for scripts_engine tests: a project, a staff client, a real reference hub."""

from __future__ import annotations

import pytest

from hubs.models import Project


@pytest.fixture
def project(db):
    return Project.objects.create(name="plant")


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user(username="integrator", password="pw-123456", is_staff=True)
    client.force_login(user)
    return client


@pytest.fixture
def reference_hub():
    from hubs.hubsim.server import serve_in_thread

    with serve_in_thread(key="test-key", name="hub-a") as hub:
        yield hub

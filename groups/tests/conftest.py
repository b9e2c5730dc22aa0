"""Fixtures for group tests: a real reference hub, a project pointing at it, a sink in a temporary file."""

from __future__ import annotations

import pytest

from hubs.hubsim import faults
from hubs.hubsim.server import serve_in_thread
from hubs.hubsim.tree import demo_tree
from hubs.models import Hub, Project
from hubs.project_document.importer import entity_tree_write
from scripts_engine.models import Sink
from scripts_engine.sinks import sinks_dispose

HUB_KEY = "test-key"


@pytest.fixture
def reference_hub():
    with serve_in_thread(key=HUB_KEY, name="hub-a") as hub:
        yield hub


@pytest.fixture
def project(db, tmp_path):
    project = Project.objects.create(name="plant")
    Sink.objects.create(project=project, name="main", url=f"sqlite:///{tmp_path / 'values.sqlite3'}")
    yield project
    sinks_dispose()


@pytest.fixture
def make_hub(project):
    def make(url: str, *, name: str = "hub-a", key: str = HUB_KEY, timeout: float = 2.0) -> Hub:
        hub = Hub.objects.create(project=project, name=name, url=url, api_key=key, timeout=timeout)
        entity_tree_write(hub=hub, tree=demo_tree(name))
        return hub

    return make


@pytest.fixture
def faulty_hub():
    """``faulty_hub(mode, **options)`` runs a misbehaving hub until the test ends; returns its handle."""
    with_stack = []

    def start(mode: str, **options):
        context = faults.serve_in_thread(mode, key=HUB_KEY, **options)
        with_stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(with_stack):
        context.__exit__(None, None, None)

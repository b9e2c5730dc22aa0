"""Fixtures of the console's tests: a real reference hub (hubs/hubsim) that takes ``HUB_KEY``."""

from __future__ import annotations

import pytest

from hubs.hubsim.server import serve_in_thread

HUB_KEY = "console-test-key-8f3a"


@pytest.fixture
def reference_hub():
    with serve_in_thread(key=HUB_KEY, name="hub-a") as hub:
        yield hub

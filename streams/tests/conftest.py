"""Fixtures of the log's tests: one writer per sink (one consumer named ``sink:<id>``) unless a test asks for lanes."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_writer_per_sink(settings):
    settings.HUBSCHED_SINK_WRITERS = 1

"""The scheduler benchmark's smoke run (CI): tiny numbers, the JSON shape, hubsched dispatching. No timings asserted."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from hubsched.testing import redis_url

pytestmark = pytest.mark.redis

KEYS = {"due_per_s", "dispatched_per_s", "dispatched_ratio", "lag_p50_ms", "lag_p99_ms", "beat_cpu_percent"}


def test_the_scheduler_benchmark_runs_both_paths_and_prints_one_json_object():
    out = io.StringIO()
    call_command("bench", "scheduler", "--groups", "50", "--hubs", "5", "--period", "1", "--seconds", "3",
                 "--broker", redis_url(), "--json", stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue())
    assert KEYS <= result["stock"].keys() and KEYS <= result["hubsched"].keys()
    assert result["hubsched"]["due_per_s"] == 50.0
    assert result["hubsched"]["dispatched_per_s"] > 0
    assert "ratio" in result

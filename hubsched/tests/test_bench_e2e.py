"""The end-to-end benchmark's smoke run (CI): tiny numbers, the JSON shape, hubsched storing values once through
its log and forwarder. No timings asserted."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from hubsched.testing import redis_url

pytestmark = pytest.mark.redis

KEYS = {"offered_values_per_s", "stored_values_per_s", "lost", "duplicated", "latency_p50_ms", "latency_p99_ms",
        "cpu_percent"}
KINDS = {"hubs", "beat", "worker", "database"}


def test_the_e2e_benchmark_runs_both_paths_and_counts_what_reached_the_sink():
    out = io.StringIO()
    call_command("bench", "e2e", "--groups", "4", "--keys", "5", "--hubs", "2", "--seconds", "3", "--warmup", "1",
                 "--drain", "2", "--broker", redis_url(), "--json", stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue())
    for path in ("stock", "hubsched"):
        assert KEYS <= result[path].keys()
        assert KINDS <= result[path]["cpu_percent"].keys()
        assert result[path]["offered_values_per_s"] == 20.0
    assert "forwarder" in result["hubsched"]["cpu_percent"]  # the forwarder process ran: it stores hubsched's values
    assert result["hubsched"]["stored_values_per_s"] > 0
    assert result["hubsched"]["duplicated"] == 0
    assert result["params"]["log"].startswith("sqlite:///")  # the embedded log, in the benchmark's temporary directory
    assert "ratio" in result

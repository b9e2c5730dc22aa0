"""The pipelining benchmark's smoke run: a reference hub behind the delay proxy, the JSON shape, the limits it used.

It asserts what the client did (its in-flight limit, the most calls it had in flight, no errors), never a time.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.timeout(120)

CASE_KEYS = {"rtt_ms", "hub_max_in_flight", "client_max_in_flight", "in_flight_peak", "batch_p50_ms", "batch_p90_ms",
             "batch_mean_ms", "round_trips_p50", "errors"}


def test_bench_pipeline_runs_each_case_with_the_hubs_limit():
    out = io.StringIO()
    call_command("bench", "pipeline", "--json", "--rtt-ms", "0,20", "--groups", "12", "--keys", "3", "--batches", "2",
                 "--warmup", "1", "--hub-max-in-flight", "4,64", stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue())
    assert (result["groups"], result["keys"], result["batches"]) == (12, 3, 2)
    cases = result["cases"]
    assert [(c["rtt_ms"], c["hub_max_in_flight"]) for c in cases] == [(0, 4), (0, 64), (20, 4), (20, 64)]
    for case in cases:
        assert set(case) == CASE_KEYS
        assert case["errors"] == 0
        assert case["client_max_in_flight"] == case["hub_max_in_flight"]  # the hub's own limit, under the ceiling
        assert case["in_flight_peak"] == min(case["hub_max_in_flight"], 12)  # filled, never passed
        assert (case["round_trips_p50"] is None) == (case["rtt_ms"] == 0)


def test_bench_pipeline_text_report_has_a_row_per_case():
    from hubsched.bench import pipeline

    result = {"groups": 1, "keys": 1, "batches": 1, "setting_max_in_flight": 1024, "cases": [
        {"rtt_ms": 50.0, "hub_max_in_flight": 32, "client_max_in_flight": 32, "in_flight_peak": 32, "batch_p50_ms": 220.0,
         "batch_p90_ms": 230.0, "batch_mean_ms": 225.0, "round_trips_p50": 4.4, "errors": 0}]}
    lines = pipeline.report(result).splitlines()
    assert len(lines) == 3 and lines[2].split()[:4] == ["50", "32", "32", "32"] and "4.40" in lines[2]

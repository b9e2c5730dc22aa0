"""The py-spy (speedscope) summary that `bench e2e --py-spy` adds to its output."""

from __future__ import annotations

import json

import pytest

from hubsched.bench.profile import speedscope_summary


def test_self_and_inclusive_shares_count_each_function_once_per_sample(tmp_path):
    frames = [{"name": "run", "file": "/a/celery/worker.py", "line": 10},
              {"name": "encode", "file": "/a/sinks/tall.py", "line": 93},
              {"name": "read", "file": "/a/hubs/client.py", "line": 5}]
    document = {
        "shared": {"frames": frames},
        "profiles": [
            # thread 1: run>encode twice (weight 1 each), run>read once (weight 2)
            {"type": "sampled", "samples": [[0, 1], [0, 1], [0, 2]], "weights": [1, 1, 2]},
            # thread 2: recursion run>run>encode counts run once in inclusive; an empty stack is ignored
            {"type": "sampled", "samples": [[0, 0, 1], []], "weights": [4, 9]},
            {"type": "evented", "events": []},
        ],
    }
    path = tmp_path / "worker.speedscope.json"
    path.write_text(json.dumps(document))
    summary = speedscope_summary(path, top=2)
    assert summary["samples"] == 8
    assert summary["self"] == [{"function": "encode (sinks/tall.py:93)", "percent": 75.0},
                               {"function": "read (hubs/client.py:5)", "percent": 25.0}]
    assert summary["inclusive"] == [{"function": "run (celery/worker.py:10)", "percent": 100.0},
                                    {"function": "encode (sinks/tall.py:93)", "percent": 75.0}]


def test_a_file_that_is_not_speedscope_is_refused_with_its_name(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"traceEvents": []}))
    with pytest.raises(ValueError, match="other.json: not a speedscope profile"):
        speedscope_summary(path)

"""The py-spy (speedscope) summary that `bench e2e --py-spy` adds to its output."""

from __future__ import annotations

import json

import pytest

from hubsched.bench.profile import speedscope_summary


def test_shares_per_thread_kind_own_function_and_function_on_the_stack(tmp_path):
    frames = [{"name": 'process 1:"celery worker"', "file": "", "line": 0},
              {"name": "run", "file": "/a/celery/worker.py", "line": 10},
              {"name": "encode", "file": "/a/sinks/tall.py", "line": 93},
              {"name": "encode", "file": "/a/sinks/tall.py", "line": 97},  # another line of the same function
              {"name": "read", "file": "/a/hubs/client.py", "line": 5}]
    document = {
        "shared": {"frames": frames},
        "profiles": [
            {"type": "sampled", "unit": "seconds", "name": 'Process 1 Thread 2 "sink-main-0"',
             "samples": [[0, 1, 2], [0, 1, 3]], "weights": [0.01, 0.01]},
            {"type": "sampled", "unit": "seconds", "name": 'Process 1 Thread 3 "sink-main-1"',
             "samples": [[0, 1, 1, 2]], "weights": [0.04]},  # recursion: run counts once
            {"type": "sampled", "unit": "seconds", "name": 'Process 1 Thread 4 "hub-reader ws://127.0.0.1:1/connect"',
             "samples": [[0, 1, 4], [0]], "weights": [0.02, 0.5]},  # a stack of the process frame only is left out
            {"type": "evented", "events": []},
        ],
    }
    path = tmp_path / "worker.speedscope.json"
    path.write_text(json.dumps(document))
    summary = speedscope_summary(path, top=2)
    assert (summary["seconds"], summary["samples"]) == (0.08, 4)
    assert summary["threads"] == [{"thread": "sink-main", "percent": 75.0}, {"thread": "hub-reader", "percent": 25.0}]
    assert summary["self"] == [{"function": "encode (sinks/tall.py)", "percent": 75.0},
                               {"function": "read (hubs/client.py)", "percent": 25.0}]
    assert summary["inclusive"] == [{"function": "run (celery/worker.py)", "percent": 100.0},
                                    {"function": "encode (sinks/tall.py)", "percent": 75.0}]


def test_a_file_that_is_not_speedscope_is_refused_with_its_name(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"traceEvents": []}))
    with pytest.raises(ValueError, match="other.json: not a speedscope profile"):
        speedscope_summary(path)

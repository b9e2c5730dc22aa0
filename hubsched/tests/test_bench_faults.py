"""The fault benchmark's smoke run: a tiny sink outage on servers it runs itself, the JSON shape, nothing lost or doubled.

It needs Redis, RabbitMQ Streams (with rabbitmqctl on this machine, or ``TEST_RABBITMQ_STREAM_URL`` naming a
virtual host of the tests' own) and the PostgreSQL server programs; it skips where one is absent (fails under
CI=true). No timings asserted.
"""

from __future__ import annotations

import io
import json
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command

from hubsched.bench.servers import rabbitmqctl_program
from hubsched.testing import in_ci, postgres_binary, rabbitmq_stream_url, redis_url

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq, pytest.mark.timeout(420)]

SCENARIO_KEYS = {"offered_values", "stored", "lost", "duplicated", "missed_ticks", "unaccounted_ticks",
                 "in_flight_at_kill", "catch_up_s", "latency_p99_ms", "ticks", "phases"}


def _log_url() -> str:
    url = rabbitmq_stream_url()
    if urlsplit(url).path in ("", "/") and rabbitmqctl_program() is None:
        reason = "rabbitmqctl is not installed and TEST_RABBITMQ_STREAM_URL names no virtual host of the tests' own"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return url


def test_a_short_sink_outage_loses_nothing_doubles_nothing_and_leaves_no_tick_unaccounted():
    postgres_binary("initdb")
    postgres_binary("pg_ctl")
    out = io.StringIO()
    call_command("bench", "faults", "--scenarios", "sink_outage", "--groups", "5", "--keys", "5", "--hubs", "1",
                 "--seconds", "3", "--settle", "2", "--outage-seconds", "5", "--warmup", "1",
                 "--drain-timeout", "60", "--log", _log_url(), "--broker", redis_url(), "--json",
                 stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue())
    assert set(result) == {"params", "scenarios"}
    assert list(result["scenarios"]) == ["sink_outage"]
    outage = result["scenarios"]["sink_outage"]
    assert SCENARIO_KEYS <= outage.keys()
    assert outage["offered_values"] == outage["ticks"]["due"] * 5 > 0
    assert outage["stored"] > 0
    assert outage["catch_up_s"] is not None  # the backlog was stored after the restart
    assert outage["lost"] == 0
    assert outage["duplicated"] == 0
    assert outage["unaccounted_ticks"] == 0

"""The log's accessor and its Start parsing (streams/log.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.test import override_settings

from streams.log import LogError, Start, _log, log, start_parse


def test_log_is_one_per_process_and_made_anew_when_its_settings_change(tmp_path):
    with override_settings(HUBSCHED_LOG_URL=f"sqlite:///{tmp_path / 'a.sqlite3'}"):
        first = log()
        assert log() is first and first.path == tmp_path / "a.sqlite3"
        with override_settings(HUBSCHED_LOG_URL=f"sqlite:///{tmp_path / 'b.sqlite3'}"):
            assert log().path == tmp_path / "b.sqlite3"
    assert _log.peek() is None  # the override's end invalidated it too (none is made here: var/ stays untouched)


def test_it_refuses_a_log_url_of_another_scheme_without_showing_its_password():
    with override_settings(HUBSCHED_LOG_URL="kafka://user:s3cret@host:9092/"):
        with pytest.raises(LogError) as refused:
            log()
    assert refused.value.permanent and "s3cret" not in refused.value.message


@pytest.mark.parametrize("text, start", [
    ("first", Start.first()), ("last", Start.last()), ("next", Start.next()), ("offset:42", Start.at(42)),
    ("time:2026-12-01T20:00:00Z", Start.since(datetime(2026, 12, 1, 20, tzinfo=timezone.utc))),
])
def test_from_values_of_the_http_replay_parse(text, start):
    assert start_parse(text) == start


@pytest.mark.parametrize("text", ["", "offset:-1", "offset:x", "time:2026-12-01T20:00:00", "time:soon", "latest"])
def test_it_refuses_a_from_value_saying_what_it_expects(text):
    with pytest.raises(LogError, match="expected first, last, next"):
        start_parse(text)

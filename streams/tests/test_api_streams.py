"""GET /api/v1/streams/{name} (streams/api.py) over real HTTP (uvicorn in a thread): the replay with an API token,
its errors in the API's one shape, and /api/streams/<name> as its deprecated alias."""

from __future__ import annotations

import pytest

from api.services import api_token_create
from api.testing import user_with
from hubsched.roles import roles_sync
from streams.log import EXECUTIONS

from .test_http_replay import Stream, append, record, server, until, viewer  # noqa: F401 (fixtures)
from . import test_http_replay as replay

pytestmark = pytest.mark.timeout(60)


def v1(stream: str = EXECUTIONS, query: str = "") -> str:
    return f"/api/v1/streams/{stream}" + (f"?{query}" if query else "")


def bearer(role: str | None) -> dict[str, str]:
    roles_sync()  # a flush between transactional tests empties the groups: make them again
    _row, raw = api_token_create(user=user_with(role=role), name="test")
    return {"Authorization": f"Bearer {raw}"}


def error_of(stream: Stream, status: int, code: str) -> dict:
    assert stream.status == status
    assert stream.response.getheader("Content-Type").startswith("application/json")
    body = stream.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def test_a_token_of_a_viewer_replays_a_stream_as_events(server):
    offsets = append(*(record(i) for i in range(3)))
    with Stream(server, v1(query="from=first"), bearer("viewer")) as stream:
        assert stream.status == 200
        assert stream.response.getheader("Content-Type").startswith("text/event-stream")
        assert stream.response.getheader("Deprecation") is None
        events = stream.events(3)
    assert [int(e.id) for e in events] == offsets
    assert [e.text.encode() for e in events] == [record(i) for i in range(3)]


def test_a_session_replays_too_and_resumes_after_last_event_id(server, viewer):
    offsets = append(*(record(i) for i in range(4)))
    with Stream(server, v1(query="from=first"), {**viewer, "Last-Event-ID": str(offsets[1])}) as stream:
        assert [int(e.id) for e in stream.events(2)] == offsets[2:]


def test_the_old_path_streams_the_same_with_the_successor_named(server, viewer):
    offsets = append(record(0), record(1))
    with Stream(server, f"/api/streams/{EXECUTIONS}?from=first", viewer) as stream:
        assert stream.status == 200
        assert stream.response.getheader("Deprecation") == "true"
        assert stream.response.getheader("Link") == f'</api/v1/streams/{EXECUTIONS}>; rel="successor-version"'
        assert [int(e.id) for e in stream.events(2)] == offsets
    with Stream(server, "/api/streams/runs", viewer) as stream:
        assert "not replayable" in error_of(stream, 404, "not_found")["message"]
        assert stream.response.getheader("Deprecation") == "true"


def test_an_anonymous_caller_gets_401_before_any_stream_name_is_checked(server):
    for name in (EXECUTIONS, "runs"):
        with Stream(server, v1(name), {}) as stream:
            error_of(stream, 401, "not_authenticated")
    with Stream(server, v1(), {"Authorization": "Bearer hs_nothing_known"}) as stream:
        error_of(stream, 401, "not_authenticated")


def test_a_token_without_read_stream_gets_403_naming_it(server):
    with Stream(server, v1(), bearer(None)) as stream:
        error = error_of(stream, 403, "permission_denied")
    assert error["message"] == "permission required: streams.read_stream"
    assert not replay.views.replays_open()


def test_an_unknown_stream_is_a_404(server, viewer):
    with Stream(server, v1("runs"), viewer) as stream:
        assert error_of(stream, 404, "not_found")["message"] == "stream 'runs': not replayable (streams: executions)"


@pytest.mark.parametrize(("query", "headers", "where"), [
    ("from=yesterday", {}, "from"),
    ("consumer=.hidden", {}, "consumer"),
    ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    # past a signed 64-bit integer: refused here, not an overflow in the log's reader once the 200 is sent
    (f"from=offset:{2**63}", {}, "from"),
    ("", {"Last-Event-ID": str(2**63 - 1)}, "Last-Event-ID"),
])
def test_a_bad_parameter_is_a_422_at_its_name(server, viewer, query, headers, where):
    with Stream(server, v1(query=query), {**viewer, **headers}) as stream:
        error = error_of(stream, 422, "invalid")
    assert [d["path"] for d in error["details"]] == [where]
    assert not replay.views.replays_open()


def test_a_log_that_cannot_be_opened_is_a_503(server, viewer, settings, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log's folder should be")
    settings.HUBSCHED_LOG_URL = f"sqlite:///{blocked}/log.sqlite3"  # the log is made anew (streams/apps.py)
    with Stream(server, v1(query="from=first"), viewer) as stream:
        assert error_of(stream, 503, "unavailable")["message"].startswith("the log is not available")
    until(lambda: not replay.views.replays_open(), "nothing left open")

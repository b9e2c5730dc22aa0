"""The HTTP replay (streams/views.py) through a real HTTP client against uvicorn serving the ASGI app in a
thread of this process, on a log of the test's own (SQLite; one test on RabbitMQ Streams)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import urlencode

import pytest
import uvicorn
from django.conf import settings as django_settings
from django.test import Client

from hubsched.testing import rabbitmq_stream_url
from streams import views
from streams.log import EXECUTIONS, log

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0  # how long a test waits for the server to do what it must before failing


class Event:
    """One SSE block as a client parses it: ``id``, ``data`` (data lines joined with LF), ``comments``,
    ``retry``; ``lines`` as sent."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.data: list[str] = []
        self.comments: list[str] = []
        self.retry: str | None = None
        self.lines: list[str] = []

    @property
    def text(self) -> str | None:
        return "\n".join(self.data) if self.data else None


class Stream:
    """A GET of the replay read incrementally with http.client, one SSE block at a time."""

    def __init__(self, address: tuple[str, int], path: str, headers: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection(*address, timeout=WAIT_S)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def block(self) -> Event:
        """The next block (fields up to a blank line), per the SSE parsing rules this suite needs."""
        event = Event()
        while True:
            raw = self.response.readline()
            if not raw:
                raise EOFError("the server ended the stream")
            line = raw.decode("utf-8").rstrip("\n")
            if line == "":
                if event.lines:
                    return event
                continue
            event.lines.append(line)
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                event.comments.append(value)
            elif field == "id":
                event.id = value
            elif field == "data":
                event.data.append(value)
            elif field == "retry":
                event.retry = value

    def events(self, n: int) -> list[Event]:
        """The next ``n`` events that carry data (the ``retry:`` block and keep-alive comments skipped)."""
        out = []
        while len(out) < n:
            event = self.block()
            if event.data:
                out.append(event)
        return out

    def json(self):
        return json.loads(self.response.read())

    def close(self) -> None:
        self.response.close()
        self.conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def server(transactional_db, settings, tmp_path):
    """``(host, port)`` of uvicorn serving hubsched.asgi:application, on this test's SQLite log; users
    made by the test are visible to it (transactional_db: committed rows)."""
    settings.HUBSCHED_LOG_URL = f"sqlite:///{tmp_path}/log.sqlite3"
    from hubsched.asgi import application

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from here: no race with another process
    config = uvicorn.Config(application, lifespan="off", log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    until(lambda: server.started, "uvicorn started")
    yield sock.getsockname()
    server.should_exit = True
    thread.join(WAIT_S)
    sock.close()


def until(condition, what: str) -> None:
    """Wait for ``condition()`` to hold, failing after WAIT_S (the server works in another thread)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT_S} s for: {what}")
        time.sleep(0.01)


def login(user) -> dict[str, str]:
    """Headers carrying a session of ``user`` (made in the database the server reads)."""
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return {"Cookie": f"{name}={client.cookies[name].value}"}


@pytest.fixture
def viewer(transactional_db):
    """Session headers of a user holding the viewer role (which gives streams.read_stream)."""
    from django.contrib.auth.models import Group, User

    from hubsched.roles import VIEWER, roles_sync

    roles_sync()  # a flush between transactional tests empties the groups: make them again
    user = User.objects.create_user(f"viewer-{uuid.uuid4().hex[:8]}", password="x")
    user.groups.add(Group.objects.get(name=VIEWER))
    return login(user)


def path(stream: str = EXECUTIONS, **params: str) -> str:
    return f"/api/streams/{stream}" + (f"?{urlencode(params)}" if params else "")


def append(*bodies: bytes, stream: str = EXECUTIONS) -> list[int] | None:
    return log().append(stream, list(bodies))


def record(i: int) -> bytes:
    return b'{"v": 1, "n": %d}' % i


def test_it_replays_from_first_every_record_as_an_event_with_its_offset_as_id(server, viewer):
    offsets = append(*(record(i) for i in range(250)))  # more than a chunk (CHUNK_RECORDS)
    with Stream(server, path(**{"from": "first"}), viewer) as stream:
        assert stream.status == 200
        assert stream.response.getheader("Content-Type").startswith("text/event-stream")
        assert stream.block().retry == str(views.RETRY_MS)
        events = stream.events(250)
    assert [int(e.id) for e in events] == offsets
    assert [e.text.encode() for e in events] == [record(i) for i in range(250)]


def test_it_replays_from_an_offset(server, viewer):
    offsets = append(*(record(i) for i in range(10)))
    with Stream(server, path(**{"from": f"offset:{offsets[6]}"}), viewer) as stream:
        events = stream.events(4)
    assert [int(e.id) for e in events] == offsets[6:]
    assert events[0].text.encode() == record(6)


def test_it_replays_from_a_time_only_what_was_written_at_or_after_it(server, viewer):
    append(record(0), record(1))
    time.sleep(0.02)  # timestamps have millisecond resolution: keep the batches apart
    between = datetime.now(timezone.utc)
    time.sleep(0.02)
    later = append(record(2), record(3))
    with Stream(server, path(**{"from": f"time:{between.isoformat()}"}), viewer) as stream:
        events = stream.events(2)
    assert [int(e.id) for e in events] == later


def test_from_next_sends_only_what_is_appended_after_the_client_came(server, viewer):
    append(record(0))
    with Stream(server, path(), viewer) as stream:
        assert stream.block().retry is not None  # the reader is open once the response has started
        new = append(record(1))
        events = stream.events(1)
    assert [int(e.id) for e in events] == new


def test_a_client_reconnecting_with_last_event_id_resumes_after_it_whatever_from_says(server, viewer):
    offsets = append(*(record(i) for i in range(6)))
    with Stream(server, path(**{"from": "first"}), {**viewer, "Last-Event-ID": str(offsets[2])}) as stream:
        events = stream.events(3)
    assert [int(e.id) for e in events] == offsets[3:]


def test_a_named_consumer_that_was_away_gets_what_it_missed(server, viewer):
    first = append(record(0), record(1), record(2))
    with Stream(server, path(**{"from": "first", "consumer": "dashboard"}), viewer) as stream:
        assert [int(e.id) for e in stream.events(3)] == first
        until(lambda: log().consumer_offset(EXECUTIONS, "http.dashboard") == first[-1], "the offset stored")
    until(lambda: not views.replays_open(), "the replay closed")
    missed = append(record(3), record(4))
    with Stream(server, path(consumer="dashboard"), viewer) as stream:  # from defaults to next: the store wins
        events = stream.events(2)
    assert [int(e.id) for e in events] == missed
    assert log().consumer_offset(EXECUTIONS, "dashboard") is None  # never in hubsched's own consumers' names


def test_a_named_consumer_without_a_stored_offset_starts_at_from(server, viewer):
    offsets = append(record(0), record(1))
    with Stream(server, path(**{"from": f"offset:{offsets[1]}", "consumer": "new-one"}), viewer) as stream:
        events = stream.events(1)
    assert [int(e.id) for e in events] == offsets[1:]


def test_a_body_with_line_breaks_is_sent_as_several_data_lines(server, viewer):
    append(b'{"a":\n1,\r\n"b": 2}')
    with Stream(server, path(**{"from": "first"}), viewer) as stream:
        event = stream.events(1)[0]
    assert event.lines[1:] == ['data: {"a":', "data: 1,", 'data: "b": 2}']
    assert event.text == '{"a":\n1,\n"b": 2}'


def test_a_silent_stream_sends_keep_alive_comments(server, viewer, monkeypatch):
    monkeypatch.setattr(views, "KEEPALIVE_S", 0.2)
    with Stream(server, path(), viewer) as stream:
        stream.block()  # retry
        assert stream.block().comments == ["keep-alive"]


def test_a_client_that_goes_away_closes_the_reader_on_the_server(server, viewer):
    append(record(0))
    with Stream(server, path(**{"from": "first"}), viewer) as stream:
        stream.events(1)
        until(lambda: [r.position for r in views.replays_open()] == [0], "the replay wrote offset 0")
        opened = next(iter(views._open))
    # the client is gone (the connection closed)
    until(lambda: not views.replays_open(), "the replay closed after the client went away")
    assert opened._closed
    with pytest.raises(Exception, match="closed"):
        opened._reader.read(timeout=0)


def test_an_anonymous_caller_gets_401(server):
    with Stream(server, path(), {}) as stream:
        assert stream.status == 401
        assert stream.json()["error"]["code"] == "not_authenticated"


def test_staff_without_the_permission_gets_403(server):
    from django.contrib.auth.models import User

    staff = User.objects.create_user("staff", password="x", is_staff=True)
    with Stream(server, path(), login(staff)) as stream:
        assert stream.status == 403
        assert stream.json()["error"]["message"] == "permission required: streams.read_stream"


@pytest.mark.parametrize(("query", "said"), [
    ({"from": "yesterday"}, "from='yesterday': expected first, last, next, offset:N or time:"),
    ({"from": "offset:-1"}, "from='offset:-1': expected"),
    ({"from": "time:2026-12-02T00:00:00"}, "with a UTC offset"),
    ({"consumer": ".hidden"}, "consumer name '.hidden': expected"),
    ({"consumer": "x" * 196}, "at most 195 characters"),  # 201 with the http. prefix
])
def test_a_bad_parameter_gets_422_saying_what_was_expected(server, viewer, query, said):
    with Stream(server, path(**query), viewer) as stream:
        assert stream.status == 422
        error = stream.json()["error"]
    assert said in error["message"]
    assert [d["path"] for d in error["details"]] == list(query)
    assert not views.replays_open()


def test_a_bad_last_event_id_gets_422(server, viewer):
    with Stream(server, path(), {**viewer, "Last-Event-ID": "abc"}) as stream:
        assert stream.status == 422
        assert "Last-Event-ID" in stream.json()["error"]["message"]


def test_an_unknown_stream_gets_404(server, viewer):
    with Stream(server, path("runs"), viewer) as stream:
        assert stream.status == 404
        assert "not replayable" in stream.json()["error"]["message"]


def test_the_user_is_checked_before_the_stream_so_an_anonymous_caller_learns_no_names(server):
    with Stream(server, path("runs"), {}) as stream:
        assert stream.status == 401


@pytest.mark.rabbitmq
def test_it_replays_and_resumes_on_rabbitmq_streams(server, viewer, settings, monkeypatch):
    settings.HUBSCHED_LOG_URL = rabbitmq_stream_url()  # the log is made anew (streams/apps.py)
    stream_name = f"test-http-{uuid.uuid4().hex[:12]}"
    monkeypatch.setitem(views.STREAMS, stream_name, "a stream of this test")
    try:
        append(record(0), record(1), record(2), stream=stream_name)
        with Stream(server, path(stream_name, **{"from": "first", "consumer": "rabbit"}), viewer) as stream:
            events = stream.events(3)
            offsets = [int(e.id) for e in events]
            # stored once the chunk is sent, while the client is still there (a disconnect at the same
            # moment may leave it unstored: at least once, the chunk comes again)
            until(lambda: log().consumer_offset(stream_name, "http.rabbit") == offsets[-1], "the offset stored")
        assert [e.text.encode() for e in events] == [record(0), record(1), record(2)]
        assert offsets == sorted(set(offsets))
        until(lambda: not views.replays_open(), "the replay closed")
        append(record(3), stream=stream_name)
        with Stream(server, path(stream_name, consumer="rabbit"), viewer) as stream:
            [missed] = stream.events(1)
        assert missed.text.encode() == record(3)
        assert int(missed.id) > offsets[-1]
    finally:
        log().stream_delete(stream_name)

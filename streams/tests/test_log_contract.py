"""The log's contract (streams/log.py), one suite run against both backends: SQLite on a temporary file,
RabbitMQ Streams on the real server (a stream of its own per test, deleted after)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from hubsched.testing import rabbitmq_stream_url
from streams.log import Log, LogError, Retention, Start, log_open

pytestmark = pytest.mark.timeout(90)

DAYS = Retention(7 * 24 * 3600.0, 10 * 1024**3)


@pytest.fixture(params=["sqlite", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def backend(request, tmp_path):
    """``(open_log, stream)``: ``open_log(retention=..., segment_bytes=...)`` makes a new Log object on
    the same store (closed after the test); ``stream`` is this test's own stream name."""
    if request.param == "sqlite":
        def url(segment_bytes=None):
            return f"sqlite:///{tmp_path / 'log.sqlite3'}"
    else:
        base = rabbitmq_stream_url()

        def url(segment_bytes=None):
            return base + (f"?segment_bytes={segment_bytes}" if segment_bytes else "")
    made: list[Log] = []

    def open_log(retention: Retention = DAYS, segment_bytes: int | None = None) -> Log:
        made.append(log_open(url(segment_bytes), retention=retention))
        return made[-1]

    stream = f"test-{uuid.uuid4().hex[:12]}"
    open_log.kind = request.param
    yield open_log, stream
    cleaner = open_log()
    cleaner.stream_delete(stream)
    for log in made:
        log.close()


def read_n(log: Log, stream: str, start: Start, n: int, timeout: float = 10.0):
    """Read until ``n`` records came (or ``timeout`` passed): a read returns what is there."""
    out = []
    deadline = time.monotonic() + timeout
    with log.reader(stream, start) as reader:
        while len(out) < n and time.monotonic() < deadline:
            out += reader.read(max_records=n - len(out), timeout=0.5)
    return out


def read_some(reader, timeout: float = 10.0):
    """The first read that returns records, trying for up to ``timeout`` seconds; [] if none came."""
    got = []
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        got = reader.read(timeout=1)
    return got


def test_append_returns_once_durable_and_another_log_object_reads_every_record_in_order(backend):
    open_log, stream = backend
    writer = open_log()
    bodies = [f"record-{i}".encode() for i in range(50)]
    first = writer.append(stream, bodies[:20])
    second = writer.append(stream, bodies[20:])
    records = read_n(open_log(), stream, Start.first(), 50)  # a fresh connection: what is durable, not cached
    assert [r.body for r in records] == bodies
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))
    if first is not None:  # SQLite tells the offsets; RabbitMQ Streams cannot (streams/log.py)
        assert first + second == offsets
    assert all(r.timestamp.tzinfo is not None for r in records)


def test_it_reads_from_an_offset_from_a_time_from_last_and_from_next(backend):
    open_log, stream = backend
    log = open_log()
    log.append(stream, [b"a0", b"a1", b"a2"])
    time.sleep(0.05)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    log.append(stream, [b"b0", b"b1"])
    everything = read_n(log, stream, Start.first(), 5)
    assert [r.body for r in everything] == [b"a0", b"a1", b"a2", b"b0", b"b1"]

    assert [r.body for r in read_n(log, stream, Start.at(everything[1].offset), 4)] == [b"a1", b"a2", b"b0", b"b1"]
    assert [r.body for r in read_n(log, stream, Start.since(between), 2)] == [b"b0", b"b1"]
    assert [r.body for r in log.read(stream, time=between, timeout=5)] == [b"b0", b"b1"]
    # last: the last batch written, which here is the last append
    assert [r.body for r in read_n(log, stream, Start.last(), 2)] == [b"b0", b"b1"]

    with log.reader(stream, Start.next()) as reader:
        assert reader.read(timeout=0.5) == []
        log.append(stream, [b"c0"])
        got = read_some(reader)
        assert [r.body for r in got] == [b"c0"]
        assert got[0].offset > everything[-1].offset


def test_a_reader_from_a_time_to_come_skips_what_was_written_before_that_time(backend):
    open_log, stream = backend
    log = open_log()
    log.append(stream, [b"old"])
    with log.reader(stream, Start.since(datetime.now(timezone.utc) + timedelta(seconds=1))) as reader:
        log.append(stream, [b"before"])
        assert reader.read(timeout=0.5) == []
        time.sleep(1.2)
        log.append(stream, [b"after"])
        got = read_some(reader)
    assert [r.body for r in got] == [b"after"]


def test_a_consumer_that_restarts_resumes_exactly_after_its_stored_offset(backend):
    open_log, stream = backend
    open_log().append(stream, [f"m{i}".encode() for i in range(10)])

    first_life = open_log()
    assert first_life.consumer_offset(stream, "forwarder") is None
    processed = read_n(first_life, stream, Start.first(), 4)
    first_life.consumer_offset_store(stream, "forwarder", processed[-1].offset)
    first_life.close()

    second_life = open_log()  # the consumer made anew: nothing carried over but what the log stored
    stored = second_life.consumer_offset(stream, "forwarder")
    assert stored == processed[-1].offset
    rest = read_n(second_life, stream, Start.at(stored + 1), 6)
    assert [r.body for r in processed + rest] == [f"m{i}".encode() for i in range(10)]
    assert second_life.consumer_offset(stream, "other") is None


def test_stats_say_the_first_and_last_offset(backend):
    open_log, stream = backend
    log = open_log()
    assert log.stats(stream).records == 0
    log.append(stream, [b"x"] * 3)
    log.append(stream, [b"y"] * 4)
    offsets = [r.offset for r in read_n(log, stream, Start.first(), 7)]
    stats = log.stats(stream)
    assert (stats.first_offset, stats.last_offset) == (offsets[0], offsets[-1])
    assert stats.records == 7
    if stats.bytes is not None:
        assert stats.bytes == 7


def test_retention_by_size_drops_the_oldest_and_stats_say_so(backend):
    open_log, stream = backend
    # RabbitMQ deletes whole segments, never the one being written: small segments, so that it rolls
    max_bytes, segment = 20_000, 4_000
    log = open_log(Retention(7 * 24 * 3600.0, max_bytes), segment_bytes=segment)
    body = b"z" * 500
    for i in range(40):  # 20,000 bytes of records, twice over, in appends of 2
        log.append(stream, [body, body])
    log.retention_apply()
    last = read_n(log, stream, Start.last(), 2)
    stats = log.stats(stream)
    assert stats.first_offset > 0  # the oldest went
    assert stats.last_offset == last[-1].offset  # the newest stayed
    if stats.bytes is not None:  # SQLite: exactly what fits
        assert stats.bytes <= max_bytes and stats.bytes > max_bytes - 2 * len(body)
    else:  # RabbitMQ: what it guarantees: at most about one segment beyond max-length-bytes is kept
        kept = read_n(log, stream, Start.first(), 200, timeout=3)
        assert len(kept) * len(body) <= max_bytes + 2 * segment
        assert kept[0].offset == stats.first_offset


def test_retention_by_age_drops_what_is_older(backend):
    open_log, stream = backend
    log = open_log(Retention(1.0, 10 * 1024**3), segment_bytes=4_000)
    body = b"o" * 500
    for _ in range(10):
        log.append(stream, [body, body])
    old_last = read_n(log, stream, Start.last(), 2)[-1].offset
    time.sleep(2.5)
    # RabbitMQ evaluates retention when a segment rolls over: write enough for a few
    for _ in range(10):
        log.append(stream, [b"n" * 500, b"n" * 500])
    deadline = time.monotonic() + 10
    while True:
        log.retention_apply()
        stats = log.stats(stream)
        if stats.first_offset > (old_last if open_log.kind == "sqlite" else 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    kept = read_n(log, stream, Start.first(), 40, timeout=3)
    old_kept = [r for r in kept if r.body == body]
    assert stats.first_offset > 0 and kept[0].offset == stats.first_offset  # the oldest went
    assert kept[-1].offset == stats.last_offset and kept[-1].body == b"n" * 500  # the newest stayed
    if open_log.kind == "sqlite":  # every record older than max-age is gone
        assert old_kept == []
    else:  # RabbitMQ deletes whole segments, never one that also holds newer records: at most one segment's worth
        assert len(old_kept) * len(body) <= 4_000


def test_a_record_of_one_megabyte_round_trips(backend):
    open_log, stream = backend
    log = open_log()
    big = bytes(range(256)) * (1_000_000 // 256) + b"end"
    log.append(stream, [big])
    (record,) = read_n(open_log(), stream, Start.first(), 1)
    assert record.body == big


def test_it_refuses_a_bad_stream_name_and_a_record_too_large_with_a_permanent_error(backend):
    open_log, stream = backend
    log = open_log()
    with pytest.raises(LogError) as bad:
        log.append("../etc", [b"x"])
    assert bad.value.permanent
    if open_log.kind == "rabbitmq":  # one Publish frame (1 MiB by default) bounds a record there
        with pytest.raises(LogError) as large:
            log.append(stream, [b"x" * (2 * 1024 * 1024)])
        assert large.value.permanent and "frame" in large.value.message


@pytest.mark.rabbitmq
def test_a_stream_deleted_by_another_process_is_made_again_by_the_next_append(backend):
    """A stream deleted under a running worker (an operator, a RabbitMQ virtual host made again) fails at most
    the one append that finds it gone, not every append until the worker restarts."""
    open_log, stream = backend
    worker, operator = open_log(), open_log()
    worker.append(stream, [b"before"])
    operator.stream_delete(stream)
    for attempt in range(2):
        try:
            worker.append(stream, [b"after"])
            break
        except LogError as gone:
            assert not gone.permanent and attempt == 0, gone.message
    assert [r.body for r in read_n(operator, stream, Start.first(), 1)] == [b"after"]


def test_a_stream_made_with_another_retention_is_used_as_it_is():
    """Changing HUBSCHED_LOG_RETENTION_* on a running site must not stop the appends (RabbitMQ refuses to declare
    an existing stream with other arguments)."""
    import uuid

    from hubsched.testing import rabbitmq_stream_url
    from streams.log import Retention, log_open

    url = rabbitmq_stream_url()
    name = f"test-retention-{uuid.uuid4().hex[:10]}"
    first = log_open(url, retention=Retention(7 * 86400, 10 * 1024**3))
    second = log_open(url, retention=Retention(6 * 86400, 10 * 1024**3))
    try:
        first.append(name, [b"x"])
        second.append(name, [b"y"])  # refused with PreconditionFailed before
        bodies: list[bytes] = []
        with second.reader(name, Start.first()) as reader:
            for _ in range(20):  # a read returns one chunk or more: each append is its own chunk here
                bodies += [r.body for r in reader.read(max_records=10, timeout=1)]
                if len(bodies) >= 2:
                    break
        assert bodies == [b"x", b"y"]
    finally:
        first.stream_delete(name)
        first.close()
        second.close()

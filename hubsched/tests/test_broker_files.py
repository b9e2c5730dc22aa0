"""The embedded broker (hubsched/broker_files.py): whole messages only, and event queues without a consumer unbound."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from queue import Empty

import pytest
from kombu import Connection, Exchange, Queue

from hubsched import broker_files


@pytest.fixture
def folders(tmp_path):
    for sub in ("in", "control"):
        (tmp_path / sub).mkdir()
    return {"data_folder_in": str(tmp_path / "in"), "data_folder_out": str(tmp_path / "in"),
            "control_folder": str(tmp_path / "control"), "store_processed": False, "polling_interval": 0.01}


@pytest.fixture
def connection(folders):
    with Connection("filesystem://", transport="hubsched.broker_files:Transport", transport_options=folders) as conn:
        yield conn


def test_a_reader_polling_while_a_message_is_written_finds_nothing_rather_than_an_empty_message(connection, monkeypatch):
    channel = connection.channel()
    Queue("q", Exchange("x", type="direct"), routing_key="q")(channel).declare()
    seen = []
    real_dumps = broker_files.dumps

    def dumps_while_a_reader_polls(payload):
        # the message's file exists now (kombu's transport had created it empty at this point): a reader polls
        try:
            seen.append(channel._get("q"))
        except Empty:
            seen.append("Empty")
        return real_dumps(payload)

    monkeypatch.setattr(broker_files, "dumps", dumps_while_a_reader_polls)
    channel._put("q", {"body": "whole"})
    monkeypatch.setattr(broker_files, "dumps", real_dumps)
    assert seen == ["Empty"]
    assert channel._get("q") == {"body": "whole"}  # and once renamed into place, the whole message
    assert not [n for n in os.listdir(connection.transport_options["data_folder_in"]) if n.endswith(".part")]


def test_messages_published_while_consumed_all_arrive_whole(connection):
    exchange = Exchange("ev", type="fanout")
    queue = Queue("evq", exchange, auto_delete=True)
    got = []
    with connection.Consumer(queue, callbacks=[lambda body, message: (got.append(body["n"]), message.ack())]):
        producer = connection.Producer(exchange=exchange)
        for n in range(200):
            producer.publish({"n": n, "pad": "x" * 2000})
            if n % 10 == 0:
                connection.drain_events(timeout=1)
        deadline = time.monotonic() + 10
        while len(got) < 200 and time.monotonic() < deadline:
            connection.drain_events(timeout=1)
    assert sorted(got) == list(range(200))


def test_binding_an_event_queue_unbinds_the_event_queues_nobody_has_consumed_for_a_minute(connection, folders):
    channel = connection.channel()
    events = Exchange("celeryev", type="topic")
    dead, alive, tasks = Queue("celeryev.dead", events, "#"), Queue("celeryev.alive", events, "#"), Queue("other", events, "#")
    for queue in (dead, alive, tasks):
        queue(channel).declare()
    channel._put_fanout("celeryev", {"old": True}, "")  # every bound queue gets one
    long_ago = time.time() - broker_files.STALE_EVENT_QUEUE_S - 5
    for name in os.listdir(folders["data_folder_in"]):
        if name.endswith((".celeryev.dead.msg", ".other.msg")):
            os.utime(os.path.join(folders["data_folder_in"], name), (long_ago, long_ago))

    Queue("celeryev.new", events, "#")(channel).declare()  # Flower starts

    assert sorted(q.queue for q in channel.get_table("celeryev")) == ["celeryev.alive", "celeryev.new", "other"]
    left = sorted(n.partition(".")[2] for n in os.listdir(folders["data_folder_in"]))
    assert left == ["celeryev.alive.msg", "other.msg"]  # a task queue's old message is never touched


def bind_at_once(transport: str, folders: dict, barrier, worker: int, exchanges: list[str]) -> None:
    """One binder: after the barrier, binds queues of several name lengths to each (new) exchange."""
    with Connection("filesystem://", transport=transport, transport_options=folders) as conn:
        channel = conn.channel()
        barrier.wait(120)
        for exchange in exchanges:
            for n in range(3):
                channel._queue_bind(exchange, "", "", f"q{worker}-{n}" + "x" * (worker * 7 + n))


def binding_race(transport: str, folders: dict, *, binders: int = 4, exchanges: int = 100) -> dict[str, object]:
    """Each exchange's table (or the error reading it) after ``binders`` processes bound to it at once."""
    ctx = multiprocessing.get_context("spawn")  # not fork: a forked child of a process with threads can hang on their locks
    barrier = ctx.Barrier(binders)
    names = [f"new-{e}" for e in range(exchanges)]
    procs = [ctx.Process(target=bind_at_once, args=(transport, folders, barrier, w, names)) for w in range(binders)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    tables: dict[str, object] = {}
    for name in names:
        raw = open(os.path.join(folders["control_folder"], f"{name}.exchange")).read()
        try:
            tables[name] = sorted(row[2] for row in json.loads(raw))
        except ValueError as exc:
            tables[name] = f"{type(exc).__name__}: {exc}"
    return tables


def test_processes_binding_to_a_new_exchange_at_once_leave_its_table_whole_with_every_binding(folders):
    # kombu's transport (kombu.transport.filesystem:Transport) fails this: tables garbled ("Extra data") or bindings lost
    tables = binding_race("hubsched.broker_files:Transport", folders)
    every = sorted(f"q{w}-{n}" + "x" * (w * 7 + n) for w in range(4) for n in range(3))
    assert tables == {name: every for name in tables}


def test_a_table_garbled_by_kombus_transport_is_read_to_its_first_table_and_rewritten_whole_by_the_next_bind(connection, folders):
    channel = connection.channel()
    path = os.path.join(folders["control_folder"], "garbled.exchange")
    with open(path, "w") as f:
        f.write('[["", "", "short"]]' + 'x.celery.pidbox"]]')  # a shorter table written over a longer one
    assert [q.queue for q in channel.get_table("garbled")] == ["short"]
    channel._queue_bind("garbled", "", "", "other")
    assert json.loads(open(path).read()) == [["", "", "other"], ["", "", "short"]]
    channel._delete("other", "garbled", "", "")
    assert json.loads(open(path).read()) == [["", "", "short"]]


def test_the_embedded_broker_of_the_settings_uses_this_transport(settings):
    from hubsched.celery import app

    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        pytest.skip("CELERY_BROKER_URL is not the embedded broker here")
    with app.connection_for_read() as conn:
        assert conn.transport_cls == "hubsched.broker_files:Transport"
        assert isinstance(conn.transport, broker_files.Transport)

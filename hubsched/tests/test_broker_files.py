"""The embedded broker (hubsched/broker_files.py): whole messages only, and event queues without a consumer unbound."""

from __future__ import annotations

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


def test_the_embedded_broker_of_the_settings_uses_this_transport(settings):
    from hubsched.celery import app

    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        pytest.skip("CELERY_BROKER_URL is not the embedded broker here")
    with app.connection_for_read() as conn:
        assert conn.transport_cls == "hubsched.broker_files:Transport"
        assert isinstance(conn.transport, broker_files.Transport)

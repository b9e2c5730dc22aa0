"""The hub client against hostile hubs: frames over the limit refused from their header, URLs masked."""

from __future__ import annotations

import logging
import resource
import threading

import pytest

from hubs.client import HubClient, HubError, hub_client, hub_clients_close_all
from hubs.hubsim import faults
from hubs.hubsim.server import serve_in_thread

KEY = "k-limits"
MB = 1024 * 1024


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, the process's high-water mark


def test_it_refuses_a_frame_announced_over_the_limit_before_reading_its_payload(caplog):
    before = _rss_kib()
    with faults.serve_in_thread("huge_frame", key=KEY, frame_bytes=200_000_000, times=1) as bad, \
            HubClient(bad.url, KEY, timeout=20) as client:  # the default limit, 16 MiB
        with pytest.raises(HubError) as refused:
            client.call("ping")
        assert refused.value.code == "connection"
        assert "200000000 bytes" in str(refused.value) and f"limit of {16 * MB} bytes" in str(refused.value)
        # the client closed the connection after a read or two: kernel buffers, not the 200 MB
        assert bad.faulty.streamed < 16 * MB
        assert _rss_kib() - before < 100 * 1024
        assert client.call("ping")["time"]  # reconnected: the hub answers normally from the second request
    assert any("closing the connection (1009)" in r.getMessage() for r in caplog.records)


def test_the_fragments_of_one_message_count_toward_the_limit():
    with faults.serve_in_thread("huge_message", key=KEY, frame_bytes=64 * MB, fragment_bytes=256 * 1024, times=1) as bad, \
            HubClient(bad.url, KEY, timeout=20, max_frame_bytes=MB) as client:
        with pytest.raises(HubError, match=f"limit of {MB} bytes"):
            client.call("ping")
        assert bad.faulty.streamed < 16 * MB  # every fragment is small; the message is not
        assert client.call("ping")["time"]


def test_a_message_within_the_limit_is_read_whole():
    with faults.serve_in_thread("huge_message", key=KEY, frame_bytes=2 * MB, times=1) as bad, \
            HubClient(bad.url, KEY, timeout=5, max_frame_bytes=4 * MB) as client:
        # 2 MB of spaces without a final fragment: read, never answered, the call times out instead
        with pytest.raises(HubError) as late:
            client.call("ping", timeout=1.0)
        assert late.value.code == "timeout"


def test_other_hubs_are_served_while_one_streams_a_huge_frame(reference_hub_url):
    calls: list[str] = []
    with faults.serve_in_thread("huge_frame", key=KEY, frame_bytes=200_000_000) as bad, \
            HubClient(bad.url, KEY, timeout=20) as hostile, HubClient(reference_hub_url, KEY) as good:
        worker = threading.Thread(target=lambda: calls.extend(_failures(hostile)))
        worker.start()
        for _ in range(20):
            assert good.get_entity_params("plant/line1/pump1", ["flow"])[0]["key"] == "flow"
        worker.join(60)
        assert calls == ["connection"] * 3
        assert bad.faulty.streamed < 16 * MB  # each of its connections was dropped from the header


def _failures(client: HubClient) -> list[str]:
    out = []
    for _ in range(3):
        try:
            client.call("ping")
        except HubError as exc:
            out.append(exc.code)
    return out


@pytest.fixture
def reference_hub_url():
    with serve_in_thread(key=KEY, name="hub-ok") as hub:
        yield hub.url


def test_the_pool_passes_the_limit_to_new_connections():
    try:
        with faults.serve_in_thread("huge_message", key=KEY, frame_bytes=8 * MB, times=1) as bad:
            client = hub_client(bad.url, KEY, timeout=10, max_frame_bytes=MB)
            assert client.max_frame_bytes == MB
            with pytest.raises(HubError, match=f"limit of {MB} bytes"):
                client.call("ping")
            assert hub_client(bad.url, KEY, max_frame_bytes=2 * MB).max_frame_bytes == 2 * MB
    finally:
        hub_clients_close_all()


def test_messages_and_logs_name_the_hub_without_its_password_or_token(caplog):
    url = faults.unreachable_url().replace("ws://", "ws://ann:hunter2@") + "?token=t0ps3cret&site=north"
    caplog.set_level(logging.DEBUG, logger="hubs.client")
    with HubClient(url, KEY, timeout=0.5) as client:
        for _ in range(2):
            with pytest.raises(HubError) as failed:
                client.call("ping")
            text = str(failed.value)
            assert "hunter2" not in text and "t0ps3cret" not in text and "ann:***@" in text and "site=north" in text
        assert "hunter2" not in repr(client)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged and "hunter2" not in logged and "t0ps3cret" not in logged

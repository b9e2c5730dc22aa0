"""The hub protocol client over wss:// against an aiohttp hub serving TLS with a CA made for the test.

The load test is the one that dropped connections before wss:// had its own I/O thread (issue 18, item 2):
several threads pipelining thousands of calls while the hub pings every 50 ms. With a reader thread in
``SSLSocket.recv`` and callers in ``SSLSocket.sendall`` at once, 6 of 10 such rounds lost their connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading

import pytest

from hubs.client import HubClient, HubError, TlsOptions, hub_client, hub_clients_close_all
from hubs.hubsim import faults

from .test_client_other_servers import KEY, PUMP, AiohttpHub, serve_aiohttp_hub
from .tls_certs import make_pki

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


@pytest.fixture
def tls_hub(pki):
    hub = AiohttpHub(ping_interval=0.05)
    with serve_aiohttp_hub(hub, ssl_context=pki.server_context()) as url:
        hub.url = url
        yield hub


def test_many_pipelined_calls_from_several_threads_over_wss_keep_their_connection_while_the_hub_pings(tls_hub, pki):
    rounds, threads, calls = 5, 4, 1250
    big = "y" * (64 * 1024)
    for round_ in range(rounds):
        failures: list[str] = []
        with HubClient(tls_hub.url, KEY, timeout=60, max_in_flight=64, tls=TlsOptions(ca_pem=pki.ca_pem)) as client:

            def work(n: int) -> None:
                batch = [("getEntityParams", {"entity": PUMP}) for _ in range(calls)]
                batch[::50] = [("setEntityParams", {"entity": PUMP, "values": {"mode": f"{n}:{big}"}})] * len(batch[::50])
                for future in client.call_many_async(batch):
                    try:
                        future.result(120)
                    except HubError as exc:
                        failures.append(str(exc))

            workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert failures == [], f"round {round_}: {len(failures)} of {threads * calls} failed; first: {failures[0]}"
            assert client.get_entity_params(PUMP, ["flow"])[0]["value"] == 1.5
        assert tls_hub.connections == round_ + 1, f"round {round_}: connections dropped; the hub saw {tls_hub.ends}"
    assert tls_hub.pings > 0


def test_a_large_answer_and_a_large_request_cross_wss_whole(tls_hub, pki):
    value = "é" * (1024 * 1024)  # 2 MiB of UTF-8 out, 6 MiB back (aiohttp writes \u00e9): many TLS records
    with HubClient(tls_hub.url, KEY, timeout=30, tls=TlsOptions(ca_pem=pki.ca_pem)) as client:
        assert client.set_entity_params(PUMP, {"mode": value}) == ["mode"]
        assert client.get_entity_params(PUMP, ["mode"])[0]["value"] == value


def test_it_refuses_a_hub_whose_certificate_no_trusted_ca_signed(tls_hub):
    with HubClient(tls_hub.url, KEY, timeout=5) as client:  # the system store does not know the test CA
        with pytest.raises(HubError) as caught:
            client.get_entity_params(PUMP)
    assert caught.value.code == "connection"
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_with_verification_off_it_connects_to_any_certificate_and_says_so_in_the_log(tls_hub, caplog):
    with caplog.at_level(logging.WARNING, logger="hubs.client"):
        with HubClient(tls_hub.url, KEY, timeout=5, tls=TlsOptions(verify=False)) as client:
            assert client.get_entity_params(PUMP, ["flow"])[0]["value"] == 1.5
    assert any("WITHOUT checking its TLS certificate" in r.getMessage() for r in caplog.records)


def test_it_shows_its_client_certificate_to_a_hub_that_requires_one(pki):
    hub = AiohttpHub(ping_interval=10)
    with serve_aiohttp_hub(hub, ssl_context=pki.server_context(require_client_cert=True)) as url:
        mutual = TlsOptions(ca_pem=pki.ca_pem, cert_pem=pki.client_cert_pem, key_pem=pki.client_key_pem)
        with HubClient(url, KEY, timeout=5, tls=mutual) as client:
            assert client.get_entity_params(PUMP, ["flow"])[0]["value"] == 1.5
        with HubClient(url, KEY, timeout=5, tls=TlsOptions(ca_pem=pki.ca_pem)) as client:
            with pytest.raises(HubError) as caught:
                client.get_entity_params(PUMP, ["flow"])
        assert caught.value.code == "connection"


def test_tls_settings_that_do_not_load_fail_every_call_permanently_without_showing_the_key(tls_hub, pki):
    broken = TlsOptions(ca_pem=pki.ca_pem, cert_pem=pki.client_cert_pem, key_pem=pki.server_key_pem)  # not its key
    with HubClient(tls_hub.url, KEY, timeout=5, tls=broken) as client:
        with pytest.raises(HubError) as caught:
            client.get_entity_params(PUMP)
    assert caught.value.permanent and caught.value.code == "connection"
    assert "client certificate and key do not load" in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value) and "PRIVATE KEY" not in repr(broken)


def test_a_close_from_the_hub_over_wss_names_its_code(pki):
    class GoingAway(AiohttpHub):
        async def handle(self, request):
            from aiohttp import WSCloseCode, web

            ws = web.WebSocketResponse()
            await ws.prepare(request)
            self.connections += 1
            async for _msg in ws:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"hub restarting")
            return ws

    hub = GoingAway()
    with serve_aiohttp_hub(hub, ssl_context=pki.server_context()) as url:
        with HubClient(url, KEY, timeout=5, tls=TlsOptions(ca_pem=pki.ca_pem)) as client:
            with pytest.raises(HubError) as caught:
                client.get_entity_params(PUMP)
    assert "closed by the hub with 1001 (going away): hub restarting" in str(caught.value)


def test_a_message_over_the_limit_is_refused_over_wss_and_the_next_call_reconnects(tls_hub, pki):
    with HubClient(tls_hub.url, KEY, timeout=10, max_frame_bytes=4096, tls=TlsOptions(ca_pem=pki.ca_pem)) as client:
        assert client.set_entity_params(PUMP, {"mode": "z" * 10_000}) == ["mode"]  # the answer is small
        with pytest.raises(HubError) as caught:
            client.get_entity_params(PUMP, ["mode"])  # the answer is 10 kB
        assert "over this hub's limit of 4096 bytes" in str(caught.value)
        assert client.set_entity_params(PUMP, {"mode": "auto"}) == ["mode"]
    assert tls_hub.connections == 2
    assert tls_hub.ends[0][0] == 1009


def test_the_pool_keeps_one_client_per_tls_settings(pki):
    try:
        url = "wss://127.0.0.1:1/connect"
        first = hub_client(url, KEY, tls=TlsOptions(ca_pem=pki.ca_pem))
        assert hub_client(url, KEY, tls=TlsOptions(ca_pem=pki.ca_pem)) is first
        assert hub_client(url, KEY, tls=TlsOptions(ca_pem=pki.ca_pem, verify=False)) is not first
    finally:
        hub_clients_close_all()


def test_each_call_of_a_batch_has_its_own_deadline():
    # One slot and answers 0.2 s late: six calls take 1.2 s in all. With one deadline for the whole batch
    # (1 s from the call), the last ones timed out although each was answered 0.2 s after it was sent.
    with faults.serve_in_thread("slow", key=KEY, delay=0.2) as slow:
        with HubClient(slow.url, KEY, timeout=1.0, max_in_flight=1) as client:
            futures = client.call_many_async([("ping", None)] * 6)
            results = []
            for future in futures:
                try:
                    results.append("time" in future.result(10))
                except HubError as exc:
                    results.append(str(exc))
    assert results == [True] * 6


def test_tls_options_refuse_a_certificate_without_its_key(pki):
    with pytest.raises(ValueError, match="needs its key"):
        TlsOptions(cert_pem=pki.client_cert_pem).context()
    with pytest.raises(ValueError, match="CA bundle does not load"):
        TlsOptions(ca_pem="-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").context()
    assert TlsOptions(verify=False).context().verify_mode == ssl.CERT_NONE


class RawTlsHub:
    """A hub written on bare asyncio streams (no WebSocket library), serving TLS: it answers each request
    in fragments cut inside a UTF-8 character, with a ping between the fragments, and counts the pongs."""

    def __init__(self, ssl_context):
        self.ssl_context, self.pongs, self.bad_frames = ssl_context, 0, 0
        self.ended = threading.Event()  # the connection's handler returned (it has read every frame sent)

    @staticmethod
    def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        head += bytes([n]) if n < 126 else (bytes([126]) + n.to_bytes(2, "big") if n < 65536 else bytes([127]) + n.to_bytes(8, "big"))
        return head + payload

    async def read_frame(self, reader) -> tuple[int, bytes]:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = await reader.readexactly(n)
        if not b0 & 0x80 or not b1 & 0x80:
            self.bad_frames += 1  # a client frame must be whole here and masked
        return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))

    async def handle(self, reader, writer) -> None:
        import base64
        import hashlib

        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        try:
            while True:
                opcode, data = await self.read_frame(reader)
                if opcode == 0xA:
                    self.pongs += 1
                    continue
                if opcode == 0x8:
                    break
                request = json.loads(data)
                answer = json.dumps({"id": request["id"], "result": {"entity": PUMP, "values": [
                    {"key": "name", "value": "Pumpe für Kühlwasser ✓", "ts": "2026-12-01T10:00:00.000Z", "quality": "good"}]}},
                    ensure_ascii=False).encode()
                cut = answer.index("ü".encode()) + 1  # inside the two bytes of ü
                writer.write(self.frame(0x1, answer[:cut], fin=False) + self.frame(0x9, b"between")
                             + self.frame(0x0, answer[cut:cut + 7], fin=False) + self.frame(0x0, answer[cut + 7:]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        self.ended.set()


def test_fragmented_answers_with_a_ping_between_fragments_are_read_whole_over_wss(pki):
    raw = RawTlsHub(pki.server_context())
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=raw.ssl_context))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with HubClient(f"wss://127.0.0.1:{port}/connect", KEY, timeout=10, tls=TlsOptions(ca_pem=pki.ca_pem)) as client:
            futures = client.call_many_async([("getEntityParams", {"entity": PUMP, "keys": ["name"]})] * 50)
            assert {f.result(20)["values"][0]["value"] for f in futures} == {"Pumpe für Kühlwasser ✓"}
        assert raw.ended.wait(10)
    finally:
        loop.call_soon_threadsafe(server.close)  # asyncio is not thread-safe: close it on its own loop's thread
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert raw.pongs == 50 and raw.bad_frames == 0

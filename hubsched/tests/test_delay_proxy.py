"""The delay proxy in front of a real echo server: the added round trip, bytes intact and in order, close forwarded.

The one time compared is a lower bound the proxy guarantees (a reply cannot come back before the round
trip it adds), never an upper bound, so it cannot flake on a slow machine.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from hubsched.bench.delay_proxy import DelayProxy


class EchoServer:
    """A threaded TCP echo server on a free port: writes back what it reads; closes a connection at EOF.
    With ``close_after`` it closes each connection itself once it has echoed that many bytes.
    ``eofs`` counts the connections that ended by the client's EOF."""

    def __init__(self, *, close_after: int | None = None) -> None:
        self.close_after = close_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.eofs = 0
        self.eof_seen = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _echo(self, conn: socket.socket) -> None:
        echoed = 0
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    self.eofs += 1
                    self.eof_seen.set()
                    return
                conn.sendall(data)
                echoed += len(data)
                if self.close_after is not None and echoed >= self.close_after:
                    return

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
        except OSError:
            pass
        self.listener.close()
        self.accepting.join(timeout=5)


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(65536, n - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _connect(proxy: DelayProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_port_0_picks_a_free_port_and_stop_closes_the_listener(echo):
    proxy = DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", echo.port), rtt_ms=0)
    proxy.start()
    port = proxy.port
    assert port and port != echo.port
    with _connect(proxy) as sock:
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
    proxy.stop()
    proxy.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_round_trip_through_it_takes_at_least_the_rtt(echo):
    with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", echo.port), rtt_ms=80) as proxy:
        with _connect(proxy) as sock:
            sock.sendall(b"warm")  # the connection to the target is made on accept; measure after it
            assert _recv_exactly(sock, 4) == b"warm"
            for _ in range(3):
                started = time.monotonic()
                sock.sendall(b"x")
                assert _recv_exactly(sock, 1) == b"x"
                assert time.monotonic() - started >= 0.080


def test_changing_the_rtt_while_running_applies_to_later_bytes(echo):
    with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", echo.port), rtt_ms=0) as proxy:
        with _connect(proxy) as sock:
            sock.sendall(b"a")
            assert _recv_exactly(sock, 1) == b"a"
            proxy.rtt_ms = 120
            started = time.monotonic()
            sock.sendall(b"b")
            assert _recv_exactly(sock, 1) == b"b"
            assert time.monotonic() - started >= 0.120
    with pytest.raises(ValueError):
        proxy.rtt_ms = -1


def test_bytes_arrive_intact_and_in_order_on_concurrent_connections(echo):
    payloads = [os.urandom(3 * 1024 * 1024 + i) for i in range(4)]
    results: dict[int, bytes] = {}

    def run(i: int) -> None:
        with _connect(proxy) as sock:
            sent = threading.Thread(target=lambda: [sock.sendall(payloads[i][at:at + 7001])
                                                    for at in range(0, len(payloads[i]), 7001)])
            sent.start()  # write and read at once, so neither side's buffers fill up
            results[i] = _recv_exactly(sock, len(payloads[i]))
            sent.join()

    with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", echo.port), rtt_ms=10) as proxy:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert proxy.connections_total == len(payloads)
    for i, payload in enumerate(payloads):
        assert results[i] == payload, f"connection {i}: {len(results.get(i, b''))} of {len(payload)} bytes, or reordered"


def test_closing_the_client_closes_the_target_side(echo):
    with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", echo.port), rtt_ms=20) as proxy:
        sock = _connect(proxy)
        sock.sendall(b"hello")
        assert _recv_exactly(sock, 5) == b"hello"
        sock.close()
        assert echo.eof_seen.wait(timeout=10), "the echo server never saw the client's close"
        assert echo.eofs == 1
        deadline = time.monotonic() + 10
        while proxy.connections_open and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.connections_open == 0


def test_a_half_close_delivers_the_bytes_before_it_then_eof_both_ways(echo):
    with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", echo.port), rtt_ms=20) as proxy:
        with _connect(proxy) as sock:
            sock.sendall(b"last words")
            sock.shutdown(socket.SHUT_WR)
            assert _recv_exactly(sock, 100) == b"last words"  # then EOF: the server closed after ours
            assert sock.recv(1) == b""


def test_the_target_closing_closes_the_client():
    server = EchoServer(close_after=3)
    try:
        with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", server.port), rtt_ms=20) as proxy:
            with _connect(proxy) as sock:
                sock.sendall(b"bye")
                assert _recv_exactly(sock, 3) == b"bye"
                assert sock.recv(1) == b""  # EOF, not a timeout
    finally:
        server.close()


def test_a_refused_target_closes_the_client_at_once():
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", port), rtt_ms=20) as proxy:
        with _connect(proxy) as sock:
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass


def test_start_raises_when_the_port_is_taken(echo):
    with pytest.raises(OSError):
        DelayProxy(listen=("127.0.0.1", echo.port), target=("127.0.0.1", echo.port), rtt_ms=0).start()

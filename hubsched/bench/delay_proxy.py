"""A TCP proxy that adds a round-trip delay between a client and a hub, for WAN benchmarks and tests.

Each direction is delayed by ``rtt_ms / 2``: a chunk read from one side at time t is written to the other
side at t + rtt/2, in the order it was read, so a request and its reply cost one ``rtt_ms`` more than they
would directly. There is no throughput cap beyond the delay (what is read is queued, however much; the
proxy reads each side as fast as it sends). TCP_NODELAY is set on every socket, so Nagle adds nothing.

End of stream is forwarded after the same delay: when one side closes (or half-closes), the other side's
write half is shut (FIN) once the bytes read before it are delivered; when both directions have ended, or
``linger_s`` after the first ended, or on any socket error, both sockets are closed. So closing one side
closes the other (a WebSocket peer that sees EOF closes its socket).

Use::

    with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", hub_port), rtt_ms=50) as proxy:
        connect to ("127.0.0.1", proxy.port)

or ``proxy.start()`` / ``proxy.stop()``. The proxy runs an asyncio loop in a daemon thread of its own,
started by ``start()`` (nothing runs at import). ``rtt_ms`` may be changed while it runs; chunks read
afterwards get the new delay (a delay made shorter never reorders bytes: a chunk waits for the one
before it).

As a program (for a network namespace of its own)::

    python -m hubsched.bench.delay_proxy --listen 10.0.0.1:9100 --target 10.0.1.2:9000 --rtt-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import threading
from collections.abc import Iterable

_CHUNK = 256 * 1024  # bytes read per call; large so a burst of frames crosses in one chunk


class DelayProxy:
    """Listen on ``listen`` (host, port; port 0 picks a free port, then ``.port`` says which) and forward
    each accepted connection to ``target`` (host, port) with ``rtt_ms`` milliseconds of round-trip delay
    (half each way).

    ``start()`` returns once the proxy is listening (raises OSError when it cannot bind, ValueError for a
    negative ``rtt_ms``); ``stop()`` closes the listener and every connection and joins the thread (it is
    idempotent). A connection the target refuses is closed at once on the client side.
    ``connections_total`` counts the connections accepted; ``connections_open`` those still open."""

    def __init__(self, *, listen: tuple[str, int] = ("127.0.0.1", 0), target: tuple[str, int],
                 rtt_ms: float = 50, linger_s: float = 5.0) -> None:
        self.listen, self.target = (listen[0], int(listen[1])), (target[0], int(target[1]))
        self.rtt_ms = rtt_ms
        self.linger_s = linger_s
        self.port: int | None = None
        self.connections_total = 0
        self._pipes: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def rtt_ms(self) -> float:
        """The round-trip delay in milliseconds (each direction gets half)."""
        return self._rtt_ms

    @rtt_ms.setter
    def rtt_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"rtt_ms must be >= 0, not {value!r}")
        self._rtt_ms = float(value)

    @property
    def connections_open(self) -> int:
        return len(self._pipes)

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: (listen host, bound port)."""
        return self.listen[0], self.port

    # -- life cycle ---------------------------------------------------------------------------------------

    def start(self) -> DelayProxy:
        """Start the loop thread and listen; returns when listening. Raises what binding raised."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready, failure))
            finally:
                loop.close()
                ready.set()

        self._thread = threading.Thread(target=run, name=f"delay-proxy-{self.listen[1]}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass
        thread.join()
        self._thread = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inside the loop thread ---------------------------------------------------------------------------

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._stopped = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1],
                                                      reuse_address=True, limit=_CHUNK)
        except BaseException as error:  # noqa: BLE001 - handed to start()'s caller
            failure.append(error)
            ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopped.wait()
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        if self._pipes:
            await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        task = asyncio.current_task()
        self._pipes.add(task)
        hub_writer = None
        try:
            _nodelay(client_writer)
            try:
                hub_reader, hub_writer = await asyncio.open_connection(*self.target, limit=_CHUNK)
            except OSError:
                return
            _nodelay(hub_writer)
            directions = [asyncio.ensure_future(self._pump(client_reader, hub_writer)),
                          asyncio.ensure_future(self._pump(hub_reader, client_writer))]
            try:
                done, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
                if not any(t.exception() for t in done if not t.cancelled()) and pending:
                    # one direction ended cleanly: give the other linger_s to end too
                    done, pending = await asyncio.wait(pending, timeout=self.linger_s)
            finally:
                for t in directions:
                    t.cancel()
                await asyncio.gather(*directions, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio's start_server logs a connection task that ends cancelled)
        finally:
            for writer in (client_writer, hub_writer):
                if writer is not None:
                    writer.close()
            self._pipes.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk written rtt/2 after it was read; then shut the write half.
        Raises the socket error that ended it (ConnectionError and the like)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                reading = asyncio.ensure_future(reader.read(_CHUNK))
                await asyncio.wait([reading, delivering], return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():  # the writer failed first
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
                    delivering.result()  # raises its error
                    return
                data = reading.result()
                queue.put_nowait((loop.time() + self._rtt_ms / 2000.0, data or None))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()
            await asyncio.gather(delivering, return_exceptions=True)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def main(argv: Iterable[str] | None = None) -> None:
    """Run one proxy until SIGINT or SIGTERM; prints ``listening HOST:PORT`` once it listens."""
    parser = argparse.ArgumentParser(prog="python -m hubsched.bench.delay_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="HOST:PORT (port 0: a free one)")
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT of the hub")
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="round-trip delay added, milliseconds")
    args = parser.parse_args(list(argv) if argv is not None else None)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with DelayProxy(listen=args.listen, target=args.target, rtt_ms=args.rtt_ms) as proxy:
        print(f"listening {proxy.listen[0]}:{proxy.port}", flush=True)
        done.wait()


if __name__ == "__main__":
    main()

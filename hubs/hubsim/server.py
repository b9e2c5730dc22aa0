"""The reference hub's WebSocket server: connections, subscriptions, and running it (foreground or in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidState
from websockets.frames import Opcode
from websockets.protocol import State

from .protocol import HubProtocol, Session, notification_frame
from .state import Entity, HubState

log = logging.getLogger(__name__)


@dataclass
class _Subscription:
    id: str
    entity: Entity
    keys: list[str]
    period: float | None
    on_change: bool
    timeout: float | None
    task: asyncio.Task | None = None


class _ConnectionSession(Session):
    """Subscriptions of one connection; they end with it."""

    def __init__(self, hub: "HubServer", ws: ServerConnection):
        self.hub = hub
        self.ws = ws
        self.subs: dict[str, _Subscription] = {}
        self._starting: list[_Subscription] = []

    def subscribe(self, sub_id, entity, keys, *, period, on_change, timeout):
        sub = _Subscription(sub_id, entity, keys, period, on_change, timeout)
        self.subs[sub_id] = sub
        self._starting.append(sub)  # started once the subscribe answer is on the wire

    def start_pending(self) -> None:
        for sub in self._starting:
            if sub.id in self.subs:
                sub.task = asyncio.get_running_loop().create_task(self._run(sub))
        self._starting.clear()

    def unsubscribe(self, sub_id: str) -> bool:
        sub = self.subs.pop(sub_id, None)
        if sub is None:
            return False
        if sub.task:
            sub.task.cancel()
        return True

    def close(self) -> None:
        for sub in self.subs.values():
            if sub.task:
                sub.task.cancel()
        self.subs.clear()

    async def _run(self, sub: _Subscription) -> None:
        state = self.hub.state
        tick = state.tick
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + sub.timeout if sub.timeout else None
        next_period = start + sub.period if sub.period else None
        try:
            # A first dataChange right away carries the current values (a snapshot).
            k = state.current_tick()
            await self.ws.send(notification_frame(sub.id, sub.entity, state.value_fragments(sub.entity, sub.keys, k)))
            current = state.values_now(sub.entity, k)
            last = {key: current[key] for key in sub.keys}
            while True:
                now = loop.time()
                wake = [t for t in (end, next_period) if t is not None]
                if sub.on_change:
                    wake.append(now + (tick - time.time() % tick) + 0.0005)
                if not wake:
                    break  # snapshot only: no period, no onChange
                await asyncio.sleep(max(0.0, min(wake) - now))
                now = loop.time()
                if end is not None and now >= end:
                    break
                k = state.current_tick()
                current = state.values_now(sub.entity, k)
                if next_period is not None and now >= next_period:
                    keys = sub.keys
                    next_period += sub.period * max(1, int((now - next_period) // sub.period) + 1)
                elif sub.on_change:
                    keys = [key for key in sub.keys if current[key] != last[key]]
                else:
                    keys = []
                if keys:
                    await self.ws.send(notification_frame(sub.id, sub.entity, state.value_fragments(sub.entity, keys, k)))
                    for key in keys:
                        last[key] = current[key]
        except (ConnectionClosed, asyncio.CancelledError):
            return
        # hub protocol v1: the hub ends the subscription after `timeout` seconds
        self.subs.pop(sub.id, None)


class HubConnection(ServerConnection):
    """A server connection that answers requests where their frames are parsed, and writes the answers to the data read at once.

    Plain websockets passes each message to the handler task through a queue and writes each
    answer with its own send() system call; at a hundred 10 kB answers a second that machinery
    costs about as much CPU as building the answers. After `serve_requests(respond)`, every
    complete text or binary frame goes straight to `respond(message)` as websockets parses it;
    `answer()` frames an answer at once (so that it stays in order with notifications and
    pongs, which websockets writes as they come), and everything framed is written with one
    send() once the data that arrived has been handled (or, for answers from elsewhere, at the
    end of the event loop iteration). Fragmented messages (rare) still reach the handler
    through `recv()`.

    Flow control: while the client reads slower than the hub answers (the transport's write
    buffer is above its high-water mark), the connection reads no further requests.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._respond: Callable[[str | bytes], None] | None = None
        self._receiving = False        # inside data_received, which flushes when done
        self._flush_scheduled = False

    def serve_requests(self, respond: Callable[[str | bytes], None]) -> None:
        """From now on, hand each complete message to `respond` as soon as it is parsed."""
        self._respond = respond

    def answer(self, text: str) -> None:
        """Frame `text` for sending; raises ConnectionClosed when the connection is closing."""
        try:
            self.protocol.send_text(text.encode())
        except InvalidState:
            raise ConnectionClosed(self.protocol.close_rcvd, self.protocol.close_sent) from None
        if not (self._receiving or self._flush_scheduled):
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def data_received(self, data: bytes) -> None:
        self._receiving = True
        try:
            super().data_received(data)
        finally:
            self._receiving = False
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.protocol.state is not State.OPEN:
            self.send_data()  # closing: websockets also half-closes the TCP connection
            return
        data = self.protocol.data_to_send()  # only frames while the connection is open
        if data:
            self.transport.write(b"".join(data))

    def process_event(self, event) -> None:
        respond = self._respond
        if respond is None or not (event.fin and event.opcode in _DATA_OPCODES):
            super().process_event(event)  # the handshake, control frames, fragments, or not serving yet
            return
        if event.opcode is Opcode.TEXT:
            try:
                message = event.data.decode()
            except UnicodeDecodeError:
                super().process_event(event)  # recv() raises it in the handler, as websockets does
                return
        else:
            message = bytes(event.data)
        try:
            respond(message)
        except ConnectionClosed:
            pass  # closing: the answer has nowhere to go
        except Exception:
            log.exception("hub connection %s: failed to answer a request; dropped", self.id)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.transport.resume_reading()


_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY)


class HubServer:
    """One reference hub: state, protocol and the connection handler for `websockets.serve`."""

    def __init__(self, *, key: str = "demo-key", name: str = "hub", seed: int = 1, tick: float = 0.1,
                 methods: set[str] | None = None, tree: list[dict] | None = None):
        self.state = HubState(name=name, seed=seed, tick=tick, tree=tree)
        self.protocol = HubProtocol(self.state, key=key, methods=methods)

    async def handler(self, ws: HubConnection) -> None:
        session = _ConnectionSession(self, ws)
        handle = self.protocol.handle

        def respond(message: str | bytes) -> None:
            ws.answer(handle(message, session))
            if session._starting:
                session.start_pending()  # their first dataChange is framed after the answer

        ws.serve_requests(respond)
        try:
            async for message in ws:  # what came before serve_requests, and fragmented messages
                respond(message)
        except ConnectionClosed:
            pass
        finally:
            session.close()


def _serve(handler, host: str, port: int, **kwargs):
    # compression off: frames are small and deflate costs more CPU than it saves on a LAN
    kwargs.setdefault("close_timeout", 2)
    return serve(handler, host, port, compression=None, max_queue=64, create_connection=HubConnection, **kwargs)


@dataclass
class RunningServer:
    """A WebSocket server running on a background thread's event loop."""

    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    server: object
    path: str = "/connect"

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    def run(self, coro: Awaitable, timeout: float = 5.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def drop_connections(self) -> None:
        """Abort every open connection, as a crashing hub or a cut cable would."""
        async def abort():
            for conn in list(self.server.connections):
                conn.transport.abort()
        self.run(abort())

    @property
    def connection_count(self) -> int:
        async def count():
            return len(self.server.connections)
        return self.run(count())


@dataclass
class RunningHub(RunningServer):
    hub: HubServer | None = None

    @property
    def state(self) -> HubState:
        return self.hub.state


@contextlib.contextmanager
def serve_handler_in_thread(handler: Callable, *, host: str = "127.0.0.1", port: int = 0,
                            cls=RunningServer, **attrs) -> Iterator[RunningServer]:
    """Serve `handler(connection)` on a daemon thread's event loop until the block ends."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    async def main():
        try:
            server = await _serve(handler, host, port)
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            return
        box["server"] = server
        box["stop"] = asyncio.Event()
        ready.set()
        await box["stop"].wait()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 5)
        except asyncio.TimeoutError:
            log.warning("hub on port %s: connections still open at shutdown", server.sockets[0].getsockname()[1] if server.sockets else port)
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name=f"hubsim-{port}", daemon=True)
    thread.start()
    ready.wait(10)
    if "error" in box:
        raise box["error"]
    server = box["server"]
    bound_port = server.sockets[0].getsockname()[1]
    running = cls(host=host, port=bound_port, loop=loop, server=server, **attrs)
    try:
        yield running
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def serve_in_thread(*, port: int = 0, key: str = "demo-key", name: str = "hub", methods: set[str] | None = None,
                    seed: int = 1, tick: float = 0.1, host: str = "127.0.0.1") -> Iterator[RunningHub]:
    """Run a reference hub on a background thread until the block ends.

    Yields a RunningHub: `.url` (ws://127.0.0.1:PORT/connect), `.port`, `.state` (the
    HubState, e.g. `.state.read("plant/line1/pump1", "speed_sp")`), `.drop_connections()`.
    """
    hub = HubServer(key=key, name=name, seed=seed, tick=tick, methods=methods)
    with serve_handler_in_thread(hub.handler, host=host, port=port, cls=RunningHub, hub=hub) as running:
        yield running


async def _serve_forever(hub: HubServer, host: str, port: int, reuse_port: bool) -> None:
    stop = asyncio.get_running_loop().create_future()
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with _serve(hub.handler, host, port, reuse_port=reuse_port):
        await stop


def run(*, host: str = "127.0.0.1", port: int = 8765, key: str = "demo-key", name: str = "hub", seed: int = 1,
        tick: float = 0.1, methods: set[str] | None = None, processes: int = 1,
        tree: list[dict] | None = None) -> None:
    """Run the reference hub in the foreground until Ctrl-C or SIGTERM.

    With processes > 1 the hub forks that many processes sharing the port (SO_REUSEPORT) so
    the kernel spreads connections; each process keeps its own written values and subscriptions.
    ``tree`` replaces the demo entity tree (see ``hubs.hubsim.tree.bench_tree``).
    """
    def one(reuse_port: bool) -> None:
        hub = HubServer(key=key, name=name, seed=seed, tick=tick, methods=methods, tree=tree)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_forever(hub, host, port, reuse_port))

    if processes <= 1:
        one(False)
        return
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            try:
                one(True)
            finally:
                os._exit(0)
        children.append(pid)

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # SIGTERM to the parent stops its children too
    try:
        for pid in children:
            os.waitpid(pid, 0)
    except KeyboardInterrupt:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

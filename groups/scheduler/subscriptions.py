"""On-change groups: the hub subscriptions held by the beat process, one per group and entity.

Each hub gets a thread of its own, started with its first on-change group, that subscribes and
unsubscribes (a hub that is down, or slow to connect, must stall neither the clock nor other hubs)
through a client of its own. The subscriptions follow the connection:

- A subscription that ends with its connection is made again at once; the client's reconnect
  backoff is capped at ``reconnect_cap_s`` (0.5 s), so groups are subscribed again within about
  half a second of their hub coming back, however long it was down. A subscribe that fails is
  tried again every ``retry_s``.
- Every subscription asks the hub to end it after ``lease_s`` (hub protocol v1, ``subscribe``
  ``timeout``), so that a beat that vanished without closing its connection leaves nothing behind,
  and is renewed at two thirds of that: the new one is made before the old one is dropped (the
  engine's change filter drops the repeated first values), so no change falls between them.

Each ``dataChange`` is handed to ``post_event(group_id, entity, values)``; the engine applies the
deadband and dispatches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .engine import GroupSpec

logger = logging.getLogger(__name__)

PARALLEL = 16  # subscribes in flight at once per hub when many groups come back together
PERMANENT_RETRY_S = 30.0  # after a refusal that retrying soon will not change (401, 404: the group's keys are wrong)
RENEW_AT = 2 / 3  # of the lease: time left for a renewal that fails to be tried again before the old one lapses


class Subscriptions:
    """The on-change subscriptions of one beat process (see the module docstring).

    ``client_factory(url, key, timeout[, tls])`` makes a hub client (default: a ``hubs.client.HubClient``
    of this object's own, one per hub, closed by ``stop()``). ``retry_s`` (seconds) paces attempts after a
    failed subscribe, ``lease_s`` (seconds) is the ``timeout`` asked of the hub, ``reconnect_cap_s``
    (seconds) the longest reconnect backoff of the default clients. Methods are called from the beat
    thread and never block on a hub.
    """

    def __init__(self, post_event: Callable[[int, str, list], None], *, client_factory=None, retry_s: float = 0.25,
                 lease_s: float = 300.0, reconnect_cap_s: float = 0.5):
        self.post_event = post_event
        self.client_factory = client_factory
        self.retry_s = retry_s
        self.lease_s = lease_s
        self.reconnect_cap_s = reconnect_cap_s
        self._hubs: dict[tuple, _HubSubscriptions] = {}
        self._where: dict[int, tuple] = {}  # group -> its hub's key in _hubs
        self._mutex = threading.Lock()

    # called from the beat thread
    def want(self, spec: GroupSpec) -> None:
        """Subscribe ``spec``'s keys (again, if it was subscribed: its keys or hub may have changed)."""
        hub = (spec.hub_url, spec.hub_key, spec.hub_tls, spec.hub_timeout)
        with self._mutex:
            old = self._where.get(spec.id)
            if old is not None and old != hub:
                self._hubs[old].put(("drop", spec.id))
            self._where[spec.id] = hub
            worker = self._hubs.get(hub)
            if worker is None:
                worker = self._hubs[hub] = _HubSubscriptions(self, spec)
        worker.put(("want", spec))

    def drop(self, group_id: int) -> None:
        """Unsubscribe the group (no-op for a group not subscribed)."""
        with self._mutex:
            hub = self._where.pop(group_id, None)
            worker = self._hubs.get(hub) if hub is not None else None
        if worker is not None:
            worker.put(("drop", group_id))

    def stop(self) -> None:
        """Unsubscribe everything and stop the threads (waits up to 5 s for them)."""
        with self._mutex:
            workers = list(self._hubs.values())
        for worker in workers:
            worker.put(("stop", None))
        deadline = time.monotonic() + 5
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def active(self) -> dict[int, list[str]]:
        """``{group_id: [subscription id, ...]}`` of the groups subscribed now."""
        with self._mutex:
            workers = list(self._hubs.values())
        out: dict[int, list[str]] = {}
        for worker in workers:
            out.update(worker.active())
        return out

    def _client(self, spec: GroupSpec):
        if self.client_factory is not None:
            if spec.hub_tls is not None:
                return self.client_factory(spec.hub_url, spec.hub_key, spec.hub_timeout, spec.hub_tls)
            return self.client_factory(spec.hub_url, spec.hub_key, spec.hub_timeout)
        from hubs.client import HubClient

        # Ours, not the process pool's: its backoff is capped low (one refused connection attempt every
        # half second to a hub that is down costs nothing) and its connect attempts are short, so that
        # the groups follow their hub back within a second.
        client = HubClient(spec.hub_url, spec.hub_key, timeout=spec.hub_timeout, tls=spec.hub_tls,
                           connect_timeout=min(spec.hub_timeout, 2.0))
        client.backoff_cap = self.reconnect_cap_s
        return client


class _Held:
    __slots__ = ("spec", "sids", "renew_at")

    def __init__(self, spec: GroupSpec, sids: list[str], renew_at: float):
        self.spec, self.sids, self.renew_at = spec, sids, renew_at


class _HubSubscriptions:
    """One hub's subscriptions and the thread that makes them; its state is that thread's (and its pool's, while the
    thread waits for the pool)."""

    def __init__(self, owner: Subscriptions, spec: GroupSpec):
        self.owner = owner
        self._client = None
        self._executor: ThreadPoolExecutor | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._held: dict[int, _Held] = {}
        self._retry: dict[int, tuple[float, GroupSpec]] = {}  # group -> (monotonic time, spec) to subscribe again
        self._failing: set[int] = set()  # groups whose last attempt failed (warned once)
        self._thread = threading.Thread(target=self._run, name=f"hubsched-subscriptions {spec.hub_id}", daemon=True)
        self._thread.start()

    def put(self, command) -> None:
        self._commands.put(command)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def active(self) -> dict[int, list[str]]:
        return {gid: list(held.sids) for gid, held in list(self._held.items())}

    # the thread
    def _run(self) -> None:
        try:
            while True:
                now = time.monotonic()
                due = [when for when, _ in self._retry.values()] + [h.renew_at for h in self._held.values()]
                wait = min([0.5] + [max(0.0, when - now) for when in due])
                try:
                    kind, arg = self._commands.get(timeout=wait)
                except queue.Empty:
                    kind, arg = None, None
                if kind == "stop":
                    break
                if kind == "want":
                    self._retry.pop(arg.id, None)
                    self._unsubscribe(arg.id)
                    self._subscribe(arg)
                elif kind == "drop":
                    self._retry.pop(arg, None)
                    self._failing.discard(arg)
                    self._unsubscribe(arg)
                elif kind == "lost":
                    self._lost(*arg)
                self._due()
        finally:
            for gid in list(self._held):
                self._unsubscribe(gid)
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._client is not None and self.owner.client_factory is None:
                self._client.close()

    def _due(self) -> None:
        # One hub, one client: the first attempt tells whether the hub is reachable. If it fails, the others
        # due now wait for the next round instead of each waiting out the client's backoff in turn; if it
        # succeeds, the others go PARALLEL at a time, pipelined on the connection (a hub's thousand groups
        # are back in a fraction of a second, not one round trip after another).
        now = time.monotonic()
        retries = [spec for when, spec in self._retry.values() if when <= now]
        renewals = [held for held in self._held.values() if held.renew_at <= now]
        if not retries and not renewals:
            return
        for spec in retries:
            del self._retry[spec.id]
        if retries:
            ok = self._subscribe(retries[0])
            retries = retries[1:]
        else:
            ok = self._renew(renewals[0].spec.id, renewals[0])
            renewals = renewals[1:]
        if not ok:
            for spec in retries:
                self._retry[spec.id] = (now + self.owner.retry_s, spec)
            for held in renewals:
                held.renew_at = now + self.owner.retry_s
            return
        jobs = [(self._subscribe, spec) for spec in retries] + [(self._renew_held, held) for held in renewals]
        if len(jobs) == 1:
            jobs[0][0](jobs[0][1])
        elif jobs:
            for _ in self._pool().map(lambda job: job[0](job[1]), jobs):
                pass

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="hubsched-subscribe")
        return self._executor

    def _renew_held(self, held: _Held) -> bool:
        return self._renew(held.spec.id, held)

    def _lost(self, group_id: int, sid: str) -> None:
        held = self._held.get(group_id)
        if held is None or sid not in held.sids:
            return  # an older subscription's end (renewed, or already made again)
        del self._held[group_id]
        for other in held.sids:
            if other != sid:
                self._unsubscribe_one(group_id, other)  # the group's other entities: start all of them afresh
        # at once: the client's backoff (capped at reconnect_cap_s) paces the reconnect
        self._retry[group_id] = (time.monotonic(), held.spec)

    def _make(self, spec: GroupSpec) -> list[str]:
        """Subscribe every entity of ``spec``; all or none (raises, with the partial ones unsubscribed)."""
        by_entity: dict[str, list[str]] = {}
        for entity, key in spec.keys:
            by_entity.setdefault(entity, []).append(key)
        sids: list[str] = []
        try:
            if self._client is None:
                self._client = self.owner._client(spec)
            for entity, keys in by_entity.items():
                sids.append(self._client.subscribe(
                    entity, keys,
                    callback=lambda params, gid=spec.id: self.owner.post_event(gid, params.get("entity"),
                                                                               params.get("values")),
                    on_change=True,
                    timeout=self.owner.lease_s,
                    on_end=lambda sid, gid=spec.id: self._commands.put(("lost", (gid, sid))),
                ))
        except BaseException:
            for sid in sids:
                self._unsubscribe_one(spec.id, sid)
            raise
        return sids

    def _subscribe(self, spec: GroupSpec) -> bool:
        """Subscribe the group, or schedule a retry; returns False when the hub could not be reached."""
        if not spec.keys:
            logger.warning("on-change group %s reads no keys: nothing to subscribe to", spec.id)
            return True
        started = time.monotonic()
        try:
            sids = self._make(spec)
        except Exception as exc:  # HubError or a connection fault: retry later, never stop the thread
            delay, reachable = self._failed(spec.id, "subscribe", exc)
            self._retry[spec.id] = (time.monotonic() + delay, spec)
            return reachable
        self._held[spec.id] = _Held(spec, sids, started + RENEW_AT * self.owner.lease_s)
        self._recovered(spec.id)
        return True

    def _renew(self, group_id: int, held: _Held) -> bool:
        """Make the group's subscriptions anew before the hub ends the old ones, then drop those."""
        started = time.monotonic()
        try:
            sids = self._make(held.spec)
        except Exception as exc:
            delay, reachable = self._failed(group_id, "renew its subscription", exc)
            held.renew_at = time.monotonic() + delay
            return reachable
        old, held.sids = held.sids, sids
        held.renew_at = started + RENEW_AT * self.owner.lease_s
        self._recovered(group_id)
        for sid in old:
            self._unsubscribe_one(group_id, sid)
        return True

    def _failed(self, group_id: int, what: str, exc: Exception) -> tuple[float, bool]:
        """(seconds until the next attempt, whether the hub was reachable) after a failed attempt; logs the
        first failure of a run of them as a warning, the others at debug (a hub that is down is tried often)."""
        from hubs.client import HubError

        permanent = isinstance(exc, HubError) and exc.permanent  # 401, 404, ...: retrying soon will not help
        reachable = isinstance(exc, HubError) and exc.code not in ("connection", "timeout")
        delay = max(self.owner.retry_s, PERMANENT_RETRY_S) if permanent else self.owner.retry_s
        first = group_id not in self._failing
        self._failing.add(group_id)
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "on-change group %s: cannot %s (%s); retrying in %.2f s", group_id, what, exc, delay)
        return delay, reachable

    def _recovered(self, group_id: int) -> None:
        if group_id in self._failing:
            self._failing.discard(group_id)
            logger.info("on-change group %s: subscribed again", group_id)

    def _unsubscribe(self, group_id: int) -> None:
        held = self._held.pop(group_id, None)
        for sid in held.sids if held is not None else ():
            self._unsubscribe_one(group_id, sid)

    def _unsubscribe_one(self, group_id: int, sid: str) -> None:
        try:
            self._client.unsubscribe(sid)
        except Exception as exc:
            logger.info("on-change group %s: unsubscribe %s failed (%s)", group_id, sid, exc)

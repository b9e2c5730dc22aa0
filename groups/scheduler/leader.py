"""Beat high availability: which beat leads (a Redis lease with a fencing epoch), where it stopped, and the fence workers apply.

Several beats may run against one Redis. One holds the lease ``<prefix>:beat:leader`` (``"epoch|owner|since"``,
TTL ``lease_s``, 0.8 s by default), renewed every ``lease_s / 4`` by a thread with a compare-and-extend script.
Taking the lease over (once it has lapsed) ends the old epoch and starts a new one (``INCR <prefix>:beat:epoch``)
in one script. The rules that make every (hub, tick) dispatched once:

- **Rounds are committed after they are published.** Each round of sends (one ``Engine.run_due``) is numbered
  ``seq`` within the epoch, and every message of it carries ``fence = [epoch, seq]``. After publishing, the leader
  runs ``commit``: only if ``epoch`` is still the current one, it sets ``<prefix>:beat:commit = seq`` and writes
  the round's *watermarks* (``<prefix>:beat:marks``: per cohort, the last tick time sent). A leader whose commit
  fails has been replaced: it stops dispatching at once.
- **A worker runs a batch only once its round is committed** (``fence_admit``). Committed is final: a new leader
  starts after the watermarks, so it never sends a committed tick again. A round of an epoch that has ended and
  was never committed (its leader paused past its lease, or was killed between publishing and committing) is
  refused, and the new leader, starting from the watermarks, dispatches those ticks itself. A round of the
  current epoch not yet committed (the commit is a millisecond behind the publish) is waited for, up to
  ``COMMIT_WAIT_S``; if it is still not committed then, the worker ends the epoch itself (the same script as a
  takeover), so that the round can never be committed later, and refuses it.
- **Takeover** (``_TAKEOVER``) freezes the old epoch's last committed round in ``<prefix>:beat:fence:<epoch>``
  and starts the new epoch at ``seq`` 0. The new leader reads the watermarks and re-bases every cohort on them
  (``Engine.resume``): ticks that fell due in the gap are sent late while within their expiry, the rest are
  recorded ``missed``.

Safety rests on the epoch alone (a commit checks it inside Redis); the lease only decides who tries. Measured
cost: the commit is one script call per round (one round trip, in the order of 0.1 ms); a worker process reads
the fence (one ``MGET``) only when a batch is of a round later than the last committed round it has seen, so at
most once per round and process, whatever the number of hubs (``bench failover`` prints reads per batch).

On the embedded broker (``filesystem://``, and RabbitMQ without Redis) all processes are on one machine and
there is no Redis: ``FileLeadership`` takes an exclusive lock on ``VAR_DIR/beat.lock`` and a second beat refuses
to start (``BeatAlreadyRunning``). Its messages carry no fence, as a beat of before this change sent them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

COMMIT_WAIT_S = 1.0  # a worker waits this long for the commit of a round of the current epoch
FENCE_TTL_S = 7 * 86400  # how long an ended epoch's fence and the watermarks are kept (longer than any expiry)

# KEYS: leader, epoch, commit, marks; ARGV: owner, ttl_ms, now_s, fence_ttl_s
# -> {epoch, since} when this owner now leads (new epoch), else {0, current leader value}
_TAKEOVER = """
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local old = redis.call('GET', KEYS[2])
if old then
  redis.call('SET', KEYS[2] .. ':fence:' .. old, redis.call('GET', KEYS[3]) or '0', 'EX', ARGV[4])
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], '0')
local value = epoch .. '|' .. ARGV[1] .. '|' .. ARGV[3]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {epoch, value}
"""

# KEYS: leader, epoch; ARGV: value, epoch, ttl_ms -> 1 extended (or taken back: it lapsed and nobody took over), 0 lost
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if not cur and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""

# KEYS: epoch, commit, marks; ARGV: epoch, seq, marks_ttl_s, field1, due1, ... -> 1 committed, 0 fenced
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
if #ARGV > 3 then
  local pairs = {}
  for i = 4, #ARGV do pairs[#pairs + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(pairs))
end
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: leader, epoch; ARGV: value -> 1 released
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A worker gave up waiting for a round's commit: end that epoch unless the round got committed meanwhile.
# KEYS: leader, epoch, commit; ARGV: epoch, seq, fence_ttl_s -> 1 the round is committed, 0 it never will be
_ABANDON = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  local fence = redis.call('GET', KEYS[2] .. ':fence:' .. ARGV[1]) or '0'
  return tonumber(fence) >= tonumber(ARGV[2]) and 1 or 0
end
local committed = redis.call('GET', KEYS[3]) or '0'
if tonumber(committed) >= tonumber(ARGV[2]) then return 1 end
redis.call('SET', KEYS[2] .. ':fence:' .. ARGV[1], committed, 'EX', ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], '0')
redis.call('DEL', KEYS[1])
return 0
"""


class BeatAlreadyRunning(SystemExit):
    """A second beat on the embedded broker (a SystemExit: ``celery beat`` prints it and stops)."""


def redis_url_for_beat() -> str:
    """The Redis URL the beats (and the workers' fence) use: ``HUBSCHED_LOCK_URL``, else a ``redis://`` broker; "" for none."""
    from django.conf import settings

    url = settings.HUBSCHED_LOCK_URL or ""
    broker = settings.CELERY_BROKER_URL or ""
    if not url.startswith(("redis://", "rediss://")) and broker.startswith(("redis://", "rediss://")):
        url = broker
    return url if url.startswith(("redis://", "rediss://")) else ""


def key_prefix() -> str:
    """The prefix of the beat keys: ``HUBSCHED_BEAT_KEY_PREFIX`` (setting, else environment), default ``hubsched``.

    Beats and workers of one installation must agree on it; a benchmark uses its own, so that its beats never
    contend with an installation's on the same Redis."""
    from django.conf import settings

    return getattr(settings, "HUBSCHED_BEAT_KEY_PREFIX", None) or os.environ.get("HUBSCHED_BEAT_KEY_PREFIX") or "hubsched"


def _keys(prefix: str) -> dict[str, str]:
    base = f"{prefix}:beat"
    return {"leader": f"{base}:leader", "epoch": f"{base}:epoch", "commit": f"{base}:commit", "marks": f"{base}:marks"}


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class RedisLeadership:
    """The lease, commits and watermarks of one beat (see the module docstring).

    ``leading`` says whether this beat may dispatch now: set by a takeover, cleared when a renewal or a commit
    finds the epoch gone, or when 0.9 × ``lease_s`` has passed since the start of the last renewal that Redis
    confirmed (a beat cut off from Redis stops by itself, before another can have taken over). ``next_round()``
    gives the ``[epoch, seq]`` of a round about to be sent, ``commit()`` commits it. Call ``start()`` once (the
    thread that renews the lease, or tries to take it while standing by) and ``stop()`` at the end (it releases
    the lease, so a standby takes over at once). Redis errors (redis.RedisError) propagate from ``try_acquire``,
    ``renew``, ``commit`` and ``watermarks``; the thread logs them.
    """

    def __init__(self, url: str, *, prefix: str = "hubsched", lease_s: float = 0.8, owner: str | None = None,
                 on_change=None):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=max(0.2, lease_s / 2), socket_connect_timeout=1.0)
        self.prefix = prefix
        self.keys = _keys(prefix)
        self.lease_s = lease_s
        self.ttl_ms = max(10, int(lease_s * 1000))
        self.owner = owner or default_owner()
        self.on_change = on_change or (lambda leading: None)  # called from the renewal thread
        self.epoch: int | None = None
        self.value: str | None = None
        self.seq = 0
        self._valid_until = 0.0  # monotonic: the lease is surely ours until then
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._takeover = self.redis.register_script(_TAKEOVER)
        self._renew = self.redis.register_script(_RENEW)
        self._commit = self.redis.register_script(_COMMIT)
        self._release = self.redis.register_script(_RELEASE)

    # --- the lease ------------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.epoch is not None and time.monotonic() < self._valid_until

    def try_acquire(self) -> bool:
        """Take the lease if it has lapsed; returns whether this beat leads (now or already)."""
        if self.leading:
            return True
        started = time.monotonic()
        epoch, value = self._takeover(keys=[self.keys["leader"], self.keys["epoch"], self.keys["commit"],
                                            self.keys["marks"]],
                                      args=[self.owner, self.ttl_ms, f"{time.time():.3f}", int(FENCE_TTL_S)])
        if not int(epoch):
            return False
        with self._lock:
            self.epoch, self.value, self.seq = int(epoch), value.decode(), 0
            self._valid_until = started + self.lease_s * 0.9  # clocks drift a little: stop before Redis lets go
        logger.warning("hubsched beat %s leads (epoch %s)", self.owner, self.epoch)
        return True

    def renew(self) -> bool:
        """Extend the lease; returns whether this beat still leads."""
        with self._lock:
            epoch, value = self.epoch, self.value  # a commit that fails may step down meanwhile
        if epoch is None:
            return False
        started = time.monotonic()
        ok = self._renew(keys=[self.keys["leader"], self.keys["epoch"]], args=[value, epoch, self.ttl_ms])
        if ok:
            with self._lock:
                if self.epoch == epoch:
                    self._valid_until = started + self.lease_s * 0.9
            return True
        self.step_down("another beat took over")
        return False

    def step_down(self, why: str) -> None:
        with self._lock:
            if self.epoch is None:
                return
            logger.warning("hubsched beat %s stops leading (epoch %s): %s", self.owner, self.epoch, why)
            self.epoch = self.value = None
            self._valid_until = 0.0
        self.on_change(False)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hubsched-beat-lease", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        value = self.value
        if value is not None:
            try:
                self._release(keys=[self.keys["leader"], self.keys["epoch"]], args=[value])
            except Exception:  # Redis gone: the lease lapses by itself
                logger.warning("could not release the beat lease; it lapses in %.1f s", self.lease_s)
        self.epoch = self.value = None

    def _loop(self) -> None:
        renew_s, standby_s = self.lease_s / 4, min(0.1, self.lease_s / 4)
        while not self._stop.is_set():
            was = self.epoch is not None
            try:
                if was:
                    self.renew()
                elif self.try_acquire():
                    self.on_change(True)
            except Exception as exc:  # Redis unreachable: the lease runs out by itself (``leading``)
                logger.warning("hubsched beat lease: %s", exc)
                if was and not self.leading:
                    self.step_down("Redis did not confirm the lease in time")
            self._stop.wait(renew_s if self.epoch is not None else standby_s)

    # --- rounds ---------------------------------------------------------------------------------

    def next_round(self) -> list[int] | None:
        """The fence ``[epoch, seq]`` for the round about to be sent (None: not leading)."""
        if not self.leading:
            return None
        self.seq += 1
        return [self.epoch, self.seq]

    def commit(self, fence: list[int], marks: dict[str, float]) -> bool:
        """Commit the round ``fence`` and its watermarks ``{cohort: last tick sent, epoch s}``; False: fenced off."""
        args: list = [fence[0], fence[1], int(FENCE_TTL_S)]
        for field, due in marks.items():
            args += [field, repr(due)]
        ok = self._commit(keys=[self.keys["epoch"], self.keys["commit"], self.keys["marks"]], args=args)
        if not ok:
            self.step_down("its commit was fenced off (a newer epoch exists)")
        return bool(ok)

    def watermarks(self) -> dict[str, float]:
        """``{cohort: last tick time sent}`` as committed by the leaders so far."""
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self.keys["marks"]).items()}


class FileLeadership:
    """One beat per machine (the embedded broker): an exclusive lock on ``<var_dir>/beat.lock`` held for life.

    ``acquire()`` raises BeatAlreadyRunning when another process holds it (Schedulers made in one process, as
    tests make them, share the lock). Messages carry no fence.
    """

    lease_s = 0.0
    _held: dict[tuple[int, str], list] = {}  # (pid, path) -> [fd, users]: flock excludes this process's other opens too
    _mutex = threading.Lock()
    on_change = None

    def __init__(self, var_dir: str | Path):
        self.path = Path(var_dir) / "beat.lock"
        self._fd: int | None = None
        self.epoch = None
        self.owner = default_owner()
        self.since = None

    @property
    def leading(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        with FileLeadership._mutex:
            held = FileLeadership._held.get((os.getpid(), str(self.path)))
            if held is not None:
                held[1] += 1
                self._fd = held[0]
                return
            self._acquire()
            FileLeadership._held[os.getpid(), str(self.path)] = [self._fd, 1]

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BeatAlreadyRunning(
                f"hubsched beat: another beat is already running on this machine ({other}; lock {self.path}). "
                "The embedded broker (filesystem://) supports one beat: stop the other one, or use Redis "
                "(CELERY_BROKER_URL=redis://...) to run standby beats."
            ) from None
        self.since = time.time()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"owner": self.owner, "since": self.since}).encode(), 0)
        self._fd = fd

    def try_acquire(self) -> bool:
        return self.leading

    def start(self) -> None:
        pass

    def stop(self) -> None:
        if self._fd is None:
            return
        with FileLeadership._mutex:
            key = (os.getpid(), str(self.path))
            held = FileLeadership._held.get(key)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    del FileLeadership._held[key]
                    os.ftruncate(self._fd, 0)
                    os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def next_round(self) -> None:
        return None

    def commit(self, fence, marks) -> bool:
        return True

    def watermarks(self) -> dict[str, float]:
        return {}


# --- the worker's side ----------------------------------------------------------------------------------


@dataclass
class _FenceView:
    epoch: int
    committed: int
    read_at: float


class Fence:
    """Decides whether a worker runs a batch sent with ``fence = [epoch, seq]`` (see the module docstring).

    ``admit(fence)`` returns True (run it) or False (refuse: its epoch ended before committing it). The last
    view read is kept: a committed round stays committed, so a batch of a round the view already covers is
    admitted without reading Redis; otherwise one ``MGET``, and up to ``wait_s`` of polling for a commit of the
    current epoch. ``reads`` counts the Redis reads (for the benchmark). Thread-safe.
    """

    def __init__(self, url: str, *, prefix: str = "hubsched", wait_s: float = COMMIT_WAIT_S):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=5)
        self.keys = _keys(prefix)
        self.wait_s = wait_s
        self._view: _FenceView | None = None
        self._ended: dict[int, int] = {}  # epoch -> its last committed seq (final once the epoch ended)
        self._lock = threading.Lock()
        self._abandon = self.redis.register_script(_ABANDON)
        self.reads = 0

    def _read(self, epoch: int) -> _FenceView:
        current, committed, fence = self.redis.mget(self.keys["epoch"], self.keys["commit"],
                                                     f"{self.keys['epoch']}:fence:{epoch}")
        self.reads += 1
        view = _FenceView(int(current or 0), int(committed or 0), time.monotonic())
        with self._lock:
            self._view = view
            if fence is not None:
                self._ended[epoch] = int(fence)
        return view

    def admit(self, fence) -> bool:
        """Whether to run a batch of ``fence`` (``[epoch, seq]``; None or malformed: an older beat's, run it)."""
        try:
            epoch, seq = int(fence[0]), int(fence[1])
        except (TypeError, ValueError, IndexError):
            return True
        with self._lock:
            view, ended = self._view, self._ended.get(epoch)
        if ended is not None:
            return seq <= ended
        if view is not None and view.epoch == epoch and seq <= view.committed:
            return True  # committed is final, however old the view
        deadline = time.monotonic() + self.wait_s
        while True:
            view = self._read(epoch)
            with self._lock:
                ended = self._ended.get(epoch)
            if ended is not None:
                return seq <= ended
            if view.epoch == epoch and seq <= view.committed:
                return True
            if view.epoch != epoch:
                # an epoch that ended without a fence record (it expired) or that never existed: not committed
                return False
            if time.monotonic() >= deadline:
                ok = bool(self._abandon(keys=[self.keys["leader"], self.keys["epoch"], self.keys["commit"]],
                                        args=[epoch, seq, int(FENCE_TTL_S)]))
                if not ok:
                    logger.warning("beat epoch %s did not commit round %s within %.1f s: epoch ended, batch refused",
                                   epoch, seq, self.wait_s)
                return ok
            time.sleep(0.005)


_FENCE: Fence | None = None
_FENCE_PID: int | None = None
_FENCE_NONE = object()


def fence_checker() -> Fence | None:
    """The process's Fence (None where no Redis is configured: then a fenced batch runs, with a warning).

    Made on first use and again after a fork; nothing else invalidates it."""
    global _FENCE, _FENCE_PID
    if _FENCE_PID != os.getpid():
        url = redis_url_for_beat()
        _FENCE = Fence(url, prefix=key_prefix()) if url else _FENCE_NONE
        _FENCE_PID = os.getpid()
        if not url:
            logger.warning("a batch with a beat fence, but no Redis is configured here (HUBSCHED_LOCK_URL or a "
                           "redis:// broker): fences are not checked in this process")
    return None if _FENCE is _FENCE_NONE else _FENCE


def leadership_for_beat(*, on_change=None):
    """The leadership of a beat process: RedisLeadership where Redis is configured, else FileLeadership."""
    from django.conf import settings

    url = redis_url_for_beat()
    if url:
        return RedisLeadership(url, prefix=key_prefix(), lease_s=getattr(settings, "HUBSCHED_BEAT_LEASE_S", 0.8),
                               on_change=on_change)
    return FileLeadership(settings.VAR_DIR)


def beat_leader(*, url: str | None = None, prefix: str | None = None) -> dict | None:
    """Who leads the beats: ``{"owner", "epoch", "since", "lease_until"}`` (times epoch seconds) or None.

    ``owner`` is ``host:pid:tag``. On Redis, from the lease key (None while no beat leads); on the embedded
    broker, from ``VAR_DIR/beat.lock`` (None when no beat runs; ``epoch`` and ``lease_until`` are None).
    Raises redis.RedisError when Redis is configured but unreachable.
    """
    from django.conf import settings

    url = redis_url_for_beat() if url is None else url
    if not url:
        path = Path(settings.VAR_DIR) / "beat.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None  # nobody holds it: no beat runs
            except OSError:
                pass
            info = json.loads(os.pread(fd, 1000, 0) or b"{}")
        except ValueError:
            info = {}
        finally:
            os.close(fd)
        return {"owner": info.get("owner", "unknown"), "epoch": None, "since": info.get("since"), "lease_until": None}
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = _keys(prefix or key_prefix())
        pipe = client.pipeline(transaction=False)
        pipe.get(keys["leader"])
        pipe.pttl(keys["leader"])
        value, pttl = pipe.execute()
    finally:
        client.close()
    if value is None:
        return None
    epoch, owner, since = value.decode().split("|", 2)
    return {"owner": owner, "epoch": int(epoch), "since": float(since),
            "lease_until": time.time() + max(0, pttl) / 1000.0}

"""The overlap lock (one execution of a group at a time) and the per-hub gate (runs in flight per hub).

Two backends, chosen by ``locks_backend()``:

- Redis (``HUBSCHED_LOCK_URL``, else the broker URL when it is ``redis://``): a group lock is
  ``SET hubsched:run:<id> <token> NX PX <ttl>``, released by compare-and-delete. The hub gate is a
  sorted set of leases scored by their expiry in Redis's own clock (the Redis counting-semaphore
  pattern). Locks and leases live for a short TTL (``HUBSCHED_RUN_LOCK_TTL_S``, 0.8 s) and a
  heartbeat thread of the holding process extends all of them every TTL/4 in one compare-and-extend
  call: while the process lives they stay held however long its batch runs, and when it dies they
  lapse within one TTL. A holder that was paused longer than the TTL (SIGSTOP, a VM pause, a Redis
  outage) finds them gone: it never extends nor releases what another process took since (every
  write compares the token), and ``held()`` tells it which ones it still holds.
- A database (``HUBSCHED_LOCK_URL`` a PostgreSQL or MariaDB URL, else, with a broker that is not Redis, the
  Django database when it is one of those): session-level advisory locks (PostgreSQL
  ``pg_try_advisory_lock``, MariaDB ``GET_LOCK``) on one connection of the holding process, kept for
  that purpose. A lock is held exactly as long as its holder's session: the server drops it when the
  process dies (its socket closes with it, ``kill -9`` included) and, for a host that vanishes, when TCP
  keepalive gives up on the connection (about 3 s). No TTL and no heartbeat: a paused holder keeps
  what it holds, and no one else can take it meanwhile. A lost connection loses everything it held;
  ``held()`` then says so.
- Files (the embedded ``filesystem://`` broker, one machine): POSIX record locks (``fcntl.lockf``) on
  one byte per group in ``var/locks/runs.lock`` and one byte per gate slot in ``var/locks/hubs.lock``.
  The kernel drops a process's record locks when it exits, ``kill -9`` included, so a dead worker
  heals at once and no heartbeat is needed. Record locks do not exclude threads of one process, so a
  process-local set does that.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

# the group locks of a batch in one command (a pipeline of SETs cost 30 us of client CPU per group);
# returns the 1-based positions of the keys it locked
_ACQUIRE = """
local got = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then got[#got + 1] = i end
end
return got
"""

_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""

# Lease expiry is scored in the Redis server's clock (TIME; scripts replicate their effects since Redis 5),
# so workers whose clocks are a second apart still agree on a 2 s lease. PTTL < ttl: never shorten the
# set's life below another holder's lease.
_GATE_ENTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[3])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  return 1
end
return 0
"""

# The heartbeat: compare-and-extend every lock and lease one process holds, in one call. KEYS: the lock
# keys (the first ARGV[2] of them), then the gate keys; ARGV[2 + i]: the token held under KEYS[i] (a
# lock's value, a lease's member). A lease past its expiry is not revived (another process may have
# counted its slot free), it is removed. Returns the 1-based positions of what is no longer ours.
_EXTEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local nlocks = tonumber(ARGV[2])
local lost = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 2]
  if i <= nlocks then
    if redis.call('GET', key) == mine then
      redis.call('PEXPIRE', key, ttl)
    else
      lost[#lost + 1] = i
    end
  else
    local score = redis.call('ZSCORE', key, mine)
    if score and tonumber(score) > now then
      redis.call('ZADD', key, 'XX', string.format('%.0f', now + ttl), mine)
      if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
    else
      if score then redis.call('ZREM', key, mine) end
      lost[#lost + 1] = i
    end
  end
end
return lost
"""

_MARGIN_S = 0.1  # held() trusts a lock known to last at least this much longer; else it asks Redis


def _clock() -> float:
    # Seconds that keep counting while the machine is suspended, as Redis's expiry does (CLOCK_MONOTONIC stops).
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


class RedisLocks:
    """Overlap locks and hub gates in Redis, kept alive by a heartbeat of the holding process.

    ``ttl`` (seconds) is how long a lock or lease outlives its holder's last heartbeat; ``heartbeat_s``
    (seconds, default ``ttl / 4``: three beats may fail before anything lapses) how often the heartbeat
    thread extends what this process holds. The thread starts on the first acquire or gate entry (none
    at import) and again in a forked child, whose holdings start empty. Keys are ``<prefix>:run:<id>``
    and ``<prefix>:hub:<id>``. Calls raise ``redis.RedisError`` when Redis cannot be reached; the
    heartbeat thread logs its own failures and keeps trying.
    """

    def __init__(self, url: str, *, ttl: float = 2.0, prefix: str = "hubsched", heartbeat_s: float | None = None):
        import redis

        self.redis = redis.Redis.from_url(url)
        self.ttl = ttl
        self.ttl_ms = max(1, int(ttl * 1000))
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else ttl / 4
        self.prefix = prefix
        # the heartbeat's own connection: a Redis that hangs must not hold the thread past the TTL
        self._beat_redis = redis.Redis.from_url(url, socket_timeout=max(0.05, ttl / 2),
                                                socket_connect_timeout=max(0.05, ttl / 2))
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._release = self.redis.register_script(_RELEASE)
        self._gate_enter = self.redis.register_script(_GATE_ENTER)
        self._extend_now = self.redis.register_script(_EXTEND)
        self._extend_beat = self._beat_redis.register_script(_EXTEND)
        self._mutex = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        """This process's holdings and heartbeat; empty in a new process (after fork nothing is ours)."""
        self._pid = os.getpid()
        self._owner = f"{socket.gethostname()}:{self._pid}:{uuid.uuid4().hex[:8]}"
        self._locks: dict[str, tuple[str, float]] = {}  # lock key -> (token, _clock() time it lasts until)
        self._leases: dict[tuple[str, str], float] = {}  # (gate key, member) -> _clock() time it lasts until
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing = False

    def _key(self, group_id: int) -> str:
        return f"{self.prefix}:run:{group_id}"

    def _gate_key(self, hub_id: int) -> str:
        return f"{self.prefix}:hub:{hub_id}"

    def _token(self) -> str:
        # who holds a lock, readable in redis-cli: host:pid:process/acquisition
        return f"{self._owner}/{uuid.uuid4().hex[:12]}"

    def _ensure_heartbeat(self) -> None:
        """Start the heartbeat thread if this process has none; call with ``_mutex`` held."""
        if self._pid != os.getpid():
            self._reset()
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._heartbeat_loop, args=(self._stop,),
                                            name="hubsched-lock-heartbeat", daemon=True)
            self._thread.start()

    def acquire(self, group_ids: list[int]) -> tuple[str, list[int]]:
        """Try to lock each group; returns (token, the ids locked). One round trip."""
        with self._mutex:
            self._ensure_heartbeat()
            token = self._token()
        if not group_ids:
            return token, []
        sent = _clock()
        got = self._acquire(keys=[self._key(gid) for gid in group_ids], args=[token, self.ttl_ms])
        locked = [group_ids[i - 1] for i in got]
        with self._mutex:
            for gid in locked:
                self._locks[self._key(gid)] = (token, sent + self.ttl)
        return token, locked

    def refresh(self, token: str, group_ids: list[int]) -> None:
        """Extend these locks now if still ours (the heartbeat does this anyway); compare-and-extend."""
        self._extend([self._key(gid) for gid in group_ids], [], synchronous=True)

    def held(self, token: str, group_ids: list[int]) -> list[int]:
        """The ids of ``group_ids`` still locked under ``token``, in order.

        From memory while the heartbeat keeps them fresh; a lock not known to last ``_MARGIN_S`` more
        (the process was paused, or Redis was out of reach) is checked, and extended, in Redis: one round
        trip for all of them. Raises ``redis.RedisError`` when that check cannot reach Redis."""
        now = _clock()
        fresh, stale = set(), []
        with self._mutex:
            for gid in group_ids:
                entry = self._locks.get(self._key(gid))
                if entry is None or entry[0] != token:
                    continue
                if entry[1] - now > _MARGIN_S:
                    fresh.add(gid)
                else:
                    stale.append(gid)
        if stale:
            self._extend([self._key(gid) for gid in stale], [], synchronous=True)
            with self._mutex:
                fresh.update(gid for gid in stale if self._locks.get(self._key(gid), ("",))[0] == token)
        return [gid for gid in group_ids if gid in fresh]

    def release(self, token: str, group_ids: list[int]) -> None:
        """Unlock the groups still locked under ``token`` (compare-and-delete: never another's lock)."""
        if not group_ids:
            return
        keys = [self._key(g) for g in group_ids]
        with self._mutex:
            for key in keys:
                if self._locks.get(key, ("",))[0] == token:
                    del self._locks[key]
        self._release(keys=keys, args=[token])

    def gate_enter(self, hub_id: int, limit: int) -> str | None:
        """Take one of ``limit`` slots of the hub's gate; returns the lease's token, or None when all are taken."""
        with self._mutex:
            self._ensure_heartbeat()
            token = self._token()
        key = self._gate_key(hub_id)
        sent = _clock()
        if not self._gate_enter(keys=[key], args=[self.ttl_ms, limit, token]):
            return None
        with self._mutex:
            self._leases[(key, token)] = sent + self.ttl
        return token

    def gate_leave(self, hub_id: int, token: str) -> None:
        """Give the slot back (only this lease: the token is its member)."""
        key = self._gate_key(hub_id)
        with self._mutex:
            self._leases.pop((key, token), None)
        self.redis.zrem(key, token)

    # the heartbeat

    def heartbeat(self) -> int:
        """Extend every lock and lease this process holds, in one call; returns how many are held still.

        What Redis no longer holds for us (the process was paused longer than the TTL) is dropped from
        this process's holdings with a warning. Raises ``redis.RedisError``."""
        with self._mutex:
            if self._pid != os.getpid():
                return 0
            locks = list(self._locks)
            leases = list(self._leases)
        return self._extend(locks, leases)

    def _extend(self, lock_keys: list[str], leases: list[tuple[str, str]], *, synchronous: bool = False) -> int:
        with self._mutex:
            locks = [(key, self._locks[key][0]) for key in lock_keys if key in self._locks]
        if not locks and not leases:
            return 0
        script = self._extend_now if synchronous else self._extend_beat
        sent = _clock()
        lost_at = set(script(keys=[k for k, _ in locks] + [k for k, _ in leases],
                             args=[self.ttl_ms, len(locks)] + [t for _, t in locks] + [m for _, m in leases]))
        until = sent + self.ttl
        lost = []
        with self._mutex:
            for i, (key, token) in enumerate(locks, 1):
                if self._locks.get(key, ("",))[0] != token:
                    continue  # released meanwhile (or taken again under a new token): not ours to judge
                if i in lost_at:
                    del self._locks[key]
                    lost.append(key)
                else:
                    self._locks[key] = (token, until)
            for i, lease in enumerate(leases, len(locks) + 1):
                if lease not in self._leases:
                    continue
                if i in lost_at:
                    del self._leases[lease]
                    lost.append(lease[0])
                else:
                    self._leases[lease] = until
            held = len(self._locks) + len(self._leases)
        if lost:
            logger.warning("lost %d overlap locks or hub gate leases (%s%s): this process did not extend them "
                           "within %.1f s (paused, or Redis out of reach)", len(lost), ", ".join(lost[:5]),
                           ", ..." if len(lost) > 5 else "", self.ttl)
        return held

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self.heartbeat()
            except Exception as exc:  # Redis unreachable: what we hold lapses after the TTL; keep trying
                if not self._failing:
                    logger.warning("lock heartbeat: cannot reach Redis (%s); locks lapse %.1f s after the last "
                                   "beat that got through", exc, self.ttl)
                self._failing = True
            else:
                if self._failing:
                    logger.info("lock heartbeat: Redis reachable again")
                self._failing = False

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread (what this process holds then lapses after the TTL, as if it were
        paused); the next acquire or gate entry starts it again."""
        with self._mutex:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class FileLocks:
    MAX_SLOTS = 1024

    # Per process, shared by every FileLocks on the same directory: the open descriptors (never
    # closed: closing any descriptor of a file drops all of the process's record locks on it) and
    # the locks this process holds (record locks do not exclude the process's own threads).
    _fds: dict[str, int] = {}
    _held: set[str] = set()
    _pid: int | None = None
    _mutex = threading.Lock()

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _fd(self, path: str) -> int:
        cls = FileLocks
        if cls._pid != os.getpid():  # after fork: record locks are not inherited, nor are our sets
            cls._fds, cls._held, cls._pid = {}, set(), os.getpid()
        fd = cls._fds.get(path)
        if fd is None:
            fd = cls._fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    def _slot(self, name: str, offset: int) -> tuple[int, str]:
        """(descriptor, held-set key) of one lock byte; call with ``_mutex`` held."""
        path = str(self.directory / name)
        return self._fd(path), f"{path}:{offset}"

    def _try(self, name: str, offset: int) -> bool:
        with FileLocks._mutex:
            fd, slot = self._slot(name, offset)
            if slot in FileLocks._held:
                return False
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            except OSError:
                return False
            FileLocks._held.add(slot)
            return True

    def _free(self, name: str, offset: int) -> None:
        with FileLocks._mutex:
            fd, slot = self._slot(name, offset)
            if slot in FileLocks._held:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
                FileLocks._held.discard(slot)

    def acquire(self, group_ids: list[int]) -> tuple[str, list[int]]:
        return "", [gid for gid in group_ids if self._try("runs.lock", gid)]

    def refresh(self, token: str, group_ids: list[int]) -> None:
        pass  # held until released or the process ends

    def held(self, token: str, group_ids: list[int]) -> list[int]:
        """The ids of ``group_ids`` this process holds (a record lock lasts as long as its process)."""
        with FileLocks._mutex:
            return [gid for gid in group_ids if self._slot("runs.lock", gid)[1] in FileLocks._held]

    def release(self, token: str, group_ids: list[int]) -> None:
        for gid in group_ids:
            self._free("runs.lock", gid)

    def gate_enter(self, hub_id: int, limit: int) -> str | None:
        for slot in range(min(limit, self.MAX_SLOTS)):
            if self._try("hubs.lock", hub_id * self.MAX_SLOTS + slot):
                return str(slot)
        return None

    def gate_leave(self, hub_id: int, token: str) -> None:
        self._free("hubs.lock", hub_id * self.MAX_SLOTS + int(token))

    def stop_heartbeat(self) -> None:
        pass  # no heartbeat: the kernel ties record locks to the process


class DatabaseLocks:
    """Overlap locks and hub gates as session-level advisory locks of PostgreSQL or MariaDB (module docstring).

    ``url`` is an SQLAlchemy URL (``postgresql+psycopg2://...``, ``mysql+pymysql://...``); ``prefix`` keeps the
    locks of installations (or tests) sharing one database apart. One connection per process (made again
    after a fork, the parent's left alone), used under a mutex; a process-local set excludes its own threads,
    since a session may take its own advisory lock twice. Calls raise ``sqlalchemy.exc.SQLAlchemyError`` when
    the database cannot be reached; after that the connection and all it held are gone (``held()`` is []).
    """

    MAX_SLOTS = 1024
    _KEEPALIVE = {"keepalives": 1, "keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 2}

    def __init__(self, url: str, *, prefix: str = "hubsched"):
        import zlib

        import sqlalchemy as sa

        self.url = sa.engine.make_url(url)
        self.kind = self.url.get_backend_name()
        if self.kind not in ("postgresql", "mysql", "mariadb"):
            raise ValueError(f"HUBSCHED_LOCK_URL: locks live in Redis, PostgreSQL or MariaDB, not {self.kind}")
        self.prefix = prefix
        # PostgreSQL: one bigint per lock, the prefix's 15-bit hash above a kind bit and a 46-bit id
        self._space = (zlib.crc32(prefix.encode()) & 0x7FFF) << 47
        connect_args = self._KEEPALIVE if self.kind == "postgresql" else {}
        self._engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool, connect_args=connect_args)
        self._mutex = threading.Lock()
        self._inherited: list = []  # a parent's connections: closing them in a child would end its session
        self._reset()

    def _reset(self) -> None:
        if getattr(self, "_conn", None) is not None:
            self._inherited.append(self._conn)
        self._pid = os.getpid()
        self._conn = None
        self._locks: set[int] = set()  # group ids this process holds
        self._slots: set[tuple[int, int]] = set()  # (hub id, slot) this process holds

    def _connection(self):
        """The process's lock connection; call with ``_mutex`` held."""
        if self._pid != os.getpid():
            self._reset()
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def _lock_keys(self, kind: int, ids: list[int]) -> list:
        if self.kind == "postgresql":
            return [self._space | (kind << 46) | i for i in ids]
        return [f"{self.prefix}:{'run' if kind == 0 else 'hub'}:{i}"[:64] for i in ids]

    def _try_locks(self, keys: list) -> list[bool]:
        """Take each advisory lock without waiting; one round trip. Call with ``_mutex`` held."""
        import sqlalchemy as sa

        conn = self._connection()
        try:
            if self.kind == "postgresql":
                rows = conn.execute(sa.text("SELECT pg_try_advisory_lock(k) FROM unnest(CAST(:keys AS bigint[])) "
                                            "WITH ORDINALITY AS t(k, n) ORDER BY n"), {"keys": keys}).all()
                return [bool(row[0]) for row in rows]
            got: list[bool] = []
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                row = conn.exec_driver_sql("SELECT " + ", ".join(["GET_LOCK(%s, 0)"] * len(chunk)), tuple(chunk)).one()
                got += [value == 1 for value in row]
            return got
        except Exception:
            self._lost()
            raise

    def _try_first(self, keys: list) -> int | None:
        """Take the first of ``keys`` that is free (the position in ``keys``), or None; PostgreSQL in one round
        trip (the scan stops at the first lock it gets), MariaDB one key at a time. Call with ``_mutex`` held."""
        import sqlalchemy as sa

        conn = self._connection()
        try:
            if self.kind == "postgresql":
                row = conn.execute(sa.text("SELECT n FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS t(k, n) "
                                           "WHERE pg_try_advisory_lock(k) LIMIT 1"), {"keys": keys}).first()
                return None if row is None else row[0] - 1
            for position, key in enumerate(keys):
                if conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (key,)).scalar() == 1:
                    return position
            return None
        except Exception:
            self._lost()
            raise

    def _free_locks(self, keys: list) -> None:
        import sqlalchemy as sa

        if not keys or self._conn is None:
            return
        try:
            if self.kind == "postgresql":
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(k) FROM unnest(CAST(:keys AS bigint[])) AS t(k)"),
                                   {"keys": keys})
            else:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    self._conn.exec_driver_sql("SELECT " + ", ".join(["RELEASE_LOCK(%s)"] * len(chunk)), tuple(chunk))
        except Exception:
            self._lost()
            raise

    def _lost(self) -> None:
        """The connection failed: the server dropped what it held with it."""
        if self._locks or self._slots:
            logger.warning("lost %d overlap locks and %d hub gate slots: their database connection failed",
                           len(self._locks), len(self._slots))
        conn, self._conn = self._conn, None
        self._locks, self._slots = set(), set()
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:
                pass

    def acquire(self, group_ids: list[int]) -> tuple[str, list[int]]:
        """Try to lock each group; returns ("", the ids locked). One round trip."""
        with self._mutex:
            if self._pid != os.getpid():
                self._reset()
            wanted = [gid for gid in group_ids if gid not in self._locks]
            if not wanted:
                return "", []
            got = self._try_locks(self._lock_keys(0, wanted))
            locked = [gid for gid, ok in zip(wanted, got) if ok]
            self._locks.update(locked)
            return "", locked

    def refresh(self, token: str, group_ids: list[int]) -> None:
        pass  # held as long as the session

    def held(self, token: str, group_ids: list[int]) -> list[int]:
        """The ids of ``group_ids`` this process holds; [] once the lock connection has failed."""
        with self._mutex:
            if self._pid != os.getpid():
                self._reset()
            return [gid for gid in group_ids if gid in self._locks]

    def release(self, token: str, group_ids: list[int]) -> None:
        with self._mutex:
            mine = [gid for gid in group_ids if gid in self._locks]
            self._locks.difference_update(mine)
            self._free_locks(self._lock_keys(0, mine))

    def gate_enter(self, hub_id: int, limit: int) -> str | None:
        """Take one of ``limit`` slots of the hub's gate (at most MAX_SLOTS); returns the slot, or None."""
        with self._mutex:
            if self._pid != os.getpid():
                self._reset()
            free = [slot for slot in range(min(limit, self.MAX_SLOTS)) if (hub_id, slot) not in self._slots]
            if not free:
                return None
            slot = self._try_first(self._lock_keys(1, [hub_id * self.MAX_SLOTS + slot for slot in free]))
            if slot is None:
                return None
            self._slots.add((hub_id, free[slot]))
            return str(free[slot])

    def gate_leave(self, hub_id: int, token: str) -> None:
        with self._mutex:
            slot = (hub_id, int(token))
            if slot in self._slots:
                self._slots.discard(slot)
                self._free_locks(self._lock_keys(1, [hub_id * self.MAX_SLOTS + slot[1]]))

    def stop_heartbeat(self) -> None:
        pass  # no heartbeat: the server ties the locks to the session

    def close(self) -> None:
        """End the session: the server drops every lock it held."""
        with self._mutex:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._locks, self._slots = set(), set()


def lock_database_url(database_url: str) -> str | None:
    """The SQLAlchemy URL of a Django ``DATABASE_URL`` (dj-database-url form) when it is PostgreSQL or MariaDB
    (the drivers of requirements.txt), else None."""
    scheme, sep, rest = database_url.partition("://")
    if not sep:
        return None
    driver = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2", "pgsql": "postgresql+psycopg2",
              "mysql": "mysql+pymysql", "mariadb": "mysql+pymysql"}.get(scheme.split("+")[0])
    return f"{driver}://{rest}" if driver else None


_BACKEND = None
_BACKEND_PID = None


def locks_backend():
    """The process's lock backend (see the module docstring for the choice)."""
    global _BACKEND, _BACKEND_PID
    if _BACKEND is None or _BACKEND_PID != os.getpid():
        from django.conf import settings

        url = settings.HUBSCHED_LOCK_URL
        broker = settings.CELERY_BROKER_URL or ""
        if not url and broker.startswith(("redis://", "rediss://")):
            url = broker
        ttl = settings.HUBSCHED_RUN_LOCK_TTL_S  # how long a dead worker's locks outlive it
        if not url:
            url = lock_database_url(os.environ.get("DATABASE_URL", "")) or ""
        if url.startswith(("redis://", "rediss://")):
            _BACKEND = RedisLocks(url, ttl=ttl)
        elif url:
            _BACKEND = DatabaseLocks(url)
        else:
            _BACKEND = FileLocks(Path(settings.VAR_DIR) / "locks")
        _BACKEND_PID = os.getpid()
    return _BACKEND

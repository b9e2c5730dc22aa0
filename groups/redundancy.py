"""Hub redundancy on the read path: which member of a master/backup set serves a tick, failover within the tick,
failback after the master has been healthy for the set's ``failback_after_s``, and the members' offsets.

A group belongs to its set's master (``Hub.redundancy_set``, priority 0). A hub in no set costs nothing here:
``groups.execution`` looks at ``hub.redundancy_set_id`` (a column of the row it already holds) and never calls
in. For a hub in a set, the set's members and their offsets are read once per ``CONFIG_TTL_S`` per process
(``set_config``), never per tick. Health is process memory (``health()``): each worker process learns it from
its own reads, so two workers may fail back a tick apart. A parallel set is read the same way, and every other
member is read too and compared key by key (``parallel_compare``): a disagreement beyond the set's threshold for
``disagree_ticks`` ticks raises a ``RedundancyEvent``, cleared when they agree (docs/redundancy.md).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from hubs.models import Hub

    from .execution import Outcome

logger = logging.getLogger(__name__)

CONFIG_TTL_S = 5.0  # a set's members and offsets are re-read this often per process (admin edits show up then)
PROBE_EVERY_S = 1.0  # while a backup serves, the master is probed with one group's reads at most this often


@dataclass(frozen=True)
class SetConfig:
    """One redundancy set as the read path needs it: members in priority order (the master first), and each
    member's offsets ``{hub_pk: {(entity or "", key): HubOffset}}``."""

    set_id: int
    name: str
    mode: str
    failback_after_s: float
    members: tuple  # Hub rows, master first
    offsets: dict = field(default_factory=dict)
    threshold_abs: float | None = None
    threshold_percent: float | None = None
    disagree_ticks: int = 3
    key_thresholds: dict = field(default_factory=dict)  # {key: {"abs": x, "percent": y}}: in place of the set's

    @property
    def master(self) -> Hub:
        return self.members[0]


_configs: dict[int, tuple[float, SetConfig]] = {}
_configs_lock = threading.Lock()


def set_config(set_id: int) -> SetConfig:
    """The set's members and offsets, from a per-process cache refreshed every ``CONFIG_TTL_S`` seconds
    (two queries per set per refresh). Invalidated by time only, and by ``redundancy_forget()``."""
    now = time.monotonic()
    cached = _configs.get(set_id)
    if cached is not None and now - cached[0] < CONFIG_TTL_S:
        return cached[1]
    from hubs.models import Hub, HubOffset, RedundancySet

    row = RedundancySet.objects.get(pk=set_id)
    members = tuple(Hub.objects.filter(redundancy_set_id=set_id).select_related("project")
                    .order_by("redundancy_priority", "name"))
    offsets: dict[int, dict[tuple[str, str], HubOffset]] = {}
    for offset in HubOffset.objects.filter(hub__redundancy_set_id=set_id):
        offsets.setdefault(offset.hub_id, {})[(offset.entity, offset.key)] = offset
    config = SetConfig(set_id, row.name, row.mode, row.failback_after_s, members, offsets,
                       row.threshold_abs, row.threshold_percent, row.disagree_ticks, row.key_thresholds or {})
    with _configs_lock:
        _configs[set_id] = (now, config)
    return config


@dataclass
class _SetHealth:
    serving: int  # hub pk of the member that serves the set's groups now
    master_healthy_since: float | None = None  # monotonic s of the master's first good answer since its last fault
    failed_at: dict[int, float] = field(default_factory=dict)  # hub pk -> monotonic s of its last fault
    probed_at: float = 0.0


class RedundancyHealth:
    """Per set, in this process: the serving member, the members' last faults, the master's healthy time.
    Thread-safe (probe answers arrive on the hub client's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[int, _SetHealth] = {}

    def _state(self, config: SetConfig) -> _SetHealth:
        state = self._sets.get(config.set_id)
        if state is None or state.serving not in {m.pk for m in config.members}:
            state = self._sets[config.set_id] = _SetHealth(serving=config.master.pk)
        return state

    def serving(self, config: SetConfig) -> Hub:
        """The member to read now: the master, unless a backup took over and the master has not yet been
        healthy for ``failback_after_s`` seconds."""
        with self._lock:
            state = self._state(config)
            master = config.master.pk
            if state.serving != master and state.master_healthy_since is not None \
                    and time.monotonic() - state.master_healthy_since >= config.failback_after_s:
                state.serving = master
            return next(m for m in config.members if m.pk == state.serving)

    def failed(self, config: SetConfig, member: Hub) -> None:
        """Record a fault of ``member`` (an error, a timeout, bad quality)."""
        with self._lock:
            state = self._state(config)
            state.failed_at[member.pk] = time.monotonic()
            if member.pk == config.master.pk:
                state.master_healthy_since = None

    def answered(self, config: SetConfig, member: Hub, *, serve: bool) -> None:
        """Record a good answer of ``member``; with ``serve`` it serves the set from now on."""
        with self._lock:
            state = self._state(config)
            state.failed_at.pop(member.pk, None)
            if member.pk == config.master.pk and state.master_healthy_since is None:
                state.master_healthy_since = time.monotonic()
            if serve:
                state.serving = member.pk

    def next_member(self, config: SetConfig, *, tried: set[int]) -> Hub | None:
        """The member to try after those ``tried`` this tick: in priority order, those without a recent fault
        (within ``failback_after_s``) first; None when every member was tried."""
        with self._lock:
            state = self._state(config)
            now = time.monotonic()
            left = [m for m in config.members if m.pk not in tried]
            recent = {pk for pk, at in state.failed_at.items() if now - at < max(config.failback_after_s, 1.0)}
            left.sort(key=lambda m: m.pk in recent)  # stable: priority order within each part
            return left[0] if left else None

    def probe_due(self, config: SetConfig) -> bool:
        """Whether the master should be probed now (a backup serves; at most once per PROBE_EVERY_S)."""
        with self._lock:
            state = self._state(config)
            now = time.monotonic()
            if state.serving == config.master.pk or now - state.probed_at < PROBE_EVERY_S:
                return False
            state.probed_at = now
            return True

    def forget(self) -> None:
        with self._lock:
            self._sets.clear()


_health = RedundancyHealth()


def health() -> RedundancyHealth:
    """This process's redundancy health (what invalidates it: nothing but ``redundancy_forget()``)."""
    return _health


def redundancy_forget() -> None:
    """Drop the cached set configurations and the health state (tests; a process that must re-learn)."""
    with _configs_lock:
        _configs.clear()
    _health.forget()
    _tracker.forget()


def member_to_read(hub: Hub) -> tuple[Hub, SetConfig]:
    """The member of ``hub``'s set that serves ``hub``'s groups now, and the set."""
    config = set_config(hub.redundancy_set_id)
    return health().serving(config), config


def _bad_quality(read: list[tuple[str, list[dict]]]) -> str | None:
    for entity, items in read:
        for item in items:
            if item.get("quality") == "bad":
                return f"entity {entity!r}, key {item.get('key')!r}: quality bad"
    return None


def probe_master(config: SetConfig, futures: list[Future]) -> None:
    """Count the master's answers to a probe (the same reads as a group's) into its health, as they arrive."""
    master = config.master
    pending = [len(futures)]
    ok = [True]
    lock = threading.Lock()

    def done(future: Future) -> None:
        try:
            result = future.result()
            good = not any(isinstance(v, dict) and v.get("quality") == "bad" for v in (result or {}).get("values", []))
        except Exception:  # noqa: BLE001  (any fault of the probe is a fault of the master)
            good = False
        with lock:
            ok[0] = ok[0] and good
            pending[0] -= 1
            last = pending[0] == 0
        if not good:
            health().failed(config, master)
        elif last and ok[0]:
            health().answered(config, master, serve=False)

    for future in futures:
        future.add_done_callback(done)


def offsets_apply(config: SetConfig, member: Hub, read: list[tuple[str, list[dict]]]) -> list[tuple[str, list[dict]]]:
    """``read`` with ``member``'s offsets applied to numbers (``value * factor + add``; an offset for the entity
    wins over one for every entity); value objects corrected are copies, the others are passed on as they are."""
    offsets = config.offsets.get(member.pk)
    if not offsets:
        return read
    out = []
    for entity, items in read:
        corrected = []
        for item in items:
            offset = offsets.get((entity, item.get("key"))) or offsets.get(("", item.get("key")))
            if offset is not None and "value" in item:
                value = offset.apply(item["value"])
                if value is not item["value"]:
                    item = {**item, "value": value}
            corrected.append(item)
        out.append((entity, corrected))
    return out


def reads_collect_with_failover(outcome: Outcome, config: SetConfig,
                                collect: Callable[[Outcome, Hub], tuple[list, int]],
                                send: Callable[[Outcome, Hub], None]) -> tuple[Hub, list, int]:
    """Collect ``outcome``'s reads from the member they were sent to (``outcome.served_by``); when that fails
    (``GroupRunError``: hub error, timeout, not connected) or returns a bad-quality value, send the same reads to
    the next member (``RedundancyHealth.next_member``) and collect those, within the tick's deadline
    (``outcome.deadline``). Returns ``(member that served, read with its offsets applied, bytes)``. When every
    member failed, a bad-quality read (the first) is stored rather than none; else raises the first member's
    GroupRunError, naming the members tried."""
    from .execution import ExecutionKilled, GroupRunError

    member = outcome.served_by
    tried: set[int] = set()
    first_error: GroupRunError | None = None
    bad: tuple[Hub, list, int] | None = None
    while True:
        tried.add(member.pk)
        try:
            read, size = collect(outcome, member)
            problem = _bad_quality(read)
            if problem is None:
                health().answered(config, member, serve=True)
                return member, offsets_apply(config, member, read), size
            bad = bad or (member, read, size)
            first_error = first_error or GroupRunError(f"hub {member.name!r}: {problem}")
        except ExecutionKilled:
            raise
        except GroupRunError as exc:
            first_error = first_error or exc
        health().failed(config, member)
        member = health().next_member(config, tried=tried)
        if member is None or (outcome.deadline is not None and time.time() >= outcome.deadline):
            break
        outcome.served_by = member
        send(outcome, member)
        if outcome.error:  # the tick expired before the backup's reads went out
            first_error = first_error or GroupRunError(outcome.error)
            outcome.error = ""
            break
    if bad is not None:
        outcome.served_by = bad[0]
        return bad[0], offsets_apply(config, bad[0], bad[1]), bad[2]
    names = ", ".join(m.name for m in config.members if m.pk in tried)
    raise GroupRunError(f"redundancy set {config.name!r}: every member failed (tried {names}); first: {first_error}")


# --- parallel mode: every member read, the master's values stored, the others compared -------------------------


def values_disagree(config: SetConfig, master_value, member_value, key: str | None = None) -> bool:
    """Whether two values of ``key`` disagree under its thresholds (the set's ``key_thresholds[key]`` when it
    has them, else the set's): numbers (not booleans) by more than ``abs`` or more than ``percent`` of the
    larger magnitude (with neither: any difference); any other values when they are not equal."""
    def number(v):
        return not isinstance(v, bool) and isinstance(v, (int, float))

    if not (number(master_value) and number(member_value)):
        return master_value != member_value
    own = config.key_thresholds.get(key) if key is not None else None
    limit_abs, limit_percent = (own.get("abs"), own.get("percent")) if own else (config.threshold_abs,
                                                                                  config.threshold_percent)
    diff = abs(master_value - member_value)
    if limit_abs is None and limit_percent is None:
        return diff > 0
    if limit_abs is not None and diff > limit_abs:
        return True
    scale = max(abs(master_value), abs(member_value))
    return limit_percent is not None and diff > limit_percent / 100.0 * scale


class DisagreementTracker:
    """Per (set, member, entity, key), in this process: consecutive ticks of disagreement, and the open
    ``RedundancyEvent`` (loaded from the database once per set, so a restarted worker clears what it finds open)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple, int] = {}
        self._open: dict[tuple, int] = {}  # (set id, member name, entity, key) -> event pk
        self._loaded: set[int] = set()

    def _load(self, set_id: int) -> None:
        if set_id in self._loaded:
            return
        from hubs.models import RedundancyEvent

        for pk, member, entity, key in RedundancyEvent.objects.filter(redundancy_set_id=set_id, cleared_at=None) \
                .values_list("pk", "member", "entity", "key"):
            self._open[(set_id, member, entity, key)] = pk
        self._loaded.add(set_id)

    def observe(self, config: SetConfig, *, master: Hub, member: Hub, entity: str, key: str, master_value,
                member_value, tick) -> None:
        """Count one comparison; raise an event at ``disagree_ticks`` consecutive disagreements, clear it at the
        first agreement. Both are logged (``groups.redundancy``, warning and info)."""
        from hubs.models import RedundancyEvent

        ident = (config.set_id, member.name, entity, key)
        disagree = values_disagree(config, master_value, member_value, key)
        with self._lock:
            self._load(config.set_id)
            if not disagree:
                self._counts.pop(ident, None)
                event_pk = self._open.pop(ident, None)
            else:
                count = self._counts[ident] = self._counts.get(ident, 0) + 1
                if count < config.disagree_ticks or ident in self._open:
                    return
                event = RedundancyEvent.objects.create(
                    redundancy_set_id=config.set_id, master=master.name, member=member.name, entity=entity, key=key,
                    master_value=master_value, member_value=member_value, raised_at=tick)
                self._open[ident] = event.pk
                logger.warning("redundancy set %r: %s.%s disagrees for %d ticks: %s has %r, %s has %r", config.name,
                               entity, key, count, master.name, master_value, member.name, member_value)
                return
        if event_pk is not None:
            RedundancyEvent.objects.filter(pk=event_pk).update(cleared_at=tick)
            logger.info("redundancy set %r: %s.%s agrees again (%s and %s)", config.name, entity, key,
                        master.name, member.name)

    def forget(self) -> None:
        with self._lock:
            self._counts.clear()
            self._open.clear()
            self._loaded.clear()


_tracker = DisagreementTracker()


def disagreements() -> DisagreementTracker:
    """This process's disagreement counts (invalidated by ``redundancy_forget()`` only)."""
    return _tracker


def parallel_reads_send(outcome: Outcome, config: SetConfig, send: Callable[[Hub], dict]) -> None:
    """Parallel set: the group's reads sent to every member but the one serving (``send(member)``
    returns ``{entity: Future}``), into ``outcome.parallel``; a member that cannot be sent to is left out."""
    from hubs.client import HubError

    for member in config.members:
        if member.pk != outcome.served_by.pk:
            try:
                outcome.parallel[member.pk] = send(member)
            except HubError:
                continue


def parallel_compare(outcome: Outcome, config: SetConfig, collect: Callable[[Outcome, Hub], tuple[list, int]]) -> None:
    """Collect the other members' answers (``outcome.parallel``) and compare each key with what is stored
    (``outcome.read``, the serving member's, offsets applied to both); a member whose read failed is not
    compared this tick. Only the stored read is kept; the others are dropped."""
    from .execution import ExecutionKilled, GroupRunError

    stored = {(entity, item["key"]): item.get("value") for entity, items in outcome.read for item in items}
    by_pk = {m.pk: m for m in config.members}
    pending, outcome.parallel = outcome.parallel, {}
    for pk, futures in pending.items():
        member = by_pk.get(pk)
        if member is None or member.pk == outcome.served_by.pk:
            continue
        outcome.reads = futures
        try:
            read, _ = collect(outcome, member)
        except ExecutionKilled:
            raise
        except GroupRunError:
            health().failed(config, member)
            continue
        health().answered(config, member, serve=False)
        for entity, items in offsets_apply(config, member, read):
            for item in items:
                ident = (entity, item["key"])
                if ident in stored and item.get("quality") != "bad":
                    disagreements().observe(config, master=outcome.served_by, member=member, entity=entity,
                                            key=item["key"], master_value=stored[ident], member_value=item.get("value"),
                                            tick=outcome.scheduled_for)
    outcome.reads = {}

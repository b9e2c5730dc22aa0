"""What group executions read from the Django database, kept per worker process.

A worker runs about a thousand executions a second at full load. Reading each group's row, its
keys, its hub's writable parameters and its project's sinks for every one of them cost more than
the rest of the data path (docs/data-path.md), so each process keeps them:

- a group is read again when its ``updated_at`` moves (key, hub and project edits bump it too, see
  ``groups.signals``): at most every ``HUBSCHED_EXECUTION_CHECK_S`` seconds one indexed query asks
  for the groups changed since the last check;
- everything (groups, scripts, sinks, writable flags) is read again after
  ``HUBSCHED_EXECUTION_CACHE_S`` seconds, so an edit no timestamp shows (a script's code, a sink's
  URL) reaches the workers within that time;
- a save or delete of a project, hub, group, key, script or sink in this process (admin, shell,
  tests) forgets everything at once.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from hubsched.per_process import PerProcess

SLACK = timedelta(seconds=5)  # rows committed a little after their updated_at was stamped
APPS = {"groups", "hubs", "scripts_engine"}
NOT_DEFINITIONS = {"GroupRun", "GroupStats"}  # written by executions themselves


class Definitions:
    """Groups (with ``hub__project``, ``script`` and ``keys``), writable parameters and sink targets. Thread-safe."""

    def __init__(self, *, ttl: float, check: float):
        self.ttl = ttl
        self.check = check
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._groups: dict[int, tuple[float, object]] = {}
            self._writable: dict[int, tuple[float, set]] = {}
            self._sinks: dict[int, tuple[float, list]] = {}
            self._checked = time.monotonic()
            self._since = timezone.now()

    def groups(self, ids: set[int]) -> dict:
        """``{id: Group}`` for the ids that exist."""
        now = time.monotonic()
        self._forget_changed(now)
        found, missing = {}, set()
        for gid in ids:
            entry = self._groups.get(gid)
            if entry is not None and now - entry[0] < self.ttl:
                found[gid] = entry[1]
            else:
                missing.add(gid)
        if missing:
            # a hub's groups run together: read every group of the hubs concerned in one go
            loaded = _load_groups(missing)
            missing |= set(loaded)
            with self._lock:
                for gid in missing:
                    self._groups.pop(gid, None)
                self._groups.update((gid, (now, g)) for gid, g in loaded.items())
            found.update((gid, loaded[gid]) for gid in ids if gid in loaded)
        return found

    def writable(self, hub_ids: set[int]) -> set[tuple[int, str, str]]:
        """``{(hub_id, entity path, key)}`` of the hubs' writable parameters."""
        from hubs.models import Parameter

        now = time.monotonic()
        missing = {h for h in hub_ids if now - self._writable.get(h, (-1e9,))[0] >= self.ttl}
        if missing:
            rows: dict[int, set] = {h: set() for h in missing}
            for row in Parameter.objects.filter(entity__hub_id__in=missing, writable=True).values_list(
                "entity__hub_id", "entity__path", "key"
            ):
                rows[row[0]].add(row)
            with self._lock:
                self._writable.update((h, (now, found)) for h, found in rows.items())
        out: set = set()
        for h in hub_ids:
            out |= self._writable[h][1]
        return out

    def sink_targets(self, project_ids: set[int]) -> dict[int, list]:
        """Each project's sink targets (``scripts_engine.sinks.sink_targets_for_projects``)."""
        from scripts_engine.sinks import sink_targets_for_projects

        now = time.monotonic()
        missing = {p for p in project_ids if now - self._sinks.get(p, (-1e9,))[0] >= self.ttl}
        if missing:
            loaded = sink_targets_for_projects(project_ids=missing)
            with self._lock:
                self._sinks.update((p, (now, targets)) for p, targets in loaded.items())
        return {p: self._sinks[p][1] for p in project_ids}

    def _forget_changed(self, now: float) -> None:
        if now - self._checked < self.check or not self._check_lock.acquire(blocking=False):
            return
        try:
            from groups.models import Group

            started = timezone.now()
            changed = list(Group.objects.filter(updated_at__gte=self._since - SLACK).values_list("pk", flat=True))
            with self._lock:
                for gid in changed:
                    self._groups.pop(gid, None)
            self._since, self._checked = started, now
        finally:
            self._check_lock.release()


def _load_groups(ids: set[int]) -> dict:
    """The groups ``ids`` and every other group of their hubs, each with its read plan.

    Keys are read as tuples, not GroupKey instances: a worker holds a hundred thousand of them
    (1,000 groups x 100 keys), and making model instances of them took seconds of CPU per reload.
    """
    from groups.execution import read_plan_set
    from groups.models import Group, GroupKey

    hubs = list(Group.objects.filter(pk__in=ids).values_list("hub_id", flat=True).distinct())
    groups = {g.pk: g for g in Group.objects.select_related("hub__project", "script").filter(hub_id__in=hubs)}
    keys: dict[int, list[tuple[str, str, str]]] = {gid: [] for gid in groups}
    rows = GroupKey.objects.filter(group__hub_id__in=hubs).order_by("group_id", "position", "id")
    for gid, alias, entity, key in rows.values_list("group_id", "alias", "entity", "key").iterator(chunk_size=10_000):
        if gid in keys:  # a group made after the first query waits for the next load
            keys[gid].append((alias or key, entity, key))
    for gid, group in groups.items():
        read_plan_set(group, keys[gid])
    return groups


def _new_definitions() -> Definitions:
    from django.conf import settings

    return Definitions(ttl=settings.HUBSCHED_EXECUTION_CACHE_S, check=settings.HUBSCHED_EXECUTION_CHECK_S)


process_definitions: PerProcess[Definitions] = PerProcess(_new_definitions)


def definitions() -> Definitions:
    """The process's cache, configured from settings on first use."""
    return process_definitions.get()


def _forget(sender, **kwargs) -> None:
    cache = process_definitions.peek()
    if cache is not None and sender._meta.app_label in APPS and sender.__name__ not in NOT_DEFINITIONS:
        cache.clear()


post_save.connect(_forget, dispatch_uid="groups.definitions.saved")
post_delete.connect(_forget, dispatch_uid="groups.definitions.deleted")

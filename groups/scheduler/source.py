"""Reading groups for the scheduler: GroupSpecs from Group rows (and their PeriodicTask), and what changed.

Change detection costs two small queries a poll (default every 0.5 s): groups with ``updated_at``
since a watermark (indexed; key, hub and project edits bump it too, see ``groups.signals``) and
django-celery-beat's one-row ``PeriodicTasks.last_update`` (any PeriodicTask saved or deleted, e.g.
a person disabling a group's entry in the django-celery-beat admin), plus a ``COUNT(*)`` of groups.
When the mark moved it reads the changed PeriodicTasks' group ids; when the count differs from what
the scheduler holds, the list of group ids (to find deletions). Nothing reloads every group.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .engine import Engine, GroupSpec

logger = logging.getLogger(__name__)

SLACK = timedelta(seconds=5)  # rows committed a little after their updated_at was stamped

_FIELDS = (
    "id", "hub_id", "trigger", "period", "offset", "cron", "run_at", "expires", "deadband", "enabled",
    "hub__enabled", "hub__max_in_flight", "hub__url", "hub__api_key", "hub__timeout",
    "hub__project__time_zone", "periodic_task_id", "periodic_task__enabled", "stats__last_run_at",
    "name", "hub__name",
)


def group_specs(*, ids=None, changed_since: datetime | None = None, chunk: int = 5000) -> list[GroupSpec]:
    """GroupSpecs for the given ids, or those changed since a time, or all groups."""
    from groups.models import Group, GroupKey, Trigger

    qs = Group.objects.all()
    if changed_since is not None:
        qs = qs.filter(updated_at__gte=changed_since)
    rows = []
    if ids is not None:
        ids = list(ids)
        for start in range(0, len(ids), chunk):
            rows.extend(qs.filter(pk__in=ids[start : start + chunk]).values(*_FIELDS))
    else:
        rows = list(qs.values(*_FIELDS).iterator(chunk_size=chunk))
    keys: dict[int, list[tuple[str, str]]] = {}
    on_change = [r["id"] for r in rows if r["trigger"] == Trigger.ON_CHANGE]
    for start in range(0, len(on_change), chunk):
        for gid, entity, key in GroupKey.objects.filter(group_id__in=on_change[start : start + chunk]).values_list(
            "group_id", "entity", "key"
        ):
            keys.setdefault(gid, []).append((entity, key))
    tls = _hubs_tls({r["hub_id"] for r in rows if r["trigger"] == Trigger.ON_CHANGE})
    cap = settings.HUBSCHED_HUB_MAX_IN_FLIGHT
    specs = []
    for r in rows:
        active = bool(r["enabled"] and r["hub__enabled"])
        if r["periodic_task_id"] is not None and r["periodic_task__enabled"] is False:
            active = False  # switched off in the django-celery-beat admin
        run_at = r["run_at"].timestamp() if r["run_at"] else None
        if r["trigger"] == Trigger.ONCE and run_at is not None and r["stats__last_run_at"] is not None:
            active = active and r["stats__last_run_at"].timestamp() < run_at  # a once group runs once
        specs.append(
            GroupSpec(
                id=r["id"], hub_id=r["hub_id"], trigger=r["trigger"], period=r["period"], offset=r["offset"] or 0.0,
                cron=r["cron"] or "", run_at=run_at, expires=r["expires"], deadband=r["deadband"],
                tz=r["hub__project__time_zone"] or "UTC", active=active,
                hub_limit=max(1, min(r["hub__max_in_flight"] or 1, cap)),
                keys=tuple(keys.get(r["id"], ())), hub_url=r["hub__url"], hub_key=r["hub__api_key"],
                hub_timeout=r["hub__timeout"], hub_tls=tls.get(r["hub_id"]), name=r["name"], hub_name=r["hub__name"],
            )
        )
    return specs


def _hubs_tls(hub_ids: set[int]) -> dict:
    """``{hub_id: TlsOptions}`` of the hubs that on-change groups subscribe to (only they connect from beat; the
    PEM texts are not read for every group)."""
    from hubs.client import TlsOptions
    from hubs.models import Hub

    fields = ("pk", "tls_ca_bundle", "tls_client_cert", "tls_client_key", "tls_verify")
    return {pk: TlsOptions(ca_pem=ca, cert_pem=cert, key_pem=key, verify=verify)
            for pk, ca, cert, key, verify in Hub.objects.filter(pk__in=hub_ids).values_list(*fields)}


class GroupSource:
    """Keeps an Engine in step with the database: ``load()`` once, then ``poll()`` often."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._since: datetime | None = None
        self._mark = None
        self._count: int | None = None

    def load(self) -> int:
        from django_celery_beat.models import PeriodicTasks

        started = timezone.now()
        self._mark = PeriodicTasks.last_change()
        specs = group_specs()
        for spec in specs:
            self.engine.upsert(spec)
        self._since = started - SLACK
        self._count = len(specs)
        return len(specs)

    def poll(self) -> int:
        """Apply what changed since the last poll; returns the number of groups re-read."""
        from django_celery_beat.models import PeriodicTask, PeriodicTasks

        from groups.models import Group

        started = timezone.now()
        changed = group_specs(changed_since=self._since)
        mark = PeriodicTasks.last_change()
        count = Group.objects.count()
        if mark != self._mark:
            since = self._since
            task_ids = PeriodicTask.objects.filter(date_changed__gte=since, hubsched_group__isnull=False)
            ids = set(Group.objects.filter(periodic_task__in=task_ids).values_list("pk", flat=True))
            ids -= {s.id for s in changed}
            if ids:
                changed += group_specs(ids=ids)
        for spec in changed:
            self.engine.upsert(spec)
        held = len(self.engine.specs) - self.engine.jobs  # the engine holds the jobs too (negative ids)
        if count != self._count or count != held:  # a deletion (maybe hidden by an insert)
            alive = set(Group.objects.values_list("pk", flat=True))
            for gid in [g for g in self.engine.specs if g > 0 and g not in alive]:
                self.engine.remove(gid)
            missing = alive - set(self.engine.specs)
            if missing:
                for spec in group_specs(ids=missing):
                    self.engine.upsert(spec)
            count = len(alive)
        self._mark, self._count = mark, count
        self._since = started - SLACK
        return len(changed)

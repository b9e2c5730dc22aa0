"""Adding to GroupStats counters in bulk: one UPDATE per (field, amount) and chunk of ids, not one per tick."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from django.db import transaction
from django.db.models import F

CHUNK = 500  # ids per statement: well under SQLite's bound-parameter limit

FIELDS = {"dispatched", "skipped", "missed"}


def group_stats_add(*, counts: Mapping[str, Mapping[int, int]]) -> int:
    """Add ``counts[field][group_id]`` to GroupStats (creating missing rows); returns statements run.

    Groups that no longer exist are left out. Concurrent writers add up (F() expressions).
    """
    from groups.models import Group, GroupStats

    statements = 0
    for field, per_group in counts.items():
        if field not in FIELDS:
            raise ValueError(f"unknown counter {field!r}")
        by_amount: dict[int, list[int]] = defaultdict(list)
        for gid, amount in per_group.items():
            if amount:
                by_amount[amount].append(gid)
        for amount, gids in by_amount.items():
            for start in range(0, len(gids), CHUNK):
                chunk = gids[start : start + CHUNK]
                with transaction.atomic():
                    updated = GroupStats.objects.filter(group_id__in=chunk).update(**{field: F(field) + amount})
                    statements += 1
                    if updated < len(chunk):
                        have = set(GroupStats.objects.filter(group_id__in=chunk).values_list("group_id", flat=True))
                        missing = [g for g in chunk if g not in have]
                        alive = list(Group.objects.filter(pk__in=missing).values_list("pk", flat=True))
                        GroupStats.objects.bulk_create([GroupStats(group_id=g) for g in alive], ignore_conflicts=True)
                        GroupStats.objects.filter(group_id__in=alive).update(**{field: F(field) + amount})
                        statements += 3
    return statements

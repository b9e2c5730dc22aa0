"""Adding to GroupStats counters in bulk (beat's and the workers' alike): one UPDATE per (field, amount) and run or chunk of ids, not one per tick.

Ids that form a run of consecutive numbers (groups made together, as a project import makes them)
are updated with one ``group_id BETWEEN a AND b`` each, the rest with ``IN`` chunks of 500: beat
adds ``dispatched`` for 100,000 groups a second, and 200 ``IN`` statements a second cost a core.

The workers' counters of finished runs (``group_stats_add_runs``) differ per group (each run's lag,
sometimes its tick or outcome), so they are one raw UPDATE per 200 groups with a ``CASE`` for each
column whose amount differs: at 1,000 runs a flush the ORM's F() + ``Case(When(...))`` UPDATEs cost
~200 µs of worker CPU a run to build and compile, the raw statements 5-7 µs (SQLite, PostgreSQL).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from django.db import connections, router, transaction
from django.db.models import F, Q

from hubsched.secrets import text_mask

CHUNK = 500  # ids per statement: well under SQLite's bound-parameter limit
MIN_RUN = 64  # consecutive ids from which a BETWEEN beats listing them


def id_runs(gids: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Split ids into runs of at least MIN_RUN consecutive numbers ``[(first, last)]`` and the other ids."""
    runs, rest = [], []
    ordered = sorted(set(gids))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            if i - start >= MIN_RUN:
                runs.append((ordered[start], ordered[i - 1]))
            else:
                rest.extend(ordered[start:i])
            start = i
    return runs, rest


FIELDS = {"dispatched", "skipped", "missed"}


def group_stats_add(*, counts: Mapping[str, Mapping[int, int]]) -> int:
    """Add ``counts[field][group_id]`` to GroupStats (creating missing rows); returns statements run.

    Groups that no longer exist are left out. Concurrent writers add up (F() expressions).
    """
    statements = 0
    for field, per_group in counts.items():
        if field not in FIELDS:
            raise ValueError(f"unknown counter {field!r}")
        by_amount: dict[int, list[int]] = defaultdict(list)
        for gid, amount in per_group.items():
            if amount:
                by_amount[amount].append(gid)
        for amount, gids in by_amount.items():
            runs, rest = id_runs(gids)
            parts = [(Q(group_id__gte=first, group_id__lte=last), range(first, last + 1)) for first, last in runs]
            parts += [(Q(group_id__in=chunk), chunk) for chunk in (rest[i : i + CHUNK] for i in range(0, len(rest), CHUNK))]
            for where, ids in parts:
                statements += group_stats_update(where=where, group_ids=ids, updates={field: F(field) + amount})
    return statements


def group_stats_update(*, where: Q, group_ids: Sequence[int], updates: dict) -> int:
    """Apply ``updates`` (F() expressions) to the GroupStats rows of ``group_ids``, which ``where``
    selects (a BETWEEN or an IN), making the rows that are missing; returns statements run.

    Groups that no longer exist are left out. When rows are missing the UPDATE is rolled back and run
    again once they are made: a row another writer makes meanwhile then gets this writer's amounts too.
    """
    from groups.models import GroupStats

    rows = GroupStats.objects.filter(where)
    return _update_making_rows(
        update=lambda: rows.update(**updates),
        present=lambda: set(rows.values_list("group_id", flat=True)),
        group_ids=group_ids,
        lock=lambda: list(rows.order_by("group_id").select_for_update().values_list("group_id", flat=True)),
    )


def _update_making_rows(*, update: Callable[[], int], present: Callable[[], set[int]], group_ids: Sequence[int],
                        lock: Callable[[], object]) -> int:
    """Run ``update()`` (returns the rows it matched) over the GroupStats rows of ``group_ids``, making
    the missing rows of groups that still exist; returns statements run.

    ``lock()`` first locks those rows in group id order (``SELECT ... ORDER BY group_id FOR UPDATE``; nothing
    on SQLite, whose writers take the whole file): one multi-row UPDATE locks its rows in the order it scans
    them, which two writers need not share, and PostgreSQL then broke concurrent writers with "deadlock
    detected" (groups/tests/test_runs_record.py, four writers). In one order no two writers wait on each other.

    The rule that keeps concurrent writers right: an UPDATE that finds rows missing is rolled back,
    the rows are made (``ignore_conflicts``: another writer may make them at the same time), and the
    UPDATE runs again over all of them. Adding only to the rows found and then making the others
    with this writer's amounts would lose the amounts of a writer that made one meanwhile.
    """
    from groups.models import Group, GroupStats

    using = router.db_for_write(GroupStats)
    locks = connections[using].features.has_select_for_update
    with transaction.atomic(using=using):
        if locks:
            lock()
        if update() >= len(group_ids):
            return 2 if locks else 1
        transaction.set_rollback(True)
    have = present()
    missing = [g for g in group_ids if g not in have]
    statements = 4 if locks else 2
    for start in range(0, len(missing), CHUNK):
        alive = Group.objects.filter(pk__in=missing[start : start + CHUNK]).values_list("pk", flat=True)
        GroupStats.objects.bulk_create([GroupStats(group_id=g) for g in alive], ignore_conflicts=True)
        statements += 2
    with transaction.atomic(using=using):
        if locks:
            lock()
            statements += 1
        update()
    return statements + 1


# --- counters of finished runs (the workers' run recorder) -----------------------------------------


@dataclass(slots=True)
class RunTotals:
    """What one group's tick outcomes in one flush add to its GroupStats row.

    ``started`` counts executions (ok, failed and killed), ``skipped``/``missed`` the ticks that never ran.
    ``lag_ms`` is the sum of the executions' start lags in milliseconds. ``last_run_at`` and
    ``last_status`` are those of the outcome with the latest tick, whatever it was (``None``/``""``
    while none is added): a group whose ticks all go missed says so. ``last_error`` is the error of the
    last failed run, ``None`` when none failed (the row's ``last_error`` then stays as it is).
    """

    started: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    missed: int = 0
    killed: int = 0
    values: int = 0
    lag_ms: int = 0
    last_run_at: datetime | None = None
    last_status: str = ""
    last_error: str | None = None

    def add(self, *, scheduled_for: datetime, status: str, error: str = "", values: int = 0, lag_ms: int = 0) -> None:
        """Count one tick's outcome (groups.models.RunStatus); a later tick (or the same tick seen later)
        becomes the last run. Raises ValueError for another status."""
        if status == "ok":
            self.started += 1
            self.done += 1
        elif status == "failed":
            self.started += 1
            self.failed += 1
            # Defence in depth (groups.services masks a run's error already): this text is shown by /api/status.
            self.last_error = text_mask(error)
        elif status == "skipped":
            self.skipped += 1
        elif status == "missed":
            self.missed += 1
        elif status == "killed":
            self.started += 1
            self.killed += 1
        else:
            raise ValueError(f"unknown run status {status!r}")
        self.values += values
        self.lag_ms += lag_ms
        if self.last_run_at is None or scheduled_for >= self.last_run_at:
            self.last_run_at, self.last_status = scheduled_for, status

    @property
    def outcomes(self) -> int:
        return self.started + self.skipped + self.missed


RUNS_CHUNK = 200  # groups per UPDATE: a CASE costs the database a comparison per branch and row, n²/2 a column
# GroupStats column and the RunTotals attribute added to it
RUN_COUNTERS = (("started", "started"), ("done", "done"), ("failed", "failed"), ("skipped", "skipped"),
                ("missed", "missed"), ("killed", "killed"), ("values", "values"), ("lag_ms_total", "lag_ms"))


def group_stats_add_runs(*, totals: Mapping[int, RunTotals]) -> int:
    """Add ``totals[group_id]`` to the GroupStats rows (making missing rows); returns statements run.

    One UPDATE per chunk of RUNS_CHUNK groups (halved while its bound parameters exceed the
    backend's limit, 999 on SQLite). A counter goes up by an amount in SQL (``"done" = "done" + …``),
    so concurrent writers add up; an amount the same for the whole chunk is one parameter, others a
    ``CASE "group_id" WHEN … THEN … ELSE … END``. ``last_run_at``/``last_status`` are set to the
    flush's latest run, ``last_error`` to the flush's last error where a run failed. Missing rows are
    made by ``_update_making_rows``' rule; groups that no longer exist are left out. Datetimes are
    aware (``USE_TZ``); the connection's adapter stores them as the ORM would.
    """
    from groups.models import GroupStats

    totals = {gid: t for gid, t in totals.items() if t.outcomes}
    connection = connections[router.db_for_write(GroupStats)]
    qn = connection.ops.quote_name
    table, group_id = qn(GroupStats._meta.db_table), qn(GroupStats._meta.get_field("group").column)
    limit = connection.features.max_query_params
    gids = sorted(totals)  # rows in one order for every writer
    pending = [gids[start : start + RUNS_CHUNK] for start in range(0, len(gids), RUNS_CHUNK)]
    statements = 0
    while pending:
        chunk = pending.pop(0)
        sql, params = _runs_update_sql(connection, [totals[g] for g in chunk], chunk)
        if limit and len(params) > limit and len(chunk) > 1:
            pending[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
            continue
        select = f"SELECT {group_id} FROM {table} WHERE {group_id} IN ({', '.join(['%s'] * len(chunk))})"
        statements += _update_making_rows(update=partial(_rowcount, connection, sql, params),
                                          present=partial(_first_column, connection, select, chunk), group_ids=chunk,
                                          lock=partial(_first_column, connection,
                                                       f"{select} ORDER BY {group_id} FOR UPDATE", chunk))
    return statements


def _rowcount(connection, sql: str, params: Sequence) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _first_column(connection, sql: str, params: Sequence) -> set:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _runs_update_sql(connection, totals: list[RunTotals], gids: list[int]) -> tuple[str, list]:
    """The UPDATE of the GroupStats rows of ``gids`` (totals ``totals``, in the same order) and its parameters."""
    from groups.models import GroupStats

    qn = connection.ops.quote_name
    column = {name: qn(GroupStats._meta.get_field(name).column) for name in
              ("group", "last_run_at", "last_status", "last_error", *(name for name, _ in RUN_COUNTERS))}
    group_id = column["group"]
    sets: list[str] = []
    params: list = []

    def per_group(values: list, *, keep: str | None = None, adapt=None) -> str:
        # One parameter when every group has the same value, else a CASE with a branch for each group
        # whose value differs from the most common one (the usual flush: every group ok, with as many
        # values, at one tick; each with its own lag). With ``keep`` (a column), None keeps its value.
        def value_sql(value) -> str:
            if value is None:
                return keep
            params.append(adapt(value) if adapt else value)
            return "%s"

        common, count = Counter(values).most_common(1)[0]
        if count == len(values):
            return value_sql(common)
        branches = []
        for gid, value in zip(gids, values):
            if value != common:
                params.append(gid)
                branches.append(f"WHEN %s THEN {value_sql(value)}")
        return f"CASE {group_id} {' '.join(branches)} ELSE {value_sql(common)} END"

    for name, attr in RUN_COUNTERS:
        amounts = [getattr(t, attr) for t in totals]
        if any(amounts):
            sets.append(f"{column[name]} = {column[name]} + {per_group(amounts)}")
    adapt = connection.ops.adapt_datetimefield_value  # as the ORM stores them (SQLite: naive text)
    sets.append(f"{column['last_run_at']} = {per_group([t.last_run_at for t in totals], adapt=adapt)}")
    sets.append(f"{column['last_status']} = {per_group([t.last_status for t in totals])}")
    errors = [t.last_error for t in totals]
    if any(e is not None for e in errors):  # groups without a failed run keep theirs
        sets.append(f"{column['last_error']} = {per_group(errors, keep=column['last_error'])}")
    where = f"{group_id} IN ({', '.join(['%s'] * len(gids))})"
    sql = f"UPDATE {qn(GroupStats._meta.db_table)} SET {', '.join(sets)} WHERE {where}"
    params.extend(gids)
    return sql, params

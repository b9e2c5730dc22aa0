"""The rules of a group and its keys, written once: the admin (model ``clean()``, the key inline), the console
and API, and project import (hubs/project_document/validation.py) all call these, so the text is the same.

Messages name what is wrong without a location; each caller puts them where they belong (a form field,
an inline row, a JSON path such as ``hubs[0].groups[1].keys[2]``). The wide layout rules themselves
(which key becomes which column and table) are in scripts_engine/sinks/tables.py; docs/data-path.md,
"Wide layout names", says why each is a refusal or a mapping.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping, Sequence

from croniter import croniter

MIN_PERIOD_S = 0.1  # the scheduler's finest grid (groups/scheduler/triggers.py)
PERIOD_MESSAGE = "must be at least %(limit_value)s seconds"  # a MinValueValidator message: "must be at least 0.1 seconds"
CRON_NEEDED = "a cron trigger needs a cron expression"
CRON_INVALID = "not a six-field cron expression (seconds first, e.g. */5 * * * * *)"
RUN_AT_NEEDED = "a once trigger needs run_at"
NO_KEYS = "a group needs at least one key (it would read nothing)"


def period_problem(period: float) -> str | None:
    """Why ``period`` (seconds) is not an interval trigger's period, or None (Group.period's validator says the same)."""
    return PERIOD_MESSAGE % {"limit_value": MIN_PERIOD_S} if period < MIN_PERIOD_S else None


def cron_problem(cron: str) -> str | None:
    """Why ``cron`` is not a six-field cron expression with seconds first (Group.cron), or None."""
    if len(cron.split()) != 6 or not croniter.is_valid(cron, second_at_beginning=True):
        return CRON_INVALID
    return None


def group_trigger_problems(*, trigger: str, cron: str, has_run_at: bool) -> list[tuple[str, str]]:
    """``[(field, message)]`` for a trigger without its fields and a cron expression that does not parse.

    ``has_run_at``: whether the once trigger's time is given (import parses it first and reports an
    unreadable one on its own). The period's lower bound is Group.period's validator (``period_problem``).
    """
    problems = []
    if trigger == "cron" and not cron:
        problems.append(("cron", CRON_NEEDED))
    if cron and cron_problem(cron):
        problems.append(("cron", CRON_INVALID))
    if trigger == "once" and not has_run_at:
        problems.append(("run_at", RUN_AT_NEEDED))
    return problems


def script_project_problem(*, script_name: str, script_project_id: int, hub_name: str, hub_project_id: int) -> str | None:
    """A group runs only a script of its hub's project."""
    if script_project_id != hub_project_id:
        return f"script {script_name!r} belongs to another project than hub {hub_name!r}"
    return None


def key_tree_problem(*, entity: str, key: str, tree: Mapping[str, set[str]]) -> str | None:
    """Why ``entity.key`` is not in the hub's entity tree ``{entity id: {parameter keys}}``, or None.

    An empty tree is a hub never synced (or a document without ``entities``): nothing can be checked
    then, and the key is accepted; a key the hub lacks fails its group's runs ("no value for key").
    """
    if not tree or key in tree.get(entity, ()):
        return None
    return key_missing_message(entity=entity, key=key, entity_exists=entity in tree)


def key_missing_message(*, entity: str, key: str, entity_exists: bool) -> str:
    where = "no entity parameter" if entity_exists else "no entity"
    return f"{entity}.{key} names {where} of this hub"


def group_keys_problems(
    *, keys: Sequence[tuple[str, str, str]], tree: Mapping[str, set[str]] | None, wide: bool
) -> list[tuple[int | None, str]]:
    """Every problem of a group's keys ``[(entity, key, alias)]`` (in the group's order): ``[(index, message)]``,
    index None for the keys as a whole.

    A group needs a key; a key may be listed once and a binding name (alias, else key) used once; with
    ``tree`` (``{entity id: {keys}}``, see ``key_tree_problem``; None: not checked here) each key must be
    in it; with ``wide`` (a sink of the project uses the wide layout) no two keys may share a column and
    no column may be too long (``scripts_engine.sinks.tables.wide_columns_problems``).
    """
    from scripts_engine.sinks.tables import wide_columns_problems

    if not keys:
        return [(None, NO_KEYS)]
    problems: list[tuple[int | None, str]] = []
    pairs: set[tuple[str, str]] = set()
    bindings: set[str] = set()
    for index, (entity, key, alias) in enumerate(keys):
        if (entity, key) in pairs:
            problems.append((index, f"{entity}.{key} is listed twice"))
        pairs.add((entity, key))
        binding = alias or key
        if binding in bindings:
            problems.append((index, f"binding name {json.dumps(binding)} is used twice in this group"))
        bindings.add(binding)
        problem = key_tree_problem(entity=entity, key=key, tree=tree) if tree is not None else None
        if problem:
            problems.append((index, problem))
    if wide:
        # The wide writer names a column after the parameter key, not the binding (scripts_engine/sinks/writers.py).
        # A key listed twice is reported above, not again as sharing its own column.
        once = list({(entity, key): index for index, (entity, key, _) in reversed(list(enumerate(keys)))}.items())
        once.sort(key=lambda item: item[1])
        columns = wide_columns_problems([key for (_, key), _ in once], [f"{entity}.{key}" for (entity, key), _ in once])
        problems.extend((once[i][1], message) for i, message in columns)
    return problems


def wide_table_message(*, hub: str, group: str, other_hub: str, other_group: str, table: str, sink: str) -> str:
    return (
        f"group {json.dumps(group)} of hub {json.dumps(hub)} would share the wide table {json.dumps(table)} of sink "
        f"{json.dumps(sink)} with group {json.dumps(other_group)} of hub {json.dumps(other_hub)}: the rows of one "
        "would be dropped; rename one of them"
    )


def wide_table_problems(
    *, sinks: Iterable[tuple[str, str]], groups: Sequence[tuple[str, str]], start: int = 0
) -> list[tuple[int, str]]:
    """``[(index, message)]`` for the groups ``[(hub name, group name)]`` whose wide table another has.

    ``sinks`` are the project's wide sinks ``[(name, table)]``; each group is reported once, for the first
    sink where it collides, naming the earlier group. Only groups at ``start`` and later are reported
    (earlier ones are those already saved, when one group is being checked against them).
    """
    from scripts_engine.sinks.tables import wide_table_collisions

    reported: dict[int, str] = {}
    for sink, prefix in sinks:
        for index, other, table in wide_table_collisions(prefix=prefix, groups=groups):
            if index >= start and index not in reported:
                (hub, group), (other_hub, other_group) = groups[index], groups[other]
                reported[index] = wide_table_message(
                    hub=hub, group=group, other_hub=other_hub, other_group=other_group, table=table, sink=sink
                )
    return sorted(reported.items())


# --- the same rules on saved rows (admin, console, API) -----------------------------------------------------


def project_wide_sinks(*, project_id: int) -> list[tuple[str, str]]:
    """The project's sinks with the wide layout, enabled or not (one may be enabled later): ``[(name, table)]``."""
    from scripts_engine.models import Sink, SinkLayout
    from scripts_engine.sinks.tables import DEFAULT_TABLE

    rows = Sink.objects.filter(project_id=project_id, layout=SinkLayout.WIDE).order_by("pk").values_list("name", "table")
    return [(name, table or DEFAULT_TABLE) for name, table in rows]


def hub_key_problem(*, hub_id: int, entity: str, key: str) -> str | None:
    """``key_tree_problem`` against the hub's saved tree (Entity and Parameter rows); None for a hub never synced."""
    from hubs.models import Entity, Parameter

    if Parameter.objects.filter(entity__hub_id=hub_id, entity__path=entity, key=key).exists():
        return None
    entities = Entity.objects.filter(hub_id=hub_id)
    if not entities.exists():
        return None
    return key_missing_message(entity=entity, key=key, entity_exists=entities.filter(path=entity).exists())


def group_wide_table_problem(*, project_id: int, hub_name: str, group_name: str, group_id: int | None) -> str | None:
    """``wide_table_problems`` for one group (saved or not) against the project's other saved groups."""
    from .models import Group

    sinks = project_wide_sinks(project_id=project_id)
    if not sinks:
        return None
    others = list(
        Group.objects.filter(hub__project_id=project_id).exclude(pk=group_id).order_by("hub__name", "name").values_list("hub__name", "name")
    )
    problems = wide_table_problems(sinks=sinks, groups=[*others, (hub_name, group_name)], start=len(others))
    return problems[0][1] if problems else None


def hub_rename_problems(*, project_id: int, hub_id: int, hub_name: str) -> list[str]:
    """``wide_table_problems`` for the groups of hub ``hub_id`` under its new name ``hub_name``."""
    from .models import Group

    sinks = project_wide_sinks(project_id=project_id)
    if not sinks:
        return []
    groups = Group.objects.filter(hub__project_id=project_id).order_by("hub__name", "name")
    others = list(groups.exclude(hub_id=hub_id).values_list("hub__name", "name"))
    mine = [(hub_name, name) for name in groups.filter(hub_id=hub_id).values_list("name", flat=True)]
    return [message for _, message in wide_table_problems(sinks=sinks, groups=[*others, *mine], start=len(others))]


def project_wide_problems(*, project_id: int, sinks: list[tuple[str, str]]) -> list[str]:
    """Everything the wide sinks ``sinks`` ``[(name, table)]`` would refuse in the project's saved groups:
    shared columns within a group, shared tables across groups (when a sink is made wide)."""
    from scripts_engine.sinks.tables import wide_columns_problems

    from .models import Group, GroupKey

    if not sinks:
        return []
    groups = list(Group.objects.filter(hub__project_id=project_id).select_related("hub").order_by("hub__name", "name"))
    keys: dict[int, list[tuple[str, str, str]]] = {g.pk: [] for g in groups}
    for group_id, entity, key in GroupKey.objects.filter(group__in=groups).order_by("group", "position", "pk").values_list(
        "group_id", "entity", "key"
    ):
        keys[group_id].append((entity, key, ""))
    problems = []
    for group in groups:
        named = keys[group.pk]
        for _, message in wide_columns_problems([k for _, k, _ in named], [f"{e}.{k}" for e, k, _ in named]):
            problems.append(f"group {json.dumps(group.name)} of hub {json.dumps(group.hub.name)}: {message}")
    problems += [m for _, m in wide_table_problems(sinks=sinks, groups=[(g.hub.name, g.name) for g in groups])]
    return problems

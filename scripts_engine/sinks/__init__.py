"""SQL sinks through SQLAlchemy: where every polled value is stored (the one adapter for sink databases).

What is stored (an execution's values) and how a value becomes columns: ``values.py``; layouts
and their tables: ``tables.py``; one batch to one sink: ``writers.py`` (wide, and the dispatch),
``tall.py`` (COPY, LOAD DATA, executemany); a log consumer's offset committed with the values:
``offsets.py``. The sinks are fed by their forwarders, which read the durable log (``streams.forwarding``).
"""

from __future__ import annotations

from .tables import DEFAULT_TABLE, tall_table, wide_table_name
from .values import ExecutionValues, parse_ts, value_json
from .errors import SinkError
from .writers import SinkTarget, engines_dispose, sink_engine, sink_write, sink_write_isolating

__all__ = [
    "DEFAULT_TABLE", "ExecutionValues", "SinkError", "SinkTarget", "parse_ts", "sink_engine", "sink_targets_for_project",
    "sink_targets_for_projects", "sink_write", "sink_write_isolating", "sinks_dispose", "sinks_write", "tall_table",
    "value_json", "wide_table_name",
]


def sink_targets_for_projects(*, project_ids: set[int]) -> dict[int, list[SinkTarget]]:
    """Each project's enabled sinks; the settings' default sink (HUBSCHED_SINK_URL, LOAD DATA LOCAL off) for
    one that has none."""
    from django.conf import settings

    from ..models import Sink

    targets: dict[int, list[SinkTarget]] = {pid: [] for pid in project_ids}
    for sink in Sink.objects.enabled().filter(project_id__in=project_ids).order_by("pk"):
        targets[sink.project_id].append(
            SinkTarget(name=sink.name, url=sink.url, table=sink.table or DEFAULT_TABLE, layout=sink.layout,
                       local_infile=sink.local_infile)
        )
    default = SinkTarget(name="default", url=settings.HUBSCHED_SINK_URL)
    return {pid: found or [default] for pid, found in targets.items()}


def sink_targets_for_project(*, project_id: int) -> list[SinkTarget]:
    return sink_targets_for_projects(project_ids={project_id})[project_id]


def sinks_write(*, targets: list[SinkTarget], executions: list[ExecutionValues]) -> None:
    """Write ``executions`` to every target now; raises one ``SinkError`` naming every target that failed."""
    errors = []
    for target in targets:
        try:
            sink_write(target=target, executions=executions)
        except SinkError as exc:
            errors.append(exc.message)
    if errors:
        raise SinkError("; ".join(errors))


def sinks_dispose() -> None:
    """Close every pooled sink connection and forget known tables (after fork, and in tests)."""
    engines_dispose()

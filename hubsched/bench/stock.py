"""The stock data path for ``bench e2e``: one Celery task per group, a connection per hub call, one INSERT and commit per value.

This is what a first implementation with django-celery-beat looks like, kept apart from the product:
beat (``hubsched.bench.scheduler:StockScheduler``, django-celery-beat's DatabaseScheduler with the due
time in a header) sends ``hubsched.bench.stock.group_run`` once per group per period; the task reads
the group from the Django database, opens a WebSocket to the hub for each ``getEntityParams`` and
closes it, then stores each value with its own INSERT and COMMIT in the project's sink (the tall
layout's columns, through SQLAlchemy). The worker loads it with ``-I hubsched.bench.stock``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone

from celery import shared_task

_tables: dict[int, tuple] = {}  # project id -> (engine, table), per process
_lock = threading.Lock()


def _sink_of(project_id: int):
    found = _tables.get(project_id)
    if found is None:
        import sqlalchemy as sa

        from scripts_engine.models import Sink
        from scripts_engine.sinks import sink_engine, tall_table

        sink = Sink.objects.filter(project_id=project_id).order_by("pk").first()
        with _lock:
            found = _tables[project_id] = (sink_engine(sink.url), tall_table(sa.MetaData(), sink.table))
    return found


@shared_task(name="hubsched.bench.stock.group_run", bind=True, ignore_result=True)
def group_run(self, group_id: int) -> None:
    """Poll one group (a connection per call) and store each value with its own INSERT and COMMIT."""
    import websocket

    from groups.models import Group
    from scripts_engine.sinks import parse_ts
    from scripts_engine.sinks.writers import value_json, value_num

    due = getattr(self.request, "bench_due", None) or (self.request.headers or {}).get("bench_due")
    tick = datetime.fromtimestamp(float(due) if due else time.time(), timezone.utc)
    group = Group.objects.select_related("hub__project").prefetch_related("keys").get(pk=group_id)
    hub = group.hub
    by_entity: dict[str, list[str]] = defaultdict(list)
    for gk in group.keys.all():
        by_entity[gk.entity].append(gk.key)
    engine, table = _sink_of(hub.project_id)
    for entity, keys in by_entity.items():
        ws = websocket.create_connection(hub.url, timeout=hub.timeout)
        try:
            ws.send(json.dumps({"id": 1, "key": hub.api_key, "method": "getEntityParams",
                                "params": {"entity": entity, "keys": keys}}))
            values = json.loads(ws.recv())["result"]["values"]
        finally:
            ws.close()
        for item in values:
            with engine.connect() as conn:
                conn.execute(table.insert(), {
                    "tick": tick, "ts": parse_ts(item.get("ts")), "project": hub.project.name, "hub": hub.name,
                    "group_id": group.pk, "group_name": group.name, "entity": entity, "key": item["key"],
                    "value_num": value_num(item.get("value")), "value_json": value_json(item.get("value")),
                    "quality": item.get("quality") or "good",
                })
                conn.commit()

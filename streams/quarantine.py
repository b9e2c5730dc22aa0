"""The quarantine's services: write quarantined executions to their sink again, and export them as JSON.

An execution a sink's database refused is set aside by its forwarder (``streams.forwarding.sinks``) with
its log record, after which the forwarder's offset moves on: nothing but these services ever writes it
again. Deleting is the admin's own delete (``streams.admin``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from hubsched.secrets import text_mask
from scripts_engine.sinks import DEFAULT_TABLE, SinkError, SinkTarget, sink_write_isolating

from .codec import CodecError, outcome_decode
from .forwarding.sinks import DEFAULT
from .models import Forwarder, ForwarderKind, QuarantinedExecution

MAX_ERRORS = 20  # messages returned by a retry; the counts say the rest
RETRY_CHUNK = 200  # rows (and their records) in memory at once, written to a sink together


def forwarder_target(forwarder: Forwarder) -> SinkTarget | None:
    """Where ``forwarder`` writes, as ``streams.forwarding.process`` builds it: its Sink's target, the
    settings' default sink (HUBSCHED_SINK_URL) for ``sink:default`` and its lanes; None for one that feeds no sink
    (the run recorder). A disabled sink still has its target: a retry is asked for by a person."""
    if forwarder.kind != ForwarderKind.SINK:
        return None
    if forwarder.sink_id is not None:
        sink = forwarder.sink
        return SinkTarget(name=sink.name, url=sink.url, table=sink.table or DEFAULT_TABLE, layout=sink.layout,
                          local_infile=sink.local_infile)
    if forwarder.name == DEFAULT or forwarder.name.startswith(DEFAULT + ":"):  # its lanes too
        return SinkTarget(name="default", url=settings.HUBSCHED_SINK_URL)
    return None


def _label(row: QuarantinedExecution) -> str:
    return f"{row.hub}/{row.group} @ {_iso(row.tick)}"


def _iso(value) -> str | None:
    return timezone.localtime(value, dt_timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def quarantined_retry(*, ids: list[int]) -> dict:
    """Write each quarantined execution ``ids`` names to its forwarder's sink again.

    Per forwarder, one ``sink_write_isolating`` of its executions, RETRY_CHUNK rows at a time (no
    consumer offset: the forwarder is past them already); idempotent per execution (the tall ledger, the wide unique tick), so one that
    went in meanwhile is not stored twice. A row that went in is deleted; one refused again is kept with
    the new error and ``tries`` + 1; when the database is away (an error that is no refusal) the rows of
    that forwarder are kept likewise and counted ``unreachable`` (its later chunks not tried). A record that no longer decodes is
    kept, counted ``unreadable``.

    Returns ``{"stored": rows written and deleted, "values": values they held, "refused": rows refused
    again, "unreachable": rows whose sink could not be reached, "unreadable": rows whose record does not
    decode or whose forwarder feeds no sink, "missing": ids not (or no longer) quarantined, "errors":
    [masked messages, at most MAX_ERRORS]}``. Raises only Django database errors (the quarantine's own
    database away).
    """
    wanted = sorted({int(i) for i in ids})
    result = {"stored": 0, "values": 0, "refused": 0, "unreachable": 0, "unreadable": 0, "missing": 0, "errors": []}
    away: set[int] = set()  # forwarders whose sink could not be reached: their later chunks are not tried

    def note(message: str) -> None:
        if len(result["errors"]) < MAX_ERRORS:
            result["errors"].append(text_mask(message)[:2000])

    def failed(kind: str, row_ids: list[int], message: str) -> None:
        message = text_mask(message)[:2000]
        result[kind] += len(row_ids)
        note(message)
        QuarantinedExecution.objects.filter(pk__in=row_ids).update(error=message, tries=F("tries") + 1)

    for chunk in (wanted[i:i + RETRY_CHUNK] for i in range(0, len(wanted), RETRY_CHUNK)):
        rows = list(QuarantinedExecution.objects.filter(pk__in=chunk).select_related("forwarder__sink")
                    .order_by("offset", "pk"))
        result["missing"] += len(chunk) - len(rows)
        by_forwarder: dict[int, list[QuarantinedExecution]] = defaultdict(list)
        for row in rows:
            by_forwarder[row.forwarder_id].append(row)
        for forwarder_id, group in by_forwarder.items():
            forwarder = group[0].forwarder
            target = forwarder_target(forwarder)
            if target is None:
                result["unreadable"] += len(group)
                note(f"{forwarder.name}: feeds no sink; nothing retried")
                continue
            if forwarder_id in away:
                result["unreachable"] += len(group)
                continue
            readable, executions = [], []
            for row in group:
                try:
                    executions.append(outcome_decode(bytes(row.body)).execution)
                    readable.append(row)
                except CodecError as exc:
                    failed("unreadable", [row.pk], f"{forwarder.name}: {_label(row)}: record unreadable: {exc}")
            if not readable:
                continue
            try:
                _written, refusals = sink_write_isolating(target=target, executions=executions)
            except SinkError as exc:  # the database away (or, for a lone execution, refusing it): all are kept
                if not exc.refused:
                    away.add(forwarder_id)
                label = f"{_label(readable[0])}: " if len(readable) == 1 else ""
                failed("refused" if exc.refused else "unreachable", [row.pk for row in readable],
                       f"{forwarder.name}: {label}{exc.message}")
                continue
            went_in = [index for index in range(len(readable)) if index not in refusals]
            for index, error in sorted(refusals.items()):
                kind = "refused" if error.refused else "unreachable"
                failed(kind, [readable[index].pk], f"{forwarder.name}: {_label(readable[index])}: {error.message}")
            QuarantinedExecution.objects.filter(pk__in=[readable[index].pk for index in went_in]).delete()
            result["stored"] += len(went_in)
            result["values"] += sum(executions[index].value_count() for index in went_in)
    return result


def _record_json(body: bytes) -> tuple[object | None, str | None]:
    """The record as a JSON value, or (None, its text) where it is not strict JSON (unreadable, or a NaN
    or Infinity the codec keeps, which a strict JSON reader would refuse)."""
    text = bytes(body).decode("utf-8", errors="replace")
    try:
        record = json.loads(text)
        json.dumps(record, allow_nan=False)
    except ValueError:
        return None, text
    return record, None


def quarantined_export(*, ids: list[int]) -> bytes:
    """The quarantined executions ``ids`` names (those that exist), as one UTF-8 JSON document (strict
    JSON), oldest first:

    ``[{"id", "forwarder", "stream", "offset", "group_id", "tick", "project", "hub", "group", "values",
    "error", "tries", "created_at", "record"}]`` with times in RFC 3339 UTC and ``record`` the log record
    decoded (streams.codec format version 1, the object as written). A record that is not strict JSON
    (one holding NaN or Infinity, or bytes that are no JSON at all) has ``record`` null and its text in
    ``record_text``. Raises only Django database errors."""
    rows = QuarantinedExecution.objects.filter(pk__in=list(ids)).select_related("forwarder").order_by("created_at", "pk")
    document = []
    for row in rows:
        record, text = _record_json(row.body)
        item = {
            "id": row.pk, "forwarder": row.forwarder.name, "stream": row.stream, "offset": row.offset,
            "group_id": row.group_id, "tick": _iso(row.tick), "project": row.project, "hub": row.hub,
            "group": row.group, "values": row.values_count, "error": row.error, "tries": row.tries,
            "created_at": _iso(row.created_at), "record": record,
        }
        if text is not None:
            item["record_text"] = text
        document.append(item)
    return json.dumps(document, ensure_ascii=False, allow_nan=False, indent=1).encode()

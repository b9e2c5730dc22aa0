"""An execution's values (``scripts_engine.sinks.values.ExecutionValues``) as one log record, and back.

Format version 1 (what another service reading the stream natively decodes): one UTF-8 JSON object

    {"v": 1, "tick": "<RFC 3339, the execution's scheduled time>", "project": str, "hub": str,
     "group_id": int, "group": str, "values": [[entity, [value object, ...]], ...]}

with the value objects exactly as the hub answered them (hub protocol v1 ``getEntityParams``:
``{"key", "value", "ts"?, "quality"?}``; entity ``""`` for values a script computed). Standard JSON,
except where a value holds what only the standard library reads (NaN, Infinity, integers beyond 64
bits, which some hubs send): then those tokens appear as Python's ``json`` writes them, so nothing is
lost or changed on the way through. A reader must check ``v`` and refuse a version it does not know.

orjson encodes (several times faster than ``json``); it writes NaN as ``null``, so an encoding that
holds ``null`` is checked for non-finite floats (a C-speed substring test first: most have none).
"""

from __future__ import annotations

import json
import math
from datetime import datetime

import orjson

from scripts_engine.sinks.values import ExecutionValues

VERSION = 1


class CodecError(ValueError):
    """A record that is not an execution of a known format version (says which and why)."""


def _has_non_finite(obj) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_non_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_non_finite(v) for v in obj)
    return False


def execution_encode(execution: ExecutionValues) -> bytes:
    """The record bytes of ``execution`` (format version 1). Raises CodecError for values that are
    not JSON even to the standard library (e.g. a set)."""
    doc = {
        "v": VERSION,
        "tick": execution.tick.isoformat(),
        "project": execution.project,
        "hub": execution.hub,
        "group_id": execution.group_id,
        "group": execution.group,
        "values": execution.values,
    }
    try:
        encoded = orjson.dumps(doc)
        if b"null" not in encoded or not _has_non_finite(execution.values):
            return encoded
    except TypeError:
        pass  # an integer beyond 64 bits or a type orjson does not take: the standard encoder decides
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode()
    except (TypeError, ValueError) as exc:
        raise CodecError(f"execution of group {execution.group_id} at {execution.tick.isoformat()}: "
                         f"values are not JSON: {exc}") from None


def execution_decode(body: bytes) -> ExecutionValues:
    """The execution in a record's bytes. Raises CodecError for bytes that are not JSON, a version
    other than 1, or a field missing or of the wrong type."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CodecError(f"record is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CodecError(f"record is a JSON {type(doc).__name__}, expected an object")
    if doc.get("v") != VERSION:
        raise CodecError(f"record format version {doc.get('v')!r}: this reader knows {VERSION}")
    try:
        tick = datetime.fromisoformat(doc["tick"])
        values = [(entity, items) for entity, items in doc["values"]]
        execution = ExecutionValues(tick, doc["project"], doc["hub"], doc["group_id"], doc["group"], values)
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"record format version 1: field missing or malformed: {exc!r}") from None
    if tick.tzinfo is None or not isinstance(execution.group_id, int):
        raise CodecError("record format version 1: tick must carry a UTC offset and group_id be an integer")
    return execution

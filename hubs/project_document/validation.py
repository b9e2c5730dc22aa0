"""Reading a project document at the edge: size and nesting limits, JSON, the JSON Schema, then semantic checks."""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import jsonschema
from django.conf import settings

from groups.validators import cron_problem, group_keys_problems, group_trigger_problems, period_problem, wide_table_problems
from hubs.validators import (
    HUB_URL_MESSAGE,
    TLS_CERT_WITHOUT_KEY_MESSAGE,
    failback_problem,
    key_thresholds_problems,
    hub_offset_problems,
    hub_tls_problems,
    hub_url_problem,
    redundancy_members_problems,
    time_zone_problem,
)

from .errors import ProjectDocumentError, ProjectDocumentUnreadable

FORMAT = "hubsched.project/1"
SCHEMA_PATH = Path(__file__).with_name("schema.json")

# Limits; settings may override them (HUBSCHED_PROJECT_DOCUMENT_MAX_BYTES, ..._MAX_DEPTH).
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# 100 levels hold an entity tree some 45 deep (each level is an object and its children array) and stay
# far below the interpreter's recursion limit, which json.loads and the schema validator would hit.
DEFAULT_MAX_DEPTH = 100

# Fields holding secrets: their values are never quoted in an error message.
SECRET_FIELDS = {"api_key", "url", "tls_client_key"}
# A secret field whose whole value has this shape is a reference (docs/projects.md, Secrets): import
# takes it only when it is the one variable export writes for that field (references_resolve), so a
# document cannot read any other environment variable (SECRET_KEY, another hub's key) into a field.
REFERENCE = re.compile(r"\$\{([^{}]*)\}")


def max_bytes() -> int:
    return int(getattr(settings, "HUBSCHED_PROJECT_DOCUMENT_MAX_BYTES", DEFAULT_MAX_BYTES))


def max_depth() -> int:
    return int(getattr(settings, "HUBSCHED_PROJECT_DOCUMENT_MAX_DEPTH", DEFAULT_MAX_DEPTH))


@cache
def schema() -> dict:
    """The JSON Schema (Draft 2020-12) of ``hubsched.project/1``, from ``schema.json`` beside this module."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@cache
def _validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema())
    return jsonschema.Draft202012Validator(schema())


def json_path(parts) -> str:
    """``["hubs", 1, "groups", 0, "period"]`` -> ``hubs[1].groups[0].period``; empty -> ``document``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "document"


# --- the edge: bytes to a Python value ---------------------------------------------------------------------

# A string (closed, or running to the end of the text) or one bracket. Possessive quantifiers and the
# end-of-text alternative keep the scan linear on hostile input such as an unterminated string of \" pairs.
_TOKENS = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)


def nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``; a cheap scan run before ``json.loads``."""
    depth = 0
    for match in _TOKENS.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def document_parse(*, raw: bytes | str) -> Any:
    """Parse a document's text (UTF-8 bytes or str) into Python values; raises ProjectDocumentUnreadable (a ProjectDocumentError).

    Refuses, before parsing, a text larger than ``max_bytes()`` bytes and one nesting brackets deeper
    than ``max_depth()`` levels, so that neither memory nor the parser's recursion can be exhausted.
    """
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    limit = max_bytes()
    if size > limit:
        raise ProjectDocumentUnreadable([f"document: {size} bytes is larger than the limit of {limit} bytes"], too_large=True)
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ProjectDocumentUnreadable([f"document: not UTF-8 text (byte {exc.start})"]) from None
    else:
        text = raw
    depth = max_depth()
    if nesting_depth_exceeds(text, depth):
        raise ProjectDocumentUnreadable([f"document: nested deeper than {depth} levels"])
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProjectDocumentUnreadable([f"document: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]) from None
    except RecursionError:  # not reached below the depth limit; kept so that a low recursion limit fails cleanly
        raise ProjectDocumentUnreadable(["document: nested too deeply"]) from None


# --- the schema -------------------------------------------------------------------------------------------


def _schema_message(error: jsonschema.ValidationError) -> tuple[list, str]:
    """(path, message) for one schema error, worded for a person and never quoting the value."""
    path = list(error.absolute_path)
    kind, expected = error.validator, error.validator_value
    if kind == "required":
        missing = [name for name in expected if isinstance(error.instance, dict) and name not in error.instance]
        return path + missing[:1], "is required"
    if kind == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed) if isinstance(error.instance, dict) else []
        return path + unknown[:1], "unknown field" + (f" (also: {', '.join(unknown[1:])})" if unknown[1:] else "")
    secret = bool(path) and path[-1] in SECRET_FIELDS
    if kind == "pattern" and len(path) == 3 and path[0] == "hubs" and path[2] == "url":
        return path, HUB_URL_MESSAGE  # hubs.validators: the admin's text for the same rule
    messages = {
        "type": lambda: "must be " + " or ".join({"null": "null"}.get(t, f"{'an' if t[0] in 'aeiou' else 'a'} {t}")
                                                 for t in ([expected] if isinstance(expected, str) else expected)),
        "const": lambda: f"must be {json.dumps(expected)}",
        "enum": lambda: "must be one of " + ", ".join(json.dumps(v) for v in expected),
        "exclusiveMinimum": lambda: f"must be greater than {expected}",
        "minimum": lambda: f"must be at least {expected}",
        "maximum": lambda: f"must be at most {expected}",
        "minLength": lambda: "must not be empty" if expected == 1 else f"must be at least {expected} characters long",
        "maxLength": lambda: f"must be at most {expected} characters long",
        "pattern": lambda: f"must match {expected}",
        "minItems": lambda: f"must hold at least {expected} item" + ("s" if expected != 1 else ""),
    }
    if kind in messages:
        message = messages[kind]()
        if kind == "const" and path == ["format"]:
            message = f'unsupported format; this server reads "{FORMAT}"'
        return path, message
    return path, "is not valid" if secret else error.message


def _schema_errors(data: Any) -> list[str]:
    found = []
    for error in _validator().iter_errors(data):
        path, message = _schema_message(error)
        found.append((path, f"{json_path(path)}: {message}"))
    # document order: by path, numbers as numbers
    found.sort(key=lambda item: [(0, p, "") if isinstance(p, int) else (1, 0, p) for p in item[0]])
    return list(dict.fromkeys(message for _, message in found))


# --- semantic checks ---------------------------------------------------------------------------------------


def _duplicates(items: list[dict], field: str, where: list) -> Iterator[str]:
    counts = Counter(item.get(field) for item in items)
    seen: set = set()
    for index, item in enumerate(items):
        value = item.get(field)
        if counts[value] > 1:
            if value in seen:
                yield f"{json_path(where + [index, field])}: duplicate {field} {json.dumps(value)}"
            seen.add(value)


def _walk_entities(entities: list[dict], where: list, ancestors: tuple[str, ...] = ()) -> Iterator[tuple[dict, list, tuple]]:
    """Yield (entity, path, ancestor ids) depth first."""
    for index, entity in enumerate(entities):
        here = where + [index]
        yield entity, here, ancestors
        yield from _walk_entities(entity.get("children", []), here + ["children"], ancestors + (entity["id"],))


def _semantic_errors(doc: dict) -> list[str]:
    errors: list[str] = []
    problem = time_zone_problem(doc.get("time_zone", "UTC"))
    if problem:
        errors.append(f"time_zone: {problem}")
    for section in ("hubs", "scripts", "sinks", "data_sources"):
        errors.extend(_duplicates(doc.get(section, []), "name", [section]))
    script_names = {script["name"] for script in doc.get("scripts", [])}
    for index, script in enumerate(doc.get("scripts", [])):
        problem = _code_error(script.get("code", ""))
        if problem:
            errors.append(f"scripts[{index}].code: {problem}")
    # A sink of the project with the wide layout makes its names rules of every group (docs/data-path.md).
    wide_sinks = [(s["name"], s.get("table", "hubsched_values")) for s in doc.get("sinks", []) if s.get("layout") == "wide"]
    tables: list[tuple[str, str]] = []  # (hub, group) of every group, in document order
    at_groups: list[list] = []
    for h, hub in enumerate(doc.get("hubs", [])):
        at_hub = ["hubs", h]
        if hub_url_problem(hub["url"]):
            errors.append(f"{json_path(at_hub + ['url'])}: {hub_url_problem(hub['url'])}")
        errors.extend(hub_tls_errors(hub, at_hub))
        params: dict[str, set[str]] = {}
        ids: Counter = Counter()
        for entity, at, ancestors in _walk_entities(hub.get("entities", []), at_hub + ["entities"]):
            ids[entity["id"]] += 1
            if entity["id"] in ancestors:
                errors.append(f"{json_path(at + ['id'])}: entity {json.dumps(entity['id'])} is its own ancestor")
            elif ids[entity["id"]] > 1:
                errors.append(f"{json_path(at + ['id'])}: duplicate entity id {json.dumps(entity['id'])}")
            errors.extend(_duplicates(entity.get("params", []), "key", at + ["params"]))
            params.setdefault(entity["id"], set()).update(p["key"] for p in entity.get("params", []))
        errors.extend(_duplicates(hub.get("groups", []), "name", at_hub + ["groups"]))
        for g, group in enumerate(hub.get("groups", [])):
            errors.extend(_group_errors(group, at_hub + ["groups", g], params, script_names, wide=bool(wide_sinks)))
            tables.append((hub["name"], group["name"]))
            at_groups.append(at_hub + ["groups", g, "name"])
    for index, message in wide_table_problems(sinks=wide_sinks, groups=tables):
        errors.append(f"{json_path(at_groups[index])}: {message}")
    errors.extend(_redundancy_errors(doc))
    errors.extend(_job_errors(doc, script_names))
    errors.extend(_alarm_rule_errors(doc))
    return errors


def _alarm_rule_errors(doc: dict) -> list[str]:
    """Each alarm rule against the rule schema (alarms.rules, the API's and the admin's rule), at its JSON path;
    duplicate names; a hub and group the document lacks. Routes are the project's rows: checked at import."""
    from alarms.rules import rule_document_errors

    rules = doc.get("alarm_rules", [])
    errors = list(_duplicates(rules, "name", ["alarm_rules"])) if all(isinstance(r, dict) and "name" in r for r in rules) else []
    groups = {(hub["name"], group["name"]) for hub in doc.get("hubs", []) for group in hub.get("groups", [])}
    hubs = {hub["name"] for hub in doc.get("hubs", [])}
    for index, rule in enumerate(rules):
        where = f"alarm_rules[{index}]"
        problems = rule_document_errors(rule, where)
        errors.extend(problems)
        if problems:
            continue
        if rule["hub"] not in hubs:
            errors.append(f"{where}.hub: no hub {rule['hub']!r} in the document")
        elif (rule["hub"], rule["group"]) not in groups:
            errors.append(f"{where}.group: no group {rule['group']!r} on hub {rule['hub']!r} in the document")
    return errors


def _job_errors(doc: dict, script_names: set[str]) -> list[str]:
    """The job rules of jobs/validators.py (the admin's and the API's too), each at its JSON path
    (``jobs[1].argv[0]: the program is empty``); duplicate names; scripts named that the document lacks."""
    from jobs.validators import job_command_problems, job_trigger_problems

    jobs = doc.get("jobs", [])
    errors = list(_duplicates(jobs, "name", ["jobs"]))
    for j, job in enumerate(jobs):
        at = ["jobs", j]
        found: list[tuple[str, str]] = []
        if period_problem(job.get("period", 60.0)):  # the model's field rule, whatever the trigger
            found.append(("period", period_problem(job.get("period", 60.0))))
        run_at = job.get("run_at")
        found += job_trigger_problems(trigger=job["trigger"], period=job.get("period", 60.0), cron=job.get("cron", ""),
                                      has_run_at=run_at is not None)
        if run_at is not None and run_at_parse(run_at) is None:
            found.append(("run_at", "must be an RFC 3339 date and time with an offset (2026-01-31T08:00:00Z)"))
        script = job.get("script")
        found += job_command_problems(
            kind=job["kind"], argv=job.get("argv", []), environment=job.get("environment", {}),
            method=job.get("method", "POST"), url=job.get("url", ""), headers=job.get("headers", {}),
            success_codes=job.get("success_codes", "200-299"), has_script=script is not None,
        )
        if script is not None and script not in script_names:
            found.append(("script", f"no script named {json.dumps(script)} in this document"))
        errors.extend(dict.fromkeys(f"{json_path(at)}.{field}: {message}" for field, message in found))
    return errors


def document_shell_held(*, data: Any) -> bool:
    """Whether a parsed document holds a shell job, for the permission check made before an import
    (``importer.document_import_permissions``); a document of another shape holds none (import refuses it)."""
    jobs = data.get("jobs") if isinstance(data, dict) else None
    return isinstance(jobs, list) and any(isinstance(job, dict) and job.get("kind") == "shell" for job in jobs)


def _redundancy_errors(doc: dict) -> list[str]:
    """The redundancy rules of hubs/validators.py (the admin's too): offsets per hub, sets per project."""
    errors: list[str] = []
    for h, hub in enumerate(doc.get("hubs", [])):
        offsets = hub.get("offsets", [])
        seen: set[tuple[str, str]] = set()
        for o, offset in enumerate(offsets):
            at = ["hubs", h, "offsets", o]
            pair = (offset.get("entity", ""), offset["key"])
            if pair in seen:
                errors.append(f"{json_path(at + ['key'])}: duplicate offset of key {json.dumps(pair[1])} "
                              f"on entity {json.dumps(pair[0]) if pair[0] else '(every entity)'}")
            seen.add(pair)
            for field_name, message in hub_offset_problems(add=offset.get("add", 0.0), factor=offset.get("factor", 1.0)):
                errors.append(f"{json_path(at + [field_name])}: {message}")
    sets = doc.get("redundancy_sets", [])
    errors.extend(_duplicates(sets, "name", ["redundancy_sets"]))
    hub_names = {hub["name"] for hub in doc.get("hubs", [])}
    in_set: dict[str, str] = {}
    for r, item in enumerate(sets):
        at = ["redundancy_sets", r]
        problem = failback_problem(item.get("failback_after_s", 30.0))
        if problem:
            errors.append(f"{json_path(at + ['failback_after_s'])}: {problem}")
        for key, message in key_thresholds_problems(item.get("key_thresholds", {})):
            errors.append(f"{json_path(at + ['key_thresholds'] + ([key] if key else []))}: {message}")
        members = item["members"]
        for index, message in redundancy_members_problems(members=members, hubs=hub_names, in_set=in_set,
                                                          set_name=item["name"]):
            errors.append(f"{json_path(at + ['members'] + ([] if index < 0 else [index]))}: {message}")
        for name in members:
            in_set.setdefault(name, item["name"])
    return errors


def hub_tls_errors(hub: dict, at_hub: list) -> list[str]:
    """The TLS rules of hubs/validators.py (the admin's too) for one hub of a document, at their JSON paths.
    A ``tls_client_key`` that is still a reference is checked once it is resolved (the importer calls this
    again then); until then only the CA bundle and the certificate are."""
    key = hub.get("tls_client_key", "")
    reference = REFERENCE.fullmatch(key) is not None
    problems = hub_tls_problems(ca_pem=hub.get("tls_ca_bundle", ""), cert_pem=hub.get("tls_client_cert", ""),
                                key_pem="" if reference else key)
    return [f"{json_path(at_hub + [field])}: {message}" for field, message in problems
            if not (reference and message == TLS_CERT_WITHOUT_KEY_MESSAGE)]


def _group_errors(
    group: dict, at: list, params: dict[str, set[str]], script_names: set[str], *, wide: bool = False
) -> Iterator[str]:
    """The group rules of groups/validators.py (the admin's too), each at its JSON path."""
    if period_problem(group.get("period", 10.0)):
        yield f"{json_path(at + ['period'])}: {period_problem(group.get('period', 10.0))}"
    from groups.models import execution_timeout_problem

    if execution_timeout_problem(group.get("execution_timeout")):
        yield f"{json_path(at + ['execution_timeout'])}: {execution_timeout_problem(group.get('execution_timeout'))}"
    run_at = group.get("run_at")
    for field, problem in group_trigger_problems(trigger=group["trigger"], cron=group.get("cron", ""), has_run_at=run_at is not None):
        yield f"{json_path(at + [field])}: {problem}"
    if run_at is not None and run_at_parse(run_at) is None:
        yield f"{json_path(at + ['run_at'])}: must be an RFC 3339 date and time with an offset (2026-01-31T08:00:00Z)"
    script = group.get("script")
    if script is not None and script not in script_names:
        yield f"{json_path(at + ['script'])}: no script named {json.dumps(script)} in this document"
    keys = [(key["entity"], key["key"], key.get("alias", "")) for key in group.get("keys", [])]
    # The tree check needs the hub's entity tree; a document without one cannot say what exists (params empty).
    for k, problem in group_keys_problems(keys=keys, tree=params, wide=wide):
        yield f"{json_path(at + ['keys'] + ([] if k is None else [k]))}: {problem}"


def _code_error(code: str) -> str | None:
    """Why the sandbox would refuse ``code`` (with line and column), or None; the Script model refuses it at save."""
    from scripts_engine.models import Script

    error = Script(code=code).code_error()
    return str(error) if error is not None else None


def run_at_parse(value: str) -> datetime | None:
    """An RFC 3339 time with an offset as an aware datetime; None when it is not one."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def document_validate(*, data: Any) -> dict:
    """Check a parsed document against the schema and the rules the schema cannot say; returns it.

    Raises ProjectDocumentError with every problem found (schema problems first, then semantic
    ones; semantic checks run only on a document the schema accepts).
    """
    errors = _schema_errors(data)
    if errors:
        raise ProjectDocumentError(errors)
    errors = _semantic_errors(data)
    if errors:
        raise ProjectDocumentError(errors)
    return data


def references_resolve(*, doc: dict, environ: Mapping[str, str] | None = None) -> dict[tuple, str]:
    """Resolve the secret references of a validated ``doc`` from ``environ`` (default: the process environment).

    A hub's ``api_key`` or ``tls_client_key``, a sink's ``url`` or a data source's ``url`` whose whole value is
    ``${...}`` (``REFERENCE``) is a reference, and only one is taken in each field: the variable export writes
    there (``export.reference_names``), ``${HUB_<HUB NAME>_KEY}``, ``${HUB_<HUB NAME>_TLS_KEY}``
    (``export.hub_tls_key_references``), ``${SINK_<SINK NAME>_URL}`` or
    ``${DATA_SOURCE_<NAME>_URL}`` of that very hub, sink or data source. Any other reference
    (``${SECRET_KEY}``, a sink's variable in a hub key, another hub's key) is refused: no other
    environment variable is ever read. Returns ``{json path tuple: clear value}`` for the fields that
    held a reference; raises ProjectDocumentError naming each refused field, each unset variable and
    each empty URL (never a value).
    """
    from .export import hub_tls_key_references, reference_names  # export imports this module

    environ = os.environ if environ is None else environ
    resolved: dict[tuple, str] = {}
    errors = []
    sections = (
        ("hubs", "api_key", functools.partial(reference_names, "HUB", suffix="KEY"), "key of hub"),
        ("hubs", "tls_client_key", hub_tls_key_references, "TLS client key of hub"),
        ("sinks", "url", functools.partial(reference_names, "SINK", suffix="URL"), "URL of sink"),
        ("data_sources", "url", functools.partial(reference_names, "DATA_SOURCE", suffix="URL"), "URL of data source"),
    )
    for section, field_name, references, what in sections:
        items = doc.get(section, [])
        expected = references([item["name"] for item in items])
        for index, item in enumerate(items):
            match = REFERENCE.fullmatch(item.get(field_name, ""))
            if match is None:
                continue
            path = json_path((section, index, field_name))
            name = expected[item["name"]]
            if match.group(1) != name:
                errors.append(
                    f"{path}: refused reference: this field takes only ${{{name}}}, the {what} "
                    f"{json.dumps(item['name'])}; import reads no other environment variable"
                )
            elif name not in environ:
                errors.append(f"{path}: environment variable {name} is not set")
            elif field_name == "url" and not environ[name]:
                errors.append(f"{path}: environment variable {name} is empty")
            else:
                resolved[(section, index, field_name)] = environ[name]
    if errors:
        raise ProjectDocumentError(errors)
    return resolved

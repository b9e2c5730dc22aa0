"""Property: any project survives export -> import into an empty database -> export, byte for byte."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hubs.models import Entity, Project
from hubs.services import project_export, project_import
from scripts_engine.sinks.tables import wide_columns_problems, wide_table_collisions

pytestmark = pytest.mark.django_db

# docs/projects.md, Secrets: the references export writes and import takes
DOCUMENTED_REFERENCE = re.compile(r"HUB_[A-Z0-9_]+_KEY|SINK_[A-Z0-9_]+_URL|DATA_SOURCE_[A-Z0-9_]+_URL")

# Names from an alphabet with case, digits, punctuation and non-ASCII, so that sort order and escaping are exercised.
names = st.text(alphabet="abcXYZ09-_ é€/", min_size=1, max_size=8).filter(lambda s: s.strip() == s and s)
texts = st.text(max_size=30)
floats = st.floats(min_value=0.1, max_value=1e6, allow_nan=False, allow_infinity=False)
param_types = st.sampled_from(["number", "integer", "boolean", "string", "array", "object"])


@st.composite
def entity_tree(draw, max_depth: int = 8) -> list[dict]:
    """Entities nested up to ``max_depth`` levels, ids unique as /-paths under their parent."""

    def node(path: str, depth: int) -> dict:
        # a root has a parameter at least, so that every group can read a key (a group needs one)
        keys = draw(st.lists(names, min_size=1 if depth == 1 else 0, max_size=3, unique=True))
        children = []
        if depth < max_depth:
            for segment in draw(st.lists(st.sampled_from("abcdef"), max_size=2 if depth < 3 else 1, unique=True)):
                children.append(node(f"{path}/{segment}", depth + 1))
        return {
            "id": path,
            "name": draw(texts),
            "type": draw(st.sampled_from(["", "pump", "line", "sensor"])),
            "params": [
                {"key": k, "name": draw(texts), "type": draw(param_types), "unit": draw(st.sampled_from(["", "bar", "°C"])),
                 "writable": draw(st.booleans())}
                for k in keys
            ],
            "children": children,
        }

    roots = draw(st.lists(st.sampled_from(["plant", "site", "Ω"]), min_size=1, max_size=2, unique=True))
    return [node(root, 1) for root in roots]


def all_params(tree: list[dict]):
    for entity in tree:
        for param in entity["params"]:
            yield entity["id"], param["key"]
        yield from all_params(entity["children"])


@st.composite
def group(draw, params: list[tuple[str, str]], scripts: list[str]) -> dict:
    trigger = draw(st.sampled_from(["interval", "cron", "once", "on_change"]))
    keys = draw(st.lists(st.sampled_from(params), unique=True, min_size=1, max_size=4))
    bindings = [f"v{i}" for i in range(len(keys))]
    return {
        "name": draw(names),
        "trigger": trigger,
        "period": draw(floats),
        "offset": draw(st.floats(min_value=-100, max_value=100, allow_nan=False)),
        "cron": draw(st.sampled_from(["*/5 * * * * *", "0 0 2 * * *", "30 15 8 1 * mon"])) if trigger == "cron" else "",
        "run_at": (
            draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
            .isoformat().replace("+00:00", "Z")
            if trigger == "once" else None
        ),
        "deadband": draw(st.none() | st.floats(min_value=0, max_value=1000)),
        "expires": draw(st.none() | st.floats(min_value=0, max_value=1000)),
        "script": draw(st.none() | st.sampled_from(scripts)) if scripts else None,
        "enabled": draw(st.booleans()),
        "keys": group_keys(draw, keys, bindings),
    }


def group_keys(draw, keys: list[tuple[str, str]], bindings: list[str]) -> list[dict]:
    """Keys with an alias, or none where the key name alone is a binding no other key of the group has."""
    names = [k for _, k in keys]
    chosen = []
    for (entity, key), binding in zip(keys, bindings):
        bare_ok = names.count(key) == 1 and key not in bindings
        chosen.append({"entity": entity, "key": key, "alias": draw(st.sampled_from(["", binding])) if bare_ok else binding})
    return chosen


@st.composite
def project_document(draw) -> dict:
    scripts = draw(st.lists(names, max_size=3, unique=True))
    hubs = []
    for hub_name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        tree = draw(entity_tree())
        params = list(all_params(tree))
        group_names = draw(st.lists(names, max_size=3, unique=True))
        hubs.append({
            "name": hub_name,
            "url": "ws://127.0.0.1:1/" + draw(st.text(alphabet="abc/", max_size=5)),
            "api_key": draw(st.text(alphabet="abcXYZ0123-", max_size=12)),
            "timeout": draw(floats),
            "max_in_flight": draw(st.integers(min_value=1, max_value=10_000)),
            "max_frame_bytes": draw(st.none() | st.integers(min_value=1024, max_value=2**31 - 1)),
            "max_value_bytes": draw(st.none() | st.integers(min_value=16, max_value=2**31 - 1)),
            "enabled": draw(st.booleans()),
            "entities": tree,
            "groups": [{**draw(group(params, scripts)), "name": g} for g in group_names],
        })
    doc = {
        "format": "hubsched.project/1",
        "name": draw(names),
        "description": draw(texts),
        "time_zone": draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"])),
        "hubs": hubs,
        "scripts": [
            {"name": s, "code": draw(st.sampled_from(["", "x = 1\n", "v0 = v0 * 2 if v0 < 10 else 1\n", "# é €\n"])), "description": draw(texts), "timeout": draw(floats),
             "memory_limit_mb": draw(st.integers(min_value=16, max_value=65536))}
            for s in scripts
        ],
        "sinks": [
            {"name": s, "url": draw(st.sampled_from(["sqlite:///v.db", "postgresql://u:pw@db/v", "mysql+pymysql://u@h/d"])),
             "layout": draw(st.sampled_from(["tall", "wide"])), "table": draw(names), "local_infile": draw(st.booleans()), "enabled": draw(st.booleans())}
            for s in draw(st.lists(names, max_size=2, unique=True))
        ],
        "data_sources": [
            {"name": s, "url": draw(st.sampled_from(["sqlite:///d.db", "postgresql://u:pw@db/d"])),
             "writable": draw(st.booleans()), "allow_ddl": draw(st.booleans())}
            for s in draw(st.lists(names, max_size=2, unique=True))
        ],
    }
    # a project with a wide sink must keep its keys' columns and its groups' tables apart (groups/validators.py);
    # documents that break those rules are import's refusals, tested in groups/tests/test_validation.py
    for sink in doc["sinks"]:
        if sink["layout"] == "wide":
            groups = [(h["name"], g["name"]) for h in hubs for g in h["groups"]]
            assume(not wide_table_collisions(prefix=sink["table"], groups=groups))
            assume(not any(wide_columns_problems([k["key"] for k in g["keys"]]) for h in hubs for g in h["groups"]))
    return doc


def depth(tree: list[dict]) -> int:
    return max((1 + depth(e["children"]) for e in tree), default=0)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                                HealthCheck.data_too_large])
@given(doc=project_document())
def test_export_import_export_is_byte_for_byte(doc):
    Project.objects.all().delete()
    project = project_import(raw=json.dumps(doc)).project
    first = project_export(project=project, include_secrets=True)
    Project.objects.all().delete()  # an empty database
    assert not Entity.objects.exists()
    again = project_export(project=project_import(raw=first).project, include_secrets=True)
    assert again == first
    # and nothing was lost on the way in: the export says what the generated document said
    exported = json.loads(first)
    assert sorted(h["name"] for h in exported["hubs"]) == sorted(h["name"] for h in doc["hubs"])
    for hub in doc["hubs"]:
        out = next(h for h in exported["hubs"] if h["name"] == hub["name"])
        assert depth(out["entities"]) == depth(hub["entities"])
        assert sorted(all_params(out["entities"])) == sorted(all_params(hub["entities"]))
        assert {g["name"]: g["keys"] for g in out["groups"]} == {g["name"]: g["keys"] for g in hub["groups"]}
        assert out["api_key"] == hub["api_key"]
        assert (out["max_frame_bytes"], out["max_value_bytes"]) == (hub["max_frame_bytes"], hub["max_value_bytes"])
    assert {s["name"]: s["local_infile"] for s in exported["sinks"]} == {s["name"]: s["local_infile"] for s in doc["sinks"]}
    assert ({d["name"]: (d["writable"], d["allow_ddl"]) for d in exported["data_sources"]}
            == {d["name"]: (d["writable"], d["allow_ddl"]) for d in doc["data_sources"]})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                                HealthCheck.data_too_large])
@given(doc=project_document())
def test_the_round_trip_holds_with_secrets_as_references(doc):
    Project.objects.all().delete()
    project = project_import(raw=json.dumps(doc)).project
    first = project_export(project=project)
    exported = json.loads(first)
    environ = {}
    for hub in doc["hubs"]:
        ref = next(h["api_key"] for h in exported["hubs"] if h["name"] == hub["name"])
        if ref:
            environ[ref[2:-1]] = hub["api_key"]
    for section in ("sinks", "data_sources"):
        for item in doc[section]:
            ref = next(i["url"] for i in exported[section] if i["name"] == item["name"])
            if ref.startswith("${"):
                environ[ref[2:-1]] = item["url"]
    # only the documented forms, one variable per secret
    assert all(DOCUMENTED_REFERENCE.fullmatch(name) for name in environ)
    assert len(environ) == len(set(environ))
    clear = json.loads(project_export(project=project, include_secrets=True))
    Project.objects.all().delete()
    # what export wrote is all the import reads: nothing else of the environment
    project = project_import(raw=first, environ={**environ, "SECRET_KEY": "never-read"}).project
    assert project_export(project=project) == first
    assert json.loads(project_export(project=project, include_secrets=True)) == clear
    assert "never-read" not in project_export(project=project, include_secrets=True)


def test_the_generator_reaches_eight_levels():
    # The property above is only as good as its trees: make sure the deepest ones are drawn.
    from hypothesis import find

    deep = find(entity_tree(), lambda tree: depth(tree) >= 8, settings=settings(max_examples=2000, database=None))
    assert depth(deep) == 8

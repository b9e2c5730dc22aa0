"""The reference hub's demo entity tree, as data (also read by the demo loader)."""

from __future__ import annotations

import copy

# hub protocol v1: a parameter's type is one of these
PARAM_TYPES = ("number", "integer", "boolean", "string", "array", "object")

# Each parameter: key, name, type, unit, writable, plus the hub's private parts:
#   "initial" (writable parameters start from it and hold what was last written) or
#   "signal"  (read-only parameters move with time, see hubs.hubsim.signals).


def _p(key, name, type_, unit="", *, initial=None, signal=None, writable=False, flaky=False):
    param = {"key": key, "name": name, "type": type_, "unit": unit, "writable": writable}
    if writable:
        param["initial"] = initial
    else:
        param["signal"] = signal or {}
    if flaky:
        param["flaky"] = True
    return param


def _pump(ident: str, name: str, flow: float, pressure: float) -> dict:
    return {
        "id": ident,
        "name": name,
        "type": "pump",
        "params": [
            _p("flow", "Flow", "number", "m3/h", signal={"mean": flow, "amp": flow / 10, "period": 60, "step": flow / 20, "step_every": 300}),
            _p("pressure", "Discharge pressure", "number", "bar", signal={"mean": pressure, "amp": 0.4, "period": 23}),
            _p("speed_sp", "Speed setpoint", "number", "rpm", writable=True, initial=1450.0),
            _p("running", "Running", "boolean", writable=True, initial=True),
            _p("starts", "Start count", "integer", "count", signal={"base": 120, "every": 30}),
            _p("mode", "Operating mode", "string", writable=True, initial="auto"),
            _p("state", "State", "string", signal={"choices": ["running", "running", "running", "starting", "stopping"], "every": 20}),
            _p("alarms", "Active alarms", "array", signal={"items": [
                {"code": "P101", "text": "seal leakage", "severity": 2},
                {"code": "P207", "text": "bearing temperature high", "severity": 3},
            ], "every": 45}, flaky=True),
            _p("config", "Configuration", "object", writable=True,
               initial={"min_rpm": 600, "max_rpm": 2900, "ramp_s": 12.5, "enabled": True}),
        ],
        "children": [],
    }


def _sensor(ident: str, name: str, unit: str, mean: float, amp: float, period: float) -> dict:
    return {
        "id": ident,
        "name": name,
        "type": "sensor",
        "params": [
            _p("value", "Value", "number", unit, signal={"mean": mean, "amp": amp, "period": period}, flaky=True),
            _p("raw", "Raw counts", "integer", "count", signal={"base": 2048, "every": 1, "wrap": 4096}),
            _p("healthy", "Healthy", "boolean", signal={"every": 90}),
        ],
        "children": [],
    }


DEMO_TREE: list[dict] = [
    {
        "id": "plant",
        "name": "Plant",
        "type": "site",
        "params": [
            _p("name", "Site name", "string", writable=True, initial="Demo plant"),
            _p("power", "Total power", "number", "kW", signal={"mean": 820.0, "amp": 60.0, "period": 300, "step": 25.0, "step_every": 600}),
            _p("shift", "Shift", "object", signal={"choices": [
                {"crew": "A", "lead": "Ines"}, {"crew": "B", "lead": "Tomas"}, {"crew": "C", "lead": "Mira"},
            ], "every": 120}),
        ],
        "children": [
            {
                "id": "plant/line1",
                "name": "Line 1",
                "type": "line",
                "params": [
                    _p("throughput", "Throughput", "number", "t/h", signal={"mean": 14.0, "amp": 1.5, "period": 90}),
                    _p("batch", "Batch", "string", signal={"choices": ["B-1001", "B-1002", "B-1003"], "every": 180}),
                    _p("enabled", "Enabled", "boolean", writable=True, initial=True),
                ],
                "children": [
                    _pump("plant/line1/pump1", "Pump 1", 42.0, 6.2),
                    _pump("plant/line1/pump2", "Pump 2", 38.0, 5.9),
                    _sensor("plant/line1/tt101", "Temperature TT101", "degC", 61.0, 3.0, 40),
                ],
            },
            {
                "id": "plant/line2",
                "name": "Line 2",
                "type": "line",
                "params": [
                    _p("throughput", "Throughput", "number", "t/h", signal={"mean": 9.5, "amp": 1.0, "period": 75}),
                    _p("enabled", "Enabled", "boolean", writable=True, initial=False),
                ],
                "children": [
                    _pump("plant/line2/pump1", "Pump 1", 30.0, 4.8),
                    {
                        "id": "plant/line2/mixer",
                        "name": "Mixer",
                        "type": "mixer",
                        "params": [
                            _p("rpm", "Speed", "number", "rpm", signal={"mean": 300.0, "amp": 20.0, "period": 15}),
                            _p("temperature", "Temperature", "number", "degC", signal={"mean": 45.0, "amp": 2.0, "period": 50}),
                            _p("recipe", "Recipe", "object", writable=True,
                               initial={"name": "standard", "steps": [{"s": 30, "rpm": 200}, {"s": 90, "rpm": 320}]}),
                            _p("cycles", "Cycles", "integer", "count", signal={"base": 5000, "every": 12}),
                        ],
                        "children": [
                            _sensor("plant/line2/mixer/pt201", "Pressure PT201", "bar", 1.2, 0.1, 17),
                        ],
                    },
                ],
            },
            {
                "id": "plant/utilities",
                "name": "Utilities",
                "type": "area",
                "params": [],
                "children": [
                    {
                        "id": "plant/utilities/boiler",
                        "name": "Boiler",
                        "type": "boiler",
                        "params": [
                            _p("temperature", "Water temperature", "number", "degC", signal={"mean": 82.0, "amp": 4.0, "period": 120, "step": 1.5, "step_every": 240}),
                            _p("pressure", "Steam pressure", "number", "bar", signal={"mean": 10.5, "amp": 0.6, "period": 33}),
                            _p("setpoint", "Temperature setpoint", "number", "degC", writable=True, initial=85.0),
                            _p("level", "Drum level", "integer", "%", signal={"base": 55, "every": 7, "wrap": 20}),
                            _p("alarms", "Active alarms", "array", signal={"items": [
                                {"code": "B001", "text": "low water", "severity": 3},
                                {"code": "B014", "text": "flue gas high", "severity": 1},
                            ], "every": 60}),
                        ],
                        "children": [
                            {
                                "id": "plant/utilities/boiler/burner",
                                "name": "Burner",
                                "type": "burner",
                                "params": [
                                    _p("flame", "Flame on", "boolean", signal={"every": 40}),
                                    _p("gas_flow", "Gas flow", "number", "Nm3/h", signal={"mean": 120.0, "amp": 15.0, "period": 40}),
                                    _p("stage", "Stage", "integer", "", writable=True, initial=1),
                                ],
                                "children": [],
                            },
                            _pump("plant/utilities/boiler/feedwater", "Feedwater pump", 12.0, 14.0),
                        ],
                    },
                    {
                        "id": "plant/utilities/compressor",
                        "name": "Air compressor",
                        "type": "compressor",
                        "params": [
                            _p("pressure", "Line pressure", "number", "bar", signal={"mean": 7.0, "amp": 0.3, "period": 11}),
                            _p("hours", "Run hours", "integer", "h", signal={"base": 18000, "every": 3600}),
                            _p("loaded", "Loaded", "boolean", signal={"every": 8}),
                        ],
                        "children": [],
                    },
                ],
            },
        ],
    },
]

PUBLIC_PARAM_FIELDS = ("key", "name", "type", "unit", "writable")


def _public(entity: dict) -> dict:
    return {
        "id": entity["id"],
        "name": entity["name"],
        "type": entity["type"],
        "children": [_public(child) for child in entity["children"]],
        "params": [{f: p[f] for f in PUBLIC_PARAM_FIELDS} for p in entity["params"]],
    }


def demo_tree(name: str) -> list[dict]:
    """The demo tree as a hub named `name` serves it.

    Returns the top-level entities in the getEntities shape
    (`{"id", "name", "type", "children": [...]}`, nested to any depth), each entity also
    carrying `"params"` in the getParams shape (`[{"key", "name", "type", "unit", "writable"}]`).
    The root entity's display name carries the hub name; ids are the same for every hub.
    """
    tree = [_public(e) for e in DEMO_TREE]
    for root in tree:
        root["name"] = f"{root['name']} ({name})" if name else root["name"]
    return tree


def walk(entities: list[dict]):
    """Yield (entity, parent_id or None) for every entity of a tree, depth first."""
    stack = [(e, None) for e in reversed(entities)]
    while stack:
        entity, parent = stack.pop()
        yield entity, parent
        stack.extend((c, entity["id"]) for c in reversed(entity.get("children", [])))


def bench_tree(*, entities: int, keys: int) -> list[dict]:
    """A flat tree for load tests: ``bench/e<n>`` entities, each with ``keys`` read-only parameters.

    Keys are ``k000``, ``k001``, ...; four in five are numbers, the rest integers, strings,
    arrays of objects and booleans, so that a benchmark also stores values that are not numbers.
    """
    kinds = ["number"] * 16 + ["integer", "string", "array", "boolean"]
    signals = {
        "number": lambda n: {"mean": 10.0 + n, "amp": 1.0 + n % 5, "period": 7 + n % 60},
        "integer": lambda n: {"base": n, "every": 2},
        "string": lambda n: {"choices": ["auto", "manual", "off"], "every": 3},
        "array": lambda n: {"items": [{"code": f"A{n}", "severity": 2}, {"code": f"B{n}", "severity": 1}], "every": 5},
        "boolean": lambda n: {"every": 4},
    }
    return [
        {
            "id": "bench", "name": "Bench", "type": "area", "params": [],
            "children": [
                {
                    "id": f"bench/e{e}", "name": f"E{e}", "type": "device", "children": [],
                    "params": [_p(f"k{n:03d}", f"K{n}", kinds[n % 20], signal=signals[kinds[n % 20]](n)) for n in range(keys)],
                }
                for e in range(entities)
            ],
        }
    ]


def private_tree() -> list[dict]:
    """A private deep copy of DEMO_TREE with signals and initial values (for the hub itself)."""
    return copy.deepcopy(DEMO_TREE)

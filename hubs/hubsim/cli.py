"""Command-line options of the reference hub, shared by `manage.py hubsim` and `python -m hubs.hubsim`."""

from __future__ import annotations

import argparse
import logging

from .protocol import ALL_METHODS


def method_set(text: str) -> set[str]:
    methods = {m.strip() for m in text.split(",") if m.strip()}
    unknown = methods - ALL_METHODS
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown methods {sorted(unknown)}; known: {','.join(sorted(ALL_METHODS))}")
    return methods


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    parser.add_argument("--name", default="hub", help="hub name reported by getInfo")
    parser.add_argument("--key", default="demo-key", help="API key every request must carry")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated signals")
    parser.add_argument("--tick", type=float, default=0.1, help="sampling interval of values, seconds")
    parser.add_argument("--methods", type=method_set, default=None,
                        help="comma-separated methods the hub supports (default: all), "
                             "e.g. setEntityParams,subscribe,unsubscribe,getEntities,getParams")
    parser.add_argument("--tree", default="demo",
                        help="entity tree: demo (default), bench:ENTITIES:KEYS (flat, for load tests), "
                             "or a JSON file in the shape of hubs.hubsim.tree.DEMO_TREE")
    parser.add_argument("--processes", type=int, default=1,
                        help="processes sharing the port with SO_REUSEPORT (writes are per process)")


def run_from_options(options: dict, out=print) -> None:
    from .server import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    methods = options.get("methods")
    out(f"hubsim {options['name']!r} on ws://{options['host']}:{options['port']}/connect "
        f"(seed {options['seed']}, methods {','.join(sorted(methods)) if methods else 'all'}, "
        f"processes {options['processes']}); Ctrl-C stops")
    run(host=options["host"], port=options["port"], key=options["key"], name=options["name"], seed=options["seed"],
        tick=options["tick"], methods=methods, processes=options["processes"], tree=load_tree(options.get("tree")))


def load_tree(spec: str | None) -> list[dict] | None:
    """The tree named by ``--tree``: None for the demo tree."""
    import json

    from .tree import bench_tree

    if not spec or spec == "demo":
        return None
    if spec.startswith("bench:"):
        _, entities, keys = spec.split(":")
        return bench_tree(entities=int(entities), keys=int(keys))
    with open(spec) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hubs.hubsim", description="Run the reference hub.")
    add_arguments(parser)
    run_from_options(vars(parser.parse_args(argv)))

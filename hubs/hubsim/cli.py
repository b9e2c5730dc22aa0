"""Command-line options of the reference hub, shared by `manage.py hubsim` and `python -m hubs.hubsim`."""

from __future__ import annotations

import argparse
import logging
import os

from .protocol import ALL_METHODS


def method_set(text: str) -> set[str]:
    methods = {m.strip() for m in text.split(",") if m.strip()}
    unknown = methods - ALL_METHODS
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown methods {sorted(unknown)}; known: {','.join(sorted(ALL_METHODS))}")
    return methods


KEY_ENV = "HUBSIM_KEY"
DEFAULT_KEY = "demo-key"


class KeyFileError(ValueError):
    """The --key-file cannot be read or is empty."""


def key_removed(value: str) -> str:
    # A key on the command line is readable by every user of the machine (ps, /proc/PID/cmdline). Declared (not
    # just dropped) so that argparse does not take `--key K` as an abbreviation of `--key-file K`.
    raise argparse.ArgumentTypeError(f"--key was removed: pass the key in ${KEY_ENV} or --key-file PATH")


def key_file_read(path: str) -> str:
    """The key on the first line of ``path`` (for ``--key-file``, here and in ``hub_conformance``).
    Raises KeyFileError for an unreadable or empty file."""
    try:
        with open(path) as f:
            key = f.readline().strip()
    except OSError as exc:
        raise KeyFileError(f"--key-file {path}: {exc.strerror}") from None
    if not key:
        raise KeyFileError(f"--key-file {path}: the file is empty")
    return key


def key_read(*, key_file: str | None, env: dict | None = None) -> tuple[str, str]:
    """The hub's API key and where it came from: the file's first line, else $HUBSIM_KEY, else ``demo-key``.

    Raises KeyFileError for an unreadable or empty key file.
    """
    env = os.environ if env is None else env
    if key_file:
        return key_file_read(key_file), key_file
    key = env.get(KEY_ENV, "").strip()
    return (key, f"${KEY_ENV}") if key else (DEFAULT_KEY, f"the default {DEFAULT_KEY!r}")


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    parser.add_argument("--name", default="hub", help="hub name reported by getInfo")
    parser.add_argument("--key-file", metavar="PATH",
                        help=f"file whose first line is the API key every request must carry "
                             f"(default: ${KEY_ENV}, else {DEFAULT_KEY!r})")
    parser.add_argument("--key", type=key_removed, help=argparse.SUPPRESS)
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
    """Run the hub from parsed options. Raises KeyFileError for a bad --key-file."""
    from .server import run

    key, key_source = key_read(key_file=options.get("key_file"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    methods = options.get("methods")
    out(f"hubsim {options['name']!r} on ws://{options['host']}:{options['port']}/connect "
        f"(seed {options['seed']}, methods {','.join(sorted(methods)) if methods else 'all'}, "
        f"processes {options['processes']}, key from {key_source}); Ctrl-C stops")
    run(host=options["host"], port=options["port"], key=key, name=options["name"], seed=options["seed"],
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
    try:
        run_from_options(vars(parser.parse_args(argv)))
    except KeyFileError as exc:
        parser.error(str(exc))

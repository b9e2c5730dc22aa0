"""A program that builds and runs a project through hubsched's API with a token, as a site's script would.

    export HUBSCHED_URL=http://127.0.0.1:8000 HUBSCHED_TOKEN=hs_... HUB_KEY=demo-key-a
    python docs/examples/api_walkthrough.py --hub-url ws://127.0.0.1:8765/connect

The token and the hub's key come from the environment, never the command line (where `ps` shows them).

It makes a project and a hub, tests the connection, discovers the hub's entities (a dry run first), creates
``--groups`` groups of two keys in one request, enables them, waits until each sampled group has runs,
reads them, disables the groups and prints a JSON summary. Only the standard library: any Python 3.11.
Errors are the API's one shape: ``{"error": {"code", "message", "details": [{"path", "message"}]}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


class ApiError(Exception):
    def __init__(self, status: int, body: dict):
        error = body.get("error", {})
        details = "; ".join(f"{d['path']}: {d['message']}" for d in error.get("details", []))
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}" + (f" ({details})" if details else ""))
        self.status = status


class Api:
    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/") + "/api/v1"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, json.loads(exc.read() or b"{}")) from None


def walkthrough(api: Api, *, hub_url: str, hub_key: str, groups: int, period: float, wait_s: float) -> dict:
    project = api.call("POST", "/projects", {"name": f"walkthrough-{int(time.time() * 1000)}", "time_zone": "UTC"})
    hub = api.call("POST", f"/projects/{project['id']}/hubs", {"name": "plant", "url": hub_url, "api_key": hub_key})
    connection = api.call("POST", f"/hubs/{hub['id']}/test-connection")
    if not connection["ok"]:
        raise SystemExit(f"the hub does not answer: {connection['error']}")
    preview = api.call("POST", f"/hubs/{hub['id']}/sync?dry_run=true")
    applied = api.call("POST", f"/hubs/{hub['id']}/sync")
    params = api.call("GET", f"/hubs/{hub['id']}/parameters?limit=1000")["items"]
    numeric = [p for p in params if p["type"] in ("int", "float")][:2] or params[:2]
    keys = [{"entity": p["entity"], "key": p["key"]} for p in numeric]
    started = time.monotonic()
    made = api.call("POST", "/groups/bulk", {"groups": [
        {"hub": hub["id"], "name": f"g{i:05d}", "trigger": "interval", "period": period, "enabled": False, "keys": keys}
        for i in range(groups)]})
    create_s = time.monotonic() - started
    enabled = api.call("POST", "/groups/bulk/enable", {"filter": {"hub": hub["id"]}})
    sample = made["ids"][:: max(1, groups // 20)]
    deadline, runs = time.monotonic() + wait_s, {}
    while time.monotonic() < deadline:
        runs = {gid: api.call("GET", f"/groups/{gid}/runs?limit=5")["items"] for gid in sample}
        if all(any(r["status"] == "ok" for r in rs) for rs in runs.values()):
            break
        time.sleep(1)
    disabled = api.call("POST", "/groups/bulk/disable", {"filter": {"hub": hub["id"]}})
    listed = api.call("GET", f"/groups?hub={hub['id']}&enabled=false&limit=1")
    return {
        "project": project["id"], "hub": hub["id"], "protocol": connection["protocol"],
        "round_trip_ms": connection["round_trip_ms"], "would_add": len(preview["added"]), "added": len(applied["added"]),
        "groups_created": made["count"], "create_s": round(create_s, 2), "enabled": enabled["changed"],
        "sampled": len(sample), "sampled_with_ok_runs": sum(any(r["status"] == "ok" for r in rs) for rs in runs.values()),
        "runs_read": sum(len(rs) for rs in runs.values()), "disabled": disabled["changed"],
        "disabled_listed": listed["count"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("HUBSCHED_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--hub-url", required=True)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the sampled groups' runs")
    args = parser.parse_args(argv)
    token = os.environ.get("HUBSCHED_TOKEN")
    if not token:
        parser.error("set HUBSCHED_TOKEN (python manage.py apitoken create --user <you> --name walkthrough)")
    try:
        summary = walkthrough(Api(args.url, token), hub_url=args.hub_url, hub_key=os.environ.get("HUB_KEY", ""), groups=args.groups,
                              period=args.period, wait_s=args.wait)
    except ApiError as exc:
        print(f"hubsched refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

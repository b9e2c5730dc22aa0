"""The conformance checker against the reference hub (everything passes) and misbehaving hubs (failures found)."""

import pytest

from hubs.conformance import CHECKS, format_report, hub_conformance_check
from hubs.hubsim import faults, serve_in_thread

pytestmark = pytest.mark.timeout(60)
KEY = "demo-key"


def failures(results):
    return {r.name: r.detail for r in results if r.status == "fail"}


def test_the_reference_hub_passes_every_check():
    with serve_in_thread(key=KEY) as hub:
        results = hub_conformance_check(url=hub.url, key=KEY)
    assert failures(results) == {}
    assert len(results) == len(CHECKS)
    assert sum(r.status == "pass" for r in results) >= len(CHECKS) - 1


def test_a_limited_hub_without_get_info_passes_with_its_missing_methods_skipped():
    limited = {"getEntities", "getParams", "setEntityParams", "subscribe", "unsubscribe"}
    with serve_in_thread(key=KEY, methods=limited) as hub:
        results = {r.name: r for r in hub_conformance_check(url=hub.url, key=KEY)}
    assert failures(results.values()) == {}
    assert results["Methods/getEntityParams: filters by keys; unknown key or entity gets 404"].status == "skip"
    assert results["Errors: unsupported methods get -32601"].status == "pass"
    assert results["Methods/setEntityParams: is all or nothing"].status == "pass"  # read back through subscribe


def test_it_skips_writes_when_asked():
    with serve_in_thread(key=KEY) as hub:
        results = {r.name: r.status for r in hub_conformance_check(url=hub.url, key=KEY, write=False)}
    assert results["Methods/setEntityParams: writes a writable parameter"] == "skip"


@pytest.mark.parametrize("mode, expected", [
    ("error", "Methods/getInfo: describes the hub"),
    ("never_answer", "Methods/ping: answers the hub's clock"),
    ("wrong_types", "Methods/getEntities: lists a tree with unique ids"),
    ("wrong_ids", "Messages: no answers to ids never asked"),
    ("not_json", "Messages: a wrong key gets 401"),
    ("close_mid_request", "Errors: a request without method gets -32600"),
    ("slow", "Messages: answers carry the request's id"),
])
def test_it_finds_the_failures_of_a_misbehaving_hub(mode, expected):
    with faults.serve_in_thread(mode, key=KEY, delay=0.5) as bad:
        results = hub_conformance_check(url=bad.url, key=KEY, timeout=0.3)
    assert expected in failures(results)


def test_it_reports_an_unreachable_hub_as_one_failure():
    results = hub_conformance_check(url=faults.unreachable_url(), key=KEY, timeout=0.5)
    assert [(r.name, r.status) for r in results] == [("Transport: connects", "fail")]


def test_its_report_never_shows_the_key():
    key = "secret-key-abcdef"
    with faults.serve_in_thread("error", key=key, code=503) as bad:
        report = format_report(hub_conformance_check(url=bad.url, key=key, timeout=0.3))
    assert "FAIL" in report and key not in report
    assert report.splitlines()[-1].endswith("skipped")

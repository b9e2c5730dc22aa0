"""The conformance checker against hubs a hub team could write: a minimal correct aiohttp hub (getInfo and
getEntityParams only) passes with its core methods tested, and the same hub with each fault fails, saying why."""

from __future__ import annotations

import json

import pytest
from aiohttp import WSMsgType, web
from django.core.management import CommandError, call_command

from hubs.client import TlsOptions
from hubs.conformance import format_report, hub_conformance_check

from .test_client_other_servers import serve_aiohttp_hub
from .tls_certs import make_pki

pytestmark = pytest.mark.timeout(60)

KEY = "team-key"
PUMP = "plant/line1/pump1"
TS = "2026-12-01T10:00:00.000Z"
VALUES = {PUMP: {"p1": 2.5, "p2": "auto"}}


class MinimalHub:
    """hub protocol v1 with getInfo and getEntityParams only, said so in getInfo; every error of the contract.

    Faults, for the failing cases: ``wrong_ids`` (getEntityParams answers carry another id), ``errors``
    ("string": an error is a bare string; "string_code": the code is a string such as "401"), ``broken_info``
    (getInfo answers -32603).
    """

    def __init__(self, *, wrong_ids: bool = False, errors: str = "object", broken_info: bool = False):
        self.wrong_ids, self.errors, self.broken_info = wrong_ids, errors, broken_info

    def error(self, rid, code: int, message: str) -> str:
        if self.errors == "string":
            return json.dumps({"id": rid, "error": message})
        return json.dumps({"id": rid, "error": {"code": str(code) if self.errors == "string_code" else code,
                                                "message": message}})

    def answer(self, text: str) -> str:
        try:
            request = json.loads(text)
        except ValueError:
            return json.dumps({"id": None, "error": {"code": -32700, "message": "parse error"}})
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return json.dumps({"id": rid, "error": {"code": -32600, "message": "invalid request"}})
        if request.get("key") != KEY:
            return self.error(rid, 401, "wrong or missing key")
        method, params = request["method"], request.get("params") or {}
        if method == "getInfo":
            if self.broken_info:
                return self.error(rid, -32603, "getInfo is broken today")
            return json.dumps({"id": rid, "result": {"hub": "minimal", "protocol": 1, "time": TS,
                                                     "methods": ["getInfo", "getEntityParams"]}})
        if method != "getEntityParams":
            return self.error(rid, -32601, f"method not found: {method}")
        entity, keys = params.get("entity"), params.get("keys")
        if not isinstance(entity, str) or not (keys is None or (isinstance(keys, list) and all(isinstance(k, str) for k in keys))):
            return self.error(rid, -32602, "invalid params")
        if entity not in VALUES:
            return self.error(rid, 404, f"unknown entity {entity!r}")
        unknown = [k for k in keys or [] if k not in VALUES[entity]]
        if unknown:
            return self.error(rid, 404, f"unknown key {unknown[0]!r}")
        values = [{"key": k, "value": VALUES[entity][k], "ts": TS, "quality": "good"} for k in keys or VALUES[entity]]
        return json.dumps({"id": rid + 1000 if self.wrong_ids and isinstance(rid, int) else rid,
                           "result": {"entity": entity, "values": values}})

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(self.answer(msg.data))
        return ws


def check(hub: MinimalHub, **options) -> dict[str, tuple[str, str]]:
    with serve_aiohttp_hub(hub) as url:
        results = hub_conformance_check(url=url, key=KEY, timeout=0.5, **options)
    return {r.name: (r.status, r.detail) for r in results}


def failed(results: dict) -> dict[str, str]:
    return {name: detail for name, (status, detail) in results.items() if status == "fail"}


VALUE_CHECKS = ("Methods/getEntityParams: returns values with ts and quality",
                "Methods/getEntityParams: filters by keys; unknown key or entity gets 404")


def test_a_minimal_correct_hub_passes_with_its_core_methods_tested():
    results = check(MinimalHub(), entity=PUMP, keys=["p1", "p2"])
    assert failed(results) == {}
    for name in VALUE_CHECKS + ("Methods/getInfo: describes the hub", "Messages: answers carry the request's id",
                                "Messages: a wrong key gets 401", "Errors: bad params get -32602",
                                "Errors: unsupported methods get -32601", "Messages: no answers to ids never asked"):
        assert results[name][0] == "pass", (name, results[name])
    assert results["Methods/setEntityParams: writes a writable parameter"] == (
        "skip", "the hub does not support setEntityParams (per getInfo)")


def test_a_hub_whose_answers_carry_wrong_ids_fails_saying_so():
    results = failed(check(MinimalHub(wrong_ids=True), entity=PUMP, keys=["p1", "p2"]))
    for name in VALUE_CHECKS:
        assert "no answer carries the request's id" in results[name]
        assert "the hub answered id" in results[name] and "which no request had" in results[name]
    assert "the hub answered ids no request had" in results["Messages: no answers to ids never asked"]


def test_without_an_entity_a_hub_lacking_get_entities_fails_its_value_checks_instead_of_skipping_them():
    results = check(MinimalHub())
    for name in VALUE_CHECKS:
        assert results[name] == ("fail", "getEntityParams cannot be tested: no entity to test on: the hub has no "
                                         "getEntities; pass --entity ID --keys K1,K2")


def test_an_error_as_a_bare_string_is_reported_as_such():
    detail = failed(check(MinimalHub(errors="string"), entity=PUMP))["Messages: a wrong key gets 401"]
    assert detail == ('expected error 401 as an object {"code": 401, "message": ...}, got the string '
                      '"wrong or missing key"')


def test_an_error_code_as_a_string_is_reported_as_such():
    detail = failed(check(MinimalHub(errors="string_code"), entity=PUMP))["Messages: a wrong key gets 401"]
    assert detail == 'expected error 401, got the code as the string "401": the code must be the integer 401'


def test_when_get_info_fails_it_never_claims_the_hub_supports_every_method():
    results = check(MinimalHub(broken_info=True), entity=PUMP)
    assert results["Methods/getInfo: describes the hub"] == ("fail", "getInfo failed: -32603 'getInfo is broken today'")
    status, detail = results["Errors: unsupported methods get -32601"]
    assert "every method" not in detail and "getInfo failed" in detail


def test_the_command_exits_non_zero_and_writes_a_json_report_on_a_failure(tmp_path, capsys):
    (tmp_path / "key").write_text(KEY + "\n")
    with serve_aiohttp_hub(MinimalHub(wrong_ids=True)) as url:
        with pytest.raises(CommandError, match="conformance checks failed"):
            call_command("hub_conformance", url, "--key-file", str(tmp_path / "key"), "--entity", PUMP,
                         "--keys", "p1,p2", "--timeout", "0.5", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["counts"]["fail"] >= 2
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name[VALUE_CHECKS[0]]["section"] == "Methods/getEntityParams"
    assert by_name[VALUE_CHECKS[0]]["status"] == "fail"


def test_the_command_passes_a_correct_hub_over_wss_with_a_ca_file(tmp_path, capsys):
    pki = make_pki(tmp_path)
    (tmp_path / "key").write_text(KEY + "\n")
    with serve_aiohttp_hub(MinimalHub(), ssl_context=pki.server_context()) as url:
        call_command("hub_conformance", url, "--key-file", str(tmp_path / "key"), "--entity", PUMP,
                     "--ca-file", str(tmp_path / "ca.pem"), "--timeout", "2")
    out = capsys.readouterr().out
    assert "0 failed" in out and f"PASS  {VALUE_CHECKS[0]}" in out


def test_without_the_hubs_ca_the_check_fails_and_with_insecure_it_warns(tmp_path):
    pki = make_pki(tmp_path)
    with serve_aiohttp_hub(MinimalHub(), ssl_context=pki.server_context()) as url:
        refused = hub_conformance_check(url=url, key=KEY, timeout=2, entity=PUMP)
        insecure = hub_conformance_check(url=url, key=KEY, timeout=2, entity=PUMP, tls=TlsOptions(verify=False))
    assert [(r.name, r.status) for r in refused] == [("Transport: connects", "fail")]
    assert "CERTIFICATE_VERIFY_FAILED" in refused[0].detail
    assert insecure[0].status == "warn" and "OFF" in insecure[0].detail
    report = format_report(insecure)
    assert "WARN  Transport: TLS certificate verification" in report and report.endswith("1 warning")
    assert not [r for r in insecure if r.status == "fail"]


def test_the_command_refuses_a_client_key_file_that_is_not_a_key(tmp_path):
    pki = make_pki(tmp_path)
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(CommandError) as caught:
        call_command("hub_conformance", "wss://127.0.0.1:1/connect", "--key-file", str(tmp_path / "key"),
                     "--client-cert-file", str(tmp_path / "client.pem"), "--client-key-file", str(tmp_path / "bad.key"))
    assert str(caught.value).startswith("--client-key-file: must be an unencrypted PEM private key")
    assert pki.client_key_pem not in str(caught.value)

"""The quarantine's services on real refusals: an execution PostgreSQL refuses is set aside by its forwarder, then
retried once the cause is fixed (stored, and gone from the quarantine), refused again, or kept while the sink is
away; exported as strict JSON."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest

from hubs.hubsim.faults import unused_port
from hubs.models import Project
from scripts_engine.models import Sink
from scripts_engine.sinks import sinks_dispose
from streams.codec import execution_encode
from streams.log import EXECUTIONS
from streams.models import Forwarder, QuarantinedExecution
from streams.quarantine import quarantined_export, quarantined_retry
from streams.tests.helpers import LONG_KEY, TICK, pump_execution, quarantine_by_refusal, stored, widen_key_column


@pytest.mark.postgres
def test_a_refused_execution_is_quarantined_with_the_databases_error_and_the_rest_stored(pg_sink):
    (row,) = quarantine_by_refusal(pg_sink)
    assert (row.forwarder.name, row.group_id, row.tries, row.values_count) == (f"sink:{pg_sink.pk}", 501, 1, 2)
    assert "value too long" in row.error
    assert stored(pg_sink.url, pg_sink.table) == [(502, "flow"), (502, "pressure")]


@pytest.mark.postgres
def test_a_retry_after_the_cause_is_fixed_stores_the_execution_and_removes_it_from_the_quarantine(pg_sink):
    (row,) = quarantine_by_refusal(pg_sink)
    widen_key_column(pg_sink)
    result = quarantined_retry(ids=[row.pk])
    assert result == {"stored": 1, "values": 2, "refused": 0, "unreachable": 0, "unreadable": 0, "missing": 0,
                      "errors": []}
    assert not QuarantinedExecution.objects.exists()
    assert stored(pg_sink.url, pg_sink.table) == [(501, LONG_KEY), (501, "pressure"), (502, "flow"), (502, "pressure")]
    # a second retry of the same ids finds nothing, and the ledger would store the execution once anyway
    assert quarantined_retry(ids=[row.pk])["missing"] == 1
    assert len(stored(pg_sink.url, pg_sink.table)) == 4


@pytest.mark.postgres
def test_a_retry_the_database_refuses_again_keeps_the_row_with_the_new_error_and_one_more_try(pg_sink):
    (row,) = quarantine_by_refusal(pg_sink)
    QuarantinedExecution.objects.filter(pk=row.pk).update(error="old")
    result = quarantined_retry(ids=[row.pk])
    assert (result["stored"], result["refused"]) == (0, 1)
    assert "value too long" in result["errors"][0] and "hub-a/pumps1" in result["errors"][0]
    row.refresh_from_db()
    assert row.tries == 2 and "value too long" in row.error
    assert stored(pg_sink.url, pg_sink.table) == [(502, "flow"), (502, "pressure")]


@pytest.mark.postgres
def test_a_retry_stores_those_the_database_takes_and_keeps_those_it_still_refuses(pg_sink):
    rows = quarantine_by_refusal(pg_sink, numbers=(1, 3), good=())
    assert [r.group_id for r in rows] == [501, 503]
    widen_key_column(pg_sink)
    # 503's record is now one the database still refuses: its key holds a NUL, which PostgreSQL text takes not
    nul = execution_encode(pump_execution(3, key="bad\x00key"), project_id=pg_sink.project_id)
    QuarantinedExecution.objects.filter(group_id=503).update(body=nul)
    result = quarantined_retry(ids=[r.pk for r in rows])
    assert (result["stored"], result["refused"]) == (1, 1)
    assert list(QuarantinedExecution.objects.values_list("group_id", "tries")) == [(503, 2)]
    assert {gid for gid, _ in stored(pg_sink.url, pg_sink.table)} == {501}


@pytest.mark.postgres
def test_a_retry_while_the_sink_is_away_keeps_the_rows_and_says_the_sink_could_not_be_reached(pg_sink):
    (row,) = quarantine_by_refusal(pg_sink)
    Sink.objects.filter(pk=pg_sink.pk).update(url=f"postgresql+psycopg2://postgres:pw-secret@127.0.0.1:{unused_port()}/test")
    result = quarantined_retry(ids=[row.pk])
    assert (result["stored"], result["unreachable"]) == (0, 1)
    assert "pw-secret" not in json.dumps(result) and "***" in result["errors"][0]
    row.refresh_from_db()
    assert row.tries == 2 and "pw-secret" not in row.error


@pytest.mark.postgres
def test_the_export_is_a_json_document_with_each_row_and_its_record_decoded(pg_sink):
    (row,) = quarantine_by_refusal(pg_sink)
    (item,) = json.loads(quarantined_export(ids=[row.pk]))
    assert item["forwarder"] == f"sink:{pg_sink.pk}"
    assert (item["stream"], item["offset"], item["group_id"]) == (EXECUTIONS, row.offset, 501)
    assert (item["project"], item["hub"], item["group"], item["tries"]) == ("plant", "hub-a", "pumps1", 1)
    assert item["tick"] == "2026-12-02T01:00:01Z" and item["created_at"].endswith("Z")
    assert "value too long" in item["error"]
    assert item["record"]["v"] == 1 and item["record"]["status"] == "ok"
    assert item["record"]["values"][0][1][0]["key"] == LONG_KEY


def test_the_export_stays_strict_json_for_a_record_holding_nan(db):
    project = Project.objects.create(name="plant")
    forwarder = Forwarder.objects.create(name="sink:default", kind="sink", stream=EXECUTIONS)
    body = execution_encode(pump_execution(1, value=math.nan), project_id=project.pk)
    assert b"NaN" in body  # the codec keeps it as the standard library writes it
    row = QuarantinedExecution.objects.create(forwarder=forwarder, stream=EXECUTIONS, offset=7, group_id=501, tick=TICK,
                                              project="plant", hub="hub-a", group="pumps1", body=body, error="e")
    text = quarantined_export(ids=[row.pk]).decode()
    (item,) = json.loads(text, parse_constant=lambda token: pytest.fail(f"not strict JSON: {token}"))
    assert item["record"] is None and item["record_text"] == body.decode()


def test_a_retry_of_a_default_sink_row_writes_to_the_settings_sink(db, settings, tmp_path):
    settings.HUBSCHED_SINK_URL = f"sqlite:///{tmp_path / 'default.sqlite3'}"
    forwarder = Forwarder.objects.create(name="sink:default", kind="sink", stream=EXECUTIONS)
    body = execution_encode(pump_execution(1), project_id=None)
    row = QuarantinedExecution.objects.create(forwarder=forwarder, stream=EXECUTIONS, offset=3, group_id=501, tick=TICK,
                                              project="plant", hub="hub-a", group="pumps1", body=body, error="e")
    try:
        assert quarantined_retry(ids=[row.pk])["stored"] == 1
        assert stored(settings.HUBSCHED_SINK_URL, "hubsched_values") == [(501, "flow"), (501, "pressure")]
        assert not QuarantinedExecution.objects.exists()
    finally:
        sinks_dispose()


def test_a_record_that_no_longer_decodes_is_kept_and_said_unreadable(db):
    forwarder = Forwarder.objects.create(name="sink:default", kind="sink", stream=EXECUTIONS)
    row = QuarantinedExecution.objects.create(forwarder=forwarder, stream=EXECUTIONS, offset=3, group_id=501, tick=TICK,
                                              project="plant", hub="hub-a", group="pumps1", body=b'{"v": 9}', error="e")
    result = quarantined_retry(ids=[row.pk])
    assert (result["stored"], result["unreadable"]) == (0, 1) and "version 9" in result["errors"][0]
    assert QuarantinedExecution.objects.filter(pk=row.pk, tries=1).exists()


def test_once_a_sink_is_found_away_its_later_chunks_are_not_tried(db, settings, monkeypatch):
    import streams.quarantine

    monkeypatch.setattr(streams.quarantine, "RETRY_CHUNK", 1)
    settings.HUBSCHED_SINK_URL = f"postgresql+psycopg2://postgres@127.0.0.1:{unused_port()}/test"
    forwarder = Forwarder.objects.create(name="sink:default", kind="sink", stream=EXECUTIONS)
    rows = [QuarantinedExecution.objects.create(
        forwarder=forwarder, stream=EXECUTIONS, offset=n, group_id=500 + n, tick=TICK + timedelta(seconds=n),
        project="plant", hub="hub-a", group=f"pumps{n}", body=execution_encode(pump_execution(n)), error="e", tries=1)
        for n in (1, 2)]
    try:
        result = quarantined_retry(ids=[r.pk for r in rows])
    finally:
        sinks_dispose()
    assert (result["stored"], result["unreachable"], len(result["errors"])) == (0, 2, 1)
    assert list(QuarantinedExecution.objects.order_by("offset").values_list("tries", flat=True)) == [2, 1]

"""Every /api/v1 operation against its own OpenAPI schema (schemathesis, property-based; issue 15 item 4).

The schema is read from ``/api/v1/openapi.json`` through Django's WSGI application, and each operation is called
with generated parameters and bodies (valid and not), in-process, inside the test's database transaction:

- as an admin (an API token of a user in the ``admin`` role): no answer is a server error (5xx), every status
  is one the operation declares (``api.schemas.responses``), and every body matches the declared schema;
- as a user with no permission at all: no answer is a server error (they are 403s, or 401/404/422 first).

Bounded for CI: ``MAX_EXAMPLES`` per operation, derandomized (the same cases each run, no example database),
no deadline (a loaded machine must not fail it). Where it finds a fault, the failure names the operation and
prints a ``curl`` line that reproduces it.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from api.testing import user_with

MAX_EXAMPLES = 10  # per operation, as the admin
NOBODY_EXAMPLES = 5  # per operation, as the user without permissions (refused before the body matters)
SCHEMA_PATH = "/api/v1/openapi.json"



@schemathesis.check
def not_a_server_error_but_a_failing_health_check(ctx, response, case):
    """``not_a_server_error``, except the health check's declared 503: it answers so when something it checks is
    down, and in a test no beat leads (api/system.py)."""
    if case.operation.label == "GET /api/v1/health" and response.status_code == 503:
        return None
    return not_a_server_error(ctx, response, case)


ADMIN_CHECKS = [not_a_server_error_but_a_failing_health_check, status_code_conformance, response_schema_conformance]
NOBODY_CHECKS = [not_a_server_error_but_a_failing_health_check]


def _wsgi_application():
    from hubsched.wsgi import application

    return application


# Read when the tests are collected (one test per operation and user, named by its method and path); the schema
# view itself touches no database.
schema = schemathesis.openapi.from_wsgi(SCHEMA_PATH, _wsgi_application())
schema.config.generation.update(max_examples=MAX_EXAMPLES)


@pytest.fixture(autouse=True)
def _requests_on_the_tests_connection(db):
    """Without the per-request ``close_old_connections`` (as Django's test client does): the requests run on the
    test's connection, inside its transaction, so what one makes the next one sees, and nothing outlives the test."""
    from django.core.cache import cache

    cache.clear()  # the throttle's counts (per user id: ids come again after a rolled-back test)
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


HYPOTHESIS = settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                      phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its curl line as found
                      suppress_health_check=list(HealthCheck))


def bearer(role: str | None) -> dict[str, str]:
    from api.services import api_token_create

    _row, raw = api_token_create(user=user_with(role=role), name="schemathesis")
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def admin_headers(db):
    return bearer("admin")


@pytest.fixture
def nobody_headers(db):
    return bearer(None)


@pytest.fixture
def first_time():
    """``first_time(case)``: False for a case already sent in this test (an operation without parameters is
    generated the same every time). ``GET /workers`` waits its ``timeout`` (up to 5 s) for workers that do not
    run here: a valid one is made the shortest."""
    seen = set()

    def check(case) -> bool:
        if case.operation.label == "GET /api/v1/workers" and isinstance(case.query, dict) \
                and isinstance(case.query.get("timeout"), (int, float)) and case.query["timeout"] >= 0.1:
            case.query["timeout"] = 0.1  # a valid wait for the workers' replies, the shortest (none answer here)
        key = repr((case.path_parameters, case.query, case.headers, case.body))
        if key in seen:
            return False
        seen.add(key)
        return True

    return check


@schema.parametrize()
@HYPOTHESIS
def test_every_operation_answers_an_admin_as_its_schema_says(case, admin_headers, first_time):
    if first_time(case):
        case.call_and_validate(headers=admin_headers, checks=ADMIN_CHECKS)


@schema.parametrize()
@settings(HYPOTHESIS, max_examples=NOBODY_EXAMPLES)
def test_no_operation_answers_a_user_without_permissions_with_a_server_error(case, nobody_headers, first_time):
    if first_time(case):
        case.call_and_validate(headers=nobody_headers, checks=NOBODY_CHECKS)

"""The API's authentication (tokens, session with CSRF) and its one error shape."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from api.models import ApiToken
from api.services import api_token_create
from api.testing import assert_error, token_client, user_with

pytestmark = pytest.mark.django_db


def test_a_token_authenticates_and_its_secret_is_stored_only_as_a_digest():
    user = user_with(role="viewer")
    row, raw = api_token_create(user=user, name="ci")
    assert raw.startswith(f"hs_{row.prefix}_") and raw not in (row.digest, row.prefix)
    response = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/tokens")
    assert response.status_code == 200, response.content
    assert [t["name"] for t in response.json()] == ["ci"]
    assert "token" not in response.json()[0] and raw not in response.content.decode()
    row.refresh_from_db()
    assert row.last_used_at is not None


@pytest.mark.parametrize("spoil", ["revoked", "expired", "inactive", "unknown"])
def test_a_revoked_expired_unknown_or_inactive_users_token_is_refused(spoil):
    user = user_with(role="viewer")
    row, raw = api_token_create(user=user, name="ci")
    if spoil == "revoked":
        row.revoked_at = timezone.now()
        row.save()
    elif spoil == "expired":
        ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif spoil == "inactive":
        user.is_active = False
        user.save()
    else:
        raw = raw[:-2] + "xx"
    assert_error(Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/tokens"), 401, "not_authenticated")


def test_a_token_made_through_the_api_is_shown_once_and_can_be_revoked():
    client = token_client(role="viewer")
    made = client.post("/api/v1/tokens", {"name": "export"}, content_type="application/json")
    assert made.status_code == 201, made.content
    raw = made.json()["token"]
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/tokens").status_code == 200
    listed = client.get("/api/v1/tokens").json()
    assert all("token" not in t for t in listed) and raw not in str(listed)
    assert client.delete(f"/api/v1/tokens/{made.json()['id']}").json()["state"] == "revoked"
    assert_error(Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/tokens"), 401)


def test_a_user_sees_and_revokes_only_their_own_tokens_unless_they_manage_tokens():
    other_row, _ = api_token_create(user=user_with(role="viewer"), name="theirs")
    mine = token_client(role="viewer")
    assert [t["name"] for t in mine.get("/api/v1/tokens").json()] == ["test"]
    assert_error(mine.delete(f"/api/v1/tokens/{other_row.pk}"), 404, "not_found")
    admin = token_client(role="admin")
    assert {t["name"] for t in admin.get("/api/v1/tokens").json()} >= {"theirs", "test"}
    assert admin.delete(f"/api/v1/tokens/{other_row.pk}").status_code == 200


def test_a_user_without_the_permission_gets_403_naming_it():
    error = assert_error(token_client(role=None).get("/api/v1/tokens"), 403, "permission_denied")
    assert "api.view_apitoken" in error["message"]


def test_a_session_post_needs_the_csrf_token():
    client = Client(enforce_csrf_checks=True)
    client.force_login(user_with(role="viewer"))
    assert client.get("/api/v1/tokens").status_code == 200
    refused = client.post("/api/v1/tokens", {"name": "x"}, content_type="application/json")
    assert_error(refused, 403)
    client.get("/admin/")  # its logout form sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    made = client.post("/api/v1/tokens", {"name": "x"}, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert made.status_code == 201, made.content


def test_anonymous_callers_get_401_in_the_shape():
    assert_error(Client().get("/api/v1/tokens"), 401, "not_authenticated")


def test_unknown_fields_bad_json_and_bad_values_are_refused_with_their_path():
    client = token_client(role="viewer")
    unknown = assert_error(client.post("/api/v1/tokens", {"name": "x", "colour": "red"},
                                       content_type="application/json"), 422, "invalid")
    assert any(d["path"] == "colour" for d in unknown["details"]), unknown
    assert_error(client.post("/api/v1/tokens", "{not json", content_type="application/json"), 400, "bad_request")
    past = assert_error(client.post("/api/v1/tokens", {"name": "x", "expires_at": "2000-01-01T00:00:00Z"},
                                    content_type="application/json"), 422)
    assert past["details"][0]["path"] == "expires_at"


def test_unknown_paths_and_wrong_methods_answer_in_the_shape():
    client = token_client(role="viewer")
    assert_error(client.get("/api/v1/no-such-thing"), 404, "not_found")
    assert_error(client.get("/api/no-such-thing"), 404, "not_found")
    error = assert_error(client.put("/api/v1/tokens"), 405, "method_not_allowed")
    assert error["message"]


def test_the_openapi_schema_is_3_1_and_the_docs_load_no_cdn():
    client = token_client(role="viewer")
    schema = client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["openapi"].startswith("3.1")
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200
    assert b"cdn." not in docs.content and b"unpkg" not in docs.content

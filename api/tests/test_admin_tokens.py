"""API tokens in the admin: made and shown once, listed only to their owner, revoked not forgotten."""

import re

import pytest
from django.test import Client

from api.models import ApiToken
from api.services import api_token_create
from api.testing import user_with

pytestmark = pytest.mark.django_db


def _admin_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_makes_a_token_shows_it_once_and_stores_only_its_digest():
    user = user_with(role="viewer")
    client = _admin_client(user)
    response = client.post("/admin/api/apitoken/add/", {"name": "nightly export", "expires_at_0": "", "expires_at_1": ""})
    assert response.status_code == 200, response.content[:300]
    raw = re.search(rb'id="api-token"[^>]*>(hs_[^<]+)<', response.content).group(1).decode()
    assert "no-store" in response["Cache-Control"]
    row = ApiToken.objects.get(name="nightly export")
    assert row.user == user and raw.startswith(f"hs_{row.prefix}_")
    assert raw not in (row.digest, row.prefix) and "messages" not in response.cookies
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/tokens").status_code == 200
    assert raw.encode() not in client.get(f"/admin/api/apitoken/{row.pk}/change/").content


def test_the_admin_refuses_a_token_without_a_name_and_saves_nothing():
    client = _admin_client(user_with(role="viewer"))
    response = client.post("/admin/api/apitoken/add/", {"name": "  ", "expires_at_0": "", "expires_at_1": ""})
    assert response.status_code == 200 and b"errorlist" in response.content
    assert not ApiToken.objects.exists()


def test_a_user_lists_only_their_own_tokens_in_the_admin_and_revoking_keeps_the_row():
    mine, theirs = user_with(role="viewer"), user_with(role="viewer")
    own, _ = api_token_create(user=mine, name="own-token")
    api_token_create(user=theirs, name="their-token")
    client = _admin_client(mine)
    listing = client.get("/admin/api/apitoken/").content
    assert b"own-token" in listing and b"their-token" not in listing
    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [own.pk]})
    own.refresh_from_db()
    assert own.state == "revoked"
    admin_listing = _admin_client(user_with(role="admin")).get("/admin/api/apitoken/").content
    assert b"their-token" in admin_listing


def test_a_user_without_token_permissions_cannot_reach_the_token_admin():
    assert _admin_client(user_with(role=None)).get("/admin/api/apitoken/add/").status_code == 403


def test_the_apitoken_command_prints_only_the_token_and_revokes_by_prefix():
    from io import StringIO

    from django.core.management import call_command

    user = user_with(role="viewer", name="ci-user")
    out = StringIO()
    call_command("apitoken", "create", "--user", "ci-user", "--name", "ci", stdout=out)
    raw = out.getvalue().strip()
    assert raw.startswith("hs_") and "\n" not in raw
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/tokens").status_code == 200
    listing = StringIO()
    call_command("apitoken", "list", "--user", "ci-user", stdout=listing)
    assert "ci" in listing.getvalue() and raw not in listing.getvalue()
    call_command("apitoken", "revoke", raw.split("_")[1], stdout=StringIO())
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/tokens").status_code == 401
    assert ApiToken.objects.get(user=user).state == "revoked"

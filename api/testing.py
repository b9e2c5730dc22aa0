"""Test helpers for the API: a user in a role, and a client that sends that user's API token."""

from __future__ import annotations

import itertools

from django.test import Client

_n = itertools.count(1)


def user_with(*, role: str | None = None, perms: tuple[str, ...] = (), name: str | None = None):
    """A staff user (never a superuser) in ``role`` (viewer, operator, integrator, admin) holding ``perms`` besides."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group as AuthGroup, Permission

    user = get_user_model().objects.create_user(name or f"api-{role or 'none'}-{next(_n)}", password="pw-123456",
                                                is_staff=True)
    if role:
        user.groups.add(AuthGroup.objects.get(name=role))
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def token_client(user=None, *, role: str | None = "admin") -> Client:
    """A Django test ``Client`` sending ``Authorization: Bearer <a new token of user>`` on every request
    (``user`` defaults to a new user in ``role``); no session, so no CSRF. ``client.user`` is that user."""
    from .services import api_token_create

    user = user or user_with(role=role)
    _row, raw = api_token_create(user=user, name="test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.user = user
    return client


def assert_error(response, status: int, code: str | None = None) -> dict:
    """Check ``response`` is ``status`` in the one error shape; returns its ``error`` object."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def logged_in(role: str | None, **kwargs) -> Client:
    """A test client logged in (a session, as in a browser) as a new staff user of ``role`` (None: staff alone, no
    permission); ``kwargs`` go to Client (``enforce_csrf_checks=True``)."""
    client = Client(**kwargs)
    client.force_login(user_with(role=role))
    return client

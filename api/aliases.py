"""Old paths answered by their ``/api/v1/`` successor: the same view (its auth, permissions, error shape),
with ``Deprecation: true`` and ``Link: </api/v1/...>; rel="successor-version"`` (RFC 9745, RFC 8288)."""

from __future__ import annotations

from django.urls import resolve


def _mark(response, path: str, deprecated: bool):
    if deprecated:
        response["Deprecation"] = "true"
        response["Link"] = f'<{path}>; rel="successor-version"'
    return response


def alias(successor: str, *, is_async: bool = False, deprecated: bool = True):
    """A Django view answering with the v1 view at ``successor`` (a path, ``{name}`` filled from the old path's
    URL kwargs: ``"/api/v1/groups/{group_id}/kill"``); the query string and body pass as they are.
    ``is_async``: the v1 view is a coroutine (a streaming answer), so the alias is one too. ``deprecated=False``
    for a second name that stays (``/api/health``): no headers then."""

    if is_async:
        async def view(request, **kwargs):
            path = successor.format(**kwargs)
            match = resolve(path)
            return _mark(await match.func(request, *match.args, **match.kwargs), path, deprecated)
    else:
        def view(request, **kwargs):
            path = successor.format(**kwargs)
            match = resolve(path)
            return _mark(match.func(request, *match.args, **match.kwargs), path, deprecated)

    # Django's CSRF middleware checks an old path as it always did (they took a session only; a program with a
    # token calls the /api/v1/ path)
    view.successor = successor
    return view

"""Who is calling: a bearer API token (programs) or the Django session with its CSRF token (the browser)."""

from __future__ import annotations

from ninja.security import HttpBearer, SessionAuth


class BearerToken(HttpBearer):
    """``Authorization: Bearer hs_…``: an ``api.ApiToken`` that is not revoked or expired; no CSRF check (the
    token is not sent by the browser on its own, so a cross-site request cannot carry it)."""

    def authenticate(self, request, token: str):
        from .services import api_token_authenticate

        user = api_token_authenticate(raw=token)
        if user is not None:
            request.user = user  # the permission checks read request.user, as for a session
        return user


class Session(SessionAuth):
    """The login of the admin or the console; unsafe methods need the CSRF token (``X-CSRFToken``)."""

    def _get_key(self, request):
        from ninja.errors import HttpError

        from .errors import ApiError

        try:
            return super()._get_key(request)
        except HttpError as exc:  # ninja's own words ("CSRF check Failed") do not say what is missing
            if exc.status_code != 403:
                raise
            raise ApiError(403, "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header "
                                "(or use an API token)") from None


AUTH = [BearerToken(), Session(csrf=True)]

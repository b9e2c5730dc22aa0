"""``/api/v1/tokens``: a user's own API tokens (``api.manage_apitoken``: everyone's). The secret is in the
answer of the POST that makes it, and nowhere else."""

from __future__ import annotations

from datetime import datetime

from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from .errors import ApiError
from .models import ApiToken
from .permissions import require
from .schemas import In, responses

router = Router(tags=["tokens"])


class TokenOut(Schema):
    id: int
    name: str
    prefix: str = Field(..., description="First characters of the token (hs_<prefix>_…), to recognise it")
    user: str
    state: str = Field(..., description="active, expired or revoked")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @staticmethod
    def resolve_user(obj) -> str:
        return obj.user.get_username()


class TokenIn(In):
    name: str = Field(..., min_length=1, max_length=200)
    expires_at: datetime | None = Field(None, description="ISO 8601 with offset; empty: never expires")


class TokenCreated(TokenOut):
    token: str = Field(..., description="The token itself: shown in this answer only, never again")


def _visible(request):
    qs = ApiToken.objects.select_related("user")
    return qs if request.user.has_perm("api.manage_apitoken") else qs.filter(user=request.user)


@router.get("/tokens", response=responses(list[TokenOut]), summary="List API tokens")
def tokens_list(request):
    """The caller's tokens, newest first (with ``api.manage_apitoken``: every user's). Needs ``api.view_apitoken``."""
    require(request, "api.view_apitoken")
    return list(_visible(request))


@router.post("/tokens", response=responses({201: TokenCreated}), summary="Make an API token")
def tokens_create(request, payload: TokenIn):
    """A new token of the caller; the answer holds the secret, once. Needs ``api.add_apitoken``."""
    from .services import api_token_create

    require(request, "api.add_apitoken")
    try:
        token, raw = api_token_create(user=request.user, name=payload.name, expires_at=payload.expires_at)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        raise ApiError(422, str(exc), details=[{"path": field, "message": message}]) from None
    token.token = raw  # on this answer's object only
    return Status(201, token)


@router.delete("/tokens/{token_id}", response=responses(TokenOut), summary="Revoke an API token")
def tokens_revoke(request, token_id: int):
    """Revoke one of the caller's tokens (with ``api.manage_apitoken``, anyone's); 404 for a token the caller
    cannot see. Needs ``api.delete_apitoken``."""
    from .services import api_token_revoke

    require(request, "api.delete_apitoken")
    return api_token_revoke(token=get_object_or_404(_visible(request), pk=token_id))

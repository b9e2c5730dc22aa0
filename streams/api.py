"""``/api/v1`` endpoint of the durable log: ``GET /api/v1/streams/{name}``, a stream's records as Server-Sent
Events (the replay itself: streams/views.py; docs/streams.md, "Replay over HTTP")."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import connections
from ninja import Field, Header, Query, Router, Schema

from api.errors import ApiError
from api.permissions import require
from api.schemas import responses

from . import views
from .log import LogError, start_parse

router = Router(tags=["streams"])

OFFSET_MAX = 2**63 - 2  # an offset (and the one after it) as a signed 64-bit integer, what the log's readers take


class ReplayQuery(Schema):
    from_: str = Field("next", alias="from", description="first, last, next (only what is appended from now), "
                       "offset:N, or time:<ISO 8601 with a UTC offset>")
    consumer: str | None = Field(None, description="A durable consumer's name (at most 195 characters): its "
                                 "offset is stored after each chunk sent, and the next replay of that name resumes "
                                 "after it")


def _invalid(path: str, exc: LogError) -> ApiError:
    return ApiError(422, exc.message, details=[{"path": path, "message": exc.message}])


SSE = {"description": "The stream's records as Server-Sent Events, for as long as the client stays: `retry: 5000`, "
       "then per record `id: <offset>` and its body in `data:` lines; `: keep-alive` after 15 s of silence.",
       "content": {"text/event-stream": {"schema": {"type": "string"}}}}


@router.get("/streams/{name}", response=responses({}, 401, 403, 404, 422, 503), summary="Replay a stream (SSE)",
            openapi_extra={"responses": {200: SSE}})
async def streams_replay(request, name: str, query: Query[ReplayQuery],
                         last_event_id: str | None = Header(None, alias="Last-Event-ID")):
    """The records of stream ``name`` (``executions``) as Server-Sent Events (``text/event-stream``), read and
    sent 100 at a time.

    Where it starts: after the ``Last-Event-ID`` header when sent (EventSource sends it on a reconnect; it
    overrides the rest); else, for a named ``consumer``, after the offset it last stored (``http.<consumer>``
    among the log's consumer offsets, never one of hubsched's own); else at ``from`` (default ``next``).
    A named consumer is at least once: a chunk in transit when a connection breaks counts as delivered.

    Needs ``streams.read_stream`` (the viewer role and up). 404 for a stream that is not replayable (asked
    after the permission: an anonymous caller learns no names), 422 for a bad ``from``, ``consumer`` or
    ``Last-Event-ID`` (the path names it), 503 when the log cannot be opened.
    """
    await sync_to_async(require)(request, views.READ_PERMISSION)
    if name not in views.STREAMS:
        known = ", ".join(sorted(views.STREAMS))
        raise ApiError(404, f"stream {name[:200]!r}: not replayable (streams: {known})")
    try:
        requested = start_parse(query.from_)
        if (requested.offset or 0) > OFFSET_MAX:
            raise LogError(f"from=offset:N: N at most {OFFSET_MAX}", permanent=True)
    except LogError as exc:
        raise _invalid("from", exc) from None
    try:
        consumer = views.consumer_check(query.consumer)
    except LogError as exc:
        raise _invalid("consumer", exc) from None
    try:
        last = views.last_event_id_parse(last_event_id)
        if (last or 0) > OFFSET_MAX:
            raise LogError(f"Last-Event-ID: at most {OFFSET_MAX}", permanent=True)
    except LogError as exc:
        raise _invalid("Last-Event-ID", exc) from None
    user = request.user.get_username()
    # a replay may run for hours: it keeps no database connection from the login check
    await sync_to_async(connections.close_all)()
    try:
        return await views.replay_respond(name=name, requested=requested, last_event_id=last, consumer=consumer,
                                          user=user)
    except LogError as exc:
        views.logger.warning("replay of %s refused: the log: %s", name, exc.message)
        raise ApiError(503, f"the log is not available: {exc.message}") from None

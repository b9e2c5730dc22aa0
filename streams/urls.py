"""HTTP API routes of the streams app before /api/v1 (included under api/streams/): aliases for one release."""

from django.urls import path

from api.aliases import alias

urlpatterns = [
    # deprecated: GET /api/v1/streams/{name} (streams/api.py) answers; see docs/api.md
    path("<str:name>", alias("/api/v1/streams/{name}", is_async=True), name="api-stream-replay"),
]

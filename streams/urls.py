"""HTTP API routes of the streams app (included under api/streams/)."""

from django.urls import path

from . import views

urlpatterns = [
    path("<str:name>", views.api_stream_replay, name="api-stream-replay"),
]

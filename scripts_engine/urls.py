"""HTTP API routes of the scripts_engine app (included under ``api/``)."""

from django.urls import path

from .views import api_script_debug

urlpatterns: list = [
    path("scripts/<int:script_id>/debug", api_script_debug, name="api-script-debug"),
]

"""HTTP API routes of the scripts_engine app before /api/v1 (included under ``api/``): aliases for one release."""

from django.urls import path

from api.aliases import alias

urlpatterns: list = [
    # deprecated: POST /api/v1/scripts/{id}/debug (scripts_engine/api.py) answers; see docs/api.md
    path("scripts/<int:script_id>/debug", alias("/api/v1/scripts/{script_id}/debug"), name="api-script-debug"),
]

"""HTTP API routes of the scripts_engine app."""

urlpatterns: list = []

"""HTTP API routes of the hubs app."""

urlpatterns: list = []

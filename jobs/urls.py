"""The /ruqi/ routes: ruqi's HTTP API on hubsched's jobs (jobs/ruqi.py), mounted by hubsched/urls.py."""

from django.urls import path

from .ruqi import ruqi_api

urlpatterns = [
    path("", ruqi_api.urls),
]

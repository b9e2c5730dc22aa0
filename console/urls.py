"""The console at ``/`` (docs/console.md)."""

from django.urls import path

from . import views

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("alarms/", views.alarms, name="alarms"),
    path("alarms/<int:alarm_id>/acknowledge", views.alarm_acknowledge_view, name="alarm-acknowledge"),
    path("alarms/<int:alarm_id>/shelve", views.alarm_shelve_view, name="alarm-shelve"),
    path("alarms/<int:alarm_id>/unshelve", views.alarm_unshelve_view, name="alarm-unshelve"),
]

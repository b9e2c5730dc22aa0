"""The console's overview: what the projects hold and the open alarms by severity."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from alarms.selectors import alarms_list


@require_GET
@login_required
@permission_required("groups.view_group", raise_exception=True)
def home(request: HttpRequest) -> HttpResponse:
    """The console's start: what the project holds and the open alarms by severity."""
    from groups.models import Group
    from hubs.models import Hub, Project

    open_alarms = {}
    if request.user.has_perm("alarms.view_alarm"):
        open_alarms = {row["severity"]: row["n"] for row in
                       alarms_list().exclude(state="cleared").values("severity").annotate(n=Count("id")).order_by()}
    return render(request, "console/home.html", {
        "projects": Project.objects.count(), "hubs": Hub.objects.count(), "groups": Group.objects.count(),
        "open_alarms": open_alarms,
    })

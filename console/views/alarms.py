"""The console's alarm pages. Each view needs a login and a permission (the roles of hubsched/roles.py), never just
``is_staff``; writes are POSTs with Django's CSRF token (htmx sends it from ``hx-headers`` on ``<body>``).
An htmx request gets the fragment it swaps in, a plain one the whole page."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from alarms.models import Alarm
from alarms.selectors import alarms_list
from alarms.services import NOTE_MAX_CHARS, AlarmTransitionRefused, alarm_acknowledge, alarm_shelve, alarm_unshelve

from ..forms import SHELVE_CHOICES, AlarmFilterForm, AlarmNoteForm, AlarmShelveForm

ALARMS_PAGE = 50  # rows a page of the alarm list shows


def _alarms_page(request: HttpRequest, *, state: str, page: int, refused: dict | None = None,
                 status: int = 200) -> HttpResponse:
    """The list (or its table, for htmx). ``refused``: ``{"alarm": pk, "message": str, "note": str}`` of a write
    that was refused: its form is shown open again with the note as typed and the message beside it."""
    rows = alarms_list(state=state or None)
    if not state:
        rows = rows.exclude(state="cleared")
    paginator = Paginator(rows, ALARMS_PAGE)
    now = timezone.now()
    shown = paginator.get_page(page)
    for alarm in shown:  # what the row template asks of each alarm
        alarm.shelved_now = bool(alarm.shelved_until and alarm.shelved_until > now)
        alarm.refused = refused if refused and refused["alarm"] == alarm.pk else None
    context = {"page": shown, "state": state,
               "can_acknowledge": request.user.has_perm("alarms.acknowledge_alarm"),
               "filter": AlarmFilterForm(initial={"state": state}), "note_max": NOTE_MAX_CHARS,
               "can_shelve": request.user.has_perm("alarms.shelve_alarm"), "shelve_choices": SHELVE_CHOICES}
    template = "console/_alarms_table.html" if request.htmx else "console/alarms.html"
    return render(request, template, context, status=status)


@require_GET
@login_required
@permission_required("alarms.view_alarm", raise_exception=True)
def alarms(request: HttpRequest) -> HttpResponse:
    """The alarms newest first, ``?state=`` active, acknowledged or cleared (default: every open one), 50 a page;
    the table refreshes itself every 5 s (htmx) except while a note is being written."""
    form = AlarmFilterForm(request.GET)
    if not form.is_valid():
        return HttpResponseBadRequest(f"state: {form.errors['state'][0]}")
    try:
        page = max(1, int(request.GET.get("page") or 1))
    except ValueError:
        return HttpResponseBadRequest("page: not a whole number")
    return _alarms_page(request, state=form.cleaned_data["state"], page=page)


def _list_state(request: HttpRequest) -> str:
    """The list the form was posted from (its filter), to answer with the same list."""
    state = request.POST.get("list_state", "")
    return state if state in {"", "active", "acknowledged", "cleared"} else ""


def _write(request: HttpRequest, alarm_id: int, form, action: str, write) -> HttpResponse:
    """Validate ``form`` and run ``write(alarm, cleaned_data)``; answer the refreshed table. Bad input is shown
    beside the field (422), a refused transition beside the alarm (409); either way nothing is changed and the
    form is shown open again with the note as typed."""
    alarm = get_object_or_404(Alarm, pk=alarm_id)
    state = _list_state(request)
    try:  # answer with the page the form was on
        page = max(1, int(request.POST.get("list_page") or 1))
    except ValueError:
        page = 1
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        label = form.fields[field].label or field  # the words beside the field, not its form name
        return _alarms_page(request, state=state, page=page, status=422, refused={
            "alarm": alarm.pk, "action": action, "message": f"{label}: {errors[0]}", "note": request.POST.get("note", "")})
    try:
        write(alarm, form.cleaned_data)
    except AlarmTransitionRefused as exc:
        return _alarms_page(request, state=state, page=page, status=409, refused={
            "alarm": alarm.pk, "action": action, "message": str(exc), "note": form.cleaned_data.get("note", "")})
    return _alarms_page(request, state=state, page=page)


@require_POST
@login_required
@permission_required("alarms.acknowledge_alarm", raise_exception=True)
def alarm_acknowledge_view(request: HttpRequest, alarm_id: int) -> HttpResponse:
    """Acknowledge an active alarm with the note typed beside it (``alarms.services.alarm_acknowledge``)."""
    return _write(request, alarm_id, AlarmNoteForm(request.POST), "acknowledge",
                  lambda alarm, data: alarm_acknowledge(alarm=alarm, by=request.user, note=data["note"]))


@require_POST
@login_required
@permission_required("alarms.shelve_alarm", raise_exception=True)
def alarm_shelve_view(request: HttpRequest, alarm_id: int) -> HttpResponse:
    """Shelve an open alarm for the chosen time, with a note (``alarms.services.alarm_shelve``)."""
    def shelve(alarm, data):
        now = timezone.now()
        alarm_shelve(alarm=alarm, by=request.user, until=now + timedelta(seconds=data["for_s"]), note=data["note"], at=now)

    return _write(request, alarm_id, AlarmShelveForm(request.POST), "shelve", shelve)


@require_POST
@login_required
@permission_required("alarms.shelve_alarm", raise_exception=True)
def alarm_unshelve_view(request: HttpRequest, alarm_id: int) -> HttpResponse:
    """End an alarm's shelving now (``alarms.services.alarm_unshelve``)."""
    return _write(request, alarm_id, AlarmNoteForm(request.POST), "unshelve",
                  lambda alarm, data: alarm_unshelve(alarm=alarm, by=request.user, note=data["note"]))

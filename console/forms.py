"""The console's forms: each field's rule is the one the API and the services use (alarms.services, the models'
validation that hubs.services runs); the hub form is hubs.forms.HubConsoleForm, shared with the admin's."""

from __future__ import annotations

from django import forms

from alarms.services import NOTE_MAX_CHARS, SHELVE_MAX_S
from hubs.models import Project


class AlarmNoteForm(forms.Form):
    """An acknowledgement's note (``alarms.services.alarm_acknowledge``): at most NOTE_MAX_CHARS characters."""

    note = forms.CharField(label="note", max_length=NOTE_MAX_CHARS, required=False, strip=True,
                           widget=forms.TextInput(attrs={"placeholder": "what you saw or did"}))


SHELVE_CHOICES = [(900, "15 minutes"), (3600, "1 hour"), (4 * 3600, "4 hours"), (8 * 3600, "8 hours"),
                  (86400, "1 day"), (7 * 86400, "1 week")]
assert all(seconds <= SHELVE_MAX_S for seconds, _ in SHELVE_CHOICES)


class AlarmShelveForm(AlarmNoteForm):
    """Shelving for one of SHELVE_CHOICES (at most ``SHELVE_MAX_S``, the API's bound), with a note."""

    for_s = forms.TypedChoiceField(choices=SHELVE_CHOICES, coerce=int, label="for")


class AlarmFilterForm(forms.Form):
    """The alarm list's filter: ``state`` (empty: every state but cleared)."""

    state = forms.ChoiceField(required=False, choices=[("", "open"), ("active", "active"),
                                                       ("acknowledged", "acknowledged"), ("cleared", "cleared")])


class ProjectForm(forms.ModelForm):
    """A project's settings (``hubs.services.project_create`` / ``project_change``: the model's rules, e.g. a name
    taken, an unknown time zone)."""

    class Meta:
        model = Project
        fields = ["name", "time_zone", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}


class SearchForm(forms.Form):
    """A list's search box: ``q``, a part of a name (any case)."""

    q = forms.CharField(required=False, max_length=200, strip=True)

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


GROUP_FIELDS = ["name", "trigger", "period", "offset", "cron", "run_at", "deadband", "expires", "execution_timeout",
                "script", "enabled"]


class GroupForm(forms.Form):
    """The group editor's fields: Group's own form fields (types and bounds from the model), the keys as lines
    ``entity key [alias]`` in their order. What a group must be (a trigger with its fields, keys in the hub's tree,
    a period's bound, a name free in the hub) is checked by ``groups.services.groups_check``, the API's and the
    import's rules, not here. ``run_at`` is read in the project's time zone."""

    keys = forms.CharField(
        label="keys", required=False, widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
        help_text="One per line, in order: the entity, the parameter key, and optionally the binding alias the "
                  "script uses (plant/line1/pump1 pressure p1).")

    def __init__(self, *args, project: Project, **kwargs):
        from groups.models import Group
        from scripts_engine.models import Script

        super().__init__(*args, **kwargs)
        model_fields = forms.fields_for_model(Group, fields=GROUP_FIELDS)
        model_fields["script"].queryset = Script.objects.filter(project=project).order_by("name")
        model_fields["run_at"].help_text = f"Once trigger: when to run, in the project's time zone ({project.time_zone})."
        keys = self.fields.pop("keys")
        self.fields.update(model_fields)
        self.fields["keys"] = keys

    def clean_keys(self) -> list[tuple[str, str, str]]:
        """``[(entity, key, alias)]``; a line of one word, or of more than three, is refused with its number."""
        out = []
        for number, line in enumerate(self.cleaned_data["keys"].splitlines(), start=1):
            words = line.split()
            if not words:
                continue
            if not 2 <= len(words) <= 3:
                raise forms.ValidationError(f"line {number}: expected an entity, a key and optionally an alias, "
                                            f"separated by spaces (got {line.strip()!r})")
            out.append((words[0], words[1], words[2] if len(words) == 3 else ""))
        return out

    def item(self) -> dict:
        """The cleaned data as ``groups.services.group_drafts_make`` takes one item (script by id)."""
        data = dict(self.cleaned_data)
        data["script"] = data["script"].pk if data.get("script") is not None else None
        return data


def group_keys_text(group) -> str:
    """A saved group's keys as the editor's lines."""
    return "\n".join(" ".join(part for part in (k.entity, k.key, k.alias) if part) for k in group.keys.all())


class ParameterWriteForm(forms.Form):
    """A value to write to one writable parameter (``hubs.services.hub_entity_write``), typed as the parameter is
    (``hubs.models.ParameterType``): a number, an integer, ``true``/``false``, a text as typed, or JSON for an
    array or an object."""

    key = forms.CharField(max_length=200)
    value = forms.CharField(required=False, strip=False, max_length=100_000)

    def __init__(self, *args, parameter_type: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.parameter_type = parameter_type

    def clean_value(self):
        import json

        text = self.cleaned_data["value"]
        kind = self.parameter_type
        try:
            if kind == "number":
                value = float(text)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
                return value
            if kind == "integer":
                return int(text.strip())
            if kind == "boolean":
                lowered = text.strip().lower()
                if lowered not in ("true", "false"):
                    raise ValueError
                return lowered == "true"
            if kind in ("array", "object"):
                value = json.loads(text)
                if not isinstance(value, list if kind == "array" else dict):
                    raise ValueError
                return value
        except ValueError:
            expected = {"number": "a number (2.5)", "integer": "a whole number (42)", "boolean": "true or false",
                        "array": "a JSON array ([1, 2])", "object": 'a JSON object ({"a": 1})'}[kind]
            raise forms.ValidationError(f"expected {expected} for a parameter of type {kind}") from None
        return text


class ScriptForm(forms.Form):
    """A script's fields, typed as the model's (``scripts_engine.models.Script``); its rules (the code compiles
    under the sandbox's policy, a name free in the project, the limits' minimums) are the model's, checked by
    ``scripts_engine.services.script_create`` / ``script_change`` as for the API and the import."""

    FIELDS = ("name", "description", "timeout", "memory_limit_mb", "code")

    def __init__(self, *args, **kwargs):
        from scripts_engine.models import Script

        super().__init__(*args, **kwargs)
        self.fields.update(forms.fields_for_model(Script, fields=list(self.FIELDS)))
        self.fields["description"].widget = forms.Textarea(attrs={"rows": 2})
        self.fields["code"].widget = forms.Textarea(attrs={"rows": 16, "spellcheck": "false", "class": "code"})
        self.fields["code"].strip = False  # the code as typed: its lines and columns are what errors point at

    def clean_code(self) -> str:
        """The code with a browser's CRLF line ends (a textarea posts them) as LF."""
        return self.cleaned_data["code"].replace("\r\n", "\n")


class ScriptDebugForm(forms.Form):
    """A test or debug run from the editor: the code as typed, the group whose live values it runs on (the
    project's), breakpoints as line numbers (``3, 7``), and whether to step through every line after the first."""

    code = forms.CharField(required=False, strip=False, widget=forms.HiddenInput)
    group = forms.ModelChoiceField(queryset=None, label="on the live values of", empty_label=None)
    breakpoints = forms.CharField(required=False, widget=forms.HiddenInput)
    step = forms.BooleanField(required=False, label="step through every line after the first breakpoint")

    def __init__(self, *args, project: Project, **kwargs):
        from groups.models import Group

        super().__init__(*args, **kwargs)
        self.fields["group"].queryset = Group.objects.filter(hub__project=project).select_related("hub").order_by(
            "hub__name", "name")
        self.fields["group"].label_from_instance = lambda g: f"{g.hub.name} / {g.name}"

    def clean_breakpoints(self) -> list[int]:
        text = self.cleaned_data["breakpoints"].replace(",", " ")
        try:
            lines = sorted({int(part) for part in text.split()})
        except ValueError:
            raise forms.ValidationError("line numbers separated by commas (3, 7)") from None
        if any(line < 1 for line in lines):
            raise forms.ValidationError("line numbers start at 1")
        return lines


class HubMethodForm(forms.Form):
    """A hub method to try (``hubs.services.hub_method_try``) with its params as a JSON object."""

    method = forms.ChoiceField(label="method", choices=[])
    params = forms.CharField(label="params (JSON)", required=False, strip=True, max_length=100_000,
                             widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false",
                                                          "placeholder": '{"entity": "plant/line1/pump1"}'}))

    def __init__(self, *args, **kwargs):
        from hubs.services import HUB_METHODS_TRIED

        super().__init__(*args, **kwargs)
        self.fields["method"].choices = [(m, m) for m in HUB_METHODS_TRIED]

    def clean_params(self) -> dict:
        import json

        text = self.cleaned_data["params"]
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('a JSON object, e.g. {"entity": "plant/line1/pump1"}')
        return value

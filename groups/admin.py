"""Admin for groups, their keys, runs and counters; and django-celery-beat's PeriodicTask, guarded for hubsched's entries."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from .services import groups_enabled_set, groups_kill, groups_run_now

from .models import Group, GroupKey, GroupRun, GroupStats, KillOutcome, KillRequest, Trigger
from .validators import group_keys_problems, project_wide_sinks

RECENT_RUNS = 10


class GroupKeyFormSet(forms.BaseInlineFormSet):
    """The rules across a group's keys, as import checks them (groups/validators.py): at least one key, each
    once, each binding once, and no two sharing a wide column. Each key's place in the hub's entity tree is
    GroupKey.clean's, on its row."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return  # rows first: the rules below need every row's values
        rows = [
            form.cleaned_data for form in self.forms
            if form.cleaned_data and form.cleaned_data.get("entity") and not self._should_delete_form(form)
        ]
        rows.sort(key=lambda row: row.get("position") or 0)  # the group's order (GroupKey.Meta.ordering)
        hub = self.instance.hub if self.instance.hub_id else None
        wide = hub is not None and bool(project_wide_sinks(project_id=hub.project_id))
        keys = [(row["entity"], row["key"], row.get("alias") or "") for row in rows]
        problems = group_keys_problems(keys=keys, tree=None, wide=wide)
        if problems:
            raise forms.ValidationError([message for _, message in problems])


class GroupKeyInline(admin.TabularInline):
    model = GroupKey
    formset = GroupKeyFormSet
    fields = ("position", "entity", "key", "alias")
    extra = 1


class GroupForm(forms.ModelForm):
    class Meta:
        model = Group
        fields = "__all__"

    def clean(self):
        # The trigger's own fields (needed before the PeriodicTask mirror can be built from them), the script's
        # project and the wide table are Group.clean's rules, run right after this with import's wording
        # (groups/validators.py); the keys' rules are GroupKeyFormSet's.
        return super().clean()


def _ids(queryset) -> list[int]:
    return list(queryset.values_list("pk", flat=True))


@admin.register(Group)
class GroupAdmin(admin.ModelAdmin):
    form = GroupForm
    list_display = ("name", "hub", "project", "trigger", "schedule", "enabled", "last_status", "last_run_at", "beat_entry")
    list_filter = ("enabled", "trigger", "hub__project", "hub", "stats__last_status")
    search_fields = ("name", "hub__name", "hub__project__name", "keys__entity", "keys__key")
    list_select_related = ("hub__project", "stats", "periodic_task")

    def changelist_view(self, request, extra_context=None):
        """The list says which beat leads (docs/scheduler.md, "High availability"), or that none does."""
        from .selectors import beat_status

        beat = beat_status()
        if beat is None:
            messages.warning(request, "No beat leads: no tick is dispatched.")
        elif "error" in beat:
            messages.warning(request, f"Which beat leads is unknown: {beat['error']}.")
        else:
            epoch = f", epoch {beat['epoch']}" if beat.get("epoch") is not None else ""
            messages.info(request, f"Beat {beat['owner']} leads{epoch}, since {beat['since']}.")
        return super().changelist_view(request, extra_context)
    autocomplete_fields = ("hub",)
    readonly_fields = ("beat_entry", "counters", "recent_runs")
    fieldsets = (
        (None, {"fields": ("hub", "name", "enabled", "script", "execution_timeout")}),
        ("Trigger", {"fields": ("trigger", "period", "offset", "expires", "cron", "run_at", "deadband")}),
        ("Status", {"fields": ("beat_entry", "counters", "recent_runs")}),
    )
    inlines = [GroupKeyInline]
    actions = ["run_now", "kill", "enable", "disable"]

    @admin.display(description="project", ordering="hub__project__name")
    def project(self, obj):
        return obj.hub.project

    @admin.display(description="schedule")
    def schedule(self, obj):
        if obj.trigger == Trigger.INTERVAL:
            return f"every {obj.period:g} s" + (f" +{obj.offset:g} s" if obj.offset else "")
        if obj.trigger == Trigger.CRON:
            return obj.cron
        if obj.trigger == Trigger.ONCE:
            return f"at {obj.run_at:%Y-%m-%d %H:%M:%S}" if obj.run_at else "-"
        return f"on change (deadband {obj.deadband:g})" if obj.deadband is not None else "on change"

    def _stats(self, obj):
        return getattr(obj, "stats", None) if obj.pk else None

    @admin.display(description="last status", ordering="stats__last_status")
    def last_status(self, obj):
        stats = self._stats(obj)
        return stats.get_last_status_display() if stats and stats.last_status else "-"

    @admin.display(description="last run", ordering="stats__last_run_at")
    def last_run_at(self, obj):
        stats = self._stats(obj)
        return stats.last_run_at if stats else None

    @admin.display(description="beat entry")
    def beat_entry(self, obj):
        if obj.periodic_task_id is None:
            return "none (on-change groups are driven by hub subscriptions)" if obj.trigger == Trigger.ON_CHANGE else "-"
        task = obj.periodic_task
        return format_html(
            '<a href="{}">{}</a>{}',
            reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]),
            task.name,
            "" if task.enabled else " (disabled)",
        )

    @admin.display(description="counters")
    def counters(self, obj):
        stats = self._stats(obj)
        if stats is None:
            return "no runs yet"
        return (
            f"{stats.done} ok, {stats.failed} failed, {stats.skipped} skipped, {stats.missed} missed, {stats.killed} killed; "
            f"{stats.values} values" + (f"; mean lag {stats.lag_ms_mean:.0f} ms" if stats.lag_ms_mean is not None else "")
        )

    @admin.display(description="recent runs")
    def recent_runs(self, obj):
        if not obj.pk:
            return "-"
        runs = list(obj.runs.order_by("-scheduled_for")[:RECENT_RUNS])
        all_runs = reverse("admin:groups_grouprun_changelist") + f"?group__id__exact={obj.pk}"
        if not runs:
            return format_html('No runs yet (<a href="{}">all runs</a>).', all_runs)
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a>: {} ({} values){}</li>',
            (
                (
                    reverse("admin:groups_grouprun_change", args=[run.pk]),
                    f"{run.scheduled_for:%Y-%m-%d %H:%M:%S}",
                    run.get_status_display(),
                    run.values_count,
                    f" – {run.error[:200]}" if run.error else "",
                )
                for run in runs
            ),
        )
        return format_html('<ul>{}</ul><a href="{}">all runs of this group</a>', rows, all_runs)

    def has_run_group_permission(self, request):
        return request.user.has_perm("groups.run_group")

    def has_enable_group_permission(self, request):
        return request.user.has_perm("groups.enable_group")

    @admin.action(description="Run now (once, in a worker)", permissions=["run_group"])
    def run_now(self, request, queryset):
        count = groups_run_now(group_ids=_ids(queryset))
        self.message_user(request, f"{count} group(s) queued; their runs appear under Group runs.", messages.SUCCESS)

    def has_kill_group_permission(self, request):
        return request.user.has_perm("groups.kill_group")

    @admin.action(description="Kill the running execution", permissions=["kill_group"])
    def kill(self, request, queryset):
        """Waits up to a few seconds (``groups.execution.KILL_PICKUP_S``) for the workers to stop them."""
        closed = groups_kill(group_ids=_ids(queryset), requested_by=request.user.get_username())
        killed = [k for k in closed if k.outcome == KillOutcome.KILLED]
        idle = [k for k in closed if k.outcome != KillOutcome.KILLED]
        if killed:
            self.message_user(request, f"{len(killed)} execution(s) killed; their runs are recorded as killed.", messages.SUCCESS)
        if idle:
            names = ", ".join(sorted(str(k.group) for k in idle))
            self.message_user(request, f"Nothing was running for {len(idle)} group(s): {names}.", messages.WARNING)

    @admin.action(description="Enable selected groups", permissions=["enable_group"])
    def enable(self, request, queryset):
        count = groups_enabled_set(group_ids=_ids(queryset), enabled=True)
        self.message_user(request, f"{count} group(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected groups", permissions=["enable_group"])
    def disable(self, request, queryset):
        count = groups_enabled_set(group_ids=_ids(queryset), enabled=False)
        self.message_user(request, f"{count} group(s) disabled.", messages.SUCCESS)


@admin.register(GroupKey)
class GroupKeyAdmin(admin.ModelAdmin):
    list_display = ("group", "entity", "key", "alias", "position")
    list_filter = ("group__hub",)
    search_fields = ("entity", "key", "alias", "group__name")
    list_select_related = ("group",)
    autocomplete_fields = ("group",)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by workers: looked at, never edited by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(GroupRun)
class GroupRunAdmin(ReadOnlyAdmin):
    list_display = ("group", "hub", "tick", "status", "started_at", "finished_at", "values_count", "killed_by", "short_error")
    list_filter = ("status", "group__hub__project", "group__hub", "group")
    search_fields = ("group__name", "error")
    date_hierarchy = "scheduled_for"
    list_select_related = ("group__hub",)

    @admin.display(description="hub", ordering="group__hub__name")
    def hub(self, obj):
        return obj.group.hub

    @admin.display(description="scheduled for", ordering="scheduled_for")
    def tick(self, obj):
        # to the millisecond: ticks of a sub-minute group differ only in seconds
        return timezone.localtime(obj.scheduled_for).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.error[:120] + ("…" if len(obj.error) > 120 else "")


@admin.register(KillRequest)
class KillRequestAdmin(ReadOnlyAdmin):
    list_display = ("group", "scheduled_for", "requested_by", "requested_at", "outcome", "done_at")
    list_filter = ("outcome",)
    search_fields = ("group__name", "requested_by")
    list_select_related = ("group",)


@admin.register(GroupStats)
class GroupStatsAdmin(ReadOnlyAdmin):
    list_display = ("group", "last_status", "last_run_at", "done", "failed", "skipped", "missed", "killed", "values", "dispatched")
    list_filter = ("last_status",)
    search_fields = ("group__name",)
    list_select_related = ("group",)


# --- django-celery-beat -------------------------------------------------------------------------------------
# A hubsched group owns its PeriodicTask and rewrites it on every save, so an edit made here would be lost
# silently. Such entries are therefore read-only here, with a pointer to the group; other entries are as before.


def _group_of(task: PeriodicTask) -> Group | None:
    return Group.objects.filter(periodic_task=task).select_related("hub").first() if task is not None else None


OWNED_MESSAGE = "This entry belongs to hubsched group {} and is kept in step with it: edit the group instead."


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    list_display = (*BeatPeriodicTaskAdmin.list_display, "hubsched_group")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("hubsched_group__hub")

    @admin.display(description="hubsched group")
    def hubsched_group(self, obj):
        group = getattr(obj, "hubsched_group", None) if obj.pk else None
        if group is None:
            return "-"
        return format_html('<a href="{}">{}/{}</a>', reverse("admin:groups_group_change", args=[group.pk]), group.hub.name, group.name)

    def has_change_permission(self, request, obj=None):
        if obj is not None and _group_of(obj) is not None:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and _group_of(obj) is not None:
            return False
        return super().has_delete_permission(request, obj)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        group = _group_of(self.get_object(request, object_id)) if object_id else None
        if group is not None and request.method == "GET":
            link = format_html('<a href="{}">{}/{}</a>', reverse("admin:groups_group_change", args=[group.pk]), group.hub.name, group.name)
            self.message_user(request, format_html(OWNED_MESSAGE, link), messages.WARNING)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def _unowned(self, request, queryset):
        owned = queryset.filter(hubsched_group__isnull=False)
        if owned.exists():
            names = ", ".join(owned.order_by("name").values_list("name", flat=True)[:5])
            self.message_user(
                request,
                f"Left unchanged {owned.count()} entry(ies) owned by hubsched groups ({names}): enable, disable or "
                "delete the groups instead.",
                messages.WARNING,
            )
        return queryset.filter(hubsched_group__isnull=True)

    @admin.action(description=BeatPeriodicTaskAdmin.enable_tasks.short_description, permissions=["change"])
    def enable_tasks(self, request, queryset):
        return super().enable_tasks(request, self._unowned(request, queryset))

    @admin.action(description=BeatPeriodicTaskAdmin.disable_tasks.short_description, permissions=["change"])
    def disable_tasks(self, request, queryset):
        return super().disable_tasks(request, self._unowned(request, queryset))

    @admin.action(description=BeatPeriodicTaskAdmin.toggle_tasks.short_description, permissions=["change"])
    def toggle_tasks(self, request, queryset):
        return super().toggle_tasks(request, self._unowned(request, queryset))

    def delete_queryset(self, request, queryset):
        return super().delete_queryset(request, self._unowned(request, queryset))

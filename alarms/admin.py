"""Admin of the alarms: alarms with their journal (acknowledge, shelve 1 h, unshelve), and the value alarm rules."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.utils import timezone

from .models import Alarm, AlarmEvent, AlarmRule
from .notifications import admin as _notifications_admin  # noqa: F401  (routes and attempts registered there)


class AlarmEventInline(admin.TabularInline):
    model = AlarmEvent
    fields = ("transition", "at", "by", "note", "values")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Alarm)
class AlarmAdmin(admin.ModelAdmin):
    """Alarms are written by the rules, the system checks and the actions here: looked at, never edited by hand."""

    list_display = ("severity", "state", "message", "source", "subject", "raised_at", "acknowledged_by",
                    "cleared_at", "shelved_until")
    list_filter = ("state", "severity", "source", "kind", "project")
    search_fields = ("message", "subject", "identity")
    date_hierarchy = "raised_at"
    list_select_related = ("acknowledged_by", "project")
    readonly_fields = [f.name for f in Alarm._meta.fields]
    inlines = [AlarmEventInline]
    actions = ["acknowledge", "shelve_1h", "unshelve"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_acknowledge_permission(self, request):
        return request.user.has_perm("alarms.acknowledge_alarm")

    def has_shelve_permission(self, request):
        return request.user.has_perm("alarms.shelve_alarm")

    @admin.action(description="Acknowledge selected alarms", permissions=["acknowledge"])
    def acknowledge(self, request, queryset):
        from .services import AlarmTransitionRefused, alarm_acknowledge

        done = 0
        for alarm in queryset.filter(state="active"):
            try:
                alarm_acknowledge(alarm=alarm, by=request.user, note="acknowledged in the admin")
                done += 1
            except AlarmTransitionRefused:
                pass  # acknowledged or cleared meanwhile
        self.message_user(request, f"{done} alarm(s) acknowledged.", messages.SUCCESS)

    @admin.action(description="Shelve selected alarms for 1 hour", permissions=["shelve"])
    def shelve_1h(self, request, queryset):
        from .services import AlarmTransitionRefused, alarm_shelve

        now = timezone.now()
        done = 0
        for alarm in queryset.exclude(state="cleared"):
            try:
                alarm_shelve(alarm=alarm, by=request.user, until=now + timedelta(hours=1), note="shelved in the admin",
                             at=now)
                done += 1
            except AlarmTransitionRefused:
                pass
        self.message_user(request, f"{done} alarm(s) shelved for 1 hour.", messages.SUCCESS)

    @admin.action(description="Unshelve selected alarms", permissions=["shelve"])
    def unshelve(self, request, queryset):
        from .services import AlarmTransitionRefused, alarm_unshelve

        done = 0
        for alarm in queryset.filter(shelved_until__gt=timezone.now()):
            try:
                alarm_unshelve(alarm=alarm, by=request.user, note="unshelved in the admin")
                done += 1
            except AlarmTransitionRefused:
                pass
        self.message_user(request, f"{done} alarm(s) unshelved.", messages.SUCCESS)


@admin.register(AlarmRule)
class AlarmRuleAdmin(admin.ModelAdmin):
    """The condition is checked by AlarmRule.clean (alarms.rules.condition_errors): errors at the field."""

    list_display = ("name", "project", "group", "severity", "enabled", "updated_at")
    list_filter = ("enabled", "severity", "project")
    search_fields = ("name", "message", "group__name")
    list_select_related = ("project", "group__hub")
    autocomplete_fields = ("group",)
    fields = ("project", "name", "group", "condition", "deadband", "for_s", "severity", "message", "routes", "enabled")
    filter_horizontal = ("routes",)

    def save_model(self, request, obj, form, change):
        from .services import alarm_rule_disabled

        super().save_model(request, obj, form, change)
        if not obj.enabled:
            alarm_rule_disabled(rule=obj)

    def delete_model(self, request, obj):
        from .services import alarm_rule_delete

        alarm_rule_delete(rule=obj)

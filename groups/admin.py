"""Admin for groups and their runs."""

from django.contrib import admin

from .models import Group, GroupKey, GroupRun


class GroupKeyInline(admin.TabularInline):
    model = GroupKey
    extra = 0


@admin.register(Group)
class GroupAdmin(admin.ModelAdmin):
    list_display = ("name", "hub", "trigger", "period", "enabled")
    list_filter = ("enabled", "trigger", "hub")
    search_fields = ("name",)
    inlines = [GroupKeyInline]


@admin.register(GroupRun)
class GroupRunAdmin(admin.ModelAdmin):
    list_display = ("group", "scheduled_for", "status", "values_count", "error")
    list_filter = ("status",)
    date_hierarchy = "scheduled_for"

"""Admin for projects, hubs and the entity tree."""

from django.contrib import admin

from .models import Entity, Hub, Parameter, Project


class HubInline(admin.TabularInline):
    model = Hub
    fields = ("name", "url", "timeout", "enabled")
    extra = 0
    show_change_link = True


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "time_zone", "updated_at")
    search_fields = ("name", "description")
    inlines = [HubInline]


@admin.register(Hub)
class HubAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "url", "timeout", "enabled")  # never the API key
    list_filter = ("enabled", "project")
    search_fields = ("name", "url")


class ParameterInline(admin.TabularInline):
    model = Parameter
    extra = 0


@admin.register(Entity)
class EntityAdmin(admin.ModelAdmin):
    list_display = ("path", "name", "type", "hub")
    list_filter = ("hub",)
    search_fields = ("path", "name")
    inlines = [ParameterInline]

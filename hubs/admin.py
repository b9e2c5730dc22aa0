"""Admin for projects, hubs and the entity tree: import/export, entity sync, connection test, the tree as a tree."""

from __future__ import annotations

import io
import zipfile

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from groups.models import Group
from hubsched.roles import permissions_missing, project_import_permissions
from scripts_engine.models import Script

from .client import HubError
from .forms import HubForm, ProjectImportForm
from .models import Entity, Hub, HubOffset, Parameter, Project, RedundancyEvent, RedundancySet
from .project_document import ProjectDocumentError
from .project_document.validation import max_bytes
from .selectors import hub_entity_tree
from .services import (hub_connection_test, hub_entities_sync, hubs_enabled_set, project_export, project_export_filename,
                       project_import_as)


# --- projects ------------------------------------------------------------------------------------------------


class HubInline(admin.TabularInline):
    model = Hub
    fields = ("name", "url", "timeout", "max_in_flight", "enabled")  # never the API key
    extra = 0
    show_change_link = True


class ScriptInline(admin.TabularInline):
    model = Script
    fields = ("name", "description", "timeout", "memory_limit_mb")
    extra = 0
    show_change_link = True


def _download(project: Project, *, include_secrets: bool) -> tuple[str, str]:
    return f"{project_export_filename(project.name)}.json", project_export(project=project, include_secrets=include_secrets)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "time_zone", "hub_count", "group_count", "updated_at")
    search_fields = ("name", "description")
    list_filter = ("time_zone",)
    readonly_fields = ("created_at", "updated_at")
    inlines = [HubInline, ScriptInline]
    actions = ["export_documents", "export_documents_with_secrets"]
    change_list_template = "admin/hubs/project/change_list.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _hubs=Count("hubs", distinct=True), _groups=Count("hubs__groups", distinct=True)
        )

    @admin.display(description="hubs", ordering="_hubs")
    def hub_count(self, obj):
        return obj._hubs

    @admin.display(description="groups", ordering="_groups")
    def group_count(self, obj):
        return obj._groups

    def _export(self, queryset, *, include_secrets: bool) -> HttpResponse:
        files = [_download(project, include_secrets=include_secrets) for project in queryset.order_by("name")]
        if len(files) == 1:
            filename, text = files[0]
            response = HttpResponse(text, content_type="application/json")
        else:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for filename, text in files:
                    archive.writestr(filename, text)
            filename = "projects.zip"
            response = HttpResponse(buffer.getvalue(), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def has_export_secrets_permission(self, request):
        return request.user.has_perm("hubs.export_secrets")

    @admin.action(description="Export as JSON documents (secrets as ${NAME} references)", permissions=["view"])
    def export_documents(self, request, queryset):
        return self._export(queryset, include_secrets=False)

    @admin.action(description="Export as JSON documents with secrets in clear", permissions=["export_secrets"])
    def export_documents_with_secrets(self, request, queryset):
        return self._export(queryset, include_secrets=True)

    def get_urls(self):
        urls = [path("import/", self.admin_site.admin_view(self.import_view), name="hubs_project_import")]
        return urls + super().get_urls()

    def import_view(self, request):
        """Upload a document; on success go to the project, else show every error and change nothing.

        Needs what the API's import needs (``hubsched.roles.project_import_permissions``): 403 without the
        add permissions; replacing a project also needs the change and delete ones."""
        missing = permissions_missing(request.user, *project_import_permissions(replace=False))
        if missing:
            raise PermissionDenied(f"permission required: {', '.join(missing)}")
        errors: list[str] = []
        form = ProjectImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            raw = form.cleaned_data["document"].read(max_bytes() + 1)
            try:
                result = project_import_as(user=request.user, raw=raw, replace=form.cleaned_data["replace"])
            except ProjectDocumentError as exc:
                errors = exc.errors
            else:
                verb = "imported" if result.created else "replaced"
                self.message_user(request, f"Project {result.project.name!r} {verb}.", messages.SUCCESS)
                return redirect("admin:hubs_project_change", result.project.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Import a project",
            "opts": self.model._meta,
            "form": form,
            "errors": errors,
        }
        return TemplateResponse(request, "admin/hubs/project/import.html", context)


# --- hubs ----------------------------------------------------------------------------------------------------


class GroupInlineFormSet(forms.BaseInlineFormSet):
    def clean(self):
        # A group needs a key (groups/validators.py), and keys are edited on the group's own page: a group
        # added here would have none.
        super().clean()
        from groups.validators import NO_KEYS

        for form in self.extra_forms:
            if form.has_changed() and not self._should_delete_form(form):
                form.add_error(None, f"{NO_KEYS}: add the group on its own page, with its keys")


class GroupInline(admin.TabularInline):
    model = Group
    formset = GroupInlineFormSet
    fields = ("name", "trigger", "period", "offset", "cron", "run_at", "script", "enabled")
    extra = 0
    show_change_link = True

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "script":  # only the scripts of the hub's own project
            hub_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            kwargs["queryset"] = Script.objects.filter(project__hubs__pk=hub_id) if hub_id else Script.objects.none()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def _tree_html(nodes: list[dict]) -> str:
    if not nodes:
        return ""
    items = []
    for node in nodes:
        entity = node["entity"]
        params = format_html_join(
            "",
            "<li><code>{}</code> {} <small>{}{}{}</small></li>",
            (
                (p.key, p.name, p.type, f" [{p.unit}]" if p.unit else "", ", writable" if p.writable else "")
                for p in node["params"]
            ),
        )
        items.append(
            format_html(
                '<li><a href="{}"><strong>{}</strong></a> {} <small>{}</small>{}{}</li>',
                reverse("admin:hubs_entity_change", args=[entity.pk]),
                entity.path.rpartition("/")[2],
                entity.name,
                entity.type,
                format_html('<ul class="hubsched-params">{}</ul>', params) if node["params"] else "",
                mark_safe(_tree_html(node["children"])),
            )
        )
    return format_html('<ul class="hubsched-tree">{}</ul>', mark_safe("".join(items)))


INSECURE_WARNING = ("Hub {name}: TLS certificate verification is OFF. Anyone on the network path can read and change "
                    "its traffic, the API key included. Use this only on a test bench; give the hub's CA bundle instead.")


@admin.register(HubOffset)
class HubOffsetAdmin(admin.ModelAdmin):
    """Per-member, per-key corrections (value * factor + add), applied before the script (docs/redundancy.md)."""

    list_display = ("hub", "entity_shown", "key", "factor", "add")
    list_filter = ("hub__project", "hub")
    search_fields = ("hub__name", "entity", "key")
    list_select_related = ("hub",)
    autocomplete_fields = ("hub",)
    fields = ("hub", "entity", "key", "factor", "add")

    @admin.display(description="entity", ordering="entity")
    def entity_shown(self, obj):
        return obj.entity or "(every entity)"


class RedundancyMemberInline(admin.TabularInline):
    """The set's members, master first; a hub joins or leaves a set on its own page."""

    model = Hub
    fk_name = "redundancy_set"
    fields = ("name", "url", "redundancy_priority", "enabled")
    readonly_fields = ("name", "url", "enabled")
    ordering = ("redundancy_priority", "name")
    extra = 0
    show_change_link = True
    verbose_name = "member"
    verbose_name_plural = "members (priority 0 is the master)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):  # deleting here would delete the hub itself
        return False


@admin.register(RedundancySet)
class RedundancySetAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "mode", "failback_after_s", "member_list")
    list_filter = ("mode", "project")
    search_fields = ("name", "project__name", "members__name")
    list_select_related = ("project",)
    inlines = [RedundancyMemberInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("members")

    @admin.display(description="members (master first)")
    def member_list(self, obj):
        return ", ".join(m.name for m in sorted(obj.members.all(), key=lambda m: (m.redundancy_priority, m.name)))


@admin.register(RedundancyEvent)
class RedundancyEventAdmin(admin.ModelAdmin):
    """Disagreements of parallel sets, written by the workers (groups/redundancy.py); read-only here."""

    list_display = ("redundancy_set", "entity", "key", "master", "master_value", "member", "member_value",
                    "raised_at", "cleared_at", "is_open")
    list_filter = (("cleared_at", admin.EmptyFieldListFilter), "redundancy_set__project", "redundancy_set")
    search_fields = ("redundancy_set__name", "entity", "key", "master", "member")
    list_select_related = ("redundancy_set",)
    date_hierarchy = "raised_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="open", boolean=True)
    def is_open(self, obj):
        return obj.cleared_at is None


@admin.register(Hub)
class HubAdmin(admin.ModelAdmin):
    form = HubForm
    list_display = ("name", "project", "url", "tls_status", "timeout", "max_in_flight", "enabled", "entity_count",
                    "group_count")
    list_filter = ("enabled", "project", "tls_verify")
    search_fields = ("name", "url", "project__name")  # never the API key
    list_select_related = ("project",)
    fieldsets = (
        (None, {"fields": ("project", "name", "url", "api_key", "clear_api_key", "timeout", "max_in_flight", "enabled")}),
        ("TLS (wss:// only)", {"fields": ("tls_verify", "tls_ca_bundle", "tls_client_cert", "tls_client_key",
                                          "clear_tls_client_key"),
                               "description": "How the connection checks the hub's certificate, and the client "
                                              "certificate shown to a hub that asks for one."}),
        ("Redundancy", {"fields": ("redundancy_set", "redundancy_priority"),
                        "description": "Hubs of a redundancy set serve the same entities; priority 0 is the master, "
                                       "then the backups in order (docs/redundancy.md)."}),
        ("Entity tree", {"fields": ("entity_tree",), "description": "What the hub exposes; refresh it with the action "
                                                                   "“Sync entities from the hub”."}),
    )
    readonly_fields = ("entity_tree",)
    inlines = [GroupInline]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "redundancy_set":  # the sets of the hub's own project (Hub.clean refuses others)
            hub_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            if hub_id:
                kwargs["queryset"] = RedundancySet.objects.filter(project__hubs__pk=hub_id)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # view only: Django would show the keys' values as they are; show whether one is set instead
        shown = {"api_key": "api_key_set", "tls_client_key": "tls_client_key_set"}
        return [
            (name, {**opts, "fields": tuple(shown.get(f, f) for f in opts["fields"] if not f.startswith("clear_"))})
            for name, opts in fieldsets
        ]

    def get_readonly_fields(self, request, obj=None):
        readonly = tuple(super().get_readonly_fields(request, obj))
        if obj is None or self.has_change_permission(request, obj):
            return readonly
        return (*readonly, "api_key_set", "tls_client_key_set")

    @admin.display(description="API key")
    def api_key_set(self, obj):
        return "set (never shown)" if obj.api_key else "none"

    @admin.display(description="TLS client key")
    def tls_client_key_set(self, obj):
        return "set (never shown)" if obj.tls_client_key else "none"

    @admin.display(description="TLS")
    def tls_status(self, obj):
        if not obj.url.strip().lower().startswith("wss://"):
            return "–"
        if obj.tls_insecure:
            return format_html('<strong style="color:#ba2121">{}</strong>', "NOT VERIFIED")
        return "verified" + (", client certificate" if obj.tls_client_cert else "")

    def _warn_insecure(self, request, obj) -> None:
        if obj is not None and obj.tls_insecure:
            self.message_user(request, INSECURE_WARNING.format(name=obj.name), messages.WARNING)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "GET":
            self._warn_insecure(request, self.get_object(request, object_id))
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        self._warn_insecure(request, obj)

    class Media:
        css = {"all": ["hubs/admin/entity_tree.css"]}
    actions = ["test_connection", "sync_entities", "enable", "disable"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _entities=Count("entities", distinct=True), _groups=Count("groups", distinct=True)
        )

    @admin.display(description="entities", ordering="_entities")
    def entity_count(self, obj):
        return obj._entities

    @admin.display(description="groups", ordering="_groups")
    def group_count(self, obj):
        return obj._groups

    @admin.display(description="entities and parameters")
    def entity_tree(self, obj):
        tree = hub_entity_tree(hub=obj) if obj.pk else []
        return _tree_html(tree) or "No entities yet: save the hub, then run “Sync entities from the hub”."

    def has_enable_hub_permission(self, request):
        return request.user.has_perm("hubs.enable_hub")

    @admin.action(description="Test connection (getInfo, or ping)", permissions=["view"])
    def test_connection(self, request, queryset):
        for hub in queryset:
            report = hub_connection_test(hub=hub)
            self.message_user(request, f"{hub.name}: {report.summary()}", messages.SUCCESS if report.ok else messages.ERROR)
            self._warn_insecure(request, hub)

    @admin.action(description="Sync entities from the hub (getEntities, getParams)", permissions=["change"])
    def sync_entities(self, request, queryset):
        for hub in queryset:
            try:
                changes = hub_entities_sync(hub=hub)
            except HubError as exc:
                self.message_user(request, f"{hub.name}: sync failed, nothing changed: {exc}", messages.ERROR)
                continue
            detail = "; ".join(
                f"{label}: {', '.join(names[:10])}{' …' if len(names) > 10 else ''}"
                for label, names in (("added", changes.added), ("changed", changes.changed), ("gone", changes.gone))
                if names
            )
            self.message_user(
                request,
                f"{hub.name}: {changes.summary()}" + (f" ({detail})" if detail else ""),
                messages.SUCCESS,
            )

    @admin.action(description="Enable selected hubs", permissions=["enable_hub"])
    def enable(self, request, queryset):
        count = hubs_enabled_set(hub_ids=list(queryset.values_list("pk", flat=True)), enabled=True)
        self.message_user(request, f"{count} hub(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected hubs (their groups stop)", permissions=["enable_hub"])
    def disable(self, request, queryset):
        count = hubs_enabled_set(hub_ids=list(queryset.values_list("pk", flat=True)), enabled=False)
        self.message_user(request, f"{count} hub(s) disabled.", messages.SUCCESS)


# --- the entity tree -----------------------------------------------------------------------------------------


class ParameterInline(admin.TabularInline):
    model = Parameter
    fields = ("key", "name", "type", "unit", "writable")
    extra = 0


@admin.register(Entity)
class EntityAdmin(admin.ModelAdmin):
    list_display = ("tree_path", "name", "type", "hub", "param_count")
    list_filter = ("hub__project", "hub", "type")
    search_fields = ("path", "name", "params__key")
    ordering = ("hub__project__name", "hub__name", "path")
    list_select_related = ("hub",)
    autocomplete_fields = ("parent",)
    inlines = [ParameterInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_params=Count("params"))

    @admin.display(description="id", ordering="path")
    def tree_path(self, obj):
        # Ordered by path, the list reads as the tree: each level indented under its parent.
        return format_html(
            '<span style="padding-left:{}em">{}<strong>{}</strong></span>',
            obj.depth * 1.5,
            "└ " if obj.depth else "",
            obj.path.rpartition("/")[2],
        )

    @admin.display(description="parameters", ordering="_params")
    def param_count(self, obj):
        return obj._params


@admin.register(Parameter)
class ParameterAdmin(admin.ModelAdmin):
    list_display = ("key", "entity", "name", "type", "unit", "writable")
    list_filter = ("type", "writable", "entity__hub")
    search_fields = ("key", "name", "entity__path")
    list_select_related = ("entity",)
    autocomplete_fields = ("entity",)


"""Roles: four Django auth groups holding hubsched's model permissions, and the check the JSON views share.

| role | holds |
|---|---|
| ``viewer`` | ``view_*`` of every model of hubs, scripts_engine, groups, streams, api, jobs and alarms; ``streams.read_stream``; adding and revoking their own API tokens |
| ``operator`` | viewer + ``groups.run_group``, ``groups.enable_group``, ``groups.kill_group``, ``hubs.enable_hub``, ``jobs.run_job``, ``jobs.kill_job``, ``jobs.enable_job``, ``alarms.acknowledge_alarm``, ``alarms.shelve_alarm``; retry and delete quarantined executions |
| ``integrator`` | operator + add/change/delete of projects, hubs, entities, parameters, groups, group keys, scripts, sinks, data sources, alarm rules, jobs (HTTP and script jobs: a shell job also needs ``jobs.shell_job``); ``scripts_engine.debug_script``, ``hubs.write_hub``; add/change/delete of notification routes |
| ``admin`` | every permission of those six apps, ``hubs.export_secrets``, ``api.manage_apitoken`` (every user's tokens) and ``jobs.shell_job`` (commands run on the workers) among them |

Exporting secrets (``hubs.export_secrets``) and writing to a hub (``hubs.write_hub``) are permissions of
their own, so that editing a project never implies reading its keys. The groups are written by
``roles_sync()``, run after every ``migrate`` (``hubsched/apps.py``); a permission added to a group by
hand is taken away again there: the role is what this module says.
"""

from __future__ import annotations

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, transaction

ROLE_APPS = ("hubs", "scripts_engine", "groups", "streams", "api", "jobs", "alarms")
VIEWER, OPERATOR, INTEGRATOR, ADMIN = "viewer", "operator", "integrator", "admin"
ROLES = (VIEWER, OPERATOR, INTEGRATOR, ADMIN)

VIEWER_EXTRA = ("streams.read_stream",  # the values a viewer sees in the admin, as an event stream
                "api.add_apitoken", "api.delete_apitoken")  # every user makes and revokes their own API tokens
OPERATOR_EXTRA = ("groups.run_group", "groups.enable_group", "groups.kill_group", "hubs.enable_hub",
                  "jobs.run_job", "jobs.kill_job", "jobs.enable_job",
                  "alarms.acknowledge_alarm", "alarms.shelve_alarm",
                  "streams.change_quarantinedexecution", "streams.delete_quarantinedexecution")
# the models an integrator builds a project from (runs and counters are written by workers only)
INTEGRATOR_MODELS = (
    "hubs.project", "hubs.hub", "hubs.entity", "hubs.parameter", "groups.group", "groups.groupkey",
    "scripts_engine.script", "scripts_engine.sink", "scripts_engine.datasource", "hubs.redundancyset", "hubs.huboffset",
    "jobs.job", "alarms.alarmrule",
)
INTEGRATOR_EXTRA = ("scripts_engine.debug_script", "hubs.write_hub",
                    # where alarms are sent (not part of a project document: a webhook's headers are secrets)
                    "alarms.add_notificationroute", "alarms.change_notificationroute", "alarms.delete_notificationroute")


def _model_permissions(opts) -> list[str]:
    """Every ``app_label.codename`` a model defines: Django's defaults and its ``Meta.permissions``."""
    codenames = [f"{action}_{opts.model_name}" for action in opts.default_permissions]
    codenames += [codename for codename, _name in opts.permissions]
    return [f"{opts.app_label}.{codename}" for codename in codenames]


def role_permissions() -> dict[str, frozenset[str]]:
    """``{role: {"app_label.codename", ...}}`` for the four roles, read from the models' Meta."""
    every: list[str] = []
    view: list[str] = []
    for label in ROLE_APPS:
        for model in global_apps.get_app_config(label).get_models():
            every += _model_permissions(model._meta)
            view.append(f"{label}.view_{model._meta.model_name}")
    viewer = frozenset(view) | frozenset(VIEWER_EXTRA)
    operator = viewer | frozenset(OPERATOR_EXTRA)
    build = {f"{model.split('.')[0]}.{action}_{model.split('.')[1]}" for model in INTEGRATOR_MODELS for action in ("add", "change", "delete")}
    integrator = operator | frozenset(build) | frozenset(INTEGRATOR_EXTRA)
    return {VIEWER: viewer, OPERATOR: operator, INTEGRATOR: integrator, ADMIN: frozenset(every)}


def roles_sync(*, using: str = DEFAULT_DB_ALIAS) -> dict[str, int]:
    """Create or update the four role groups so that each holds exactly ``role_permissions()[role]``.

    Idempotent: a second call changes nothing. Creates missing permission rows first (Django's own
    ``create_permissions``), so it works whatever order the apps' ``post_migrate`` receivers ran in.
    Returns ``{role: number of permissions}``. Raises ``LookupError`` when a permission named here is
    not defined by any model (a role that would silently lack it).
    """
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group as AuthGroup, Permission

    for label in ROLE_APPS:
        create_permissions(global_apps.get_app_config(label), verbosity=0, using=using)
    wanted = role_permissions()
    rows = {
        f"{app_label}.{codename}": pk
        for pk, app_label, codename in Permission.objects.using(using)
        .filter(content_type__app_label__in=ROLE_APPS)
        .values_list("pk", "content_type__app_label", "codename")
    }
    counts: dict[str, int] = {}
    with transaction.atomic(using=using):
        for role in ROLES:
            missing = sorted(wanted[role] - rows.keys())
            if missing:
                raise LookupError(f"role {role!r}: no such permission {', '.join(missing)}")
            group, _created = AuthGroup.objects.using(using).get_or_create(name=role)
            group.permissions.set([rows[name] for name in wanted[role]])
            counts[role] = len(wanted[role])
    return counts


def roles_sync_after_migrate(sender, using=DEFAULT_DB_ALIAS, apps=global_apps, **kwargs) -> None:
    """``post_migrate`` receiver (connected in ``HubschedConfig.ready``). A partial ``migrate`` (one app to
    an older migration) may leave auth or contenttypes unmigrated: then there is nothing to sync yet, as in
    Django's own ``create_permissions``."""
    try:
        apps.get_model("contenttypes", "ContentType")
        apps.get_model("auth", "Permission")
    except LookupError:
        return
    roles_sync(using=using)


def project_import_permissions(*, replace: bool, shell: bool = False) -> tuple[str, ...]:
    """What importing a project document takes: adding every kind of row a document holds (its hubs,
    entities, groups, scripts, sinks, data sources and jobs, not just the project), and with ``replace`` also
    changing and deleting them (a replace updates rows in place and deletes what the document dropped).
    ``shell``: the document holds a shell job, which also takes ``jobs.shell_job`` (a shell job runs a program on
    the workers; ``hubs.project_document.importer.document_import_permissions`` reads the document for it)."""
    actions = ("add", "change", "delete") if replace else ("add",)
    perms = tuple(f"{m.split('.')[0]}.{a}_{m.split('.')[1]}" for m in INTEGRATOR_MODELS for a in actions)
    return (*perms, "jobs.shell_job") if shell else perms


def permissions_missing(user, *perms: str) -> list[str]:
    """Of ``perms`` (``"app_label.codename"``), those ``user`` lacks, in the order given; for a view's 403
    message. An inactive user lacks every one (``ModelBackend`` grants nothing to them)."""
    return [perm for perm in perms if not user.has_perm(perm)]

"""The console at ``/`` (docs/console.md)."""

from django.urls import path

from .views import alarms, entities, groups, jobs, overview, projects, scripts, sinks

app_name = "console"

urlpatterns = [
    path("", overview.home, name="home"),
    path("alarms/", alarms.alarms, name="alarms"),
    path("alarms/<int:alarm_id>/acknowledge", alarms.alarm_acknowledge_view, name="alarm-acknowledge"),
    path("alarms/<int:alarm_id>/shelve", alarms.alarm_shelve_view, name="alarm-shelve"),
    path("alarms/<int:alarm_id>/unshelve", alarms.alarm_unshelve_view, name="alarm-unshelve"),
    path("projects/", projects.projects, name="projects"),
    path("projects/import", projects.project_import_view, name="project-import"),
    path("projects/<int:project_id>/", projects.project, name="project"),
    path("projects/<int:project_id>/export", projects.project_export_view, name="project-export"),
    path("projects/<int:project_id>/delete", projects.project_delete_view, name="project-delete"),
    path("projects/<int:project_id>/hubs", projects.hub_add, name="hub-add"),
    path("hubs/<int:hub_id>/", projects.hub, name="hub"),
    path("hubs/<int:hub_id>/test", projects.hub_test, name="hub-test"),
    path("hubs/<int:hub_id>/discover", projects.hub_discover, name="hub-discover"),
    path("hubs/<int:hub_id>/try", projects.hub_try, name="hub-try"),
    path("hubs/<int:hub_id>/switch", projects.hub_switch, name="hub-switch"),
    path("hubs/<int:hub_id>/delete", projects.hub_delete_view, name="hub-delete"),
    path("hubs/<int:hub_id>/groups", projects.hub_groups, name="hub-groups"),
    path("groups/<int:group_id>/switch", projects.group_switch, name="group-switch"),
    path("hubs/<int:hub_id>/groups/new", groups.group_new, name="group-new"),
    path("hubs/<int:hub_id>/groups/times", groups.group_times, name="group-times"),
    path("hubs/<int:hub_id>/parameters", groups.hub_parameters, name="hub-parameters"),
    path("hubs/<int:hub_id>/entities/", entities.entities, name="entities"),
    path("hubs/<int:hub_id>/entities/<int:entity_id>/", entities.entity_children, name="entity-open"),
    path("hubs/<int:hub_id>/entities/<int:entity_id>/values", entities.entity_values, name="entity-values"),
    path("hubs/<int:hub_id>/entities/<int:entity_id>/write", entities.entity_write, name="entity-write"),
    path("projects/<int:project_id>/scripts/", scripts.scripts, name="scripts"),
    path("scripts/<int:script_id>/", scripts.script, name="script"),
    path("projects/<int:project_id>/sinks/", sinks.sinks, name="sinks"),
    path("projects/<int:project_id>/jobs/", jobs.jobs, name="jobs"),
    path("jobs/<int:job_id>/", jobs.job, name="job"),
    path("jobs/<int:job_id>/run", jobs.job_run, name="job-run-now"),
    path("jobs/<int:job_id>/switch", jobs.job_switch, name="job-switch"),
    path("jobs/runs/<int:run_id>/", jobs.job_run_view, name="job-run"),
    path("jobs/runs/<int:run_id>/kill", jobs.job_run_kill_view, name="job-run-kill"),
    path("sinks/<int:sink_id>/delete", sinks.sink_delete_view, name="sink-delete"),
    path("scripts/<int:script_id>/run", scripts.script_run, name="script-run"),
    path("scripts/check", scripts.script_check, name="script-check"),
    path("groups/<int:group_id>/", groups.group, name="group"),
    path("groups/<int:group_id>/run", groups.group_run, name="group-run"),
    path("groups/<int:group_id>/delete", groups.group_delete_view, name="group-delete"),
    path("groups/<int:group_id>/live", groups.group_live, name="group-live"),
]

"""The console's views, a module per page family: overview, alarms, projects (projects, hubs, their groups)."""

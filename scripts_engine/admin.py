"""Admin for scripts, sinks and data sources."""

from django.contrib import admin

from .models import DataSource, Script, Sink

admin.site.register(Script)
admin.site.register(Sink)
admin.site.register(DataSource)

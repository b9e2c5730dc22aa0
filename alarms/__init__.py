"""Alarms: value alarm rules evaluated in the worker, system alarms, their lifecycle and journal (issue 16)."""

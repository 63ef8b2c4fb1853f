"""Logs, metrics and traces, configured once at start-up."""

"""Logging, metrics and system probes."""

"""Thin routes: parse, call a service, return."""

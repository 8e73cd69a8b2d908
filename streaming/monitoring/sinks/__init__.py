"""Sinks that receive telemetry: a JSON-lines file, Beam metrics, Cloud
Monitoring."""

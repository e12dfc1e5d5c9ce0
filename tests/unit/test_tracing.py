"""When tracing is on: OpenTelemetry's own variables decide."""

from __future__ import annotations


def test_tracing_is_off_unless_configured() -> None:
    from avito_ai.observability import tracing

    assert not tracing.configured({})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert not tracing.configured(off)
    assert not tracing.configured({**off, "OTEL_SDK_DISABLED": "", "OTEL_TRACES_EXPORTER": "none"})

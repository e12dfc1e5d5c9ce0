"""OpenTelemetry traces, off unless configured through OpenTelemetry's own variables.

On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`; the SDK reads the
rest itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
its argument, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`). Spans go out over OTLP/HTTP
(protobuf) from the SDK's batch processor, on its own thread: a request never waits for the
collector, and a collector that is down costs dropped spans and a log line, not a request.

Each request gets a server span (middleware/tracing.py: opentelemetry-instrumentation-asgi
with our attributes) continuing the W3C `traceparent` it came with; the generation service
adds `admission` and `generate` spans; the remote backend an `upstream` span, whose
`traceparent` the upstream (vLLM with `--otlp-traces-endpoint`, SGLang, another instance of
this service) continues. Spans carry the request id and the client's name, never a key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

SERVICE_NAME = "avito-ai"
_provider: object | None = None  # the SDK's TracerProvider, once started in this process


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(traces_endpoint(environ))


def traces_endpoint(environ: Mapping[str, str] = os.environ) -> str:
    """Where spans go (what engine processes are told too); "" when tracing is off."""
    return (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def start() -> bool:
    """Start exporting from this process (each gunicorn worker starts its own, after the
    fork: the batch processor's thread does not survive one). True when tracing is on."""
    global _provider
    if _provider is not None:
        return True
    if not configured():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(defaults))  # the sampler from env
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    logger.info("Tracing on: OTLP spans to %s", traces_endpoint())
    return True


def stop(timeout_s: float = 3.0) -> None:
    """Send what is buffered (bounded: a collector that is down does not hold shutdown)."""
    global _provider
    provider, _provider = _provider, None
    if provider is None:
        return
    from opentelemetry.sdk.trace import TracerProvider

    assert isinstance(provider, TracerProvider)
    provider.force_flush(int(timeout_s * 1000))
    provider.shutdown()


def tracer() -> Tracer:
    """The service's tracer (a no-op one while tracing is off: spans cost nothing)."""
    return trace.get_tracer("avito_ai")


def carrier(span: Span) -> dict[str, str]:
    """`span` as W3C headers (`traceparent`, `tracestate`): how a child span elsewhere
    (another layer, an upstream) knows its parent. Empty while tracing is off."""
    headers: dict[str, str] = {}
    if span.get_span_context().is_valid:
        propagate.inject(headers, context=trace.set_span_in_context(span))
    return headers


def parent(headers: Mapping[str, str]) -> Context:
    """The context a carrier (or an incoming request's headers) names."""
    return propagate.extract(dict(headers))

"""OpenTelemetry traces from a running service: an OTLP/HTTP receiver in the test decodes
what the SDK exports (spans, parents, attributes), a stand-in upstream records the
`traceparent` it was sent, and a service whose collector is down still answers every
request at once."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.servers import ROOT, ServerProcess, dev_server, free_port, serving, wait_logged
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CHAT = {"model": "avibe", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Receiver:
    """An OTLP/HTTP trace receiver: every span it was sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    received.resources.append(resource)
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            received.spans.append(decoded(span))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, names: set[str], timeout: float = 20) -> dict[str, dict]:
        def found() -> dict[str, dict] | None:
            spans = {s["name"]: s for s in self.spans if s["trace_id"] == trace_id}
            return spans if names <= {n.split(" ")[0] for n in spans} else None

        return wait_until(
            found, timeout, lambda: f"spans of {trace_id}: {[s['name'] for s in self.spans]}"
        )


def decoded(span: Any) -> dict[str, Any]:
    def value(v: Any) -> Any:
        kind = v.WhichOneof("value")
        if kind == "array_value":
            return [value(x) for x in v.array_value.values]
        return getattr(v, kind) if kind else None

    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex(),
        "kind": span.kind,
        "attributes": {a.key: value(a.value) for a in span.attributes},
        "events": [e.name for e in span.events],
        "status": span.status.code,
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("tracing-upstream") / "upstream.log"
    script = [sys.executable, str(ROOT / "tests" / "hostile_upstream.py"), str(port)]
    srv = ServerProcess(script, {}, log, port)  # (the front's readiness waits for it)
    try:
        yield srv
    finally:
        srv.stop()


def front_env(upstream: ServerProcess, endpoint: str) -> dict[str, str]:
    return {
        "AVIBE_BACKEND": "remote",
        "AVIBE_UPSTREAM_URLS": upstream.url,
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "avito-ai-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
    }


@pytest.fixture(scope="module")
def front(
    receiver: Receiver, upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("tracing") / "server.log"
    with serving(dev_server(front_env(upstream, receiver.url), log), 60) as srv:
        yield srv


def test_a_request_continues_the_callers_trace_down_to_the_upstream(
    front: ServerProcess, upstream: ServerProcess, receiver: Receiver
) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "X-Request-ID": "trace-me-1"}
    r = httpx.post(
        front.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
    )
    assert r.status_code == 200 and "[DONE]" in r.text
    spans = receiver.trace(TRACE_ID, {"POST", "admission", "generate", "upstream"})
    server = spans["POST /v1/chat/completions"]
    assert server["parent"] == CALLER_SPAN and server["kind"] == 2  # SERVER
    assert server["attributes"].get("avito.request_id") == "trace-me-1", server
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["http.route"] == "/v1/chat/completions"
    assert server["attributes"]["avito.dialect"] == "openai"
    assert server["attributes"]["avito.client"] == "anonymous"  # no key here: no name
    admission, generate, call = spans["admission"], spans["generate"], spans["upstream"]
    by_id = {s["span_id"]: s for s in spans.values()}

    def ancestors(span: dict[str, Any]) -> list[str]:
        chain = []
        while span["parent"] in by_id:
            span = by_id[span["parent"]]
            chain.append(span["span_id"])
        return chain

    # (FastAPI's own operation spans may sit between: the request's span is an ancestor.)
    assert server["span_id"] in ancestors(admission)
    assert server["span_id"] in ancestors(generate)
    assert call["parent"] == generate["span_id"] and call["kind"] == 3  # CLIENT
    assert generate["attributes"]["gen_ai.request.model"] == "avibe"
    assert generate["attributes"]["gen_ai.usage.output_tokens"] == 1
    assert generate["attributes"]["gen_ai.usage.input_tokens"] == 5
    assert "first_token" in generate["events"]
    assert call["attributes"]["http.response.status_code"] == 200
    assert {"service.name": "avito-ai-test"}.items() <= receiver.resources[-1].items()
    # The upstream was sent the upstream span as its parent: its own spans join the trace.
    sent = httpx.get(upstream.url + "/traceparents").json()[-1]
    assert sent.split("-")[1:3] == [TRACE_ID, call["span_id"]]


def test_without_a_caller_a_trace_starts_here_and_errors_are_marked(
    front: ServerProcess, receiver: Receiver
) -> None:
    r = httpx.post(front.url + "/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert r.status_code == 404
    rid = r.headers["x-request-id"]
    span = wait_until(
        lambda: next(
            (s for s in receiver.spans if s["attributes"].get("avito.request_id") == rid), None
        ),
        20,
        "a span for the refused request",
    )
    assert span["parent"] == "" and span["attributes"]["http.response.status_code"] == 404
    # The probes are traced too (their cost: benchmarks/bench_tracing.py).
    assert httpx.get(front.url + "/api/health").status_code == 200


def test_a_collector_that_is_down_costs_no_request(upstream: ServerProcess, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = front_env(upstream, closed)
    log = tmp_path / "server.log"
    with serving(dev_server(env, log), 60) as srv:
        for _ in range(5):
            started = time.monotonic()
            r = httpx.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=10)
            assert r.status_code == 200, r.text
            assert time.monotonic() - started < 2  # the export never waits in a request
        # An export fails meanwhile (the exporter gives up after OTEL_EXPORTER_OTLP_TIMEOUT).
        wait_logged(srv.log_path, "Failed to export spans batch", timeout=30)
        assert httpx.get(srv.url + "/api/health").status_code == 200
        started = time.monotonic()
        srv.proc.terminate()
        srv.proc.wait(30)
        assert time.monotonic() - started < 15  # a bounded flush, not a hang
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]

"""Bounds on the request head, enforced where it is parsed (uvicorn's httptools protocol).

uvicorn with httptools accepts any head: a 200 kB header, or 3,000 of them, reached the
app, and one header line without an end was buffered for as long as it came. This
protocol counts the head's bytes and fields as they are parsed:

* a head with more than MAX_HEADERS fields, or over MAX_HEADER_BYTES once parsed, goes on
  to the app flagged, with only the first fields; HeaderLimitMiddleware answers it 431 in
  the asking dialect's shape (request id, access line, metric, as for every refusal);
* a head still incomplete past MAX_HEADER_BYTES (plus a margin) is answered 431 at once,
  here, and the connection closed: nothing more of it is read.

The same class serves the dev server and every gunicorn worker.
"""

from __future__ import annotations

import json
import logging
import uuid

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from avito_ai.middleware.header_limit import SCOPE_FLAG  # in scope["state"]: why refused
from avito_ai.paths import Dialect, error_dialect

logger = logging.getLogger("avito_ai.http")

_MARGIN = 1024  # what the parser may hold of a head past the limit before it is cut off


def _message(max_bytes: int, max_headers: int) -> str:
    return (
        f"Request headers too large: at most {max_headers} fields and {max_bytes} bytes "
        "(MAX_HEADERS, MAX_HEADER_BYTES)"
    )


def _dialect(url: bytes, method: str) -> Dialect:
    """The error dialect of a request whose head is cut off: its path as far as it came
    (without the query; the proxy already took ROOT_PATH off, as for every request)."""
    path = url.split(b"?", 1)[0].decode("latin-1") or "/"
    dialect = error_dialect(path, method)
    return "native" if dialect == "page" else dialect


def limited_protocol(max_bytes: int, max_headers: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these bounds on every request head."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._fields = 0
            self._fed = 0  # raw bytes of this head received so far
            self._head_done = False

        def on_url(self, url: bytes) -> None:
            self._head_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._fields += 1
            self._head_bytes += len(name) + len(value) + 4
            if self._fields <= max_headers and self._head_bytes <= max_bytes:
                super().on_header(name, value)  # past a bound: counted, not kept

        def on_headers_complete(self) -> None:
            self._head_done = True
            if self._fields > max_headers or self._head_bytes > max_bytes:
                self.scope["state"][SCOPE_FLAG] = _message(max_bytes, max_headers)
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                return
            if getattr(self, "_head_done", True) is False:  # a head begun, not ended
                self._fed += len(data)
                if self._fed > max_bytes + _MARGIN:
                    self._refuse_now()

        def _refuse_now(self) -> None:
            """A head that does not end: 431 in the asking dialect's shape, as the app
            answers every other refusal (paths.py decides: Anthropic's on /v1/messages,
            OpenAI's on the rest of /v1/, native elsewhere; a form's page cannot be drawn
            here, so native JSON), then the connection is closed."""
            # Imported here: gunicorn_config.py imports this module in the master, before
            # the metrics folder exists, and api.errors creates the Prometheus metrics.
            from avito_ai.api.errors import error_body

            request_id = str(uuid.uuid4())
            message = _message(max_bytes, max_headers)
            dialect = _dialect(getattr(self, "url", b""), self._method())
            body = error_body(
                "request_header_fields_too_large", message, request_id, dialect=dialect
            )
            anthropic = b"request-id: " + request_id.encode() + b"\r\n"
            content = json.dumps(body).encode()
            head = (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(content)).encode() + b"\r\n"
                b"x-request-id: "
                + request_id.encode()
                + b"\r\n"
                + (anthropic if dialect == "anthropic" else b"")
                + b"connection: close\r\n\r\n"
            )
            logger.warning(
                "431 for a request head over %d bytes from %s",
                max_bytes,
                self.client[0] if self.client else "?",
                extra={"request_id": request_id},
            )
            self.transport.write(head + content)
            self.transport.close()

        def _method(self) -> str:
            try:
                return bytes(self.parser.get_method()).decode("ascii", "replace")
            except Exception:  # the request line itself is not parsed yet
                return "GET"

    assert httptools  # the protocol needs httptools (uvicorn[standard])
    return LimitedHttpToolsProtocol

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
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from avito_ai.middleware.header_limit import SCOPE_FLAG  # in scope["state"]: why refused

logger = logging.getLogger("avito_ai.http")

_MARGIN = 1024  # what the parser may hold of a head past the limit before it is cut off


def _message(max_bytes: int, max_headers: int) -> str:
    return (
        f"Request headers too large: at most {max_headers} fields and {max_bytes} bytes "
        "(MAX_HEADERS, MAX_HEADER_BYTES)"
    )


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
            """A head that does not end: 431 in the native shape (the path may not even
            be known yet), then the connection is closed."""
            request_id = str(uuid.uuid4())
            message = _message(max_bytes, max_headers)
            path = getattr(self, "url", b"")
            body: dict[str, Any]
            if path.startswith(b"/v1/") or path == b"/v1":
                body = {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "request_header_fields_too_large",
                    }
                }
            else:
                body = {
                    "error": "request_header_fields_too_large",
                    "message": message,
                    "request_id": request_id,
                }
            content = json.dumps(body).encode()
            head = (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(content)).encode() + b"\r\n"
                b"x-request-id: " + request_id.encode() + b"\r\n"
                b"connection: close\r\n\r\n"
            )
            logger.warning(
                "431 for a request head over %d bytes from %s",
                max_bytes,
                self.client[0] if self.client else "?",
                extra={"request_id": request_id},
            )
            self.transport.write(head + content)
            self.transport.close()

    assert httptools  # the protocol needs httptools (uvicorn[standard])
    return LimitedHttpToolsProtocol

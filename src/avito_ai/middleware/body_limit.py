"""Cap request bodies while they stream in: Content-Length up front, and counted bytes
for chunked or length-less bodies. Nothing is read whole before the check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avito_ai.paths import app_path

# What marks a body that carries an image: OpenAI's image parts (chat's `image_url`,
# Responses' `input_image`) and Anthropic's base64 image sources.
_IMAGE_PARTS = (b'"image_url"', b'"input_image"', b'"base64"')
_LONGEST = max(len(p) for p in _IMAGE_PARTS)


class BodyLimitMiddleware:
    """`limit_for(path)` gives the byte limit of a route; over it the app sees a 413
    HTTPException raised from `receive`. (An HTTPException, because FastAPI re-raises those
    from body parsing while it turns other exceptions into a generic 400.) The error
    mapping in api/errors.py gives it the `payload_too_large` body."""

    def __init__(
        self,
        app: ASGIApp,
        limit_for: Callable[[str], int],
        text_limit_for: Callable[[str], int | None] = lambda path: None,
        read_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        # Longest wait for the next piece of a body: a client that stops sending mid-upload
        # gets 408 instead of holding a connection and a request slot for ever. Only body
        # bytes are waited for this way: once the body is whole, `receive` waits untimed
        # for the disconnect (the answer may take longer than this; REQUEST_TIMEOUT and
        # the engines bound it).
        self.read_timeout = read_timeout
        # Routes that take images in JSON (OpenAI chat): a body past this many bytes must
        # have shown an image part by then, else it is text only and gets the text cap.
        self.text_limit_for = text_limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(app_path(scope))
        message = f"Request body too large. Maximum size: {limit / 1048576:g} MB"
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._refuse(scope, receive, send, message)
                    return
                break
        received = 0
        text_limit = self.text_limit_for(app_path(scope))
        seen_image = text_limit is None
        tail = b""

        body_done = False

        async def counting_receive() -> Message:
            nonlocal received, seen_image, tail, body_done
            if body_done:
                # The body is in: what comes now is the disconnect, whenever the client
                # leaves (a 40 s answer is no stalled upload). REQUEST_TIMEOUT bounds that.
                return await receive()
            try:
                async with asyncio.timeout(self.read_timeout):
                    msg = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, detail=f"No request body for {self.read_timeout:g} s; send it whole"
                ) from None
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                body_done = True
            if msg["type"] == "http.request":
                body = msg.get("body", b"")
                received += len(body)
                if received > limit:
                    raise HTTPException(413, detail=message)
                if not seen_image:
                    seen_image = any(p in tail + body for p in _IMAGE_PARTS)
                    tail = body[-_LONGEST:]
                    if not seen_image and text_limit is not None and received > text_limit:
                        raise HTTPException(
                            413,
                            detail="Request body too large for a request without images. "
                            f"Maximum size: {text_limit / 1048576:g} MB",
                        )
            return msg

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        """Answer 413 through the app's own error mapping without reading the body."""

        async def refusing_receive() -> Message:
            raise HTTPException(413, detail=message)

        await self.app(scope, refusing_receive, send)

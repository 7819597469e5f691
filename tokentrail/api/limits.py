"""Request size limit: bodies over the limit are refused with 413 before they are held in memory.

FastAPI reads a whole body before validating it, so without a limit one request with a
gigabyte of JSON would be read, parsed and (for a 422) echoed back.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware refusing bodies over `max_bytes`: at once when `Content-Length` says so,
    else (chunked bodies) as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _reason(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._reason()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body (any other
                    # error becomes a vague 400), so the handlers answer 413 with the reason.
                    raise HTTPException(413, self._reason())
            return message

        await self.app(scope, limited, send)

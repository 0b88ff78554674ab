"""The request body limit and read timeout, as plain ASGI middleware in front of the app.

A body over `max_bytes` is answered 413 before the app sees it: at once when its Content-Length says so, else as
soon as the bytes read pass the limit (chunked uploads). A body not fully received within `read_timeout` seconds
(a client that stalls) is answered 408. The whole body is read here and replayed to the app, so the app never
reads an unbounded body.
"""

from __future__ import annotations

import asyncio
import json
import time


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`, 408 for bodies slower than `read_timeout` seconds.

    Args:
        app: the ASGI app it guards.
        max_bytes: the largest request body accepted.
        read_timeout: seconds a client has to send the whole body.
    """

    def __init__(self, app, *, max_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await refuse(send, 413, f"The request body is over the limit of {self.max_bytes} bytes.")
        chunks, size = [], 0
        deadline = time.monotonic() + self.read_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await refuse(send, 408, f"The request body was not received within {self.read_timeout:g} s.")
            if message["type"] == "http.disconnect":
                return None  # the client left: nothing to answer
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await refuse(send, 413, f"The request body is over the limit of {self.max_bytes} bytes.")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        return await self.app(scope, replay, send)


async def refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""`RequestGuard`: what the server refuses before Gradio reads a request (an ASGI middleware in front of it).

- A request body over its size: uploads (multipart) over `max_upload_mb` x `max_images` in all (each file is held to
  `max_upload_mb` by Gradio's own `max_file_size`), any other body over `max_request_kb`. Refused with 413 from the
  declared length, or once that many bytes have come; an upload must declare its length (411 otherwise).
- A queue join from a session that already has `max_pending` requests waiting or running, or that has sent more
  than `max_requests_per_second` (a token bucket holding two seconds' worth): 429, so one client can neither fill the
  queue every visitor shares nor spend the server's time on a tight loop of cheap requests.
- Gradio's own refusal of a file over `max_file_size` (413) is reworded to name the limit and how to change it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .limits import AppLimits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestGuard:
    """ASGI middleware: see the module docstring.

    Args:
        app: the ASGI app behind it (Gradio's).
        limits: the limits to hold requests to.
        pending: the number of requests of a Gradio session hash waiting or running.
    """

    def __init__(self, app: ASGIApp, limits: AppLimits, pending: Callable[[str], int]) -> None:
        self.app, self.limits, self.pending = app, limits, pending
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # session hash -> (tokens, when)
        self._lock = threading.Lock()

    def _allowed(self, session_hash: str) -> bool:
        """Take a token from the session's bucket (refilled at `max_requests_per_second`, two seconds' worth)."""
        rate = self.limits.max_requests_per_second
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.pop(session_hash, (2.0 * rate, now))
            tokens = min(2.0 * rate, tokens + (now - when) * rate)
            allowed = tokens >= 1.0
            self._buckets[session_hash] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > 10_000:  # the least recently seen sessions' buckets are full again by now
                self._buckets.popitem(last=False)
        return allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        if multipart:
            limit = self.limits.max_upload_mb * self.limits.max_images * 2**20
            refusal = (
                f"Upload refused: one request may carry at most {self.limits.max_upload_mb * self.limits.max_images} "
                f"MB of files ({self.limits.max_images} files of {self.limits.max_upload_mb} MB, the most a session "
                f"holds: {AppLimits.how_to_change('max_upload_mb')}, and --max-images)."
            )
        else:
            limit = self.limits.max_request_kb * 1024
            refusal = (
                f"Request refused: its body is over {self.limits.max_request_kb} KB, the most the app takes in one "
                f"request other than file uploads ({AppLimits.how_to_change('max_request_kb')})."
            )
        length = headers.get(b"content-length")
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None
        if declared is not None and declared > limit:
            await _respond(send, 413, refusal)
            return
        if multipart:
            if declared is None:
                await _respond(send, 411, "Upload refused: an upload must declare its size (Content-Length).")
                return
            await self.app(scope, receive, self._worded_file_refusal(send))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _respond(send, 413, refusal)
                return
            if not message.get("more_body", False):
                break
        if scope["path"].rstrip("/").endswith("/queue/join"):
            session_hash = _session_hash(bytes(body))
            if session_hash and not self._allowed(session_hash):
                await _respond(
                    send,
                    429,
                    f"Request refused: this session sent more than {self.limits.max_requests_per_second} requests a "
                    f"second, the most the app takes from one session ({AppLimits.how_to_change('max_requests_per_second')}"
                    "). Wait a moment.",
                )
                return
            if session_hash and self.pending(session_hash) >= self.limits.max_pending:
                await _respond(
                    send,
                    429,
                    f"Request refused: this session already has {self.limits.max_pending} requests waiting or "
                    f"running, the most the app queues for one session ({AppLimits.how_to_change('max_pending')}). "
                    "Wait for their answers.",
                )
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _worded_file_refusal(self, send: Send) -> Send:
        """`send`, with Gradio's 413 for a file over `max_file_size` replaced by a message in words."""
        replaced = False
        message_text = (
            f"File refused: it is larger than {self.limits.max_upload_mb} MB, the most the app takes per file "
            f"({AppLimits.how_to_change('max_upload_mb')}). Save a smaller copy (the app works at up to 2048 px on "
            "the longest side) and upload that."
        )

        async def worded(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                replaced = True
                body = json.dumps({"detail": message_text}).encode()
                await send(_start(413, len(body)))
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            if replaced:  # Gradio's own body: already answered
                return
            await send(message)

        return worded


def _session_hash(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = document.get("session_hash") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def _start(status: int, length: int) -> Message:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    return {"type": "http.response.start", "status": status, "headers": headers}


async def _respond(send: Send, status: int, detail: str) -> None:
    """A JSON `{"detail": ...}` answer, as FastAPI gives its own refusals."""
    body = json.dumps({"detail": detail}).encode()
    await send(_start(status, len(body)))
    await send({"type": "http.response.body", "body": body, "more_body": False})

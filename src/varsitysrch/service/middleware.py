"""ASGI middleware of the service: a request-body limit (413) and request metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def send_json(send: Send, status: int, obj: Any, close: bool = False) -> None:
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for request bodies over ``limit`` bytes: by Content-Length, or counted while streaming."""

    def __init__(self, app: ASGIApp, limit: int, detail: str, routes: Any = ()) -> None:
        self.app = app
        self.limit = limit
        self.detail = detail
        self.routes = routes  # to label an early 413 with its route in the metrics

    def _label_route(self, scope: Scope) -> None:
        for r in self.routes:
            try:
                match, _ = r.matches(scope)
            except Exception:  # pragma: no cover - a route that cannot match this scope
                continue
            if match.name == "FULL":
                scope["route"] = r
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > self.limit:
                    self._label_route(scope)
                    await send_json(send, 413, {"detail": self.detail}, close=True)
                    return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    too_large = True
                    raise _TooLarge(self.detail)
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's reaction to _TooLarge (a 400, a 500) is replaced by the 413 below
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large or started:
                raise
        if too_large and not started:
            await send_json(send, 413, {"detail": self.detail}, close=True)


class Observe:
    """Request metrics (route template, status, latency) and a few security headers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()

        async def observed_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
                headers = list(msg.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"referrer-policy" not in names:
                    headers.append((b"referrer-policy", b"no-referrer"))
                msg = {**msg, "headers": headers}
            await send(msg)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"  # bounded label values
            self.metrics.observe_request(method, route, status, time.perf_counter() - t0)

"""A resource that serves each request with one coroutine: the base of the
archive's small JSON APIs (``/api``, ``/api/mpps``, ``/worklist``).

A subclass gives ``_route(request, method, segments)``; ``HEAD`` is routed
as ``GET``, a trailing slash is ignored, an :class:`HttpError` becomes its
answer and anything else a logged 500.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web import server
from twisted.web.resource import Resource

from dicomtwist import log as dlog
from dicomtwist.web.dicomweb.resource import HttpError, send_body, send_error

__all__ = ["RoutedResource", "allow", "send_json"]


def send_json(request: server.Request, code: int, value: Any,
              content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
    """Answer with ``value`` as JSON (UTF-8), never cached."""
    body = json.dumps(value, ensure_ascii=False).encode("utf-8")
    send_body(request, code, content_type, body, {"cache-control": "no-store",
                                                  **(headers or {})})


def allow(method: str, *allowed: str) -> None:
    """Refuse any method but ``allowed`` with 405 and an ``Allow`` header."""
    if method not in allowed:
        raise HttpError(405, f"{method} is not allowed here", {"Allow": ", ".join(allowed)})


class RoutedResource(Resource):
    """Serve every method of every path below this resource by ``_route``."""

    isLeaf = True
    log = dlog.logger()
    #: The metrics' route label of the requests served here (None: the path's).
    route: str | None = None

    def render(self, request: server.Request) -> Any:
        """Start serving; the coroutine finishes the request."""
        if self.route is not None:
            request.route = self.route
        Deferred.fromCoroutine(self._serve(request))
        return server.NOT_DONE_YET

    async def _serve(self, request: server.Request) -> None:
        method = request.method.decode("ascii", "replace")
        try:
            segments = [s.decode("utf-8", "replace") for s in request.postpath]
            if segments and segments[-1] == "":
                segments = segments[:-1]
            await self._route(request, "GET" if method == "HEAD" else method, segments)
        except HttpError as e:
            send_error(request, e)
        except Exception:
            self.log.failure("Serving {method} {uri} failed", method=method,
                             uri=request.uri[:200])
            send_error(request, HttpError(500, "internal error"))

    async def _route(self, request: server.Request, method: str,
                     segments: list[str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

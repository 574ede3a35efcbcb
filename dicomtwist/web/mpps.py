"""``/api/mpps``: the performed procedure steps the archive keeps, as DICOM
JSON (PS3.18 F.2), read only.

- ``GET /api/mpps``: every step, newest start first, each with the
  attributes of :data:`dicomtwist.services.mpps.SUMMARY` (identity, patient,
  station, start and end, status);
- ``GET /api/mpps/{SOP Instance UID}``: one step, all its attributes;
  404 when there is no such step.

Reading needs the ``query`` permission when HTTP authentication is on.
Files are read in the archive's thread pool.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from pydicom.dataset import Dataset
from twisted.internet.threads import deferToThreadPool
from twisted.web import server
from twisted.web.resource import Resource

from dicomtwist import log as dlog
from dicomtwist.services.mpps import DIRECTORY, SUMMARY, MppsStore

__all__ = ["MppsResource"]

_MEDIA_TYPE = b"application/dicom+json"


def summary(ds: Dataset) -> Dataset:
    """The attributes of a step shown in the list."""
    out = Dataset()
    for keyword in SUMMARY:
        if keyword in ds:
            out[keyword] = ds[keyword]
    return out


def _newest_first(steps: list[Dataset]) -> list[Dataset]:
    def start(ds: Dataset) -> tuple[str, str, str]:
        return (str(ds.get("PerformedProcedureStepStartDate") or ""),
                str(ds.get("PerformedProcedureStepStartTime") or ""),
                str(ds.get("SOPInstanceUID") or ""))

    return sorted(steps, key=start, reverse=True)


class MppsResource(Resource):
    """The ``/api/mpps`` resource.

    :param directory: the instance directory (steps are in its ``.mpps``).
    :param authorize: ``authorize(request)`` raises an error with ``code``,
        ``text`` and ``headers`` (``HttpError``) when the request may not
        read; e.g. the DICOMweb resource's ``authorize`` for ``query``.
    """

    isLeaf = True
    log = dlog.logger()

    def __init__(self, reactor: Any, pool: Any, directory: str,
                 authorize: Callable[[server.Request], Any]) -> None:
        super().__init__()
        self.reactor = reactor
        self.pool = pool
        self.store = MppsStore(os.path.join(directory, DIRECTORY))
        self.authorize = authorize

    def render_GET(self, request: server.Request) -> Any:
        """The list, or one step."""
        try:
            self.authorize(request)
        except Exception as e:
            code = getattr(e, "code", None)
            if code is None:
                raise
            for name, value in getattr(e, "headers", {}).items():
                request.setHeader(name, value)
            return self._error(request, code, getattr(e, "text", str(e)))
        segments = [s for s in request.postpath if s]
        if len(segments) > 1:
            return self._error(request, 404, "no such resource")
        if segments:
            uid = segments[0].decode("ascii", "replace")
            d = deferToThreadPool(self.reactor, self.pool, self.store.get, uid)
            d.addCallback(self._one, request, uid)
        else:
            d = deferToThreadPool(self.reactor, self.pool, self.store.all)
            d.addCallback(lambda steps: [summary(s).to_json_dict()
                                         for s in _newest_first(steps)])
        d.addCallback(self._send, request)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def _one(self, step: Dataset | None, request: server.Request, uid: str) -> Any:
        if step is None:
            raise _NotFound(uid)
        return step.to_json_dict()

    def _send(self, document: Any, request: server.Request) -> None:
        if request.finished or request._disconnected:
            return
        body = json.dumps(document).encode("utf-8")
        request.setHeader(b"content-type", _MEDIA_TYPE)
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _failed(self, failure: Any, request: server.Request) -> None:
        if failure.check(_NotFound):
            self._finish_error(request, 404, f"no performed procedure step {failure.value.uid}")
            return
        self.log.failure("/api/mpps failed", failure)
        self._finish_error(request, 500, "cannot read the performed procedure steps")

    def _finish_error(self, request: server.Request, code: int, text: str) -> None:
        if request.finished or request._disconnected:
            return
        body = self._error(request, code, text)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    @staticmethod
    def _error(request: server.Request, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        body = json.dumps({"error": text, "status": code}).encode("utf-8")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        return body


class _NotFound(Exception):
    def __init__(self, uid: str) -> None:
        super().__init__(uid)
        self.uid = uid

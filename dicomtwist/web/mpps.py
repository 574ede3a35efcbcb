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

import os
from typing import Any, Callable

from pydicom.dataset import Dataset
from twisted.internet.threads import deferToThreadPool
from twisted.web import server

from dicomtwist import log as dlog
from dicomtwist.services.mpps import DIRECTORY, SUMMARY, MppsStore
from dicomtwist.web.dicomweb.resource import HttpError
from dicomtwist.web.routed import RoutedResource, allow, send_json

__all__ = ["MppsResource"]

_MEDIA_TYPE = "application/dicom+json"


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


class MppsResource(RoutedResource):
    """The ``/api/mpps`` resource.

    :param directory: the instance directory (steps are in its ``.mpps``).
    :param authorize: ``authorize(request)`` raises :class:`HttpError`
        (401/403) when the request may not read; e.g. the DICOMweb
        resource's ``authorize`` for ``query``.
    """

    log = dlog.logger()
    route = "mpps"

    def __init__(self, reactor: Any, pool: Any, directory: str,
                 authorize: Callable[[server.Request], Any]) -> None:
        super().__init__()
        self.reactor = reactor
        self.pool = pool
        self.store = MppsStore(os.path.join(directory, DIRECTORY))
        self.authorize = authorize

    async def _route(self, request: server.Request, method: str, segments: list[str]) -> None:
        allow(method, "GET")
        self.authorize(request)
        if len(segments) > 1:
            raise HttpError(404, "no such resource")
        if segments:
            uid = segments[0]
            step = await self._read(self.store.get, uid)
            if step is None:
                raise HttpError(404, f"no performed procedure step {uid}")
            send_json(request, 200, step.to_json_dict(), _MEDIA_TYPE)
            return
        steps = await self._read(self.store.all)
        send_json(request, 200, [summary(s).to_json_dict() for s in _newest_first(steps)],
                  _MEDIA_TYPE)

    async def _read(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in the thread pool; a failure is a logged 500."""
        try:
            return await deferToThreadPool(self.reactor, self.pool, function, *args)
        except Exception:
            self.log.failure("/api/mpps failed")
            raise HttpError(500, "cannot read the performed procedure steps") from None

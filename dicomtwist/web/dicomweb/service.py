"""The DICOMweb handlers: one coroutine per route of :mod:`.resource`.

QIDO-RS calls the index's query (the C-FIND one), STOW-RS the archive's
store pipeline (the C-STORE one); neither knows it is not DIMSE.
"""

from __future__ import annotations

import time

from twisted.web import server

from dicomtwist import events

from dicomtwist.storage.index import ATTRIBUTES, QueryError
from dicomtwist.web.dicomweb import qido, stow, wado
from dicomtwist.web.dicomweb.resource import (
    DicomWebContext,
    HttpError,
    base_url,
    query_args,
    send_body,
)
from dicomtwist.web.dicomweb import media

__all__ = ["DicomWebService"]

_INDEXED = [(a.keyword, a.table) for a in ATTRIBUTES]


class DicomWebService:
    """The handlers of every DICOMweb route.

    :param context: what they work with.
    """

    def __init__(self, context: DicomWebContext) -> None:
        self.context = context

    def _base(self, request: server.Request) -> str:
        return base_url(request, self.context.root)

    # QIDO-RS

    async def qido_studies(self, request: server.Request) -> None:
        """Search for studies (PS3.18 10.6)."""
        await self._search(request, "STUDY")

    async def qido_series(self, request: server.Request, study: str | None = None) -> None:
        """Search for series, of one study or of all."""
        await self._search(request, "SERIES", study)

    async def qido_instances(self, request: server.Request, study: str | None = None,
                             series: str | None = None) -> None:
        """Search for instances, of one series, one study or of all."""
        await self._search(request, "IMAGE", study, series)

    async def _search(self, request: server.Request, level: str, study: str | None = None,
                      series: str | None = None) -> None:
        offered = media.choose(wado.accept_of(request),
                               ["application/dicom+json", "application/json"])
        if offered is None:
            raise HttpError(406, "QIDO-RS answers application/dicom+json")
        levels = ["STUDY"]
        if level in ("SERIES", "IMAGE"):
            levels = (["STUDY"] if study is None else []) + ["SERIES"]
        if level == "IMAGE":
            levels = (["STUDY"] if study is None else []) + (
                ["SERIES"] if series is None else []) + ["IMAGE"]
        try:
            query = qido.parse_query(level, query_args(request), study=study, series=series,
                                     include_all=qido.include_all(levels, _INDEXED))
        except qido.QueryParameterError as e:
            raise HttpError(400, str(e))
        base = self._base(request)
        started = time.monotonic()
        try:
            body, count = await self.context.run(self._matches, query, base)
        except QueryError as e:
            raise HttpError(400, getattr(e, "comment", None) or str(e))
        if events.bus.observed:
            address = request.getClientAddress()
            events.bus.publish(events.QueryPerformed(
                "http", getattr(address, "host", "") or "", "", "", level, request.uri, count,
                0, time.monotonic() - started))
        headers = {"Warning": ", ".join(query.warnings)} if query.warnings else None
        send_body(request, 200, offered, body, headers, compress=True)

    def _matches(self, query: qido.QidoQuery, base: str) -> tuple[bytes, int]:
        """In a worker: the query's matches as DICOM JSON, and their count."""
        keys, rows = self.context.index.query(query.identifier, "STUDY",
                                              relational=query.relational,
                                              offset=query.offset, limit=query.limit)
        pieces = list(qido.render_matches(keys, rows, query.level, base))
        # One piece a match, between "[" and "]".
        return b"".join(pieces), len(pieces) - 2

    # WADO-RS

    async def retrieve(self, request: server.Request, study: str, series: str | None = None,
                       instance: str | None = None) -> None:
        """Retrieve a study, series or instance."""
        await wado.retrieve(self.context, request, study, series, instance)

    async def metadata(self, request: server.Request, study: str, series: str | None = None,
                       instance: str | None = None) -> None:
        """Retrieve metadata."""
        await wado.metadata(self.context, request, self._base(request), study, series, instance)

    async def rendered(self, request: server.Request, study: str, series: str,
                       instance: str) -> None:
        """Retrieve an instance rendered."""
        await wado.rendered(self.context, request, study, series, instance)

    async def thumbnail(self, request: server.Request, study: str, series: str | None = None,
                        instance: str | None = None) -> None:
        """Retrieve a study's, series' or instance's thumbnail."""
        await wado.rendered(self.context, request, study, series, instance, thumbnail=True)

    async def frames(self, request: server.Request, study: str, series: str, instance: str,
                     rest: str) -> None:
        """Retrieve frames (and a frame rendered or as a thumbnail)."""
        await wado.frames(self.context, request, study, series, instance, rest)

    async def bulkdata(self, request: server.Request, study: str, series: str, instance: str,
                       rest: str) -> None:
        """Retrieve bulk data."""
        await wado.bulkdata(self.context, request, study, series, instance, rest)

    # STOW-RS

    async def stow(self, request: server.Request, study: str | None = None) -> None:
        """Store instances."""
        await stow.stow(self.context, request, self._base(request), study)


"""``/worklist``: the Modality Worklist's items over HTTP, as DICOM JSON
(PS3.18 F.2), read from, written into and removed from the worklist
directory (:mod:`dicomtwist.services.worklist`).

Mounted by :func:`dicomtwist.web.site.build_site` when both ``http`` and
``worklist_location`` are set:

- ``GET /worklist``: every item the worklist answers from, as
  ``[{"name": "x.wl", "item": {DICOM JSON}}, ...]`` (``application/json``),
  by name; permission ``query``;
- ``GET /worklist/{name}``: one item (``application/dicom+json``, the
  data set's JSON object); ``query``;
- ``POST /worklist``: add an item under a new name (201, ``Location``);
  ``PUT /worklist/{name}``: add or replace it (201 or 200); the body is the
  item's DICOM JSON object (or an array of exactly one); permission
  ``store``;
- ``DELETE /worklist/{name}``: remove it (204); permission ``delete``.

An item is written atomically (a temporary file renamed over the name),
so a query sees it whole or not at all, and only when it is complete (the
type 1 return keys every answer carries): an incomplete item is a 400
naming what it lacks, never a file the worklist would skip.  Bodies are
read through the Site's body sink (:func:`body_sink`), at most
:data:`MAX_BODY` bytes.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from pydicom.dataset import Dataset
from twisted.web import server

from dicomtwist import log as dlog
from dicomtwist.services import worklist
from dicomtwist.web.dicomweb.resource import HttpError
from dicomtwist.web.routed import RoutedResource, allow, send_json

__all__ = ["MAX_BODY", "WorklistResource", "body_sink"]

#: The largest item body accepted (bytes).
MAX_BODY = 1024 * 1024
#: Where the resource is mounted.
PATH = "/worklist"


class JsonBody(io.BytesIO):
    """A request body kept in memory, at most :data:`MAX_BODY` bytes (the
    rest is counted and dropped; the resource answers 413)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0

    def write(self, data: Any) -> int:  # type: ignore[override]
        """Keep ``data`` while under the limit."""
        size = len(data)
        self.received += size
        if self.received <= MAX_BODY:
            super().write(data)
        return size

    @property
    def too_large(self) -> bool:
        """Did more than :data:`MAX_BODY` bytes arrive?"""
        return self.received > MAX_BODY


def body_sink(method: bytes, path: bytes, headers: Any, length: int | None) -> Any:
    """The Site's body-sink chooser for ``/worklist``: a :class:`JsonBody`
    for the POST and PUT bodies it takes, None for any other request."""
    if method not in (b"POST", b"PUT"):
        return None
    target = unquote(urlsplit(path.decode("latin-1")).path)
    if target.rstrip("/") != PATH and not target.startswith(PATH + "/"):
        return None
    return JsonBody()


def chain(*choosers: Callable[..., Any]) -> Callable[..., Any]:
    """A body-sink chooser asking each of ``choosers`` in turn."""
    def choose(method: bytes, path: bytes, headers: Any, length: int | None) -> Any:
        for chooser in choosers:
            sink = chooser(method, path, headers, length)
            if sink is not None:
                return sink
        return None

    return choose


def parse_item(body: bytes) -> Dataset:
    """A worklist item from a DICOM JSON body: one data set object, or an
    array holding exactly one.

    :raises HttpError: 400 when it is not one DICOM JSON data set.
    """
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise HttpError(400, f"the body is not JSON: {e}") from None
    if isinstance(value, list):
        if len(value) != 1:
            raise HttpError(400, f"expected one data set, got an array of {len(value)}")
        value = value[0]
    if not isinstance(value, dict):
        raise HttpError(400, "expected a DICOM JSON data set (an object)")

    def no_bulk_data(uri: str) -> Any:
        raise ValueError(f"bulk data ({uri[:80]}) is not taken in a worklist item")

    try:
        item = Dataset.from_json(value, bulk_data_uri_handler=no_bulk_data)
    except Exception as e:
        raise HttpError(400, f"not a DICOM JSON data set: {e}"[:300]) from None
    if any(_non_ascii(element) for element in item.iterall()) \
            and "SpecificCharacterSet" not in item:
        # JSON text is Unicode: say so in the file.
        item.SpecificCharacterSet = "ISO_IR 192"
    return item


def _non_ascii(element: Any) -> bool:
    if element.VR == "SQ":
        return False
    return any(not v.isascii() for v in worklist.values_of(element))


class WorklistResource(RoutedResource):
    """``/worklist``: a leaf that routes the rest of its path itself.

    :param context: where blocking work runs (``run``: the archive's pool).
    :param directory: the worklist directory.
    :param authorize: ``authorize(request, permission)`` -> the principal
        (None without authentication); raises :class:`HttpError` 401/403.
    """

    log = dlog.logger()
    route = "worklist"

    def __init__(self, context: Any, directory: str,
                 authorize: Callable[[Any, str], Any]) -> None:
        super().__init__()
        self.context = context
        self.directory = worklist.WorklistDirectory(directory)
        self.authorize = authorize

    async def _route(self, request: server.Request, method: str, segments: list[str]) -> None:
        if not segments:
            allow(method, "GET", "POST")
            if method == "GET":
                return await self.all_items(request)
            return await self.save(request, None)
        if len(segments) == 1 and worklist.is_item_name(segments[0]):
            allow(method, "GET", "PUT", "DELETE")
            if method == "GET":
                return await self.get(request, segments[0])
            if method == "PUT":
                return await self.save(request, segments[0])
            return await self.remove(request, segments[0])
        raise HttpError(404, "no such worklist item (names are *.wl, no directory)")

    async def all_items(self, request: server.Request) -> None:
        """``GET /worklist``."""
        self.authorize(request, "query")
        items, _ = await self.context.run(self._items)
        send_json(request, 200, [{"name": name, "item": item.to_json_dict()}
                             for name, item in items], "application/json")

    def _items(self) -> Any:
        try:
            return self.directory.items()
        except OSError as e:
            raise HttpError(503, f"the worklist directory cannot be read: {e.strerror}") \
                from None

    async def get(self, request: server.Request, name: str) -> None:
        """``GET /worklist/{name}``."""
        self.authorize(request, "query")
        items, _ = await self.context.run(self._items)
        found = dict(items).get(name)
        if found is None:
            raise HttpError(404, f"no worklist item {name} (or it is not answered: see the"
                                 " log)")
        send_json(request, 200, found.to_json_dict(), "application/dicom+json")

    async def save(self, request: server.Request, name: str | None) -> None:
        """``POST /worklist`` (a new name) or ``PUT /worklist/{name}``."""
        principal = self.authorize(request, "store")
        body = request.content
        if not isinstance(body, JsonBody):
            raise HttpError(400, "no body")
        if body.too_large:
            raise HttpError(413, f"an item is at most {MAX_BODY} bytes")
        item = parse_item(body.getvalue())
        chosen = name or worklist.new_item_name()
        try:
            created = await self.context.run(worklist.save_item, self.directory.path, chosen,
                                             item)
        except ValueError as e:
            raise HttpError(400, str(e)[:300]) from None
        self.log.info("Worklist item {name} {what} ({user}, web)", name=chosen,
                      what="added" if created else "replaced",
                      user=getattr(principal, "name", "anonymous"))
        location = f"{PATH}/{chosen}"
        send_json(request, 201 if created else 200, {"name": chosen, "href": location},
                  headers={"location": location})

    async def remove(self, request: server.Request, name: str) -> None:
        """``DELETE /worklist/{name}``."""
        principal = self.authorize(request, "delete")
        if not await self.context.run(worklist.remove_item, self.directory.path, name):
            raise HttpError(404, f"no worklist item {name}")
        self.log.info("Worklist item {name} removed ({user}, web)", name=name,
                      user=getattr(principal, "name", "anonymous"))
        if not (request.finished or request._disconnected):
            request.setResponseCode(204)
            request.finish()

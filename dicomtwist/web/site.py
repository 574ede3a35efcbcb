"""The archive's HTTP site: the resource tree under one twisted.web Site.

``tap.py`` calls :func:`build_site` when ``--http`` (or ``http`` in the
configuration) is given; nothing listens otherwise.  The tree:

- the DICOMweb service root (``http_root``, ``/dicom-web`` by default):
  :class:`~dicomtwist.web.dicomweb.resource.DicomWebResource`;
- ``/metrics``, ``/healthz``, ``/readyz`` (:mod:`dicomtwist.web.ops`);
- ``http_static`` directories, served as they are (a viewer such as OHIF
  on the archive's own origin), with ``index.html`` for paths that name no
  file and have no extension (the viewer's own routes);
- the web page (:mod:`dicomtwist.web.ui`) at ``/`` and ``/ui/``, and its
  JSON API (:mod:`dicomtwist.web.api`) at ``/api``.  An ``http_static``
  directory mounted at ``/`` takes ``/``; the page stays at ``/ui/``;
- ``/api/mpps``: the performed procedure steps (:mod:`dicomtwist.web.mpps`),
  beside the page's API;
- with ``worklist_location``, the worklist items at ``/worklist``
  (:mod:`dicomtwist.web.worklist`).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.python.threadpool import ThreadPool
from typing import Callable

from twisted.web import server, static
from twisted.web.resource import NoResource, Resource

from dicomtwist.web import auth, ops
from dicomtwist.web.api import ApiResource
from dicomtwist.web.ui import PageRoot
from dicomtwist.web.dicomweb.resource import DicomWebContext, DicomWebResource, HttpError
from dicomtwist.web.dicomweb.service import DicomWebService
from dicomtwist.web.dicomweb.stow import body_sink_for
from dicomtwist.web.mpps import MppsResource
from dicomtwist.web.server import Limits, build_site as _site

__all__ = ["build_site", "static_mounts"]


def static_mounts(value: tuple[str, ...]) -> list[tuple[str, str]]:
    """``http_static`` entries ``/path=DIRECTORY`` as ``(path, directory)``.

    :raises ValueError: an entry is malformed or its directory is missing.
    """
    mounts = []
    for entry in value:
        path, sep, directory = entry.partition("=")
        if not sep or not path.startswith("/") or not directory:
            raise ValueError(f"{entry!r}: expected /PATH=DIRECTORY")
        if not os.path.isdir(directory):
            raise ValueError(f"{entry!r}: {directory} is not a directory")
        mounts.append((path.rstrip("/") or "/", os.path.abspath(directory)))
    return mounts


class StaticFiles(static.File):
    """A static directory for a single-page application (a viewer).

    A file that exists is served as it is; a missing path whose last
    segment has no dot (an application route such as
    ``/viewer/{StudyInstanceUID}``) gets the directory's ``index.html``;
    any other missing file is a 404.
    """

    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        self.indexNames = ["index.html"]

    def createSimilarFile(self, path: str) -> "StaticFiles":
        """Children are static files of the same kind, ``index`` kept."""
        child = super().createSimilarFile(path)
        child.spa_index = getattr(self, "spa_index", os.path.join(self.path, "index.html"))
        return child

    def getChild(self, path: bytes, request: Any) -> Resource:
        """The file, or the application's page for its own routes."""
        child = super().getChild(path, request)
        missing = not isinstance(child, static.File) or not child.exists()
        if missing and b"." not in path:
            index = getattr(self, "spa_index", os.path.join(self.path, "index.html"))
            if os.path.isfile(index):
                page = static.File(index)
                page.isLeaf = True
                return page
        return child


class _Tree(Resource):
    """A branch of the URL tree (404 for anything it does not hold)."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return NoResource()

    def render(self, request: Any) -> bytes:
        return NoResource().render(request)


def _place(root: Resource, path: str, leaf: Resource) -> Resource:
    """Put ``leaf`` at ``path`` under ``root``, making branches as needed.
    ``/`` replaces the root itself (its other children are kept)."""
    segments = [s for s in path.split("/") if s]
    if not segments:
        for name, child in root.children.items():
            leaf.putChild(name, child)
        return leaf
    node = root
    for segment in segments[:-1]:
        name = segment.encode("utf-8")
        child = node.children.get(name)
        if child is None:
            child = _Tree()
            node.putChild(name, child)
        elif child.isLeaf:
            child = _Shared(child)
            node.putChild(name, child)
        node = child
    node.putChild(segments[-1].encode("utf-8"), leaf)
    return root


class _Shared(Resource):
    """A leaf resource with other resources placed below it: a request for
    one of them goes there, any other to the leaf, its path as it came."""

    def __init__(self, leaf: Resource) -> None:
        super().__init__()
        self.leaf = leaf

    def getChild(self, path: bytes, request: Any) -> Resource:
        request.postpath.insert(0, path)
        request.prepath.pop()
        return self.leaf

    def render(self, request: Any) -> Any:
        return self.leaf.render(request)

    def __getattr__(self, name: str) -> Any:
        # Anything else is the leaf's: the branch stands in for it.
        leaf = self.__dict__.get("leaf")
        if leaf is None:
            raise AttributeError(name)
        return getattr(leaf, name)


def build_site(settings: Any, reactor: Any, pool: ThreadPool, renderers: ThreadPool,
               index: Any, store: Any, metrics: Any = None,
               associations: Callable[[], int] | None = None,
               node: str = "") -> server.Site:
    """The Site of the archive's HTTP endpoint.

    :param settings: the archive configuration (``http_*`` keys).
    :param renderers: the pool for pixel codecs (rendering, transcoding).
    :param metrics: the archive's :class:`~dicomtwist.metrics.ArchiveMetrics`
        for ``/metrics`` (None: not served); ``/healthz`` and ``/readyz``
        are always served (:mod:`dicomtwist.web.ops`).
    :param associations: the number of active associations (the web
        page's status panel).
    :param node: this archive node's name (``tap.node_name``): with the
        process id, the owner of the web jobs this process runs.
    :raises ValueError: the users or tokens file is malformed.
    """
    credentials = auth.load(settings.http_users, settings.http_tokens)
    limits = Limits(max_body=settings.http_max_body * 1024 * 1024,
                    max_header=settings.http_max_header,
                    max_parts=settings.http_max_parts,
                    idle_timeout=settings.http_idle_timeout)
    context = DicomWebContext(
        reactor=reactor, pool=pool, render_pool=renderers, index=index, store=store,
        directory=os.path.realpath(settings.instance_location),
        root="/" + settings.http_root.strip("/"), limits=limits, credentials=credentials,
        cors_origins=frozenset(settings.http_cors_origins))
    dicomweb = DicomWebResource(context, DicomWebService(context))
    from dicomtwist.services.qr import QueryRetrieve

    sender = QueryRetrieve(reactor, pool, index, settings, codec_pool=renderers)
    root: Resource = PageRoot()
    for path, directory in static_mounts(settings.http_static):
        root = _place(root, path, StaticFiles(directory))
    root = _place(root, "/api", ApiResource(context, dicomweb.authorize, settings, sender,
                                            associations, node))
    root = _place(root, context.root, dicomweb)
    root = _place(root, "/api/mpps", MppsResource(
        reactor, pool, context.directory, lambda request: dicomweb.authorize(request, "query")))
    floor = max(getattr(settings, "min_free_disk", 0), settings.min_free_space)
    checks = ops.ReadinessChecks(reactor, pool, index, context.directory, floor * 1024 * 1024)
    root = ops.mount(root, metrics, checks, credentials)

    def authorize(header: str | None) -> HttpError | None:
        try:
            dicomweb.authorize(_HeaderOnly(header), "store")
        except HttpError as e:
            return e
        return None

    chooser = body_sink_for(context, authorize)
    if getattr(settings, "worklist_location", None) is not None:
        from dicomtwist.web import worklist

        root = _place(root, worklist.PATH, worklist.WorklistResource(
            context, settings.worklist_location, dicomweb.authorize))
        chooser = worklist.chain(worklist.body_sink, chooser)
    site = _site(root, limits, reactor, body_sink=chooser)
    # The metrics' route of a request no resource named, by its first path
    # segment (bounded: these, else "other").
    site.routes = {b"": "ui", b"ui": "ui", b"favicon.ico": "ui", b"api": "api",
                   b"worklist": "worklist",
                   **{path.strip("/").split("/")[0].encode("utf-8"): "static"
                      for path, _ in static_mounts(settings.http_static) if path != "/"}}
    return site


class _HeaderOnly:
    """What :meth:`DicomWebResource.authorize` reads of a request, before
    the request exists (its body is being chosen a home)."""

    def __init__(self, authorization: str | None) -> None:
        self._authorization = authorization

    def getHeader(self, name: str) -> str | None:
        return self._authorization if name.lower() == "authorization" else None

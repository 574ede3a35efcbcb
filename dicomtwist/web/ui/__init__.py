"""The archive's web page: static files served as they are.

``index.html``, the JavaScript modules (no build step), the style sheet and
the icon live in this directory and ship as package data.  The page talks
only to its own server: DICOMweb (QIDO-RS, WADO-RS rendered and thumbnail,
STOW-RS) and the small JSON API of :mod:`dicomtwist.web.api`.

:class:`PageRoot` is the root of the HTTP site: the page at ``/`` and its
files under ``/ui/`` (the page is also at ``/ui/``, where it stays when an
``http_static`` directory takes ``/``).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web import static
from twisted.web.resource import NoResource, Resource

__all__ = ["DIRECTORY", "PageRoot", "UiFiles"]

#: Where the page's files are.
DIRECTORY = os.path.dirname(os.path.abspath(__file__))


class UiFiles(static.File):
    """The page's files: no directory listings, no Python source, and
    JavaScript modules with a JavaScript media type (browsers refuse a
    module script of any other type)."""

    contentTypes = {**static.File.contentTypes, ".js": "text/javascript",
                    ".mjs": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                    ".html": "text/html; charset=utf-8"}

    def __init__(self, path: str = DIRECTORY, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        self.indexNames = ["index.html"]

    def directoryListing(self) -> Resource:
        """None: a directory without index.html is a 404."""
        return NoResource()

    def getChild(self, path: bytes, request: Any) -> Resource:
        """A file of the page (never ``.py`` or ``__pycache__``)."""
        if path.endswith((b".py", b".pyc")) or path.startswith(b"__"):
            return NoResource()
        return super().getChild(path, request)


class PageRoot(Resource):
    """``/``: the page; ``/ui/``: its files; ``/favicon.ico``: its icon;
    anything else not put here by the site (DICOMweb, the API) is a 404."""

    def __init__(self) -> None:
        super().__init__()
        self.putChild(b"ui", UiFiles())

    def getChild(self, path: bytes, request: Any) -> Resource:
        """The page for ``/``, the icon, or a 404."""
        if path == b"":
            page = UiFiles(os.path.join(DIRECTORY, "index.html"))
            page.isLeaf = True
            return page
        if path == b"favicon.ico":
            icon = UiFiles(os.path.join(DIRECTORY, "favicon.svg"))
            icon.isLeaf = True
            return icon
        return NoResource()

    def render(self, request: Any) -> bytes:
        """``/`` without the slash cannot happen (HTTP paths start with
        one); anything else rendered here is a 404."""
        return NoResource().render(request)

"""Drive the OHIF viewer in headless Chromium for end-to-end tests.

Two pieces:

- `serve_viewer`: a twisted.web site on the test's reactor that serves
  OHIF's prebuilt ``dist/`` (fetched by ``scripts/fetch-ohif``) at ``/``
  and passes ``/dicom-web/...`` through to a DICOMweb server (Orthanc's, or
  ``twistd dicomqr --http``), so the viewer and the archive share one
  origin.  Every passed-through request is recorded (method, path and
  query, Accept header, answer's status and Content-Type): that list is
  what a DICOMweb server must answer for OHIF.
- `start_browser`: Chromium headless through chromedriver, spoken to with a
  minimal W3C WebDriver client over treq (no Selenium, no threads), with the
  browser console captured (``goog:loggingPrefs``).  `Browser.study_list`,
  `Browser.open_study` and `Browser.console_errors` are what the OHIF tests
  use; `Browser.find`, `click`, `send_keys`, `press`, `text`, `execute`,
  `wait_for`, `resources` and `screenshot` drive any page (the archive's
  own web page in ``tests.test_webui_e2e``).

OHIF 4.12.51's prebuilt ``index.html`` loads ``/app-config.js`` and
``/index.umd.js`` by absolute paths and ``app-config.js`` sets
``routerBasename: '/'``; `serve_viewer` serves it at the root, or under a
``prefix`` by rewriting those three paths as it serves them; the bundle
itself needs no change (tried at ``/ohif`` and ``/a/b``: study list,
viewer and thumbnail as at the root).
"""

from __future__ import annotations

import base64
import json
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest
from twisted.web import resource, server, static
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.proxy import ReverseProxyResource

from .helpers import free_port
from .peers import LOCALHOST, PeerProcess, peer_env, wait_for_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Where ``scripts/fetch-ohif`` puts the viewer unless ``OHIF_DIST`` says.
SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OHIF_DIST = os.path.join(SOURCE_TREE, ".cache", "ohif", "dist")
#: Chromium's switches: headless, and no traffic of its own to anywhere.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1024",
    # Any host but 127.0.0.1 fails to resolve: the page must work offline,
    # and a stray request to another origin shows as a console error.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def ohif_dist() -> str:
    """The OHIF ``dist/`` directory: ``$OHIF_DIST`` or ``.cache/ohif/dist``.

    :raises SkipTest: it was not fetched (``scripts/test`` runs
        ``scripts/fetch-ohif``, so CI counts this as a failure).
    """
    dist = os.environ.get("OHIF_DIST") or DEFAULT_OHIF_DIST
    if not os.path.isfile(os.path.join(dist, "index.umd.js")):
        raise SkipTest(f"OHIF not fetched into {dist}: run scripts/fetch-ohif")
    return dist


def require_chromium() -> None:
    """:raises SkipTest: Chromium or chromedriver is not installed."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise SkipTest(f"{path} missing: apt-get install chromium chromium-driver")


# -- the same-origin site ---------------------------------------------------

@dataclass(frozen=True)
class ProxiedRequest:
    """One request the viewer made of the DICOMweb server, and the status
    and Content-Type of the answer."""

    method: str
    uri: str
    accept: str | None
    code: int | None
    content_type: str | None


class _DicomWebPassThrough(resource.Resource):
    """``/dicom-web/...`` forwarded to ``host:port``, recorded.

    :param commas_in_query: send ``%2C`` in the query string as ``,``.
        OHIF asks ``includefield=00081030%2C00080060``; Orthanc 1.10's
        DICOMweb plugin 1.7 does not decode it and leaves StudyDescription
        out of its answer, so the Orthanc harness turns this on.  Our
        server must accept both spellings of the comma and is given the
        request unchanged.
    """

    isLeaf = True

    def __init__(self, reactor, host: str, port: int, log: list[ProxiedRequest],
                 commas_in_query: bool = False) -> None:
        super().__init__()
        self._reactor = reactor
        self._host = host
        self._port = port
        self._log = log
        self._commas_in_query = commas_in_query

    def render(self, request: server.Request):
        """Record the request, then let `ReverseProxyResource` forward it."""
        accept = request.getHeader(b"accept")
        method, uri = request.method.decode(), request.uri.decode()

        def finished(_):
            answered = request.responseHeaders.getRawHeaders(b"content-type", [None])[0]
            self._log.append(ProxiedRequest(method, uri, accept and accept.decode(),
                                            request.code, answered and answered.decode()))

        request.notifyFinish().addBoth(finished)
        if self._commas_in_query and b"?" in request.uri:
            path, query = request.uri.split(b"?", 1)
            request.uri = path + b"?" + query.replace(b"%2C", b",").replace(b"%2c", b",")
        # request.path is still quoted as it came; the query is added back.
        proxy = ReverseProxyResource(self._host, self._port, request.path, self._reactor)
        return proxy.render(request)


class _SinglePageApp(resource.Resource):
    """OHIF's ``dist/`` files; ``index.html`` for every other path without a
    dot in its last segment (the viewer's own routes, such as
    ``/viewer/{StudyInstanceUID}``); 404 for other missing files.

    :param prefix: the path OHIF is served under (``""`` for the root, or
        e.g. ``"/ohif"``): ``index.html``'s script paths and
        ``routerBasename`` in ``app-config.js`` are rewritten to it.
    """

    def __init__(self, dist: str, prefix: str, assets: list[str]) -> None:
        super().__init__()
        self._dist = dist
        self._assets = assets
        with open(os.path.join(dist, "index.html"), "rb") as f:
            html = f.read()
        with open(os.path.join(dist, "app-config.js"), "rb") as f:
            config = f.read()
        if prefix:
            html = html.replace(b'src="/', f'src="{prefix}/'.encode())
            config = config.replace(b"routerBasename: '/'",
                                    f"routerBasename: '{prefix}'".encode())
        self._index = static.Data(html, "text/html; charset=utf-8")
        self._index.isLeaf = True
        self._config = static.Data(config, "application/javascript")

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        """A file of ``dist/`` by that name, else the single page."""
        self._assets.append(request.uri.decode())
        name = path.decode("utf-8", "replace")
        if name == "app-config.js":
            return self._config
        candidate = os.path.join(self._dist, name)
        if name and "/" not in name and os.path.isfile(candidate):
            return static.File(candidate)
        if "." in name:
            return resource.NoResource()
        return self._index

    def render_GET(self, request: server.Request) -> bytes:
        """The prefix itself is the single page (OHIF's study list)."""
        self._assets.append(request.uri.decode())
        return self._index.render(request)


@dataclass
class ViewerSite:
    """A listening same-origin site for OHIF.

    :ivar url: where OHIF is, ``http://127.0.0.1:PORT`` plus the prefix.
    :ivar requests: the DICOMweb requests passed through so far.
    :ivar assets: the other paths requested (OHIF's own files and routes).
    """

    url: str
    listening: Any
    requests: list[ProxiedRequest] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)


def serve_viewer(testcase, reactor, dicomweb_port: int, dist: str | None = None,
                 prefix: str = "", dicomweb_host: str = LOCALHOST,
                 commas_in_query: bool = False) -> ViewerSite:
    """Serve OHIF at ``prefix + "/"`` of a free 127.0.0.1 port, with
    ``/dicom-web/...`` passed through to
    ``http://dicomweb_host:dicomweb_port/dicom-web/...``.  The port is
    closed in the test's cleanup.

    :param dist: OHIF's ``dist/`` directory (default: `ohif_dist`).
    :param prefix: ``""`` (the root) or a sub-path such as ``"/ohif"``.
    :param commas_in_query: unescape ``%2C`` in DICOMweb query strings, for
        Orthanc (see `_DicomWebPassThrough`); never for our server.
    """
    requests: list[ProxiedRequest] = []
    assets: list[str] = []
    passthrough = _DicomWebPassThrough(reactor, dicomweb_host, dicomweb_port, requests,
                                       commas_in_query)
    app = _SinglePageApp(dist or ohif_dist(), prefix, assets)
    if prefix:
        root = resource.Resource()
        parent, _, last = prefix.strip("/").rpartition("/")
        node = root
        for segment in filter(None, parent.split("/")):
            child = resource.Resource()
            node.putChild(segment.encode(), child)
            node = child
        node.putChild(last.encode(), app)
    else:
        root = app
    root.putChild(b"dicom-web", passthrough)
    site = server.Site(root)
    site.noisy = False
    listening = reactor.listenTCP(0, site, interface=LOCALHOST)
    testcase.addCleanup(listening.stopListening)
    url = f"http://{LOCALHOST}:{listening.getHost().port}{prefix}"
    return ViewerSite(url, listening, requests, assets)


# -- WebDriver ----------------------------------------------------------------

#: WebDriver key codes (W3C WebDriver, "Keyboard actions").
KEYS = {"ArrowLeft": "\ue012", "ArrowUp": "\ue013", "ArrowRight": "\ue014",
        "ArrowDown": "\ue015", "PageUp": "\ue00e", "PageDown": "\ue00f", "Enter": "\ue007"}


class WebDriverError(Exception):
    """chromedriver answered with a W3C WebDriver error."""


class TimedOut(Exception):
    """A bounded wait in the browser ran out."""


#: How many pixels of the first canvas matching ``arguments[0]`` are not
#: black (OHIF's background), 0 while there is no such canvas.
_LIT_PIXELS_JS = """
const canvas = document.querySelector(arguments[0]);
if (!canvas || !canvas.width || !canvas.height) { return 0; }
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let lit = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i] > 8 || data[i + 1] > 8 || data[i + 2] > 8) { lit++; }
}
return lit;
"""


@dataclass
class Browser:
    """A WebDriver session on headless Chromium.

    :ivar base: the site the relative URLs of `get` are resolved against.
    """

    reactor: Any
    client: HTTPClient
    driver: str
    session: str
    base: str = ""

    async def _command(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.driver}/session/{self.session}{path}"
        kwargs: dict[str, Any] = {"timeout": 60}
        if method == "POST":
            kwargs["json"] = {} if body is None else body
        response = await self.client.request(method, url, **kwargs)
        payload = json.loads(await response.content())
        value = payload.get("value")
        if response.code != 200:
            raise WebDriverError(f"{method} {path}: {value}")
        return value

    def sign_in(self, user: str, password: str) -> Deferred[None]:
        """Send HTTP Basic credentials with every request from now on, as
        a browser does once its user has answered the site's login prompt
        (its authentication cache then answers every request of the
        realm); headless Chromium has no prompt to answer.  Through the
        DevTools protocol (``Network.setExtraHTTPHeaders``)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()

        async def sign_in() -> None:
            await self._command("POST", "/goog/cdp/execute",
                                {"cmd": "Network.enable", "params": {}})
            await self._command("POST", "/goog/cdp/execute", {
                "cmd": "Network.setExtraHTTPHeaders",
                "params": {"headers": {"Authorization": f"Basic {token}"}}})

        return Deferred.fromCoroutine(sign_in())

    def get(self, url: str) -> Deferred[None]:
        """Navigate to ``url`` (relative ones against `base`); fires once
        the page has loaded (not when OHIF has fetched its data)."""
        return Deferred.fromCoroutine(self._command("POST", "/url", {"url": self.base + url}))

    def execute(self, script: str, *args: Any) -> Deferred[Any]:
        """Run a function body in the page; fires with what it returns."""
        return Deferred.fromCoroutine(
            self._command("POST", "/execute/sync", {"script": script, "args": list(args)}))

    def find(self, selector: str) -> Deferred[str]:
        """The WebDriver id of the first element matching a CSS selector.

        :raises WebDriverError: (in the Deferred) there is none.
        """
        async def element() -> str:
            found = await self._command("POST", "/element",
                                        {"using": "css selector", "value": selector})
            return next(iter(found.values()))
        return Deferred.fromCoroutine(element())

    def click(self, selector: str) -> Deferred[None]:
        """Click the first element matching a CSS selector (as a user does:
        scrolled into view, and refused if something covers it)."""
        async def click() -> None:
            element = await self.find(selector)
            await self._command("POST", f"/element/{element}/click")
        return Deferred.fromCoroutine(click())

    def send_keys(self, selector: str, text: str) -> Deferred[None]:
        """Type ``text`` into the first element matching a CSS selector (for
        a file input: the path of the file to choose)."""
        async def type_() -> None:
            element = await self.find(selector)
            await self._command("POST", f"/element/{element}/value", {"text": text})
        return Deferred.fromCoroutine(type_())

    def press(self, key: str) -> Deferred[None]:
        """Press and release one key where the focus is (a WebDriver key
        code such as ``KEYS["ArrowDown"]``, or a character)."""
        actions = {"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}
        return Deferred.fromCoroutine(self._command("POST", "/actions", actions))

    def text(self, selector: str) -> Deferred[str]:
        """The rendered text of the first element matching a CSS selector."""
        async def text() -> str:
            element = await self.find(selector)
            return await self._command("GET", f"/element/{element}/text")
        return Deferred.fromCoroutine(text())

    def resources(self) -> Deferred[list[str]]:
        """The URL of every document and resource the page has loaded
        (the Resource Timing entries, the navigation's included)."""
        return self.execute(
            "return performance.getEntriesByType('navigation')"
            ".concat(performance.getEntriesByType('resource')).map(e => e.name);")

    def screenshot(self, path: str) -> Deferred[None]:
        """Save a PNG screenshot of the window (for failure diagnosis)."""
        async def save() -> None:
            png = base64.b64decode(await self._command("GET", "/screenshot"))
            with open(path, "wb") as f:
                f.write(png)
        return Deferred.fromCoroutine(save())

    def logs(self) -> Deferred[list[dict[str, Any]]]:
        """The browser console since the last call: entries with ``level``
        (``SEVERE``, ``WARNING``, ``INFO`` ...), ``message`` and ``source``."""
        return Deferred.fromCoroutine(self._command("POST", "/se/log", {"type": "browser"}))

    async def _wait_for(self, script: str, args: tuple, what: str, timeout: float,
                        interval: float) -> Any:
        attempts = max(1, int(timeout / interval))
        for _ in range(attempts):
            value = await self._command("POST", "/execute/sync",
                                        {"script": script, "args": list(args)})
            if value:
                return value
            await deferLater(self.reactor, interval, lambda: None)
        raise TimedOut(f"waited {timeout} s for {what}")

    def wait_for(self, script: str, *args: Any, what: str = "the page",
                 timeout: float = 20.0, interval: float = 0.2) -> Deferred[Any]:
        """Run ``script`` every ``interval`` seconds until it returns a true
        value (fired with it), at most ``timeout`` seconds.

        :raises TimedOut: (in the Deferred) it never did.
        """
        return Deferred.fromCoroutine(self._wait_for(script, args, what, timeout, interval))

    def study_list(self, rows: int = 1, timeout: float = 20.0) -> Deferred[list[str]]:
        """Open OHIF's study list (``/``) and fire with the text of each
        study row (patient name, patient ID, description, modalities, date),
        once at least ``rows`` rows are shown."""
        async def texts() -> list[str]:
            await self.get("/")
            return await self._wait_for(
                """const rows = Array.from(document.querySelectorAll(
                       'tbody[data-cy="study-list-results"] tr')).map(
                       r => r.innerText.replace(/\\s+/g, ' ').trim());
                   return rows.length >= arguments[0] ? rows : null;""",
                (rows,), f"{rows} study list rows", timeout, 0.2)
        return Deferred.fromCoroutine(texts())

    def open_study(self, study_uid: str, timeout: float = 30.0) -> Deferred[dict[str, int]]:
        """Open ``/viewer/{study_uid}`` and wait until the viewport canvas
        shows a non-blank image and a series thumbnail is drawn.

        :returns: how many pixels are not black: ``{"viewport": n,
            "thumbnail": n}``, both positive.
        :raises TimedOut: (in the Deferred) either never happened.
        """
        async def viewer() -> dict[str, int]:
            await self.get(f"/viewer/{study_uid}")
            found = {}
            for name, selector in (("viewport", ".viewport-element canvas"),
                                   ("thumbnail", ".ImageThumbnail canvas")):
                found[name] = await self._wait_for(
                    _LIT_PIXELS_JS, (selector,), f"a non-blank image in {selector}",
                    timeout, 0.25)
            return found
        return Deferred.fromCoroutine(viewer())

    def console_errors(self, ignore: tuple[str, ...] = ()) -> Deferred[list[str]]:
        """The SEVERE console messages since the last `logs` call, less
        those containing any of ``ignore``."""
        def severe(entries: list[dict[str, Any]]) -> list[str]:
            return [e["message"] for e in entries
                    if e.get("level") == "SEVERE"
                    and not any(s in e["message"] for s in ignore)]
        return self.logs().addCallback(severe)


def _kill_leftovers(profile: str) -> None:
    """SIGKILL any process still running with our ``--user-data-dir``.

    chromedriver ends Chromium when its session is deleted; should it not
    (a crash, a hung cleanup), the browser would outlive the test.  Only
    processes of this test's own profile are signalled, each by its pid.
    """
    marker = f"--user-data-dir={profile}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:  # gone already, or not ours to read
            pass


async def _start_browser(testcase, reactor, base: str, timeout: float) -> Browser:
    require_chromium()
    home = os.path.abspath(testcase.mktemp())
    profile = os.path.join(home, "profile")
    os.makedirs(profile)
    testcase.addCleanup(_kill_leftovers, profile)
    port = free_port()
    log_path = os.path.join(home, "chromedriver.log")
    # Chromium inherits chromedriver's stdout and stderr; files, not pipes,
    # so chromedriver's exit is seen even if a browser process lingers.
    with open(log_path, "wb") as log:
        driver = PeerProcess(reactor, "chromedriver")
        reactor.spawnProcess(driver, CHROMEDRIVER,
                             [CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                             env=peer_env(), childFDs={0: "w", 1: log.fileno(), 2: log.fileno()})
    testcase.addCleanup(driver.stop)

    def driver_log() -> str:
        with open(log_path, errors="replace") as f:
            return f.read()[-4000:]

    try:
        await wait_for_port(reactor, port, driver)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n{driver_log()}")
    pool = HTTPConnectionPool(reactor, persistent=True)
    testcase.addCleanup(pool.closeCachedConnections)
    client = HTTPClient(Agent(reactor, pool=pool))
    url = f"http://{LOCALHOST}:{port}"
    capabilities = {"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": CHROMIUM,
                               "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]},
        "goog:loggingPrefs": {"browser": "ALL"},
    }}}
    response = await client.post(url + "/session", json=capabilities, timeout=timeout)
    payload = json.loads(await response.content())
    if response.code != 200:
        raise WebDriverError(f"new session: {payload.get('value')}\n{driver_log()}")
    browser = Browser(reactor, client, url, payload["value"]["sessionId"], base)

    async def quit() -> None:
        # Deleting the session ends Chromium; chromedriver is stopped after.
        try:
            await browser._command("DELETE", "")
        except (WebDriverError, ConnectError, ResponseFailed, CancelledError, ValueError):
            pass

    testcase.addCleanup(lambda: Deferred.fromCoroutine(quit()))
    return browser


def start_browser(testcase, reactor, base: str = "", timeout: float = 30.0) -> Deferred[Browser]:
    """Start chromedriver on a free port and open a headless Chromium
    session with a fresh profile; both end in the test's cleanup.

    :param base: prefixed to the URLs given to `Browser.get` (the site's
        ``http://127.0.0.1:PORT``).
    """
    return Deferred.fromCoroutine(_start_browser(testcase, reactor, base, timeout))


__all__ = ["Browser", "KEYS", "ProxiedRequest", "TimedOut", "ViewerSite", "WebDriverError",
           "ohif_dist", "require_chromium", "serve_viewer", "start_browser"]

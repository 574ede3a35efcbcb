"""Run a throwaway Orthanc with its DICOMweb plugin as a test peer.

Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb`` packages) is both a
DICOMweb server and a DICOMweb client: its plugin can STOW a study to,
QIDO-query and WADO-retrieve from another server named in its
configuration.  Each started Orthanc gets its own directory, a generated
JSON configuration, free 127.0.0.1 ports for HTTP and DICOM and one remote
DICOMweb server called ``ours``; it is stopped (SIGTERM, then waited for)
in the test's cleanup.

Every request goes through treq on the test's reactor, so the helpers
return Deferreds and nothing blocks.  The REST calls are the Orthanc
book's: ``POST /instances`` uploads a file, and the plugin's
``/dicom-web/servers/{name}/stow``, ``/retrieve`` and ``/get`` (each a
POST with a JSON body) act as a DICOMweb client of the named server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.error import ConnectError
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from .helpers import free_port
from .peers import LOCALHOST, PeerProcess, peer_env

#: Debian's paths (``dpkg -L orthanc orthanc-dicomweb``).
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: The name of the remote DICOMweb server in every generated configuration.
OURS = "ours"


class OrthancError(Exception):
    """Orthanc answered a REST call with an unexpected HTTP status."""

    def __init__(self, method: str, path: str, code: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: HTTP {code}: {body[:500]!r}")
        self.code = code
        self.body = body


def require_orthanc() -> None:
    """:raises SkipTest: Orthanc or its DICOMweb plugin is not installed
    (``scripts/test`` installs both, so CI counts this as a failure)."""
    for path in (ORTHANC, DICOMWEB_PLUGIN):
        if not os.path.exists(path):
            raise SkipTest(f"{path} missing: apt-get install orthanc orthanc-dicomweb")


def orthanc_config(directory: str, http_port: int, dicom_port: int,
                   ours: str | None, dicom_server: bool = False) -> dict[str, Any]:
    """The configuration of one throwaway Orthanc.

    Orthanc 1.10 has no bind-address option: both its servers listen on
    every interface.  HTTP refuses other hosts (``RemoteAccessAllowed``);
    the DICOM server, which would accept stores from anywhere and which the
    DICOMweb tests do not need, is off unless ``dicom_server``.

    :param directory: storage and index live here.
    :param ours: the root URL (ending in ``/``) of the DICOMweb server the
        plugin knows as ``ours``, or None for no remote server.
    """
    return {
        "Name": f"test-{http_port}",
        "StorageDirectory": os.path.join(directory, "storage"),
        "IndexDirectory": os.path.join(directory, "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomServerEnabled": dicom_server,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpsVerifyPeers": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            # The host name WADO-RS RetrieveURLs are built with.
            "Host": f"{LOCALHOST}:{http_port}",
            "Servers": {OURS: [ours]} if ours else {},
        },
    }


@dataclass
class Orthanc:
    """A running Orthanc and a REST client for it.

    :ivar url: ``http://127.0.0.1:PORT`` (no trailing slash).
    :ivar dicomweb: its own DICOMweb root, ``url + "/dicom-web/"``.
    """

    reactor: Any
    directory: str
    http_port: int
    dicom_port: int
    process: PeerProcess
    client: HTTPClient
    url: str = field(init=False)
    dicomweb: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://{LOCALHOST}:{self.http_port}"
        self.dicomweb = self.url + "/dicom-web/"

    async def _call(self, method: str, path: str, expect: tuple[int, ...] = (200,),
                    **kwargs) -> bytes:
        response = await self.client.request(method, self.url + path, timeout=30,
                                             **kwargs)
        body = await response.content()
        if response.code not in expect:
            raise OrthancError(method, path, response.code, body)
        return body

    async def _json(self, method: str, path: str, **kwargs) -> Any:
        return json.loads(await self._call(method, path, **kwargs))

    def get_json(self, path: str) -> Deferred[Any]:
        """``GET path`` (``/studies``, ``/system`` ...) and decode the JSON."""
        return Deferred.fromCoroutine(self._json("GET", path))

    def upload(self, path: str) -> Deferred[dict[str, Any]]:
        """Store a DICOM file through ``POST /instances``.

        :returns: Orthanc's answer: ``ID``, ``ParentStudy`` (the Orthanc
            study id that `stow` takes), ``ParentSeries``, ``Status`` ...
        """
        with open(path, "rb") as f:
            data = f.read()
        return Deferred.fromCoroutine(self._json(
            "POST", "/instances", data=data,
            headers={"Content-Type": "application/dicom"}))

    def stow(self, *orthanc_ids: str, server: str = OURS) -> Deferred[dict[str, Any]]:
        """STOW-RS resources (Orthanc ids of studies, series or instances)
        to the remote DICOMweb ``server``; fires when the server answered.

        :returns: the plugin's summary of the STOW job.
        """
        return Deferred.fromCoroutine(self._json(
            "POST", f"/dicom-web/servers/{server}/stow",
            json={"Resources": list(orthanc_ids), "Synchronous": True}))

    def retrieve(self, study_uid: str, server: str = OURS) -> Deferred[dict[str, Any]]:
        """WADO-RS retrieve a study from the remote ``server`` into this
        Orthanc.

        :returns: the plugin's answer (``Instances``: the count received).
        """
        return Deferred.fromCoroutine(self._json(
            "POST", f"/dicom-web/servers/{server}/retrieve",
            json={"Resources": [{"Study": study_uid}], "Synchronous": True}))

    def qido(self, uri: str = "/studies", server: str = OURS,
             **arguments: str) -> Deferred[Any]:
        """A GET through the plugin to the remote ``server``: QIDO-RS, or any
        other request whose answer is DICOM JSON.

        The plugin takes it as ``POST /dicom-web/servers/ours/get`` with
        ``{"Uri": uri, "Arguments": arguments}`` (it answers 405 to GET).

        :param uri: relative to the server's root, e.g. ``/studies`` or
            ``/studies/{uid}/series``.
        :param arguments: query parameters sent to the remote server
            (``PatientID="123"``).
        """
        return Deferred.fromCoroutine(self._json(
            "POST", f"/dicom-web/servers/{server}/get",
            json={"Uri": uri, "Arguments": arguments}))

    def file(self, orthanc_id: str) -> Deferred[bytes]:
        """The DICOM file of an instance (``GET /instances/{id}/file``)."""
        return Deferred.fromCoroutine(self._call("GET", f"/instances/{orthanc_id}/file"))

    def study_uids(self) -> Deferred[list[str]]:
        """The StudyInstanceUIDs this Orthanc holds (its own REST API)."""
        async def uids() -> list[str]:
            studies = await self._json("GET", "/studies?expand")
            return sorted(s["MainDicomTags"]["StudyInstanceUID"] for s in studies)
        return Deferred.fromCoroutine(uids())


async def _wait_for_rest(orthanc: Orthanc, attempts: int, interval: float) -> None:
    last: object = None
    for _ in range(attempts):
        if orthanc.process.exited.called:
            raise RuntimeError(f"Orthanc exited before answering:\n{orthanc.process.output()}")
        try:
            await orthanc._json("GET", "/system")
        except (ConnectError, ResponseFailed, CancelledError, OrthancError) as e:
            # Refused until it listens; a plugin may still be loading.
            last = e
        else:
            return
        await deferLater(orthanc.reactor, interval, lambda: None)
    raise RuntimeError(f"Orthanc did not answer /system after {attempts} attempts"
                       f" ({last!r}):\n{orthanc.process.output()}")


def _stopped_in_cleanup(testcase, process: PeerProcess) -> None:
    # An Orthanc takes about two seconds to stop (its HTTP server, DICOM
    # server and jobs engine each finish a polling interval), so all the
    # Orthancs of a test get SIGTERM at once in one cleanup.
    processes = testcase.__dict__.get("_orthanc_processes")
    if processes is None:
        processes = testcase._orthanc_processes = []

        def stop_all() -> Deferred[list[int]]:
            return gatherResults([p.stop() for p in processes], consumeErrors=True)

        testcase.addCleanup(stop_all)
    processes.append(process)


async def _start(testcase, reactor, ours: str | None, dicom_server: bool, attempts: int,
                 interval: float) -> Orthanc:
    require_orthanc()
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = os.path.join(directory, "orthanc.json")
    with open(config, "w") as f:
        json.dump(orthanc_config(directory, http_port, dicom_port, ours, dicom_server), f,
                  indent=2)
    process = PeerProcess(reactor, f"Orthanc :{http_port}")
    reactor.spawnProcess(process, ORTHANC, [ORTHANC, config], env=peer_env(),
                         path=directory)
    _stopped_in_cleanup(testcase, process)
    pool = HTTPConnectionPool(reactor, persistent=True)
    # Cleanups run last-in first-out: connections close, then Orthancs stop.
    testcase.addCleanup(pool.closeCachedConnections)
    client = HTTPClient(Agent(reactor, pool=pool))
    orthanc = Orthanc(reactor, directory, http_port, dicom_port, process, client)
    await _wait_for_rest(orthanc, attempts, interval)
    return orthanc


def start_orthanc(testcase, reactor, ours: str | None = None, dicom_server: bool = False,
                  attempts: int = 300, interval: float = 0.05) -> Deferred[Orthanc]:
    """Start an Orthanc in a temporary directory of ``testcase``; fire once
    its REST API answers ``GET /system``.  It is stopped (SIGTERM, waiting
    for its exit) in the test's cleanup.

    :param ours: the root URL of the DICOMweb server the plugin calls
        ``ours`` (``http://127.0.0.1:PORT/dicom-web/``), if any.
    :param dicom_server: also run its DICOM server (on ``dicom_port``, every
        interface: see `orthanc_config`).
    :param attempts: how many times ``/system`` is polled, ``interval``
        seconds apart.
    :raises RuntimeError: (in the Deferred) Orthanc exited, or did not answer
        within ``attempts`` polls.
    """
    return Deferred.fromCoroutine(_start(testcase, reactor, ours, dicom_server, attempts,
                                         interval))


__all__ = ["ORTHANC", "DICOMWEB_PLUGIN", "OURS", "Orthanc", "OrthancError",
           "orthanc_config", "require_orthanc", "start_orthanc"]

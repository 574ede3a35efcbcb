"""Tests for the web page's JSON API (``/api``) and the page's files, in
memory through the archive's real Site (:func:`dicomtwist.web.site.build_site`),
as ``tests.test_dicomweb`` does for DICOMweb.

Sends run through a stand-in for the C-MOVE SCP (an async iterator of the
responses the real one gives), so that every state of a job is seen
deterministically; the real pipeline to a real DCMTK ``storescp`` is
``tests.test_webui_e2e``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import _producer_helpers
from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator

from dicomtwist import __version__
from dicomtwist.association import Response as DimseResponse
from dicomtwist.config import Destination
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.status import Status
from dicomtwist.web import auth
from dicomtwist.web.api import ApiResource
from dicomtwist.web.site import build_site
from dicomtwist.web.ui import DIRECTORY
from tests.test_dicomweb import CT, MR, WebTestCase
from tests.test_webserver import basic, users_file

ROOT = "http://archive.example"


def pending(completed: int, failed: int, remaining: int) -> DimseResponse:
    """A C-MOVE pending response with its counts."""
    return DimseResponse(Status.PENDING, None, {
        "number_of_completed_sub_operations": completed,
        "number_of_failed_sub_operations": failed,
        "number_of_warning_sub_operations": 0,
        "number_of_remaining_sub_operations": remaining})


def final(status: int, completed: int, failed: int) -> DimseResponse:
    """A C-MOVE final response."""
    return DimseResponse(status, None, {
        "number_of_completed_sub_operations": completed,
        "number_of_failed_sub_operations": failed,
        "number_of_warning_sub_operations": 0})


class ScriptedMove:
    """A C-MOVE SCP stand-in: each response waits for the test to release
    it (``step()``), and the requests it was given are kept."""

    def __init__(self, responses: list[DimseResponse], error: Exception | None = None) -> None:
        self.responses = responses
        self.error = error
        self.requests: list[Any] = []
        self.gates: list[Deferred] = []

    def step(self) -> None:
        """Let the next response out."""
        self.gates.pop(0).callback(None)

    def handle_move(self, request: Any) -> Any:
        """An async iterator of the scripted responses."""
        self.requests.append(request)
        return self._run(request)

    async def _run(self, request: Any) -> Any:
        if self.error is not None:
            raise self.error
        for response in self.responses:
            gate: Deferred = Deferred()
            self.gates.append(gate)
            await gate
            if request.cancelled and response.status == Status.PENDING:
                yield DimseResponse(Status.CANCEL, None, dict(response.fields))
                return
            yield response


class StaticTestCase(WebTestCase):
    """Base: static files (``twisted.web.static.File``, a pull producer that
    twisted.web drives with the global cooperator) served in memory: the
    cooperator is scheduled on the test's reactor, advanced as bytes move."""

    def setUp(self) -> None:
        super().setUp()
        self.patch(_producer_helpers, "cooperate", Cooperator(
            scheduler=lambda step: self.reactor.callLater(0, step)).cooperate)

    def flush(self, d: Any) -> None:
        """Move bytes and run the cooperator until ``d`` has a result."""
        done: list[object] = []
        d.addBoth(lambda result: done.append(True) or result)
        for _ in range(1000):
            self.agent.flush()
            self.reactor.advance(0)
            if done:
                return


class ApiTestCase(StaticTestCase):
    """Base: the Site with one destination configured and a scripted sender."""

    def configure(self) -> dict[str, Any]:
        return dict(self.settings, ae_title="ARCHIVE")

    def setUp(self) -> None:
        super().setUp()
        self.config.destinations["STORESCP"] = Destination("STORESCP", "127.0.0.1", 1)
        self.api: ApiResource = self.site.resource.children[b"api"]

    def api_request(self, method: str, path: str, **headers: Any) -> Any:
        """A request to ``/api...``."""
        return self.request(method, ROOT + path,
                            {k.replace("_", "-"): v for k, v in headers.items()})

    def script(self, *responses: DimseResponse, error: Exception | None = None) -> ScriptedMove:
        """Send through a scripted C-MOVE SCP."""
        mover = ScriptedMove(list(responses), error)
        self.api.jobs.retriever = mover
        return mover


class StatusTests(ApiTestCase):
    """``GET /api/status``."""

    def test_status(self) -> None:
        """Status gives version, AE title, DICOMweb root, counts, disk use,
        destinations and (without authentication) every permission."""
        ct = self.ingest_file(CT)
        self.ingest_file(MR)
        response = self.api_request("GET", "/api/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "application/json")
        status = response.json()
        self.assertEqual((status["version"], status["ae_title"], status["dicomweb"]),
                         (__version__, "ARCHIVE", "/dicom-web"))
        self.assertEqual(status["counts"],
                         {"patients": 2, "studies": 2, "series": 2, "instances": 2})
        self.assertEqual(status["destinations"], ["STORESCP"])
        self.assertEqual(status["permissions"], sorted(auth.PERMISSIONS))
        self.assertIsNone(status["user"])
        disk = status["disk"]
        self.assertGreater(disk["total"], 0)
        self.assertEqual(disk["total"] >= disk["used"] and disk["total"] >= disk["free"], True)
        self.assertIsNone(status["associations"])
        self.assertIsNotNone(ct)

    def test_associations_counted(self) -> None:
        """The number of active associations comes from the daemon's factory."""
        site = build_site(self.config, self.reactor, self.pool, self.pool, self.index,
                          self.store, associations=lambda: 3)
        self.site = site
        from treq.testing import RequestTraversalAgent
        from treq.client import HTTPClient

        from tests.test_dicomweb import body_producer

        self.agent = RequestTraversalAgent(site.resource)
        self.agent._serverFactory = site
        self.client = HTTPClient(self.agent, data_to_body_producer=body_producer)
        self.assertEqual(self.api_request("GET", "/api/status").json()["associations"], 3)

    def test_unknown_paths(self) -> None:
        """Paths the API does not have are 404; a wrong method is 405 with Allow."""
        for path in ("/api", "/api/nothing", "/api/studies/not..a..uid",
                     "/api/studies/1.2/series/1.3", "/api/jobs/1/2"):
            self.assertEqual(self.api_request("GET", path).code, 404, path)
        response = self.api_request("POST", "/api/status")
        self.assertEqual((response.code, response.header("allow")), (405, "GET"))
        response = self.api_request("GET", "/api/studies/1.2/send")
        self.assertEqual((response.code, response.header("allow")), (405, "POST"))


class SendTests(ApiTestCase):
    """Sending a study or series to a destination, with progress."""

    def test_send_study_polled(self) -> None:
        """POST .../send starts a job (202, Location); GET /api/jobs/{id}
        follows it to its end; the C-MOVE identifier names the study."""
        mover = self.script(pending(1, 0, 1), pending(2, 0, 0), final(Status.SUCCESS, 2, 0))
        response = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP")
        self.assertEqual(response.code, 202)
        job = response.json()
        self.assertEqual(response.header("location"), f"/api/jobs/{job['id']}")
        self.assertEqual((job["state"], job["destination"], job["study"], job["series"]),
                         ("running", "STORESCP", "1.2.3", None))
        (request,) = mover.requests
        identifier = request.dataset()
        self.assertEqual((identifier.QueryRetrieveLevel, identifier.StudyInstanceUID),
                         ("STUDY", "1.2.3"))
        self.assertEqual(request.message.move_destination, "STORESCP")
        self.assertIsNone(request.association)
        mover.step()
        job = self.api_request("GET", f"/api/jobs/{job['id']}").json()
        self.assertEqual((job["state"], job["total"], job["completed"], job["remaining"]),
                         ("running", 2, 1, 1))
        mover.step()
        mover.step()
        job = self.api_request("GET", f"/api/jobs/{job['id']}").json()
        self.assertEqual((job["state"], job["total"], job["completed"], job["failed"],
                          job["remaining"], job["status"]), ("done", 2, 2, 0, 0, "0000"))
        self.assertEqual([j["id"] for j in self.api_request("GET", "/api/jobs").json()],
                         [job["id"]])

    def test_send_series_events(self) -> None:
        """With Accept: text/event-stream, the POST's answer is the job's
        progress as server-sent events, ending with one ``done`` event."""
        mover = self.script(pending(1, 0, 1), pending(1, 1, 0),
                            final(Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES, 1, 1))
        d = self.client.request(
            "POST", ROOT + "/api/studies/1.2.3/series/1.2.3.4/send?destination=STORESCP",
            headers={"Accept": ["text/event-stream"]})
        self.agent.flush()
        for _ in range(3):
            mover.step()
            self.agent.flush()
        self.flush(d)
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        body = self.successResultOf(response.content()).decode()
        events = [(block.split("\n")[0], json.loads(block.split("\n")[1][len("data: "):]))
                  for block in body.strip().split("\n\n")]
        self.assertEqual([(e, j["state"], j["completed"], j["failed"]) for e, j in events],
                         [("event: progress", "running", 0, 0),
                          ("event: progress", "running", 1, 0),
                          ("event: progress", "running", 1, 1),
                          ("event: done", "failed", 1, 1)])
        self.assertEqual(events[-1][1]["status"], "B000")
        identifier = mover.requests[0].dataset()
        self.assertEqual((identifier.QueryRetrieveLevel, identifier.SeriesInstanceUID),
                         ("SERIES", "1.2.3.4"))

    def test_cancel(self) -> None:
        """DELETE /api/jobs/{id} cancels between sub-operations."""
        mover = self.script(pending(1, 0, 2), pending(2, 0, 1), final(Status.SUCCESS, 3, 0))
        job = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP").json()
        mover.step()
        response = self.api_request("DELETE", f"/api/jobs/{job['id']}")
        self.assertEqual(response.code, 202)
        mover.step()
        job = self.api_request("GET", f"/api/jobs/{job['id']}").json()
        self.assertEqual((job["state"], job["completed"], job["status"]),
                         ("cancelled", 2, "FE00"))

    def test_send_through_the_move_pipeline(self) -> None:
        """A send runs the C-MOVE SCP's own retrieve: its RetrieveStarted
        event names the study, the destination, and HTTP as the way in."""
        from dicomtwist import events

        seen: list[Any] = []
        self.addCleanup(events.bus.subscribe(seen.append))
        ct = self.ingest_file(CT)
        response = self.api_request(
            "POST", f"/api/studies/{ct.StudyInstanceUID}/send?destination=STORESCP")
        self.assertEqual(response.code, 202)
        (started,) = [e for e in seen if isinstance(e, events.RetrieveStarted)]
        self.assertEqual((started.via, started.service, started.destination_ae,
                          started.destination_host, started.study_instance_uids,
                          started.count, started.association_id),
                         ("http", "move", "STORESCP", "127.0.0.1",
                          (str(ct.StudyInstanceUID),), 1, None))
        # The sub-operation association is being opened to the destination.
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("127.0.0.1", 1))

    def test_unknown_destination(self) -> None:
        """A destination that is not configured, or none, is 400 and no job."""
        mover = self.script()
        response = self.api_request("POST", "/api/studies/1.2.3/send?destination=NOWHERE")
        self.assertEqual(response.code, 400)
        self.assertIn("unknown destination 'NOWHERE' (configured: STORESCP)",
                      response.json()["error"])
        self.assertEqual(self.api_request("POST", "/api/studies/1.2.3/send").code, 400)
        self.assertEqual(mover.requests, [])
        self.assertEqual(self.api_request("GET", "/api/jobs").json(), [])

    def test_retrieve_fails(self) -> None:
        """A send whose retrieve fails (the index refused it) ends failed
        with the reason."""
        self.script(error=DIMSEServiceError(Status.UNABLE_TO_PROCESS, "no such study"))
        job = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP").json()
        job = self.api_request("GET", f"/api/jobs/{job['id']}").json()
        self.assertEqual((job["state"], job["error"]), ("failed", "no such study"))

    def test_unknown_job(self) -> None:
        """A job this process does not know is 404."""
        self.assertEqual(self.api_request("GET", "/api/jobs/99").code, 404)

    def test_old_jobs_forgotten(self) -> None:
        """Only the latest finished jobs are kept."""
        self.api.jobs.kept = 2
        for _ in range(4):
            self.script(final(Status.SUCCESS, 0, 0))
            self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP")
            self.api.jobs.retriever.step()
        self.assertEqual([j["id"] for j in self.api_request("GET", "/api/jobs").json()],
                         ["4", "3"])


class DeleteTests(ApiTestCase):
    """Deleting a study from the page."""

    def test_delete_study(self) -> None:
        """DELETE /api/studies/{uid} removes the rows and then the files; the
        other study stays; QIDO no longer finds it."""
        ct = self.ingest_file(CT)
        mr = self.ingest_file(MR)
        ct_file = self.stored_path(ct.SOPInstanceUID)
        self.assertTrue(os.path.exists(ct_file))
        response = self.api_request("DELETE", f"/api/studies/{ct.StudyInstanceUID}")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), {"study": ct.StudyInstanceUID, "instances": 1,
                                           "files": 1})
        self.assertFalse(os.path.exists(ct_file))
        self.assertTrue(os.path.exists(self.stored_path(mr.SOPInstanceUID)))
        self.assertEqual(self.index.count("STUDY"), 1)
        response = self.get(f"/studies?StudyInstanceUID={ct.StudyInstanceUID}")
        self.assertEqual((response.code, response.json()), (200, []))
        self.assertEqual(self.get(f"/studies/{ct.StudyInstanceUID}").code, 404)

    def test_delete_is_published(self) -> None:
        """A deletion publishes StudyDeleted with the patient and every instance
        removed (the audit trail's DICOM Study Deleted message)."""
        from dicomtwist import events

        ct = self.ingest_file(CT)
        seen: list = []
        self.addCleanup(events.bus.subscribe(seen.append))
        response = self.api_request("DELETE", f"/api/studies/{ct.StudyInstanceUID}")
        self.assertEqual(response.code, 200)
        (deleted,) = [e for e in seen if isinstance(e, events.StudyDeleted)]
        self.assertEqual((deleted.via, deleted.study_instance_uid, deleted.patient_id,
                          deleted.patient_name, deleted.instances),
                         ("http", ct.StudyInstanceUID, ct.PatientID, str(ct.PatientName),
                          ((ct.SOPClassUID, ct.SOPInstanceUID),)))

    def test_delete_unknown_study(self) -> None:
        """Deleting a study that is not there is 404."""
        self.assertEqual(self.api_request("DELETE", "/api/studies/1.2.3").code, 404)

    def test_file_already_gone(self) -> None:
        """A file that vanished does not stop the rows from going."""
        ct = self.ingest_file(CT)
        os.unlink(self.stored_path(ct.SOPInstanceUID))
        response = self.api_request("DELETE", f"/api/studies/{ct.StudyInstanceUID}")
        self.assertEqual((response.code, response.json()["instances"],
                          response.json()["files"]), (200, 1, 0))
        self.assertEqual(self.index.count("IMAGE"), 0)


class PermissionTests(ApiTestCase):
    """The API obeys the HTTP users and their permissions."""

    def configure(self) -> dict[str, Any]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        fast = dict(iterations=1000)
        users = users_file(directory, [
            f"admin:{auth.hash_password('a', **fast)}:all",
            f"reader:{auth.hash_password('r', **fast)}:query,retrieve",
            f"sender:{auth.hash_password('s', **fast)}:query,send",
        ])
        return dict(http_users=users, ae_title="ARCHIVE")

    def test_status_needs_credentials(self) -> None:
        """Status without credentials is 401; it names the user and permissions."""
        self.assertEqual(self.api_request("GET", "/api/status").code, 401)
        status = self.api_request("GET", "/api/status",
                                  authorization=basic("reader", "r")).json()
        self.assertEqual((status["user"], status["permissions"]),
                         ("reader", ["query", "retrieve"]))

    def test_send_and_delete_need_their_permissions(self) -> None:
        """send needs ``send``, delete needs ``delete`` (403 otherwise)."""
        ct = self.ingest_file(CT)
        mover = self.script(final(Status.SUCCESS, 1, 0))
        send = f"/api/studies/{ct.StudyInstanceUID}/send?destination=STORESCP"
        delete = f"/api/studies/{ct.StudyInstanceUID}"
        reader = basic("reader", "r")
        self.assertEqual(self.api_request("POST", send, authorization=reader).code, 403)
        self.assertEqual(self.api_request("DELETE", delete, authorization=reader).code, 403)
        sender = basic("sender", "s")
        response = self.api_request("POST", send, authorization=sender)
        self.assertEqual((response.code, response.json()["user"]), (202, "sender"))
        mover.step()
        self.assertEqual(self.api_request("DELETE", delete, authorization=sender).code, 403)
        self.assertEqual(self.index.count("IMAGE"), 1)
        response = self.api_request("DELETE", delete, authorization=basic("admin", "a"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.index.count("IMAGE"), 0)

    def test_page_is_public(self) -> None:
        """The page's files carry no data and need no credentials."""
        self.assertEqual(self.request("GET", ROOT + "/").code, 200)


class PageTests(StaticTestCase):
    """The page's files at ``/`` and ``/ui/``."""

    def page(self, path: str) -> Any:
        """GET a path of the site."""
        return self.request("GET", ROOT + path)

    def test_page_at_root(self) -> None:
        """``/`` is the page; its modules, style sheet and icon are under
        ``/ui/`` with the media types browsers require."""
        response = self.page("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "text/html; charset=utf-8")
        with open(os.path.join(DIRECTORY, "index.html"), "rb") as fp:
            self.assertEqual(response.body, fp.read())
        for path, media_type in (("/ui/app.js", "text/javascript"),
                                 ("/ui/api.js", "text/javascript"),
                                 ("/ui/viewer.js", "text/javascript"),
                                 ("/ui/style.css", "text/css"),
                                 ("/ui/favicon.svg", "image/svg+xml"),
                                 ("/favicon.ico", "image/svg+xml"),
                                 ("/ui/", "text/html; charset=utf-8")):
            response = self.page(path)
            self.assertEqual((response.code, response.header("content-type")),
                             (200, media_type), path)

    def test_files_ship(self) -> None:
        """setup.cfg's package data takes every file of the page, so that
        ``pip install .`` installs them."""
        import configparser
        import fnmatch

        config = configparser.ConfigParser()
        config.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "setup.cfg"))
        patterns = [p.strip() for p in
                    config["options.package_data"]["dicomtwist.web.ui"].split(",")]
        names = [n for n in os.listdir(DIRECTORY)
                 if not n.endswith((".py", ".pyc")) and n != "__pycache__"]
        self.assertEqual(sorted(names), ["api.js", "app.js", "favicon.svg", "index.html",
                                         "style.css", "viewer.js"])
        for name in names:
            self.assertTrue(any(fnmatch.fnmatch(name, p) for p in patterns), name)

    def test_no_listing_no_source(self) -> None:
        """No directory listing, no Python source, nothing else at the root."""
        for path in ("/ui/__init__.py", "/ui/__pycache__/", "/ui/missing.js", "/other",
                     "/ui/../api.py"):
            self.assertEqual(self.page(path).code, 404, path)

    def test_page_refers_only_to_its_server(self) -> None:
        """Every URL in the page's files is a path on its own server."""
        import re

        for name in os.listdir(DIRECTORY):
            if name.endswith((".html", ".js", ".css")):
                with open(os.path.join(DIRECTORY, name), encoding="utf-8") as fp:
                    text = fp.read()
                self.assertEqual(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), [],
                                 name)


class StaticAtRootTests(StaticTestCase):
    """An ``http_static`` directory mounted at ``/`` takes ``/``; the page
    stays at ``/ui/``, the API at ``/api``."""

    def configure(self) -> dict[str, Any]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "index.html"), "w") as fp:
            fp.write("<p>viewer</p>")
        return dict(self.settings, http_static=(f"/={directory}",))

    def test_static_takes_root(self) -> None:
        """``/`` and the viewer's routes are the static directory's page;
        ``/ui/``, ``/api/status`` and DICOMweb still answer."""
        self.assertEqual(self.request("GET", ROOT + "/").body, b"<p>viewer</p>")
        self.assertEqual(self.request("GET", ROOT + "/viewer/1.2.3").body, b"<p>viewer</p>")
        self.assertIn(b"/ui/app.js", self.request("GET", ROOT + "/ui/").body)
        self.assertEqual(self.request("GET", ROOT + "/api/status").code, 200)
        self.assertEqual(self.get("/studies").code in (200, 204), True)

"""Tests for dicomtwist.storage.index.jobs (the web page's jobs in the
index, on both backends) and for the jobs of dicomtwist.web.api as two
processes sharing one index see them."""

from __future__ import annotations

import json
import os
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.status import Status
from dicomtwist.storage.index import SCHEMA_VERSION, jobs
from dicomtwist.web.api import JOB_POLL
from dicomtwist.web.site import build_site
from tests.backends import both
from tests.test_dicomweb import body_producer
from tests.test_index import instance, snapshot
from tests.test_webapi import ROOT, ApiTestCase, final, pending


class JobTableTests:
    """The ``web_job`` table: the same answers on sqlite and PostgreSQL."""

    def test_create_update_get(self):
        """A job is created running; its progress is written; the times
        are seconds (kept to the millisecond)."""
        index = self.make_index()
        pk = jobs.create(index, "node:1", "STORESCP", "1.2", None, "alice", "10.0.0.1",
                         1700000000.25)
        row = jobs.get(index, pk)
        self.assertEqual((row["state"], row["destination"], row["study"], row["series"],
                          row["user_name"], row["peer_host"], row["started"],
                          row["completed"], row["cancel"]),
                         ("running", "STORESCP", "1.2", None, "alice", "10.0.0.1",
                          1700000000.25, 0, 0))
        progress = dict(state="done", total=3, remaining=0, completed=2, failed=1,
                        warning=0, status=0xB000, error=None, finished=1700000001.5)
        self.assertFalse(jobs.update(index, pk, progress))
        row = jobs.get(index, pk)
        self.assertEqual({name: row[name] for name in jobs.PROGRESS}, progress)
        self.assertIsNone(jobs.get(index, pk + 1))

    def test_cancel_requested_then_seen(self):
        """A cancel asked for is read by the running process's next write,
        which records it seen; a finished job is not flagged."""
        index = self.make_index()
        pk = jobs.create(index, "node:1", "D", "1.2", None, None, "", 1.0)
        progress = dict(state="running", total=2, remaining=2, completed=0, failed=0,
                        warning=0, status=None, error=None, finished=None)
        self.assertEqual(jobs.request_cancel(index, pk)["cancel"], jobs.CANCEL_REQUESTED)
        self.assertTrue(jobs.update(index, pk, progress))
        self.assertEqual(jobs.get(index, pk)["cancel"], jobs.CANCEL_SEEN)
        self.assertTrue(jobs.update(index, pk, progress))
        other = jobs.create(index, "node:1", "D", "1.3", None, None, "", 1.0)
        jobs.update(index, other, dict(progress, state="done"))
        self.assertEqual(jobs.request_cancel(index, other)["cancel"], 0)
        self.assertIsNone(jobs.request_cancel(index, 9999))

    def test_recent_and_forget(self):
        """Running jobs are always listed, newest first, with the latest
        finished; older finished ones are forgotten."""
        index = self.make_index()
        ids = [jobs.create(index, "node:1", "D", f"1.{n}", None, None, "", 1.0)
               for n in range(5)]
        done = dict(state="done", total=0, remaining=0, completed=0, failed=0, warning=0,
                    status=0, error=None, finished=2.0)
        for pk in ids[1:]:
            jobs.update(index, pk, done)
        self.assertEqual([r["pk"] for r in jobs.recent(index, 2)], [ids[4], ids[3], ids[0]])
        jobs.forget(index, 2)
        self.assertEqual([r["pk"] for r in jobs.recent(index, 100)], [ids[4], ids[3], ids[0]])

    def test_abandon(self):
        """The running jobs of a node's processes that are gone are marked
        failed; other nodes', live processes' and finished jobs stay."""
        index = self.make_index()
        mine_dead = jobs.create(index, "host-A-tcp:104:7001", "D", "1.1", None, None, "", 1.0)
        mine_alive = jobs.create(index, "host-A-tcp:104:7002", "D", "1.2", None, None, "", 1.0)
        other_node = jobs.create(index, "host-B-tcp:104:7001", "D", "1.3", None, None, "", 1.0)
        finished = jobs.create(index, "host-A-tcp:104:7001", "D", "1.4", None, None, "", 1.0)
        jobs.update(index, finished, dict(state="done", total=0, remaining=0, completed=0,
                                          failed=0, warning=0, status=0, error=None,
                                          finished=2.0))
        self.assertEqual(jobs.abandon(index, "host-A-tcp:104", 5.0,
                                      lambda pid, start: pid == 7002), [mine_dead])
        row = jobs.get(index, mine_dead)
        self.assertEqual((row["state"], row["error"], row["finished"]),
                         ("failed", jobs.ABANDONED, 5.0))
        self.assertEqual([jobs.get(index, pk)["state"] for pk in (mine_alive, other_node)],
                         ["running", "running"])
        self.assertEqual(jobs.get(index, finished)["state"], "done")
        # A node that starts: every running job of its earlier processes.
        self.assertEqual(jobs.abandon(index, "host-A-tcp:104", 6.0), [mine_alive])

    def test_abandon_by_process_and_start(self):
        """An owner names the process id and its start time: a job whose
        process id now belongs to a later process is abandoned; an owner of
        an earlier version (no start time) is judged by its id alone."""
        index = self.make_index()
        node = "host-A-tcp:104"
        seen = []

        def alive(pid, start):
            seen.append((pid, start))
            return (pid, start) in {(7001, 500), (7003, None)}

        running = jobs.create(index, f"{node}:7001+500", "D", "1.1", None, None, "", 1.0)
        reused = jobs.create(index, f"{node}:7001+400", "D", "1.2", None, None, "", 1.0)
        old = jobs.create(index, f"{node}:7003", "D", "1.3", None, None, "", 1.0)
        odd = jobs.create(index, f"{node}:7004+x", "D", "1.4", None, None, "", 1.0)
        self.assertEqual(jobs.abandon(index, node, 5.0, alive), [reused])
        self.assertEqual(sorted(seen), [(7001, 400), (7001, 500), (7003, None)])
        self.assertEqual([jobs.get(index, pk)["state"] for pk in (running, old, odd)],
                         ["running"] * 3)

    def test_upgrade_from_version_3(self):
        """An index of schema version 3 (no web_job table) is upgraded at
        open in one transaction, keeping its rows; jobs work after it."""
        location = self.new_location()
        index = self.open_index(location)
        index.add(instance("1.1.1.1"), "a.dcm", ExplicitVRLittleEndian, 1)
        rows = snapshot(index)
        index._sql("DROP TABLE web_job")
        index._sql("UPDATE schema_version SET version = 3")
        index.close()
        upgraded = self.open_index(location)
        self.assertEqual(upgraded.opened_version, 3)
        self.assertEqual(upgraded._sql("SELECT version FROM schema_version"),
                         [(SCHEMA_VERSION,)])
        self.assertEqual(SCHEMA_VERSION, 4)
        self.assertEqual(snapshot(upgraded), rows)
        pk = jobs.create(upgraded, "n:1", "D", "1.1", None, None, "", 1.0)
        self.assertEqual(jobs.get(upgraded, pk)["state"], "running")


both(JobTableTests)


class TwoProcessesTests(ApiTestCase):
    """Two archive processes on one index (two Sites here, as two workers
    of ``--workers`` would be): a job started through one is listed, read,
    followed and cancelled through the other."""

    def setUp(self) -> None:
        super().setUp()
        self.other = build_site(self.config, self.reactor, self.pool, self.pool, self.index,
                                self.store)
        self.other_agent = RequestTraversalAgent(self.other.resource)
        self.other_agent._serverFactory = self.other
        self.other_client = HTTPClient(self.other_agent, data_to_body_producer=body_producer)

    def on_other(self, method: str, path: str, **headers: Any) -> Any:
        """A request answered by the other process."""
        mine = self.agent, self.client
        self.agent, self.client = self.other_agent, self.other_client
        try:
            return self.api_request(method, path, **headers)
        finally:
            self.agent, self.client = mine

    def test_listed_and_cancelled_through_the_other(self) -> None:
        """The other process lists the job and reads its progress; its
        DELETE sets the flag, which the running process reads at its next
        poll and stops between sub-operations."""
        mover = self.script(pending(1, 0, 2), pending(2, 0, 1), final(Status.SUCCESS, 3, 0))
        job = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP").json()
        mover.step()
        listed = self.on_other("GET", "/api/jobs").json()
        self.assertEqual([(j["id"], j["state"], j["completed"], j["remaining"])
                          for j in listed], [(job["id"], "running", 1, 2)])
        response = self.on_other("DELETE", f"/api/jobs/{job['id']}")
        self.assertEqual(response.code, 202)
        self.assertEqual((response.json()["state"], response.json()["cancel"]),
                         ("running", "requested"))
        running = self.api.jobs.running[job["id"]]
        self.assertFalse(running.cancelled)
        self.reactor.advance(JOB_POLL)
        self.assertTrue(running.cancelled)
        self.assertEqual(self.on_other("GET", f"/api/jobs/{job['id']}").json()["cancel"],
                         "seen")
        mover.step()
        seen = self.on_other("GET", f"/api/jobs/{job['id']}").json()
        self.assertEqual((seen["state"], seen["completed"], seen["status"]),
                         ("cancelled", 2, "FE00"))
        self.assertEqual(self.api.jobs.running, {})
        self.assertEqual(self.on_other("DELETE", "/api/jobs/424242").code, 404)

    def test_progress_written_as_it_goes(self) -> None:
        """Each pending response is written at once (no poll needed)."""
        mover = self.script(pending(1, 0, 1), final(Status.SUCCESS, 2, 0))
        job = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP").json()
        self.assertEqual(self.on_other("GET", f"/api/jobs/{job['id']}").json()["completed"], 0)
        mover.step()
        self.assertEqual(self.on_other("GET", f"/api/jobs/{job['id']}").json()["completed"], 1)
        mover.step()
        seen = self.on_other("GET", f"/api/jobs/{job['id']}").json()
        self.assertEqual((seen["state"], seen["completed"], seen["remaining"]), ("done", 2, 0))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_events_through_the_other(self) -> None:
        """GET /api/jobs/{id} with text/event-stream through the other
        process follows the row: an event when it changed, ``done`` last."""
        mover = self.script(pending(1, 0, 1), pending(1, 1, 0),
                            final(Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES, 1, 1))
        job = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP").json()
        mover.step()
        d = self.other_client.request("GET", ROOT + f"/api/jobs/{job['id']}",
                                      headers={"Accept": ["text/event-stream"]})
        self.other_agent.flush()
        self.reactor.advance(JOB_POLL)  # unchanged: no event
        self.other_agent.flush()
        mover.step()
        self.reactor.advance(JOB_POLL)
        self.other_agent.flush()
        mover.step()
        self.reactor.advance(JOB_POLL)
        self.other_agent.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content()).decode()
        events = [(block.split("\n")[0], json.loads(block.split("\n")[1][len("data: "):]))
                  for block in body.strip().split("\n\n")]
        self.assertEqual([(e, j["state"], j["completed"], j["failed"]) for e, j in events],
                         [("event: progress", "running", 1, 0),
                          ("event: progress", "running", 1, 1),
                          ("event: done", "failed", 1, 1)])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_read_failure_retried(self) -> None:
        """Following a job through the other process: a read of the row
        that fails is logged and tried again at the next poll; the stream
        still ends with ``done``."""
        from dicomtwist.storage.index import jobs as table

        mover = self.script(pending(1, 0, 1), final(Status.SUCCESS, 2, 0))
        job = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP").json()
        d = self.other_client.request("GET", ROOT + f"/api/jobs/{job['id']}",
                                      headers={"Accept": ["text/event-stream"]})
        self.other_agent.flush()
        real = table.get
        calls = []

        def broken(index: Any, pk: int) -> Any:
            calls.append(pk)
            raise OSError("the index is away")
        self.patch(table, "get", broken)
        mover.step()
        mover.step()
        self.reactor.advance(JOB_POLL)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.patch(table, "get", real)
        self.reactor.advance(JOB_POLL)
        self.other_agent.flush()
        body = self.successResultOf(self.successResultOf(d).content()).decode()
        self.assertTrue(body.strip().split("\n\n")[-1].startswith("event: done"), body)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_end_written_again(self) -> None:
        """The running process records the job's end even if the index was
        away when the job ended: it tries again every JOB_POLL seconds."""
        from dicomtwist.storage.index import jobs as table

        mover = self.script(final(Status.SUCCESS, 0, 0))
        job = self.api_request("POST", "/api/studies/1.2.3/send?destination=STORESCP").json()
        real = table.update
        self.patch(table, "update", lambda *args: (_ for _ in ()).throw(OSError("away")))
        mover.step()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.on_other("GET", f"/api/jobs/{job['id']}").json()["state"],
                         "running")
        self.patch(table, "update", real)
        self.reactor.advance(JOB_POLL)
        self.assertEqual(self.on_other("GET", f"/api/jobs/{job['id']}").json()["state"], "done")
        self.assertEqual(self.api.jobs.running, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ProcessTests(SynchronousTestCase):
    """Owners and the liveness of the processes they name."""

    def test_owner_names_this_process_and_its_start(self) -> None:
        """This process's owner is ``node:pid+start``, its start time as
        ``/proc`` gives it; it is alive, and a process of the same id with
        another start time is not."""
        start = jobs.process_start(os.getpid())
        self.assertIsInstance(start, int)
        self.assertEqual(jobs.owner("node-x"), f"node-x:{os.getpid()}+{start}")
        self.assertTrue(jobs.pid_alive(os.getpid(), start))
        self.assertTrue(jobs.pid_alive(os.getpid()))
        self.assertFalse(jobs.pid_alive(os.getpid(), start + 1))

    def test_gone_process(self) -> None:
        """No process above Linux's largest pid_max: not alive, no start."""
        self.assertIsNone(jobs.process_start(2 ** 22 + 7))
        self.assertFalse(jobs.pid_alive(2 ** 22 + 7))
        self.assertFalse(jobs.pid_alive(2 ** 22 + 7, 123))
        self.assertEqual(jobs.owner("node-x", 2 ** 22 + 7), f"node-x:{2 ** 22 + 7}")

    def test_start_read_after_a_command_name_with_parentheses(self) -> None:
        """The command name in ``/proc/PID/stat`` may hold spaces and
        parentheses: the start time is counted from the last ``)``."""
        fields = b" ".join(str(n).encode() for n in range(4, 22))
        self.assertEqual(jobs.start_time(b"4242 (a) b (c) S " + fields + b" 987654 0 0\n"),
                         987654)
        self.assertRaises(ValueError, jobs.start_time, b"4242 no parentheses")
        self.assertRaises(IndexError, jobs.start_time, b"4242 (short) S 1 2\n")


class GoneWorkerTests(ApiTestCase):
    """The running jobs of a process of this node that is gone (a worker
    past its restart limit: nobody replaces it) are failed when read."""

    def test_failed_when_listed_or_read(self) -> None:
        """``GET /api/jobs`` and ``GET /api/jobs/{id}`` show them failed;
        this process's own and another node's stay running (no process id
        is above 2**22, Linux's largest pid_max)."""
        gone = jobs.create(self.index, jobs.owner("", 2 ** 22 + 7), "D", "1.1", None, None,
                           "", 1.0)
        elsewhere = jobs.create(self.index, jobs.owner("other-node", 2 ** 22 + 7), "D", "1.2",
                                None, None, "", 1.0)
        response = self.api_request("GET", "/api/jobs")
        self.assertEqual(response.code, 200)
        states = {job["id"]: (job["state"], job["error"]) for job in response.json()}
        self.assertEqual(states[str(gone)], ("failed", jobs.ABANDONED))
        self.assertEqual(states[str(elsewhere)][0], "running")
        late = jobs.create(self.index, jobs.owner("", 2 ** 22 + 8), "D", "1.3", None, None,
                           "", 1.0)
        self.assertEqual(self.api_request("GET", f"/api/jobs/{late}").json()["state"], "failed")
        self.assertEqual(jobs.get(self.index, elsewhere)["state"], "running")

    def test_process_id_reused(self) -> None:
        """A job of an ended process whose id a later process (here: this
        one) was given is failed too; this process's own stays running."""
        start = jobs.process_start(os.getpid())
        reused = jobs.create(self.index, f":{os.getpid()}+{start - 1}", "D", "1.1", None, None,
                             "", 1.0)
        own = jobs.create(self.index, jobs.owner(""), "D", "1.2", None, None, "", 1.0)
        states = {job["id"]: job["state"] for job in self.api_request("GET", "/api/jobs").json()}
        self.assertEqual((states[str(reused)], states[str(own)]), ("failed", "running"))


class AbandonAtStartTests(SynchronousTestCase):
    """``tap.abandon_jobs``: what a process that starts marks failed."""

    def test_node_and_worker(self) -> None:
        """A node (or a supervisor) that starts fails every running job of
        its node; a worker only those of processes that are gone (no
        process id is above 2**22, Linux's largest pid_max)."""
        from dicomtwist import tap
        from dicomtwist.storage.index import Index

        options = tap.Options()
        options.parseOptions(["--database-location", self.mktemp(), "--instance-location",
                              self.mktemp()])
        settings = options["settings"]
        index = Index(settings.database_location)
        self.addCleanup(index.close)
        node = tap.node_name(settings)
        gone = jobs.create(index, jobs.owner(node, 2 ** 22 + 12345), "D", "1.1", None, None,
                           "", 1.0)
        here = jobs.create(index, jobs.owner(node), "D", "1.2", None, None, "", 1.0)
        elsewhere = jobs.create(index, jobs.owner("other-node", 2 ** 22 + 12345), "D",
                                "1.3", None, None, "", 1.0)
        tap.abandon_jobs(index, settings, worker=True)
        self.assertEqual([jobs.get(index, pk)["state"] for pk in (gone, here, elsewhere)],
                         ["failed", "running", "running"])
        tap.abandon_jobs(index, settings)
        self.assertEqual([jobs.get(index, pk)["state"] for pk in (gone, here, elsewhere)],
                         ["failed", "failed", "running"])


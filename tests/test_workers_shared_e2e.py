"""End to end: what every worker of ``--workers 2`` answers the same.

``/metrics`` (the totals of all workers, prometheus-client's multiprocess
mode) and the web page's jobs (kept in the index, so any worker lists and
cancels them), with a real ``twistd -n dicomqr --workers 2`` supervisor on
the throwaway PostgreSQL cluster (:mod:`tests.pg`).

To be sure a request reaches a given worker, the test opens HTTP
connections and looks up (in /proc) which worker process accepted each;
a request is then sent on a connection held by the worker wanted.
"""

from __future__ import annotations

import json
import os
import signal
import socket

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from tests import peers
from tests.helpers import free_port
from tests.test_scaleout_e2e import (
    ROOT,
    ScaleoutCase,
    alive,
    children,
    established,
    inline,
    until,
)


def _request(sock: socket.socket, method: str, path: str,
             headers: tuple[str, ...] = ()) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP/1.0 request on ``sock`` and read the whole answer
    (blocking: run it in a thread); ``(code, headers, body)``."""
    lines = [f"{method} {path} HTTP/1.0", "Host: 127.0.0.1", *headers, "", ""]
    sock.sendall("\r\n".join(lines).encode("ascii"))
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    found = {}
    for field in fields:
        name, _, value = field.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(status.split()[1]), found, body


class SharedAcrossWorkersTests(ScaleoutCase):
    """``--workers 2 --http``: every worker answers for all of them."""

    timeout = 150

    async def start_workers(self) -> None:
        self.http_port = free_port()
        self.node = await self.start_node("WORKERS", None, "--workers", "2", "-v",
                                          "--http", f"tcp:{self.http_port}:interface=127.0.0.1")
        supervisor = self.node.pid
        self.workers = await until(
            lambda: len(children(supervisor)) == 2 and children(supervisor),
            "two worker processes")
        started = "Archive WORKERS: instances in"
        await until(lambda: self.node.process.output().count(started) == 2,
                    "two workers started")

    async def connections(self, each: int = 2) -> dict[int, list[socket.socket]]:
        """Open HTTP connections until each worker holds ``each``; worker
        pid -> its connections (the others are closed)."""
        opened: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in opened])
        owners: dict[int, list[socket.socket]] = {pid: [] for pid in self.workers}
        for _ in range(64):
            sock = socket.create_connection(("127.0.0.1", self.http_port), timeout=30)
            opened.append(sock)
            port = sock.getsockname()[1]

            def owner() -> int | None:
                for pid in self.workers:
                    if port in established(pid, self.http_port):
                        return pid
                return None
            pid = await until(owner, "a worker to accept an HTTP connection")
            if len(owners[pid]) < each:
                owners[pid].append(sock)
            if all(len(socks) == each for socks in owners.values()):
                for sock in opened:
                    if not any(sock in socks for socks in owners.values()):
                        sock.close()
                return owners
        raise AssertionError(f"64 connections did not reach both workers: {owners}")

    async def request(self, sock: socket.socket, method: str, path: str,
                      *headers: str) -> tuple[int, dict[str, str], bytes]:
        return await deferToThread(_request, sock, method, path, tuple(headers))

    async def job(self, job_id: str, sock: socket.socket | None = None) -> dict:
        """``GET /api/jobs/{id}`` (on ``sock``, or a new connection)."""
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", self.http_port), timeout=30)
        code, _, body = await self.request(sock, "GET", f"/api/jobs/{job_id}")
        self.assertEqual(code, 200, body)
        return json.loads(body)

    @inline
    async def test_metrics_are_the_totals_of_all_workers(self) -> None:
        """Instances stored through DIMSE (each association on one worker)
        are counted once, completely, by the /metrics of every worker; the
        index counts too."""
        await self.start_workers()
        files = self.generate("m", 5, f"{ROOT}.81", f"{ROOT}.81.1")
        more = self.generate("n", 3, f"{ROOT}.81", f"{ROOT}.81.2")
        for batch in (files, more):
            output = await self.tool("storescu", self.node, "-v", files=batch)
            self.assertEqual(output.count("Received Store Response (Success)"), len(batch),
                             output)
        owners = await self.connections()
        seen = []
        for pid, socks in owners.items():
            for sock in socks:
                code, _, body = await self.request(sock, "GET", "/metrics")
                self.assertEqual(code, 200, body)
                found = {}
                for family in text_string_to_metric_families(body.decode()):
                    for sample in family.samples:
                        key = (sample.name, tuple(sorted(sample.labels.items())))
                        found[key] = found.get(key, 0.0) + sample.value
                stored = sum(v for (name, _), v in found.items()
                             if name == "dicomtwist_instances_stored_total")
                self.assertEqual(stored, 8, f"worker {pid}")
                self.assertEqual(found[("dicomtwist_store_seconds_count",
                                        (("part", "total"),))], 8)
                self.assertEqual(found[("dicomtwist_associations_released_total", ())], 2)
                self.assertEqual(found[("dicomtwist_index_entities",
                                        (("level", "instances"),))], 8)
                # Each worker's pools are in the sum: two workers' worth.
                self.assertEqual(found[("dicomtwist_thread_pool_max",
                                        (("pool", "store"),))], 16)
                seen.append(stored)
        self.assertEqual(len(seen), 4)

        # The supervisor's directory, passed to both workers, holds their
        # files; it is removed at stop.
        directories = set()
        for pid in self.workers:
            with open(f"/proc/{pid}/environ", "rb") as fp:
                environment = dict(item.split(b"=", 1) for item in fp.read().split(b"\0")
                                   if b"=" in item)
            directories.add(environment[b"PROMETHEUS_MULTIPROC_DIR"].decode())
        self.assertEqual(len(directories), 1)
        directory = directories.pop()
        self.assertIn(f"counter_{min(self.workers)}.db", os.listdir(directory))
        node = self.node
        node.process.transport.signalProcess("TERM")
        code = await node.process.exited.addTimeout(40, reactor)
        self.assertIn(code, (0, -signal.SIGTERM), node.process.output())
        self.assertFalse(os.path.exists(directory))

    @inline
    async def test_jobs_through_every_worker(self) -> None:
        """A send started through one worker is listed, read and cancelled
        through the other (the destination holds the first sub-operation
        until the cancel has reached the running worker); a worker killed
        while it runs a send leaves it failed, marked by its replacement."""
        peers.require_pynetdicom()
        received = os.path.abspath(self.mktemp())
        os.makedirs(received)
        gate = os.path.join(os.path.abspath(self.work), "release-")
        scp = peers.start_script_peer(self, reactor, "pynetdicom_scp.py",
                                      [received, "--port", str(self.storescp_port),
                                       "--ae-title", "STORESCP", "--hold", gate])
        await scp.wait_for_output(b"LISTENING", timeout=30)
        self.addCleanup(lambda: [open(f"{gate}{n}", "w").close() for n in (1, 2)])
        await self.start_workers()
        study = f"{ROOT}.82"
        files = self.generate("j", 5, study, f"{study}.1")
        output = await self.tool("storescu", self.node, "-v", files=files)
        self.assertEqual(output.count("Received Store Response (Success)"), 5, output)

        owners = await self.connections(each=3)
        starter, other = sorted(owners)
        # The starting request asks for server-sent events: its answer is
        # the job's progress, to the end, from the worker running it.
        stream = Deferred.fromCoroutine(self.request(
            owners[starter][0], "POST", f"/api/studies/{study}/send?destination=STORESCP",
            "Accept: text/event-stream"))
        await scp.wait_for_output(b"HOLDING 1", timeout=30)

        code, _, body = await self.request(owners[other][0], "GET", "/api/jobs")
        self.assertEqual(code, 200, body)
        listed = json.loads(body)
        job_id = listed[0]["id"]
        self.assertEqual([(j["id"], j["state"], j["study"]) for j in listed],
                         [(job_id, "running", study)])
        self.assertEqual((await self.job(job_id, owners[other][1]))["state"], "running")
        code, _, body = await self.request(owners[other][2], "DELETE", f"/api/jobs/{job_id}")
        self.assertEqual(code, 202, body)
        self.assertEqual(json.loads(body)["cancel"], "requested")
        # The running worker reads the flag within a second or so.
        await until(lambda: self._seen(job_id), "the cancel seen by the running worker")
        open(f"{gate}1", "w").close()
        ended = await until(self._ended(job_id), "the job to end")
        self.assertEqual((ended["state"], ended["completed"], ended["failed"], ended["total"],
                          ended["status"]), ("cancelled", 1, 0, 5, "FE00"))
        self.assertEqual(len(os.listdir(received)), 1)
        for sock in (owners[starter][1], owners[starter][2]):
            self.assertEqual(await self.job(job_id, sock), ended)
        code, headers, body = await stream
        self.assertEqual((code, headers["content-type"], headers["location"]),
                         (200, "text/event-stream; charset=utf-8", f"/api/jobs/{job_id}"))
        events = [(block.split("\n")[0], json.loads(block.split("\n")[1][len("data: "):]))
                  for block in body.decode().strip().split("\n\n")]
        self.assertEqual(events[0][0], "event: progress")
        self.assertEqual(events[-1], ("event: done", ended))
        self.assertEqual({e for e, _ in events[:-1]}, {"event: progress"})

        # A worker killed while it runs a send: its replacement marks it failed.
        sock = await self._on_worker(other)
        code, _, body = await self.request(
            sock, "POST", f"/api/studies/{study}/series/{study}.1/send?destination=STORESCP")
        self.assertEqual(code, 202, body)
        second = json.loads(body)["id"]
        await scp.wait_for_output(b"HOLDING 2", timeout=30)
        os.kill(other, signal.SIGKILL)
        started = "Archive WORKERS: instances in"
        await until(lambda: not alive(other)
                    and self.node.process.output().count(started) == 3,
                    "the replacement worker started")
        failed = await until(self._ended(second), "the killed worker's job to be failed")
        self.assertEqual((failed["state"], failed["error"]),
                         ("failed", "the process running it ended"))
        open(f"{gate}2", "w").close()

    def _seen(self, job_id: str):
        async def check() -> bool:
            return (await self.job(job_id))["cancel"] == "seen"
        return check()

    def _ended(self, job_id: str):
        async def check() -> dict | None:
            found = await self.job(job_id)
            return found if found["state"] != "running" else None
        return lambda: check()

    async def _on_worker(self, pid: int) -> socket.socket:
        """A new HTTP connection that worker ``pid`` accepted."""
        return (await self.connections(each=1))[pid][0]

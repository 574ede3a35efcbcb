"""Measure dicomtwist's DICOMweb side by side with Orthanc's DICOMweb plugin.

Usage::

    python benchmarks/dicomweb.py                  # the default run (~8 minutes)
    python benchmarks/dicomweb.py --quick          # scaled down (~80 s)
    python benchmarks/dicomweb.py --smoke          # seconds; only checks it works (CI)
    python benchmarks/dicomweb.py --reps 5 --out /tmp/results --ours-commit HEAD

Peers: ``ours`` (``dicomqr`` with ``http: tcp:PORT:interface=127.0.0.1``;
the installed package unless ``--ours-src``/``--ours-commit``) and
``orthanc`` (Orthanc with its DICOMweb plugin, ``orthanc-dicomweb``), both
from :data:`servers.WEB_SERVERS`.  All traffic is on 127.0.0.1; the HTTP
client is ``http.client`` on one kept-alive connection, reading bodies in
1 MiB blocks into one buffer and discarding them.  Indexes are loaded with
DCMTK's ``storescu`` (4 associations).  Every load is bounded in count and
in time.

The measures, in order, on the same two servers:

1. QIDO-RS ``/studies?PatientID=X`` and ``/studies`` (all studies), on an
   index of ``qido_sizes[0]`` small instances, then of ``qido_sizes[1]``;
2. WADO-RS retrieve of a study of 0.5 MB CT instances, as stored
   (``transfer-syntax=*``), in MB/s;
3. series metadata of a ``series``-instance series: cold (the server just
   restarted, the OS page cache dropped) and warm (repeated);
4. STOW-RS of small and of 0.5 MB instances, ``stow_batch`` a request;
5. the resident-memory growth of the server storing (STOW-RS) and then
   retrieving (WADO-RS) one instance of ``large_mib`` MiB of pixel data.

Each measure runs ``--reps`` times with the peers interleaved (the order
rotates every repetition); the report gives the median, the min-max, the
ratio ours/Orthanc and the targets, in ``OUT/dicomweb-latest.md`` and
``OUT/dicomweb-latest.json``.  See docs/benchmarks.md, "DICOMweb".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Iterator

from pydicom import dcmread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import data, report, run, servers, stream_memory  # noqa: E402
from benchmarks.servers import Server, dcmtk  # noqa: E402

MIB = 1 << 20
#: The service root of both servers.
BASE = "/dicom-web"
#: WADO-RS: instances as stored (PS3.18 8.7.3.5.2).
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_JSON = "application/dicom+json"
BOUNDARY = "dicomtwist-bench-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
#: Targets of the DICOMweb issue.
METADATA_FACTOR = 5.0
GROWTH_LIMIT_MIB = 100.0
#: Parallel writers of the small instances (pydicom is CPU bound).
WRITERS = 4


@dataclass(frozen=True)
class Scale:
    """How much load each measure applies."""

    reps: int
    qido_sizes: tuple[int, int]   # small instances in the two indexes
    qido_repeat: int              # requests per query per repetition (at most)
    wado_study: int               # 0.5 MB instances in the retrieved study
    wado_repeat: int              # retrieves per repetition
    series: int                   # instances in the metadata series (0.5 MB each)
    meta_repeat: int              # warm metadata requests per repetition
    stow_small: int               # small instances stored per repetition
    stow_ct: int                  # 0.5 MB instances stored per repetition
    stow_batch: int               # instances per STOW-RS request
    large_mib: int                # pixel data of the large instance
    timeout: float = 600.0        # bound on any one client run or request
    settle: float = 1.0           # seconds before a memory reading


SCALES = {
    "smoke": Scale(reps=1, qido_sizes=(40, 80), qido_repeat=2, wado_study=4, wado_repeat=1,
                   series=6, meta_repeat=2, stow_small=8, stow_ct=4, stow_batch=4,
                   large_mib=4, timeout=60.0, settle=0.1),
    "quick": Scale(reps=2, qido_sizes=(1000, 10000), qido_repeat=5, wado_study=20,
                   wado_repeat=3, series=200, meta_repeat=3, stow_small=200, stow_ct=100,
                   stow_batch=50, large_mib=64),
    "default": Scale(reps=3, qido_sizes=(10000, 100000), qido_repeat=10, wado_study=100,
                     wado_repeat=5, series=600, meta_repeat=5, stow_small=500, stow_ct=200,
                     stow_batch=50, large_mib=1024),
}


class Client:
    """One kept-alive HTTP/1.1 connection to a server's DICOMweb root.

    Bodies are read in 1 MiB blocks into one buffer and dropped, so the
    client holds no response whole (but for JSON, which it parses).
    """

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self._buffer = bytearray(MIB)
        self._conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout,
                                          blocksize=MIB)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _request(self, method: str, path: str, headers: dict[str, str],
                 body: bytes | Iterable[bytes] | None = None) -> http.client.HTTPResponse:
        if body is not None and not isinstance(body, bytes):
            # An iterator cannot be replayed on a new connection if the
            # server closed the kept-alive one (Orthanc: after 1 s idle).
            self._conn.close()
        try:
            self._conn.request(method, BASE + path, body=body, headers=headers)
            return self._conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            if body is not None and not isinstance(body, bytes):
                raise  # an iterator cannot be replayed
            # A kept-alive connection the server closed meanwhile: once more.
            self._conn.close()
            self._conn = self._connect()
            self._conn.request(method, BASE + path, body=body, headers=headers)
            return self._conn.getresponse()

    def drain(self, response: http.client.HTTPResponse) -> int:
        """Read and drop the body; its length."""
        view = memoryview(self._buffer)
        total = 0
        while True:
            n = response.readinto(view)
            if not n:
                return total
            total += n

    def get_json(self, path: str) -> tuple[int, object, float]:
        """``GET`` a JSON resource: ``(status, decoded body or None, seconds)``."""
        start = time.perf_counter()
        response = self._request("GET", path, {"Accept": ACCEPT_JSON})
        body = response.read()
        elapsed = time.perf_counter() - start
        decoded = json.loads(body) if response.status == 200 and body else None
        return response.status, decoded, elapsed

    def get_stream(self, path: str, accept: str = ACCEPT_DICOM) -> tuple[int, int, float]:
        """``GET`` and drain: ``(status, body bytes, seconds)``."""
        start = time.perf_counter()
        response = self._request("GET", path, {"Accept": accept})
        size = self.drain(response)
        return response.status, size, time.perf_counter() - start

    def post(self, path: str, body: bytes | Iterable[bytes], length: int,
             content_type: str = STOW_TYPE) -> tuple[int, object, float]:
        """``POST`` a body (bytes, or blocks adding up to ``length``):
        ``(status, decoded JSON answer or None, seconds)``."""
        start = time.perf_counter()
        response = self._request("POST", path, {"Content-Type": content_type,
                                                "Content-Length": str(length),
                                                "Accept": ACCEPT_JSON}, body)
        answer = response.read()
        elapsed = time.perf_counter() - start
        try:
            decoded = json.loads(answer) if answer else None
        except ValueError:
            decoded = None
        return response.status, decoded, elapsed


def part_head(first: bool) -> bytes:
    """The delimiter and headers before one part (RFC 2046 5.1.1)."""
    return (b"" if first else b"\r\n") + b"--" + BOUNDARY.encode() \
        + b"\r\nContent-Type: application/dicom\r\n\r\n"


CLOSE = b"\r\n--" + BOUNDARY.encode() + b"--\r\n"


def stow_body(paths: list[str]) -> bytes:
    """A STOW-RS body holding the files, in memory."""
    parts = []
    for i, path in enumerate(paths):
        with open(path, "rb") as fp:
            parts.append(part_head(i == 0) + fp.read())
    parts.append(CLOSE)
    return b"".join(parts)


def stow_stream(path: str) -> tuple[Iterator[bytes], int]:
    """A one-part STOW-RS body read from the file 1 MiB at a time, and its length."""
    head = part_head(True)
    length = len(head) + os.path.getsize(path) + len(CLOSE)

    def blocks() -> Iterator[bytes]:
        yield head
        with open(path, "rb") as fp:
            while block := fp.read(MIB):
                yield block
        yield CLOSE
    return blocks(), length


def stored_count(answer: object) -> int:
    """How many instances a STOW-RS answer lists as stored (0008,1199)."""
    if not isinstance(answer, dict):
        return 0
    return len(answer.get("00081199", {}).get("Value", []))


def drop_caches() -> bool:
    """Write back and drop the OS page cache (needs root); False if refused."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fp:
            fp.write("3\n")
    except OSError:
        return False
    return True


def _write_chunk(directory: str, first: int, studies: int) -> data.SmallSet:
    return data.write_small_set(directory, first, studies)


def write_small(directory: str, first: int, studies: int) -> list[str]:
    """Small instances of studies ``first`` .. ``+studies`` (see
    :func:`data.write_small_set`) in :data:`WRITERS` subdirectories, one a
    ``storescu`` association; returns the subdirectories."""
    shares = [studies * k // WRITERS for k in range(WRITERS + 1)]
    chunks = [(os.path.join(directory, f"part{k}"), first + shares[k], shares[k + 1] - shares[k])
              for k in range(WRITERS) if shares[k + 1] > shares[k]]
    dirs = [d for d, _, _ in chunks]
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(WRITERS, os.cpu_count() or 1)) \
            as pool:
        list(pool.map(_write_chunk, *zip(*chunks)))
    return dirs


class WebBench:
    """Runs the DICOMweb measures against the started servers."""

    def __init__(self, scale: Scale, names: list[str], work: str,
                 results: run.Results) -> None:
        self.scale = scale
        self.names = names
        self.work = work
        self.results = results
        self.servers: dict[str, Server] = {}
        self.clients: dict[str, Client] = {}
        self.rep = 0
        self.cache_note = ""
        #: ``(study, series, instance)`` of a stored 0.5 MB CT instance.
        self.sample_uids: tuple[str, str, str] | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Start every selected server with an empty data directory."""
        for name in self.names:
            cls = servers.WEB_SERVERS[name]
            server = cls(os.path.join(self.work, f"web-{name}"), servers.free_port())
            run.log(f"starting {name}")
            server.start()
            self.servers[name] = server
            self.clients[name] = Client(server.http_port, self.scale.timeout)
            if name == "orthanc":
                self.results.meta["versions"]["orthanc-dicomweb"] = plugin_version(server)

    def restart(self, server: Server) -> None:
        """Restart a server on its data; a new connection to it."""
        self.clients[server.name].close()
        server.restart()
        self.clients[server.name] = Client(server.http_port, self.scale.timeout)

    def stop(self) -> None:
        """Stop and wipe every server."""
        for client in self.clients.values():
            client.close()
        for server in self.servers.values():
            server.terminate()
        for server in self.servers.values():
            server.stop()
            server.wipe()
        self.servers.clear()
        self.clients.clear()

    def order(self) -> list[Server]:
        """The live servers, rotated by the repetition number."""
        live = [s for s in self.servers.values() if s.name not in self.results.skipped]
        if not live:
            return []
        k = self.rep % len(live)
        return live[k:] + live[:k]

    def check_alive(self, server: Server, where: str) -> None:
        """Note a server that died; it takes no further part."""
        if not server.alive() and server.name not in self.results.skipped:
            run.log(f"{server.name} DIED during {where}:\n{server.log_tail()}")
            self.results.skipped[server.name] = f"died during {where} (see its log)"

    def load(self, dirs: list[str]) -> None:
        """Store every file of ``dirs`` into every server, one ``storescu`` per
        directory, all at once (per server).

        :raises RuntimeError: an instance was not stored.
        """
        expected = sum(len(os.listdir(d)) for d in dirs)
        for server in self.servers.values():
            commands = [[dcmtk("storescu"), "-v", "-nh", "+sd", "-aet", "STORESCU",
                         "-aec", server.ae_title, "127.0.0.1", str(server.port), d]
                        for d in dirs]
            runs, elapsed = run.run_clients(commands, self.scale.timeout * 3, self.work)
            ok = sum(r.output.count("Received Store Response (Success)") for r in runs)
            run.log(f"  {server.name}: {ok:,} instances in {elapsed:.1f} s")
            if ok != expected:
                tail = next((r.output[-600:] for r in runs if r.returncode), runs[0].output[-600:])
                raise RuntimeError(f"{server.name} stored {ok} of {expected}:\n{tail}")

    # -- QIDO-RS --------------------------------------------------------------
    def qido(self, size: int, studies: int, patient: str, per_patient: int) -> None:
        """``/studies?PatientID=`` and ``/studies``: the median of up to
        ``qido_repeat`` requests (stopping after ~3 s of one query)."""
        queries = [
            (f"qido_pid_{size}", f"QIDO /studies?PatientID=…, {size:,}-instance index",
             f"/studies?PatientID={patient}", per_patient),
            (f"qido_all_{size}", f"QIDO /studies (all {studies:,}), {size:,}-instance index",
             "/studies", studies),
        ]
        for key, label, path, expected in queries:
            m = self.results.measure(key, label, "ms", False)
            for server in self.order():
                client = self.clients[server.name]
                times: list[float] = []
                spent = 0.0
                note = ""
                while len(times) < self.scale.qido_repeat and (not times or spent < 3.0):
                    status, body, elapsed = client.get_json(path)
                    if status != 200:
                        note = f"HTTP {status}"
                        break
                    if not isinstance(body, list) or len(body) != expected:
                        found = len(body) if isinstance(body, list) else "no"
                        note = f"{found} matches (expected {expected})"
                    times.append(elapsed * 1000)
                    spent += elapsed
                m.add(server.name, run.median(times) if times and not note.startswith("HTTP")
                      else None, note)
                self.check_alive(server, label)

    # -- WADO-RS --------------------------------------------------------------
    def wado(self, study: str, count: int, file_bytes: int) -> None:
        """Retrieve the CT study as stored: MB/s of multipart body."""
        m = self.results.measure("wado_study", f"WADO-RS study retrieve, {count} x 0.5 MB CT",
                                 "MB/s", True)
        for server in self.order():
            client = self.clients[server.name]
            speeds, note = [], ""
            for _ in range(self.scale.wado_repeat):
                status, size, elapsed = client.get_stream(f"/studies/{study}")
                if status != 200 or size < file_bytes:
                    note = f"HTTP {status}, {size:,} bytes (expected > {file_bytes:,})"
                    break
                speeds.append(size / elapsed / 1e6)
            m.add(server.name, run.median(speeds) if speeds else None, note)
            self.check_alive(server, m.label)

    # -- series metadata --------------------------------------------------------
    def metadata(self, study: str, series: str, count: int) -> None:
        """Series metadata: cold (restart + dropped page cache), then warm."""
        cold = self.results.measure("meta_cold", f"Series metadata, {count} instances, cold",
                                    "ms", False)
        warm = self.results.measure("meta_warm", f"Series metadata, {count} instances, warm",
                                    "ms", False)
        path = f"/studies/{study}/series/{series}/metadata"
        for server in self.order():
            self.restart(server)
            if drop_caches():
                self.cache_note = "OS page cache dropped before each cold request"
            else:
                self.cache_note = "warm OS cache (drop_caches refused): cold = restarted server"
            client = self.clients[server.name]
            status, body, elapsed = client.get_json(path)
            ok = status == 200 and isinstance(body, list) and len(body) == count
            note = "" if ok else f"HTTP {status}, {len(body) if isinstance(body, list) else 0}" \
                f" instances (expected {count})"
            cold.add(server.name, elapsed * 1000 if ok else None, note)
            times = []
            for _ in range(self.scale.meta_repeat):
                status, body, elapsed = client.get_json(path)
                if status == 200:
                    times.append(elapsed * 1000)
            warm.add(server.name, run.median(times) if times and ok else None, note)
            self.check_alive(server, cold.label)

    # -- STOW-RS --------------------------------------------------------------
    def stow(self, key: str, label: str, batches: list[bytes], count: int,
             mb: int | None = None) -> None:
        """Store the batches (one request each, in turn): instances/s."""
        m = self.results.measure(key, label, "inst/s", True)
        mbs = self.results.measure(key + "_mb", label + ", MB/s", "MB/s", True) if mb else None
        for server in self.order():
            client = self.clients[server.name]
            stored, failed_note = 0, ""
            start = time.perf_counter()
            for body in batches:
                status, answer, _ = client.post("/studies", body, len(body))
                stored += stored_count(answer)
                if status != 200 and not failed_note:
                    failed_note = f"HTTP {status}"
            elapsed = time.perf_counter() - start
            note = failed_note
            if stored != count:
                note = f"{stored}/{count} stored" + (f" ({failed_note})" if failed_note else "")
            m.add(server.name, stored / elapsed if stored else None, note)
            if mbs is not None:
                mbs.add(server.name, stored * mb / elapsed / 1e6 if stored else None)
            self.check_alive(server, label)

    def stow_round(self) -> None:
        """One repetition of both STOW-RS measures, on new instances."""
        s = self.scale
        directory = os.path.join(self.work, f"stow-{self.rep}")
        small = data.write_small_set(os.path.join(directory, "small"),
                                     200_000 + self.rep * 10_000,
                                     max(1, s.stow_small // data.INSTANCES_PER_STUDY)).paths
        small = small[:s.stow_small]
        ct, _ = data.write_ct_set(os.path.join(directory, "ct"), s.stow_ct,
                                  patient_id=f"STOW{self.rep}")
        try:
            for key, label, paths in (
                    ("stow_small", f"STOW-RS small instances ({s.stow_batch} a request)", small),
                    ("stow_ct", f"STOW-RS 0.5 MB CT ({s.stow_batch} a request)", ct)):
                batches = [stow_body(paths[i:i + s.stow_batch])
                           for i in range(0, len(paths), s.stow_batch)]
                size = os.path.getsize(paths[0]) if key == "stow_ct" else None
                self.stow(key, label, batches, len(paths), size)
                del batches
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    # -- one large instance ----------------------------------------------------
    def large(self) -> None:
        """STOW-RS then WADO-RS of one large instance: memory growth and MB/s,
        each on a freshly restarted server (once per server, not repeated)."""
        path = os.path.join(self.work, "large.dcm")
        size = stream_memory.write_instance(path, self.scale.large_mib)
        ds = dcmread(path, stop_before_pixels=True)
        uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        what = f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"
        stow_growth = self.results.measure("large_stow_growth", f"Memory growth storing one {what}"
                                           " instance (STOW-RS)", "MiB", False)
        wado_growth = self.results.measure("large_wado_growth", f"Memory growth retrieving one"
                                           f" {what} instance (WADO-RS)", "MiB", False)
        stow_speed = self.results.measure("large_stow_mbs", f"STOW-RS of one {what} instance",
                                          "MB/s", True)
        wado_speed = self.results.measure("large_wado_mbs", f"WADO-RS of one {what} instance",
                                          "MB/s", True)
        warm_up = data.write_small_set(os.path.join(self.work, "warm-up"), 300_000, 1).paths
        try:
            for n, server in enumerate(self.order()):
                # STOW-RS, streamed from the file.
                self.restart(server)
                self.warm_up(server, warm_up[2 * n:2 * n + 2])
                before = server.memory_kib()
                server.reset_peak()
                sampler = run.Sampler(server, 0.02)
                sampler.start()
                try:
                    blocks, length = stow_stream(path)
                    status, answer, elapsed = self.clients[server.name].post(
                        "/studies", blocks, length)
                finally:
                    peak = sampler.finish()
                ok = status == 200 and stored_count(answer) == 1
                note = "" if ok else f"store failed (HTTP {status})"
                stow_growth.add(server.name, max(0.0, peak - before) / 1024, note)
                stow_speed.add(server.name, size / elapsed / 1e6 if ok else None, note)
                self.results.peak("STOW-RS of the large instance", server.name, peak / 1024)
                self.check_alive(server, stow_growth.label)
                if not ok:
                    continue
                # WADO-RS, drained in 1 MiB blocks.
                self.restart(server)
                self.warm_up(server, [])
                before = server.memory_kib()
                server.reset_peak()
                sampler = run.Sampler(server, 0.02)
                sampler.start()
                try:
                    status, got, elapsed = self.clients[server.name].get_stream(
                        "/studies/{}/series/{}/instances/{}".format(*uids))
                finally:
                    peak = sampler.finish()
                ok = status == 200 and got > size
                note = "" if ok else f"retrieve failed (HTTP {status}, {got:,} bytes)"
                wado_growth.add(server.name, max(0.0, peak - before) / 1024, note)
                wado_speed.add(server.name, got / elapsed / 1e6 if ok else None, note)
                self.results.peak("WADO-RS of the large instance", server.name, peak / 1024)
                self.check_alive(server, wado_growth.label)
        finally:
            os.unlink(path)
            shutil.rmtree(os.path.join(self.work, "warm-up"), ignore_errors=True)

    def warm_up(self, server: Server, paths: list[str]) -> None:
        """After a restart and before a memory reading: one small STOW-RS (of
        ``paths``, if any) and one WADO-RS of a CT instance, so that what the
        first request of each kind loads (lazy imports, caches) is not counted
        as growth; then settle."""
        client = self.clients[server.name]
        if paths:
            body = stow_body(paths)
            client.post("/studies", body, len(body))
        if self.sample_uids:
            client.get_stream("/studies/{}/series/{}/instances/{}".format(*self.sample_uids))
        time.sleep(self.scale.settle)

    # -- the run ----------------------------------------------------------------
    def run_all(self) -> None:
        """Every measure, in the order of the module's docstring."""
        s = self.scale
        self.start()
        try:
            small_dir = os.path.join(self.work, "small")
            total_studies = 0
            patient = data.patient_id(s.qido_sizes[0] // data.INSTANCES_PER_STUDY // 2)
            for size in s.qido_sizes:
                studies = size // data.INSTANCES_PER_STUDY
                run.log(f"writing {size - total_studies * data.INSTANCES_PER_STUDY:,}"
                        " small instances")
                dirs = write_small(os.path.join(small_dir, str(size)), total_studies,
                                   studies - total_studies)
                run.log(f"loading them (index of {size:,} instances)")
                self.load(dirs)
                shutil.rmtree(os.path.join(small_dir, str(size)), ignore_errors=True)
                total_studies = studies
                per_patient = sum(1 for n in range(studies) if data.patient_id(n) == patient)
                for self.rep in range(s.reps):
                    run.log(f"rep {self.rep + 1}: QIDO-RS on {size:,} instances")
                    self.qido(size, studies, patient, per_patient)
            self.results.meta["index_studies"] = total_studies
            run.log(f"writing and loading the {s.wado_study}-instance study and the"
                    f" {s.series}-instance series")
            ct_paths, ct_study = data.write_ct_set(os.path.join(self.work, "ct-study"),
                                                   s.wado_study, patient_id="CT0001")
            series_paths, series_study = data.write_ct_set(os.path.join(self.work, "series"),
                                                           s.series, patient_id="CT0002")
            series_uid = str(dcmread(series_paths[0], stop_before_pixels=True).SeriesInstanceUID)
            file_bytes = sum(os.path.getsize(p) for p in ct_paths)
            first = dcmread(ct_paths[0], stop_before_pixels=True)
            self.sample_uids = (ct_study, str(first.SeriesInstanceUID), str(first.SOPInstanceUID))
            self.load([os.path.join(self.work, "ct-study"), os.path.join(self.work, "series")])
            shutil.rmtree(os.path.join(self.work, "ct-study"), ignore_errors=True)
            shutil.rmtree(os.path.join(self.work, "series"), ignore_errors=True)
            for self.rep in range(s.reps):
                run.log(f"rep {self.rep + 1}: WADO-RS study")
                self.wado(ct_study, s.wado_study, file_bytes)
            for self.rep in range(s.reps):
                run.log(f"rep {self.rep + 1}: series metadata, cold and warm")
                self.metadata(series_study, series_uid, s.series)
            for self.rep in range(s.reps):
                run.log(f"rep {self.rep + 1}: STOW-RS")
                self.stow_round()
            self.rep = 0
            run.log(f"one large instance ({s.large_mib} MiB)")
            self.large()
        finally:
            self.stop()


# -- the report ------------------------------------------------------------------
LABELS = {"ours": "dicomtwist", "orthanc": "Orthanc + DICOMweb"}


def times(r: float) -> str:
    """A ratio: ``2.40×``, ``376×``, ``∞×``."""
    return report.times(r) if math.isinf(r) or r < 100 else f"{r:,.0f}×"


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """The DICOMweb issue's targets: ``(target, measured, met)``.

    At least Orthanc's figure on every measure, at least 5x on series
    metadata, and under 100 MiB of growth for the large instance.
    """
    rows: list[tuple[str, str, bool | None]] = []
    for key, m in results["measures"].items():
        if key.endswith("_mb"):
            continue
        factor = METADATA_FACTOR if key.startswith("meta_") else 1.0
        r = report.ratio(m, "orthanc")
        target = f"{m['label']}: ≥ {factor:g}× Orthanc"
        rows.append((target, "not measured" if r is None else times(r),
                     None if r is None else r >= factor))
        if key.endswith("_growth"):
            s = report.stats(m["values"].get("ours", []))
            notes = "; ".join(m["notes"].get("ours", []))
            target = f"{m['label']}: < {GROWTH_LIMIT_MIB:g} MiB"
            if s is None:
                rows.append((target, "not measured" + (f" ({notes})" if notes else ""), None))
            else:
                rows.append((target, f"{report.fmt(s[0])} MiB", s[0] < GROWTH_LIMIT_MIB
                             and not notes))
    return rows


def markdown(results: dict) -> str:
    """The report as markdown."""
    meta = results["meta"]
    peers = [p for p in ("ours", "orthanc") if p in meta.get("peers", [])]
    lines = [f"# DICOMweb benchmark ({meta.get('mode')} mode, {meta.get('date')})", ""]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines.append(f"{meta.get('cpus')} CPUs ({meta.get('machine')}, Linux {meta.get('kernel')});"
                 f" {versions}. Run time {meta.get('runtime_s', '?')} s; load average"
                 f" {meta.get('load_before')} before, {meta.get('load_after')} after.")
    for name, why in results.get("skipped", {}).items():
        lines.append(f"Skipped {name}: {why}.")
    scale = meta.get("scale", {})
    lines += ["", f"Median over {scale.get('reps', '?')} repetitions (min–max); the large"
              " instance once per server. Ratio: how many times better dicomtwist is"
              " (> 1: dicomtwist better; for times and memory, Orthanc's figure divided"
              f" by ours). Series metadata: {meta.get('cache_note', '')}.", ""]
    head = ["Measure", "unit", *(LABELS[p] for p in peers)]
    if "orthanc" in peers:
        head.append("ours / Orthanc")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    notes = []
    for m in results["measures"].values():
        arrow = "" if m["higher_is_better"] else " ↓"
        row = [m["label"], m["unit"] + arrow, *(report.cell(m, p) for p in peers)]
        if "orthanc" in peers:
            r = report.ratio(m, "orthanc")
            row.append(times(r) if r is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
        for p in peers:
            for note in m["notes"].get(p, []):
                notes.append(f"- {m['label']}, {LABELS[p]}: {note}")
    lines += ["", "↓ lower is better.", ""]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    if results.get("memory"):
        lines += ["## Peak resident memory (MiB)", "", "| Phase | "
                  + " | ".join(LABELS[p] for p in peers) + " |", "|---|" + "---:|" * len(peers)]
        for phase, row in results["memory"].items():
            lines.append(f"| {phase} | " + " | ".join(report.fmt(row.get(p)) for p in peers)
                         + " |")
        lines.append("")
    rows = targets(results)
    lines += ["## Targets (DICOMweb)", "", "| Target | Measured | Met |", "|---|---|---|"]
    for target, measured, met in rows:
        mark = "–" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {mark} |")
    met_count = sum(1 for *_, met in rows if met)
    judged = sum(1 for *_, met in rows if met is not None)
    lines += ["", f"{met_count} of {judged} targets met.", ""]
    return "\n".join(lines)


def write(results: dict, out: str) -> list[str]:
    """Write ``dicomweb-latest.json`` (with the targets) and ``.md`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    results = dict(results, targets=[{"target": t, "measured": m, "met": met}
                                     for t, m, met in targets(results)])
    paths = [os.path.join(out, "dicomweb-latest.json"), os.path.join(out, "dicomweb-latest.md")]
    with open(paths[0], "w") as fp:
        json.dump(results, fp, indent=1)
    with open(paths[1], "w") as fp:
        fp.write(markdown(results))
    return paths


def plugin_version(server: Server) -> str:
    """The DICOMweb plugin's version, from Orthanc's ``/plugins/dicom-web``."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        conn.request("GET", "/plugins/dicom-web")
        return str(json.loads(conn.getresponse().read()).get("Version", "?"))
    except (OSError, ValueError, http.client.HTTPException):
        return "?"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="scaled-down counts (a few minutes)")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="seconds-long run that only checks the script works (CI)")
    parser.add_argument("--peers", default=",".join(servers.WEB_SERVERS),
                        help="comma-separated: " + ",".join(servers.WEB_SERVERS))
    parser.add_argument("--reps", type=int, help="repetitions (default: 3; quick 2)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="where dicomweb-latest.md/.json go (default: benchmarks/results)")
    parser.add_argument("--work", help="scratch directory (default: a new one in /var/tmp)")
    parser.add_argument("--ours-src", metavar="DIR",
                        help="run dicomtwist from this source tree instead of the installed one")
    parser.add_argument("--ours-commit", metavar="REV",
                        help="run dicomtwist as committed at REV (git archive)")
    args = parser.parse_args(argv)
    args.mode = args.mode or "default"
    return args


def main(argv: list[str]) -> int:
    """Run the measures; write the report; exit 0 unless the benchmark itself broke."""
    args = parse_args(argv)
    scale = SCALES[args.mode]
    if args.reps:
        scale = replace(scale, reps=args.reps)
    if not os.access(dcmtk("storescu"), os.X_OK):
        raise SystemExit(f"DCMTK storescu not found at {dcmtk('storescu')}")
    work = args.work or tempfile.mkdtemp(prefix="dicomtwist-web-bench-",
                                         dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    os.makedirs(work, exist_ok=True)
    source = run.select_ours(args.ours_src, args.ours_commit, work)
    results = run.Results()
    names = []
    for name in (n.strip() for n in args.peers.split(",") if n.strip()):
        if name not in servers.WEB_SERVERS:
            raise SystemExit(f"unknown peer {name!r}; one of {', '.join(servers.WEB_SERVERS)}")
        why = servers.WEB_SERVERS[name].available()
        if why:
            run.log(f"skipping {name}: {why}")
            results.skipped[name] = why
        else:
            names.append(name)
    if "ours" not in names:
        raise SystemExit("ours must run: " + results.skipped.get("ours", "not selected"))
    results.meta = run.metadata(args.mode, run.SCALES["smoke"], names)
    results.meta["scale"] = asdict(scale)
    results.meta["versions"]["dicomtwist"] += f" ({source}; checkout at {results.meta['checkout']})"
    results.meta["load_before"] = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    bench = WebBench(scale, names, work, results)
    try:
        bench.run_all()
    finally:
        bench.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results.meta["cache_note"] = bench.cache_note
    results.meta["runtime_s"] = round(time.monotonic() - started, 1)
    results.meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    paths = write(results.as_dict(), args.out)
    run.log(f"done in {results.meta['runtime_s']:.0f} s: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

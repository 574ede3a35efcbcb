"""Measure dicomtwist's archive side by side with its peers, in one run.

Usage::

    python benchmarks/run.py                       # the default run (~20 minutes)
    python benchmarks/run.py --quick               # scaled down (~3 minutes)
    python benchmarks/run.py --full                # 100,000-instance bulk load
    python benchmarks/run.py --peers ours,dcmqrscp --reps 5 --out /tmp/results

Peers: ``ours`` (the installed dicomtwist: ``pip install .`` first),
``pynetdicom`` (qrscp), ``dcmqrscp`` and ``storescp`` (DCMTK, store measures
only) and ``orthanc``; those not installed are skipped and named in the
report.  All traffic is on 127.0.0.1; DCMTK's ``storescu``, ``findscu``,
``movescu`` and ``getscu`` (with ``TCP_NODELAY=1``) and a raw-socket client
are the load generators.  Every load is bounded in count and in time.

Each measure runs ``--reps`` times with the peers interleaved (the order
rotates every repetition); the report gives the median and the min-max and
the ratio of ours to each peer, and is written to ``OUT/latest.md``,
``OUT/latest.json`` and ``OUT/latest.png`` (if matplotlib is installed).
See docs/benchmarks.md for what each measure means.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import data, rawclient, report, servers  # noqa: E402
from benchmarks.servers import Server, dcmtk  # noqa: E402

MIB = 1 << 20
CT_BYTES = 512 * 512 * 2


@dataclass(frozen=True)
class Scale:
    """How much load each measure applies."""

    reps: int
    assoc_seconds: float          # per client, per repetition
    assoc_count: int              # per client, per repetition
    idle: int                     # idle associations held
    store_one: int                # 0.5 MB instances over one association
    store_4: int                  # per association, 4 concurrent
    store_16: int                 # per association, 16 concurrent
    bulk: int                     # small instances in the bulk load
    bulk_concurrency: int
    find_repeat: int              # findscu runs per query per repetition
    ct_study: int                 # instances in the C-MOVE / C-GET study
    large_mib: int                # pixel data of the "1 GB" instance
    timeout: float = 600.0        # bound on any one client run
    settle: float = 1.0           # seconds to let a server settle before a memory reading


SCALES = {
    # CI: seconds, just to keep the suite working.
    "smoke": Scale(reps=1, assoc_seconds=0.5, assoc_count=20, idle=10, store_one=4, store_4=1,
                   store_16=1, bulk=40, bulk_concurrency=2, find_repeat=1, ct_study=4,
                   large_mib=4, timeout=120.0, settle=0.1),
    "quick": Scale(reps=2, assoc_seconds=1.5, assoc_count=2000, idle=200, store_one=40,
                   store_4=10, store_16=3, bulk=1000, bulk_concurrency=4, find_repeat=2,
                   ct_study=20, large_mib=64),
    "default": Scale(reps=3, assoc_seconds=3.0, assoc_count=20000, idle=1000, store_one=200,
                     store_4=50, store_16=16, bulk=10000, bulk_concurrency=4, find_repeat=3,
                     ct_study=100, large_mib=953),
    "full": Scale(reps=3, assoc_seconds=3.0, assoc_count=20000, idle=1000, store_one=200,
                  store_4=50, store_16=16, bulk=100000, bulk_concurrency=4, find_repeat=3,
                  ct_study=100, large_mib=953),
}


@dataclass
class Measure:
    """One row of the results: values per peer, one per repetition."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    values: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, peer: str, value: float | None, note: str = "") -> None:
        """Record one repetition (``None``: the peer could not do it)."""
        if value is not None:
            self.values.setdefault(peer, []).append(value)
        if note and note not in self.notes.setdefault(peer, []):
            self.notes[peer].append(note)


class Results:
    """Every measure, memory peaks per phase, and the run's metadata."""

    def __init__(self) -> None:
        self.measures: dict[str, Measure] = {}
        #: phase -> peer -> peak MiB (max over repetitions)
        self.memory: dict[str, dict[str, float]] = {}
        self.meta: dict[str, object] = {}
        self.skipped: dict[str, str] = {}

    def measure(self, key: str, label: str, unit: str, higher_is_better: bool) -> Measure:
        """Get or create a measure (rows keep their first-seen order)."""
        if key not in self.measures:
            self.measures[key] = Measure(key, label, unit, higher_is_better)
        return self.measures[key]

    def peak(self, phase: str, peer: str, mib: float) -> None:
        """Keep the highest memory figure of a phase."""
        row = self.memory.setdefault(phase, {})
        row[peer] = max(row.get(peer, 0.0), mib)

    def as_dict(self) -> dict:
        """Plain data for JSON."""
        return {"meta": self.meta, "skipped": self.skipped, "memory": self.memory,
                "measures": {k: asdict(m) for k, m in self.measures.items()}}


class Sampler(threading.Thread):
    """Sample a server's resident set (summed over its processes) until stopped."""

    def __init__(self, server: Server, interval: float) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.peak_kib = 0
        self._halt = threading.Event()

    def run(self) -> None:
        """Poll until :meth:`finish`."""
        while not self._halt.is_set():
            self.peak_kib = max(self.peak_kib, self.server.memory_kib())
            self._halt.wait(self.interval)

    def finish(self) -> int:
        """Stop; the peak in KiB (the single process's ``VmHWM`` if higher)."""
        self._halt.set()
        self.join()
        peak = max(self.peak_kib, self.server.memory_kib())
        if not self.server.forks:
            peak = max(peak, self.server.hwm_kib())
        return peak


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


def peer_env() -> dict[str, str]:
    """The clients' environment: Nagle off for DCMTK tools."""
    return dict(os.environ, TCP_NODELAY="1")


@dataclass
class ClientRun:
    """One finished client process."""

    returncode: int
    output: str
    elapsed: float


def run_clients(commands: list[list[str]], timeout: float, cwd: str) -> tuple[list[ClientRun], float]:
    """Start every command at once; wait for all (killing any past ``timeout``).

    Waits with a blocking ``waitpid``: ``Popen.wait(timeout)`` polls with
    sleeps of up to 50 ms, which would round every latency up to that grain.

    :returns: each one's outcome and the wall time of the whole batch.
    """
    procs = []
    start = time.perf_counter()
    for cmd in commands:
        out = tempfile.TemporaryFile(dir=cwd)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=peer_env(), stdin=subprocess.DEVNULL)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.daemon = True
        watchdog.start()
        procs.append((proc, out, watchdog))
    runs = []
    end = start
    for proc, out, watchdog in procs:
        proc.wait()
        end = time.perf_counter()
        watchdog.cancel()
        out.seek(0)
        runs.append(ClientRun(proc.returncode, out.read().decode("utf-8", "replace"),
                              end - start))
        out.close()
    return runs, end - start


def retrieve_command(kind: str, server: Server, study_uid: str) -> list[str]:
    """The client of a C-MOVE of a study to the ``storescp`` destination
    (``kind`` "move": ``movescu``) or of its C-GET (``getscu --ignore``)."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    if kind == "move":
        return [dcmtk("movescu"), "-v", "-S", "-aet", "MOVESCU", "-aec", server.ae_title,
                "-aem", servers.MOVE_DESTINATION, "127.0.0.1", str(server.port), *keys]
    return [dcmtk("getscu"), "-v", "-S", "--ignore", "-aet", "GETSCU",
            "-aec", server.ae_title, "127.0.0.1", str(server.port), *keys]


def retrieved(kind: str, output: str, count: int) -> int:
    """How many sub-operations a :func:`retrieve_command` client completed,
    from its output (``count``: the study's instances)."""
    if kind == "move":
        return count if "Received Final Move Response (Success)" in output else 0
    found = re.search(r"Number of Completed Suboperations\s*:\s*(\d+)", output)
    return int(found.group(1)) if found else 0


def write_fsync_loop(paths: list[str], directory: str) -> float:
    """Copy each file into ``directory`` (made, then deleted) with a plain
    loop: read it, write it to a new file, ``fsync``, close; one after the
    other, as a server storing them over one association must.

    :returns: the elapsed seconds.
    """
    os.makedirs(directory)
    try:
        start = time.perf_counter()
        for n, path in enumerate(paths):
            with open(path, "rb") as fp:
                data = memoryview(fp.read())
            fd = os.open(os.path.join(directory, f"{n}.dcm"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def median(values: list[float]) -> float:
    """The median (of a non-empty list)."""
    return statistics.median(values)


# -- the suite ----------------------------------------------------------------
QR_KEYS_STUDY = ["PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
                 "StudyID", "StudyInstanceUID"]
QR_KEYS_IMAGE = ["SOPInstanceUID", "InstanceNumber"]


class Bench:
    """Runs the measures against the started servers."""

    def __init__(self, scale: Scale, names: list[str], work: str, results: Results,
                 mode: str, verbose: bool = False) -> None:
        self.scale = scale
        self.names = names
        self.work = work
        self.results = results
        self.mode = mode
        self.verbose = verbose
        self.servers: dict[str, Server] = {}
        #: Servers that died mid-run: name -> where.
        self.dead: dict[str, str] = {}
        self.destination = servers.Destination(os.path.join(work, "destination"))
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=4, mp_context=multiprocessing.get_context("fork"))
        # Fork the workers now, before any sampler thread exists.
        self.pool.submit(time.sleep, 0).result()
        self.rep = 0

    # -- lifecycle ----------------------------------------------------------
    def start(self, measures: frozenset[str], tag: str) -> None:
        """Start every selected server taking part in any of ``measures``."""
        for name in self.names:
            cls = servers.SERVERS[name]
            if not cls.measures & measures:
                continue
            server = cls(os.path.join(self.work, f"{tag}-{name}"), self.destination.port)
            if name in self.dead:
                continue
            log(f"starting {name}")
            server.start()
            self.servers[name] = server
            if "assoc" in server.measures:
                # Warm up (lazy imports, first connection) outside any measure.
                rawclient.echo_once(server.port, server.ae_title,
                                    rawclient.associate_rq(server.ae_title))

    def stop(self) -> None:
        """Stop (all at once) and wipe every running server."""
        running = list(self.servers.values())
        for server in running:
            server.terminate()
        for server in running:
            server.stop()
            server.wipe()
        self.servers.clear()

    def order(self, measure: str) -> list[Server]:
        """The servers taking ``measure``, rotated by the repetition number."""
        taking = [s for s in self.servers.values()
                  if measure in s.measures and s.name not in self.dead]
        if not taking:
            return []
        k = self.rep % len(taking)
        return taking[k:] + taking[:k]

    def check_alive(self, server: Server, where: str = "") -> None:
        """Note a server that died mid-run; it takes no further part."""
        if not server.alive() and server.name not in self.dead:
            where = where or "a measure"
            log(f"{server.name} DIED during {where}:\n{server.log_tail()}")
            self.dead[server.name] = where
            self.results.skipped[server.name] = f"died during {where} (see its log)"

    @contextmanager
    def tracking(self, server: Server, phase: str, interval: float = 0.1) -> Iterator[None]:
        """Record the server's peak memory during the block under ``phase``."""
        server.reset_peak()
        sampler = Sampler(server, interval)
        sampler.start()
        start = time.monotonic()
        try:
            yield
        finally:
            peak = sampler.finish()
            self.results.peak(phase, server.name, peak / 1024)
            if self.verbose:
                log(f"  {phase}, {server.name}: {time.monotonic() - start:.2f} s,"
                    f" peak {peak / 1024:.0f} MiB")

    # -- association rate ---------------------------------------------------
    def assoc(self, clients: int) -> None:
        """Sequential connect + C-ECHO + release, from ``clients`` processes."""
        m = self.results.measure(f"assoc_{clients}", f"Associations/s, {clients} client"
                                 + ("s" if clients > 1 else ""), "assoc/s", True)
        for server in self.order("assoc"):
            with self.tracking(server, "associations"):
                futures = [self.pool.submit(rawclient.echo_loop, server.port, server.ae_title,
                                            self.scale.assoc_count, self.scale.assoc_seconds)
                           for _ in range(clients)]
                outcomes = [f.result() for f in futures]
            done = sum(o[0] for o in outcomes)
            failed = sum(o[1] for o in outcomes)
            elapsed = max(o[2] for o in outcomes)
            m.add(server.name, done / elapsed, f"{failed} failed" if failed else "")
            self.check_alive(server, m.label)

    # -- idle associations --------------------------------------------------
    def idle(self) -> None:
        """Hold ``scale.idle`` associations open; the server's memory meanwhile."""
        n = self.scale.idle
        m = self.results.measure("idle_rss", f"RSS holding {n} idle associations", "MiB", False)
        per = self.results.measure("idle_per_assoc", "RSS growth per idle association",
                                   "KiB", False)
        for server in self.order("idle"):
            time.sleep(self.scale.settle / 2)
            before = server.memory_kib()
            holder = rawclient.IdleAssociations(server.port, server.ae_title)
            try:
                holder.open(n, timeout=min(120.0, self.scale.timeout))
                time.sleep(self.scale.settle)
                held = server.memory_kib()
                processes = len(server.pids())
                rss = server.rss_kib()
            finally:
                holder.close()
            note = f"{holder.accepted}/{n} accepted"
            if holder.rejected:
                note += f", {holder.rejected} rejected"
            if holder.failed:
                note += f", {holder.failed} failed"
            if holder.pending:
                note += f", {holder.pending} unanswered"
            if holder.attempted < n:
                note += f" (stopped opening after {holder.attempted}: the server took no more)"
            if server.forks:
                # Summed RSS counts the pages the children share with the
                # parent once per child; PSS splits them: the real cost.
                note += (f"; {processes} processes: PSS summed over them"
                         f" (summed RSS {rss / 1024:,.0f} MiB)")
            m.add(server.name, held / 1024, note)
            if holder.accepted >= 0.9 * n:
                per.add(server.name, (held - before) / holder.accepted)
            self.results.peak("idle associations", server.name, held / 1024)
            time.sleep(self.scale.settle)  # let forked children exit before the next peer
            self.check_alive(server, m.label)

    # -- C-STORE -------------------------------------------------------------
    def storescu(self, server: Server, groups: list[list[str]], extra: list[str] = (),
                 ) -> tuple[float, int, int, int]:
        """One ``storescu`` per group of files, all at once.

        :returns: ``(elapsed, succeeded, failed, rejected)`` instances.
        """
        commands = [[dcmtk("storescu"), "-v", "-nh", *extra, "-aet", "STORESCU",
                     "-aec", server.ae_title, "127.0.0.1", str(server.port), *files]
                    for files in groups]
        runs, elapsed = run_clients(commands, self.scale.timeout, self.work)
        ok = failed = rejected = 0
        for run, files in zip(runs, groups):
            success = run.output.count("Received Store Response (Success)")
            ok += success
            if "Association Rejected" in run.output:
                rejected += len(files) - success
            else:
                failed += len(files) - success
        return elapsed, ok, failed, rejected

    def disk_limit(self, paths: list[str], m: Measure, mb: Measure) -> None:
        """The disk's own limit next to C-STORE on one association: the same
        files written and fsynced one by one by a plain loop, on the file
        system of the servers' instance directories (:func:`write_fsync_loop`)."""
        elapsed = write_fsync_loop(paths, os.path.join(self.work, f"disk-limit-rep{self.rep}"))
        m.add("disk", len(paths) / elapsed)
        mb.add("disk", sum(os.path.getsize(p) for p in paths) / elapsed / 1e6)
        peers = self.results.meta.get("peers", [])
        if "disk" not in peers:
            # A new list: the old one is the servers' (Bench.names).
            self.results.meta["peers"] = [*peers, "disk"]

    def store(self) -> None:
        """0.5 MB CT instances: one association, then 4 and 16 concurrent."""
        s = self.scale
        plans = [("store_1", "C-STORE 0.5 MB, 1 association", 1, s.store_one),
                 ("store_4", "C-STORE 0.5 MB, 4 associations", 4, s.store_4),
                 ("store_16", "C-STORE 0.5 MB, 16 associations", 16, s.store_16)]
        total = sum(c * n for _, _, c, n in plans)
        directory = os.path.join(self.work, f"ct-rep{self.rep}")
        paths, _ = data.write_ct_set(directory, total)
        size = os.path.getsize(paths[0])
        try:
            for key, label, concurrency, per in plans:
                m = self.results.measure(key, label, "inst/s", True)
                mb = self.results.measure(key + "_mb", label.replace("C-STORE", "C-STORE MB/s,"),
                                          "MB/s", True)
                files = paths[:concurrency * per]
                paths_rest = paths[concurrency * per:]
                groups = [files[i::concurrency] for i in range(concurrency)]
                if concurrency == 1:
                    self.disk_limit(files, m, mb)
                for server in self.order("store"):
                    with self.tracking(server, "C-STORE 0.5 MB"):
                        elapsed, ok, failed, rejected = self.storescu(server, groups)
                    note = ""
                    if failed or rejected:
                        note = f"{failed} failed, {rejected} rejected of {len(files)}"
                    m.add(server.name, ok / elapsed, note)
                    mb.add(server.name, ok * size / elapsed / 1e6)
                    self.check_alive(server, m.label)
                paths = paths_rest
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    # -- one large instance --------------------------------------------------
    def large(self) -> None:
        """One big instance (``scale.large_mib`` MiB of pixel data): RSS growth."""
        from benchmarks import stream_memory

        path = os.path.join(self.work, "large.dcm")
        size = stream_memory.write_instance(path, self.scale.large_mib)
        label = f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"
        growth = self.results.measure("large_growth", f"RSS growth receiving one {label}"
                                      " instance", "MiB", False)
        speed = self.results.measure("large_mbs", f"C-STORE of one {label} instance", "MB/s", True)
        try:
            for server in self.order("large"):
                time.sleep(self.scale.settle / 2)
                before = server.memory_kib()
                server.reset_peak()
                sampler = Sampler(server, 0.02)
                sampler.start()
                try:
                    elapsed, ok, failed, rejected = self.storescu(
                        server, [[path]], ["-ts", "900", "-td", "900"])
                finally:
                    peak = sampler.finish()
                self.results.peak("large instance", server.name, peak / 1024)
                note = "" if ok else "store failed"
                growth.add(server.name, max(0.0, peak - before) / 1024, note)
                speed.add(server.name, size / elapsed / 1e6 if ok else None, note)
                self.check_alive(server, growth.label)
        finally:
            os.unlink(path)

    # -- bulk load, C-FIND, C-MOVE, C-GET -------------------------------------
    def load(self, server: Server, paths: list[str], concurrency: int) -> tuple[float, int, int]:
        """Store ``paths`` over ``concurrency`` associations: (rate, failed, rejected)."""
        groups = [paths[i::concurrency] for i in range(concurrency)]
        groups = [g for g in groups if g]
        elapsed, ok, failed, rejected = self.storescu(server, groups)
        return ok / elapsed, failed, rejected

    def findscu(self, server: Server, level: str, keys: list[str],
                verbose: bool = False) -> ClientRun:
        """One ``findscu`` (Study Root); returns its outcome."""
        cmd = [dcmtk("findscu"), "-S", "-aet", "FINDSCU", "-aec", server.ae_title,
               "127.0.0.1", str(server.port), "-k", f"QueryRetrieveLevel={level}"]
        if verbose:
            cmd.insert(1, "-v")
        for key in keys:
            cmd += ["-k", key]
        runs, elapsed = run_clients([cmd], self.scale.timeout, self.work)
        runs[0].elapsed = elapsed
        return runs[0]

    def find(self, key: str, label: str, level: str, keys: list[str],
             expected: int, phase: str = "C-FIND") -> None:
        """Latency of one query (the median of ``find_repeat`` runs per repetition)."""
        m = self.results.measure(key, label, "ms", False)
        for server in self.order("find"):
            with self.tracking(server, phase):
                if self.rep == 0:
                    check = self.findscu(server, level, keys, verbose=True)
                    found = check.output.count("Find Response: ")
                    if check.returncode or "Received Final Find Response (Success)" not in check.output:
                        m.add(server.name, None, "query failed")
                        continue
                    if found != expected:
                        m.add(server.name, None, f"{found} matches (expected {expected})")
                times = []
                spent = 0.0
                # Repeat up to find_repeat times, but stop after ~3 s of one query.
                while len(times) < self.scale.find_repeat and (not times or spent < 3.0):
                    run = self.findscu(server, level, keys)
                    times.append(run.elapsed * 1000)
                    spent += run.elapsed
            m.add(server.name, median(times), "" if run.returncode == 0 else "findscu failed")
            self.check_alive(server, m.label)

    def retrieve(self, kind: str, study_uid: str, count: int, size: int) -> None:
        """C-MOVE (to the storescp destination) or C-GET of the CT study."""
        label = "C-MOVE" if kind == "move" else "C-GET"
        m = self.results.measure(kind, f"{label} of a {count}-instance CT study", "inst/s", True)
        mb = self.results.measure(kind + "_mb", f"{label} MB/s", "MB/s", True)
        for server in self.order(kind):
            cmd = retrieve_command(kind, server, study_uid)
            with self.tracking(server, label):
                runs, elapsed = run_clients([cmd], self.scale.timeout, self.work)
            done = retrieved(kind, runs[0].output, count)
            note = "" if done == count else f"{done}/{count} sub-operations completed"
            m.add(server.name, done / elapsed if done else None, note)
            mb.add(server.name, done * size / elapsed / 1e6 if done else None)
            self.check_alive(server, m.label)

    # -- phases ----------------------------------------------------------------
    def network_phase(self, wanted: set[str]) -> None:
        """Associations, idle associations, C-STORE 0.5 MB, the large instance."""
        self.start(frozenset({"assoc", "idle", "store", "large"}), "net")
        try:
            for self.rep in range(self.scale.reps):
                if "assoc" in wanted:
                    log(f"rep {self.rep + 1}: association rate")
                    self.assoc(1)
                    self.assoc(4)
                if "store" in wanted:
                    log(f"rep {self.rep + 1}: C-STORE 0.5 MB")
                    self.store()
            self.rep = 0
            if wanted & {"idle", "large"} and wanted & {"assoc", "store"}:
                # Fresh servers: memory freed by the C-STORE runs but kept by
                # the allocator would absorb the idle associations' growth.
                self.stop()
                self.start(frozenset({"idle", "large"}), "idle")
            if "idle" in wanted:
                log(f"{self.scale.idle} idle associations")
                self.idle()
            if "large" in wanted:
                log(f"one large instance ({self.scale.large_mib} MiB)")
                self.large()
        finally:
            self.stop()

    def archive_phase(self, wanted: set[str]) -> None:
        """Bulk load, then C-FIND, C-MOVE and C-GET on the loaded index."""
        s = self.scale
        studies = max(2, s.bulk // data.INSTANCES_PER_STUDY)
        self.start(frozenset({"bulk", "find", "move", "get"}), "archive")
        sets = os.path.join(self.work, "small")
        try:
            log(f"writing {studies * data.INSTANCES_PER_STUDY} small instances")
            baseline = data.write_small_set(os.path.join(sets, "baseline"), 0, 1)
            bulk = data.write_small_set(os.path.join(sets, "bulk"), 1, studies - 1)
            ct_paths, ct_study = data.write_ct_set(os.path.join(self.work, "ct-study"),
                                                   s.ct_study, patient_id="CT0001")
            ct_size = os.path.getsize(ct_paths[0])
            for server in self.servers.values():
                rate, failed, rejected = self.load(server, baseline.paths, 1)
                if failed or rejected:
                    raise RuntimeError(f"{server.name}: baseline study not stored")
            self.rep = 0
            study_keys = [k for k in QR_KEYS_STUDY if k != "PatientID"]
            if "find" in wanted:
                log("C-FIND baseline (one study)")
                for self.rep in range(s.reps):
                    self.find("find_baseline", "C-FIND STUDY by PatientID, 1-study index",
                              "STUDY", [f"PatientID={baseline.patient_ids[0]}", *study_keys], 1,
                              phase="C-FIND (1 study)")
            chunks = [bulk.paths[i * len(bulk.paths) // s.reps:(i + 1) * len(bulk.paths) // s.reps]
                      for i in range(s.reps)]
            m = self.results.measure("bulk", f"Bulk load, small instances ({s.bulk_concurrency}"
                                     " associations)", "inst/s", True)
            loaded = {name: len(baseline.paths) for name in self.servers}
            for self.rep in range(s.reps):
                log(f"rep {self.rep + 1}: bulk load of {len(chunks[self.rep])}")
                for server in self.order("bulk"):
                    if server.max_bulk and loaded[server.name] + len(chunks[self.rep]) > server.max_bulk:
                        m.add(server.name, None, f"loaded only {loaded[server.name]:,} instances"
                              f" (its storage area holds {server.max_bulk:,})")
                        continue
                    loaded[server.name] += len(chunks[self.rep])
                    with self.tracking(server, "bulk load"):
                        rate, failed, rejected = self.load(server, chunks[self.rep],
                                                           s.bulk_concurrency)
                    m.add(server.name, rate, f"{failed} failed, {rejected} rejected"
                          if failed or rejected else "")
                    self.check_alive(server, m.label)
            log(f"storing the {s.ct_study}-instance CT study")
            for server in self.servers.values():
                if "move" in server.measures:
                    self.load(server, ct_paths, 1)
            total_studies = studies + 1
            mid = studies // 2
            pid = data.patient_id(mid)
            per_patient = sum(1 for n in range(studies) if data.patient_id(n) == pid)
            name_prefix = pid[:-1]  # BENCH^P00001* : ten patients
            name_matches = sum(1 for n in range(studies)
                               if data.patient_id(n).startswith(name_prefix))
            first = min(100, studies // 4)
            span = min(50, max(1, studies // 4))
            date_range = f"{data.study_date(first)}-{data.study_date(first + span - 1)}"
            series_study = bulk.study_uids[len(bulk.study_uids) // 3]
            series_uid = bulk.series_uids[len(bulk.series_uids) // 3]
            queries = [
                ("find_patientid", "C-FIND STUDY by PatientID", "STUDY",
                 [f"PatientID={pid}", *study_keys], per_patient),
                ("find_name", "C-FIND STUDY by wildcard PatientName", "STUDY",
                 [f"PatientName=BENCH^{name_prefix}*", "PatientID",
                  *[k for k in study_keys if k != "PatientName"]], name_matches),
                ("find_date", "C-FIND STUDY by StudyDate range", "STUDY",
                 [f"StudyDate={date_range}", "PatientID",
                  *[k for k in study_keys if k != "StudyDate"]], span),
                ("find_all", f"C-FIND STUDY, all studies ({total_studies})", "STUDY",
                 ["PatientID", *study_keys], total_studies),
                ("find_series", "C-FIND IMAGE by SeriesInstanceUID", "IMAGE",
                 [f"StudyInstanceUID={series_study}", f"SeriesInstanceUID={series_uid}",
                  *QR_KEYS_IMAGE], data.INSTANCES_PER_STUDY),
            ]
            if "find" in wanted:
                for self.rep in range(s.reps):
                    log(f"rep {self.rep + 1}: C-FIND")
                    for key, label, level, keys, expected in queries:
                        self.find(key, label, level, keys, expected)
            for kind in ("move", "get"):
                if kind in wanted:
                    for self.rep in range(s.reps):
                        log(f"rep {self.rep + 1}: {kind}")
                        self.retrieve(kind, ct_study, s.ct_study, ct_size)
        finally:
            self.stop()
            shutil.rmtree(sets, ignore_errors=True)
            shutil.rmtree(os.path.join(self.work, "ct-study"), ignore_errors=True)

    def close(self) -> None:
        """Stop everything still running."""
        self.stop()
        self.destination.stop()
        self.pool.shutdown()


ALL_PHASES = ("assoc", "idle", "store", "large", "bulk", "find", "move", "get")


def tool_version(cmd: list[str]) -> str:
    """The first line a tool prints for its version, or ``?``."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            return line.strip().lstrip("$").strip()
    return "?"


def metadata(mode: str, scale: Scale, names: list[str]) -> dict[str, object]:
    """What ran where: versions, machine, scale."""
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    versions = {"dicomtwist": servers.Ours.describe(), "python": platform.python_version()}
    try:
        import pynetdicom
        versions["pynetdicom"] = pynetdicom.__version__
    except ImportError:
        pass
    dcmtk_version = re.search(r"v(\d+\.\d+\.\d+)", tool_version([dcmtk("dcmqrscp"), "--version"]))
    versions["dcmtk"] = dcmtk_version.group(1) if dcmtk_version else "?"
    if "orthanc" in names:
        versions["orthanc"] = tool_version([servers.ORTHANC, "--version"]).split()[-1]
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "mode": mode, "scale": asdict(scale),
            "checkout": commit,
            "cpus": os.cpu_count(), "machine": platform.machine(),
            "kernel": platform.release(), "versions": versions, "peers": names}


def raise_fd_limit(needed: int) -> None:
    """Lift the soft open-files limit (inherited by the servers) for idle sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def select_ours(source: str | None, commit: str | None, work: str) -> str:
    """Point :class:`servers.Ours` at a source tree or a commit; describe the choice.

    :param commit: extract ``git archive`` of it into ``work`` and run that.
    """
    if commit:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", commit],
                                capture_output=True, text=True, check=True).stdout.strip()
        tree = os.path.join(work, "ours-src")
        os.makedirs(tree, exist_ok=True)
        archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "dicomtwist"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        # Byte-compiled, as `pip install` leaves an installed package: a
        # daemon compiling its modules at every start (with
        # PYTHONDONTWRITEBYTECODE set) holds about 2 MiB more.
        subprocess.run([sys.executable, "-m", "compileall", "-q", tree], check=True)
        servers.Ours.source = tree
        return f"commit {commit}"
    if source:
        servers.Ours.source = os.path.abspath(source)
        return servers.Ours.source
    return "installed package"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="scaled-down counts (a few minutes)")
    size.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="the 100,000-instance bulk load")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="seconds-long run that only checks the suite works (CI)")
    parser.add_argument("--peers", default=",".join(servers.SERVERS),
                        help="comma-separated: " + ",".join(servers.SERVERS)
                        + " (default: all that are installed)")
    parser.add_argument("--measures", default=",".join(ALL_PHASES),
                        help="comma-separated subset of " + ",".join(ALL_PHASES))
    parser.add_argument("--reps", type=int, help="repetitions (default: 3; quick 2)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="where latest.md/.json/.png go (default: benchmarks/results)")
    parser.add_argument("--work", help="scratch directory (default: a new temp dir)")
    parser.add_argument("--ours-src", metavar="DIR",
                        help="run dicomtwist from this source tree (PYTHONPATH) instead of"
                        " the installed package")
    parser.add_argument("--ours-commit", metavar="REV",
                        help="run dicomtwist as committed at REV (git archive of this"
                        " checkout into the scratch directory)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log each measurement's duration and peak memory")
    args = parser.parse_args(argv)
    args.mode = args.mode or "default"
    return args


def main(argv: list[str]) -> int:
    """Run the suite; write the report; exit 0 unless the suite itself broke."""
    args = parse_args(argv)
    scale = SCALES[args.mode]
    if args.reps:
        scale = replace(scale, reps=args.reps)
    wanted = {m.strip() for m in args.measures.split(",") if m.strip()}
    unknown = wanted - set(ALL_PHASES)
    if unknown:
        raise SystemExit(f"unknown measures: {', '.join(sorted(unknown))}")
    for tool in ("storescu", "findscu", "movescu", "getscu", "storescp"):
        if not os.access(dcmtk(tool), os.X_OK):
            raise SystemExit(f"DCMTK {tool} not found at {dcmtk(tool)} (apt-get install dcmtk)")
    # /var/tmp: on disk (fsync costs what it costs), where /tmp may be a tmpfs.
    work = args.work or tempfile.mkdtemp(prefix="dicomtwist-bench-",
                                         dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    os.makedirs(work, exist_ok=True)
    source = select_ours(args.ours_src, args.ours_commit, work)
    results = Results()
    names = []
    for name in (n.strip() for n in args.peers.split(",") if n.strip()):
        if name not in servers.SERVERS:
            raise SystemExit(f"unknown peer {name!r}; one of {', '.join(servers.SERVERS)}")
        why = servers.SERVERS[name].available()
        if why:
            log(f"skipping {name}: {why}")
            results.skipped[name] = why
        else:
            names.append(name)
    if "ours" not in names:
        raise SystemExit("ours must run: " + results.skipped.get("ours", "not selected"))
    raise_fd_limit(scale.idle * 2 + 1024)
    results.meta = metadata(args.mode, scale, names)
    results.meta["versions"]["dicomtwist"] += f" ({source}; checkout at {results.meta['checkout']})"
    results.meta["load_before"] = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    bench = Bench(scale, names, work, results, args.mode, args.verbose)
    try:
        bench.destination.start()
        if wanted & {"assoc", "idle", "store", "large"}:
            bench.network_phase(wanted)
        if wanted & {"bulk", "find", "move", "get"}:
            bench.archive_phase(wanted)
    finally:
        bench.close()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results.meta["runtime_s"] = round(time.monotonic() - started, 1)
    results.meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(args.out, exist_ok=True)
    paths = report.write(results.as_dict(), args.out, with_plot=not args.no_plot)
    log(f"done in {results.meta['runtime_s']:.0f} s: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

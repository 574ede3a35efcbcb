"""Measure dicomtwist on PostgreSQL, with worker processes, next to Orthanc + PostgreSQL.

Usage::

    python benchmarks/scaleout.py                  # the default run (~40 minutes)
    python benchmarks/scaleout.py --quick          # scaled down (~5 minutes)
    python benchmarks/scaleout.py --smoke          # seconds; only checks it works (CI)
    python benchmarks/scaleout.py --no-million --reps 5 --ours-commit HEAD
    python benchmarks/scaleout.py --million-pg     # 1,000,000 rows on PostgreSQL too

The benchmark starts its own PostgreSQL cluster (:class:`servers.PostgresCluster`:
``initdb`` into the scratch directory, 127.0.0.1 on a free port, trust
authentication, ``fsync`` and ``synchronous_commit`` on as shipped) and
gives every PostgreSQL-backed server an empty database of its own.  The
servers (:data:`servers.SCALEOUT_SERVERS`) are ``ours-sqlite`` (``dicomqr``,
its default sqlite index), ``ours-pg`` (the same with ``--database-location
postgresql://...`` and ``--workers 1``), ``ours-pg-w2`` (``--workers 2``) and
``orthanc-pg`` (Orthanc 1.10 with the ``orthanc-postgresql`` index plugin).
All traffic is on 127.0.0.1; the load generators are run.py's: DCMTK
``storescu``/``findscu`` and the raw-socket C-ECHO client.

Two phases, the peers interleaved (the order rotates every repetition),
``--reps`` repetitions, medians with min-max:

1. **Workers**: association rate (1 and 4 clients: connect, C-ECHO,
   release) and bulk load (small instances over 4 associations) on
   ``ours-pg``, ``ours-pg-w2`` and ``orthanc-pg``.
2. **Index size**: on ``ours-sqlite``, ``ours-pg`` and ``orthanc-pg``, every
   C-FIND query of run.py's suite on the 1-study index (20 instances), then
   the bulk load to 100,000 instances (storescu, 4 associations) and the
   queries again, then (unless ``--no-million``) 900,000 more index rows
   added by :func:`load_rows` (the index's own ``add``, 20,000 instances a
   transaction, while the daemon runs: no files, which C-FIND never reads)
   and the queries at 1,000,000: on ``ours-sqlite``, and on ``ours-pg`` with
   ``--million-pg`` (and in ``--smoke``; its ``add`` path is too slow for
   the default run's time).  Orthanc has no such path (its index is
   written by its own store code only), and storing 900,000 more instances
   through it does not fit in the run: it stays at 100,000.  The same
   queries (same keys) at every size, so each is compared with its own
   1-study figure; "all studies" is also timed to its first response.

Every load is verified: each storescu instance must be acknowledged with
Success and the server's index must then hold exactly the instances sent,
counted in its own database (sqlite file, PostgreSQL tables; for Orthanc
its ``resources`` table), and every C-FIND's first run must give the
expected number of matches; a server failing a check gets a note and no
figure.  Results: ``OUT/scaleout-latest.md`` and ``.json``; targets from
issue 15 (bulk load and association rate at least Orthanc's with workers;
every C-FIND at 1,000,000 instances at most 2x its 1-study figure).  See
docs/benchmarks.md, "PostgreSQL and workers".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import data, report, run, servers  # noqa: E402
from benchmarks.servers import Server, dcmtk  # noqa: E402

LABELS = {"ours-sqlite": "dicomtwist + sqlite", "ours-pg": "dicomtwist + PG, 1 worker",
          "ours-pg-w2": "dicomtwist + PG, 2 workers", "orthanc-pg": "Orthanc + PG"}
#: The index-size phase's servers and the workers phase's.
INDEX_PEERS = ("ours-sqlite", "ours-pg", "orthanc-pg")
WORKER_PEERS = ("ours-pg", "ours-pg-w2", "orthanc-pg")
#: Instances per transaction of :func:`load_rows`.
ROWS_PER_TRANSACTION = 20000


@dataclass(frozen=True)
class Scale:
    """How much load each measure applies."""

    reps: int
    assoc_seconds: float          # per client, per repetition
    assoc_count: int              # per client, per repetition
    bulk: int                     # small instances in the workers phase's bulk load
    bulk_concurrency: int
    find_repeat: int              # findscu runs per query per repetition
    level: int                    # instances stored by DIMSE (100,000)
    big: int                      # instances in the index after load_rows (1,000,000)
    timeout: float = 900.0        # bound on any one client run
    settle: float = 1.0


SCALES = {
    "smoke": Scale(reps=1, assoc_seconds=0.5, assoc_count=20, bulk=40, bulk_concurrency=2,
                   find_repeat=1, level=100, big=200, timeout=120.0, settle=0.1),
    "quick": Scale(reps=2, assoc_seconds=1.5, assoc_count=2000, bulk=1000, bulk_concurrency=4,
                   find_repeat=2, level=10000, big=50000),
    "default": Scale(reps=3, assoc_seconds=3.0, assoc_count=20000, bulk=10000,
                     bulk_concurrency=4, find_repeat=3, level=100000, big=1000000),
}


def size_label(count: int) -> str:
    """``100k``, ``1M``, ``20`` ..."""
    if count >= 1000000 and count % 1000000 == 0:
        return f"{count // 1000000}M"
    if count >= 1000 and count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


# -- the index rows of the largest size ----------------------------------------
def load_rows(location: str, first_study: int, studies: int, root: str) -> float:
    """Index studies ``first_study`` .. ``+studies`` (20 instances each, as
    :func:`data.write_small_set` writes them) through the index's ``add``,
    :data:`ROWS_PER_TRANSACTION` instances per transaction; no files.

    Runs in a process of its own (``--load-rows``) importing the dicomtwist
    under test.  :returns: instances per second.
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    from dicomtwist.storage.index import open_index

    index = open_index(location)
    ds = Dataset()
    base = data._base(data.CT_IMAGE_STORAGE)
    for element in base:
        ds.add(element)
    ds.Rows = ds.Columns = 32
    per_transaction = max(1, ROWS_PER_TRANSACTION // data.INSTANCES_PER_STUDY)
    start = time.perf_counter()
    try:
        for chunk in range(first_study, first_study + studies, per_transaction):
            with index.transaction():
                for n in range(chunk, min(chunk + per_transaction, first_study + studies)):
                    ds.PatientID = data.patient_id(n)
                    ds.PatientName = f"BENCH^{data.patient_id(n)}"
                    ds.StudyInstanceUID = f"{root}.{n}"
                    ds.SeriesInstanceUID = f"{root}.{n}.1"
                    ds.StudyDate = data.study_date(n)
                    ds.StudyID = str(n % 100000)
                    for i in range(data.INSTANCES_PER_STUDY):
                        ds.SOPInstanceUID = f"{root}.{n}.1.{i + 1}"
                        ds.InstanceNumber = i + 1
                        index.add(ds, f"rows/{ds.SOPInstanceUID}.dcm",
                                  ExplicitVRLittleEndian, 2200)
    finally:
        index.close()
    return studies * data.INSTANCES_PER_STUDY / (time.perf_counter() - start)


# -- the suite -------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One C-FIND of run.py's suite: keys fixed, matches counted per index size."""

    key: str
    label: str
    level: str
    keys: tuple[str, ...]


def suite(level_studies: int, series_study: str, series_uid: str) -> list[tuple[Query, object]]:
    """run.py's queries, built for the 100,000-instance level (``level_studies``
    studies) and kept identical at every size, each with a function giving
    its expected matches for an index of ``n`` studies (``series_in(n)``:
    whether the queried series is stored)."""
    study_keys = [k for k in run.QR_KEYS_STUDY if k != "PatientID"]
    mid = level_studies // 2
    pid = data.patient_id(mid)
    name_prefix = pid[:-1]
    first = min(100, level_studies // 4)
    span = min(50, max(1, level_studies // 4))
    date_range = f"{data.study_date(first)}-{data.study_date(first + span - 1)}"
    series_n = int(series_study.rsplit(".", 1)[1])

    def count(n: int, match) -> int:
        return sum(1 for s in range(n) if match(s))

    return [
        (Query("find_patientid", "C-FIND STUDY by PatientID", "STUDY",
               (f"PatientID={pid}", *study_keys)),
         lambda n: count(n, lambda s: data.patient_id(s) == pid)),
        (Query("find_name", "C-FIND STUDY by wildcard PatientName", "STUDY",
               (f"PatientName=BENCH^{name_prefix}*", "PatientID",
                *[k for k in study_keys if k != "PatientName"])),
         lambda n: count(n, lambda s: data.patient_id(s).startswith(name_prefix))),
        (Query("find_date", "C-FIND STUDY by StudyDate range", "STUDY",
               (f"StudyDate={date_range}", "PatientID",
                *[k for k in study_keys if k != "StudyDate"])),
         lambda n: count(n, lambda s: first <= s < first + span)),
        (Query("find_all", "C-FIND STUDY, all studies", "STUDY", ("PatientID", *study_keys)),
         lambda n: n),
        (Query("find_series", "C-FIND IMAGE by SeriesInstanceUID", "IMAGE",
               (f"StudyInstanceUID={series_study}", f"SeriesInstanceUID={series_uid}",
                *run.QR_KEYS_IMAGE)),
         lambda n: data.INSTANCES_PER_STUDY if series_n < n else 0),
    ]


class ScaleBench(run.Bench):
    """run.py's :class:`run.Bench` (association rate, storescu loads, timed
    findscu) over :data:`servers.SCALEOUT_SERVERS`, plus the checks and the
    phases of this benchmark."""

    def __init__(self, scale: Scale, names: list[str], work: str, results: run.Results,
                 mode: str, verbose: bool = False) -> None:
        base = replace(run.SCALES["smoke" if mode == "smoke" else "default"],
                       reps=scale.reps, assoc_seconds=scale.assoc_seconds,
                       assoc_count=scale.assoc_count, bulk=scale.bulk,
                       bulk_concurrency=scale.bulk_concurrency,
                       find_repeat=scale.find_repeat, timeout=scale.timeout,
                       settle=scale.settle)
        super().__init__(base, names, work, results, mode, verbose)
        self.plan = scale
        self.available = list(names)
        #: Index rows into ours-pg too (sqlite only by default: see --million-pg).
        self.million_pg = False

    def start(self, measures: frozenset[str], tag: str) -> None:
        """Start :attr:`names` (those of :data:`servers.SCALEOUT_SERVERS`)."""
        for name in self.names:
            if name in self.dead:
                continue
            server = servers.SCALEOUT_SERVERS[name](os.path.join(self.work, f"{tag}-{name}"),
                                                    self.destination.port)
            run.log(f"starting {name}")
            server.start()
            self.servers[name] = server
            run.rawclient.echo_once(server.port, server.ae_title,
                                    run.rawclient.associate_rq(server.ae_title))

    # -- checks ---------------------------------------------------------------
    def indexed(self, server: Server) -> int:
        """Instances in the server's index, counted in its own database."""
        if isinstance(server, servers.OrthancPostgres):
            return int(server.cluster.sql("SELECT count(*) FROM resources WHERE resourcetype = 3",
                                          server.database)[0][0])
        if isinstance(server, servers.OursPostgres):
            if os.path.exists(os.path.join(server.root, "instances.sqlite")):
                raise RuntimeError(f"{server.name} wrote an sqlite index: not on PostgreSQL")
            return int(server.cluster.sql("SELECT count(*) FROM instance", server.database)[0][0])
        with sqlite3.connect(os.path.join(server.root, "instances.sqlite"), timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM instance").fetchone()[0])

    def verify(self, server: Server, expected: int, where: str) -> bool:
        """The index holds ``expected`` instances; otherwise the server is out."""
        try:
            found = self.indexed(server)
        except Exception as e:  # noqa: BLE001 - any failure disqualifies
            found, why = -1, f"{type(e).__name__}: {e}"
        else:
            why = f"{found:,} instances indexed, {expected:,} expected"
        if found == expected:
            return True
        run.log(f"{server.name}: wrong count after {where}: {why}")
        self.dead[server.name] = where
        self.results.skipped[server.name] = f"failed the count after {where}: {why}"
        return False

    def store(self, server: Server, paths: list[str], concurrency: int,
              measure: run.Measure | None) -> bool:
        """Store ``paths``; record the rate in ``measure`` (if any) only when
        every instance was acknowledged; False (and a note) otherwise."""
        if not paths:
            return True
        rate, failed, rejected = self.load(server, paths, concurrency)
        self.check_alive(server, "a load")
        if failed or rejected:
            note = f"{failed} failed, {rejected} rejected of {len(paths)}"
            if measure is not None:
                measure.add(server.name, None, note)
            self.dead[server.name] = "a load"
            self.results.skipped[server.name] = f"load incomplete: {note}"
            return False
        if measure is not None:
            measure.add(server.name, rate)
        return True

    def first_response_ms(self, server: Server, query: Query) -> float | None:
        """Milliseconds from starting findscu to its first Pending response
        (its log lines read as they come), or None."""
        cmd = [dcmtk("findscu"), "-v", "-S", "-aet", "FINDSCU", "-aec", server.ae_title,
               "127.0.0.1", str(server.port), "-k", f"QueryRetrieveLevel={query.level}"]
        for key in query.keys:
            cmd += ["-k", key]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=run.peer_env(), cwd=self.work, stdin=subprocess.DEVNULL)
        first = None
        try:
            for line in proc.stdout:
                if first is None and b"Find Response: 1 (Pending)" in line:
                    first = (time.perf_counter() - start) * 1000
        finally:
            proc.wait(self.scale.timeout)
        return first if proc.returncode == 0 else None

    def drop_unchecked(self, key: str) -> None:
        """run.py's ``find`` notes a wrong number of matches but still times
        the query: here such a figure is dropped."""
        m = self.results.measures[key]
        for name, notes in m.notes.items():
            if any("expected" in n or "failed" in n for n in notes):
                m.values.pop(name, None)

    # -- phases ---------------------------------------------------------------
    def workers_phase(self) -> None:
        """Association rate and bulk load: ours on PostgreSQL with 1 and 2
        workers, Orthanc on PostgreSQL."""
        s = self.plan
        self.names = [n for n in WORKER_PEERS if n in self.available]
        self.start(frozenset(), "workers")
        sets = os.path.join(self.work, "small-workers")
        try:
            for self.rep in range(s.reps):
                run.log(f"rep {self.rep + 1}: association rate")
                self.assoc(1)
                self.assoc(4)
            studies = max(s.reps, s.bulk // data.INSTANCES_PER_STUDY)
            bulk = data.write_small_set(sets, 0, studies)
            chunks = [bulk.paths[i * len(bulk.paths) // s.reps:(i + 1) * len(bulk.paths) // s.reps]
                      for i in range(s.reps)]
            m = self.results.measure("bulk", f"Bulk load, small instances ({s.bulk_concurrency}"
                                     " associations)", "inst/s", True)
            loaded = dict.fromkeys(self.servers, 0)
            for self.rep in range(s.reps):
                run.log(f"rep {self.rep + 1}: bulk load of {len(chunks[self.rep])}")
                for server in self.order("bulk"):
                    if self.store(server, chunks[self.rep], s.bulk_concurrency, m):
                        loaded[server.name] += len(chunks[self.rep])
                        if not self.verify(server, loaded[server.name], m.label):
                            m.values.pop(server.name, None)
        finally:
            self.stop()
            shutil.rmtree(sets, ignore_errors=True)

    def queries(self, suite_: list, studies: int, size: str, where: str) -> None:
        """Every query of the suite on an index of ``studies`` studies."""
        for self.rep in range(self.plan.reps):
            run.log(f"rep {self.rep + 1}: C-FIND at {size} instances")
            for query, expected in suite_:
                label = f"{query.label}, {size} instances"
                if query.key == "find_all":
                    label = f"C-FIND STUDY, all studies ({studies:,}), {size} instances"
                self.find(f"{query.key}_{size}", label, query.level, list(query.keys),
                          expected(studies))
                self.drop_unchecked(f"{query.key}_{size}")
                if query.key == "find_all":
                    first = self.results.measure(
                        f"find_all_first_{size}", f"C-FIND STUDY, all studies, first response,"
                        f" {size} instances", "ms", False)
                    for server in self.order("find"):
                        first.add(server.name, self.first_response_ms(server, query))
        # A figure from a server that then failed a check is not a figure.
        for key, m in self.results.measures.items():
            if key.endswith(f"_{size}"):
                for name in self.dead:
                    if name in m.values:
                        m.values.pop(name)
                        m.notes.setdefault(name, []).append(f"dropped: {self.dead[name]}")

    def index_phase(self) -> None:
        """C-FIND on the 1-study index, the bulk load to ``level``, C-FIND,
        index rows to ``big``, C-FIND."""
        s = self.plan
        self.names = [n for n in INDEX_PEERS if n in self.available]
        self.start(frozenset(), "index")
        per = data.INSTANCES_PER_STUDY
        level_studies = max(2, s.level // per)
        sets = os.path.join(self.work, "small-index")
        try:
            run.log(f"writing {level_studies * per} small instances")
            baseline = data.write_small_set(os.path.join(sets, "baseline"), 0, 1)
            bulk = data.write_small_set(os.path.join(sets, "bulk"), 1, level_studies - 1)
            series_study = bulk.study_uids[len(bulk.study_uids) // 3]
            series_uid = bulk.series_uids[len(bulk.series_uids) // 3]
            queries = suite(level_studies, series_study, series_uid)
            root = series_study.rsplit(".", 1)[0]
            for server in list(self.servers.values()):
                if self.store(server, baseline.paths, 1, None):
                    self.verify(server, per, "the 1-study load")
            self.queries(queries, 1, size_label(per), "1 study")
            m = self.results.measure(f"bulk_{size_label(s.level)}",
                                     f"Bulk load to {s.level:,} instances"
                                     f" ({s.bulk_concurrency} associations)", "inst/s", True)
            chunks = [bulk.paths[i * len(bulk.paths) // s.reps:(i + 1) * len(bulk.paths) // s.reps]
                      for i in range(s.reps)]
            loaded = dict.fromkeys(self.servers, per)
            for self.rep in range(s.reps):
                run.log(f"rep {self.rep + 1}: bulk load of {len(chunks[self.rep])}")
                for server in self.order("bulk"):
                    if self.store(server, chunks[self.rep], s.bulk_concurrency, m):
                        loaded[server.name] += len(chunks[self.rep])
                        if not self.verify(server, loaded[server.name], m.label):
                            m.values.pop(server.name, None)
            shutil.rmtree(sets, ignore_errors=True)
            self.queries(queries, level_studies, size_label(s.level), "the bulk load")
            if s.big > s.level:
                self.grow(level_studies, root, queries)
        finally:
            self.stop()
            shutil.rmtree(sets, ignore_errors=True)

    def grow(self, level_studies: int, root: str, queries: list) -> None:
        """Index rows up to ``big`` instances on our servers (both at once,
        each in a process of its own); C-FIND there."""
        s = self.plan
        big_studies = s.big // data.INSTANCES_PER_STUDY
        kinds = (servers.OursSqlite, servers.OursPostgres) if self.million_pg else (
            servers.OursSqlite,)
        ours = [srv for srv in self.servers.values()
                if isinstance(srv, kinds) and srv.name not in self.dead]
        run.log(f"indexing {(big_studies - level_studies) * data.INSTANCES_PER_STUDY:,} rows"
                f" into {', '.join(srv.name for srv in ours)}")
        procs = {}
        for server in ours:
            location = (server.cluster.uri(server.database)
                        if isinstance(server, servers.OursPostgres)
                        else os.path.join(server.root, "instances.sqlite"))
            procs[server.name] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--load-rows", location,
                 str(level_studies), str(big_studies - level_studies), root],
                env=servers.Ours.python_env(), cwd="/", stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)
        rates = self.results.meta.setdefault("rows_per_second", {})
        for server in ours:
            out, _ = procs[server.name].communicate()
            text = out.decode("utf-8", "replace").strip()
            if procs[server.name].returncode:
                self.dead[server.name] = "the index rows"
                self.results.skipped[server.name] = f"loading index rows failed: {text[-500:]}"
                continue
            rates[server.name] = round(float(text.splitlines()[-1]))
            self.verify(server, s.big, "the index rows")
        others = [name for name, srv in self.servers.items() if srv not in ours]
        for name in others:
            server = self.servers.pop(name)
            server.stop()
            server.wipe()
        self.results.meta["not_at_big"] = others
        self.queries(queries, big_studies, size_label(s.big), "the index rows")


# -- report ----------------------------------------------------------------------
def _median(results: dict, key: str, peer: str) -> float | None:
    m = results["measures"].get(key)
    found = report.stats(m["values"].get(peer, [])) if m else None
    return found[0] if found else None


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 15's targets: ``(target, measured, met)`` (met None: not measured)."""
    rows: list[tuple[str, str, bool | None]] = []
    measures = results["measures"]
    for key in ("bulk", "assoc_1", "assoc_4"):
        if key not in measures:
            continue
        theirs = _median(results, key, "orthanc-pg")
        for peer in ("ours-pg", "ours-pg-w2"):
            mine = _median(results, key, peer)
            label = f"{measures[key]['label']}, {LABELS[peer]} ≥ 1× Orthanc + PG"
            if mine is None or theirs is None:
                rows.append((label, "not measured", None))
            else:
                rows.append((label, f"{mine / theirs:.2f}× ({report.fmt(mine)} vs"
                             f" {report.fmt(theirs)})", mine >= theirs))
    sizes = results["meta"].get("sizes", {})
    small, big = sizes.get("one_study"), sizes.get("big")
    if small and big:
        for key in ("find_patientid", "find_name", "find_date", "find_series"):
            for peer in ("ours-sqlite", "ours-pg"):
                label = (f"{key} at {big} instances ≤ 2× its 1-study figure,"
                         f" {LABELS[peer]}")
                at_big = _median(results, f"{key}_{big}", peer)
                at_one = _median(results, f"{key}_{small}", peer)
                if at_big is None or at_one is None:
                    rows.append((label, "not measured", None))
                else:
                    rows.append((label, f"{at_big / at_one:.2f}× ({report.fmt(at_big)} vs"
                                 f" {report.fmt(at_one)} ms)", at_big <= 2 * at_one))
        for peer in ("ours-sqlite", "ours-pg"):
            label = f"find_all at {big} instances: first response ≤ 100 ms, {LABELS[peer]}"
            first = _median(results, f"find_all_first_{big}", peer)
            rows.append((label, "not measured" if first is None else f"{report.fmt(first)} ms",
                         None if first is None else first <= 100))
    return rows


def markdown(results: dict) -> str:
    """The report as markdown."""
    meta = results["meta"]
    peers = [p for p in LABELS if p in meta.get("peers", [])]
    lines = [f"# PostgreSQL and workers benchmark ({meta.get('mode')} mode, {meta.get('date')})",
             ""]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines.append(f"{meta.get('cpus')} CPUs ({meta.get('machine')}, Linux {meta.get('kernel')});"
                 f" {versions}. Run time {meta.get('runtime_s', '?')} s; load average"
                 f" {meta.get('load_before')} before, {meta.get('load_after')} after.")
    for name, why in results.get("skipped", {}).items():
        lines.append(f"Skipped {name}: {why}.")
    scale = meta.get("scale", {})
    lines += ["", "PostgreSQL: a throwaway cluster on 127.0.0.1, fsync, synchronous_commit"
              " and full_page_writes on (the server's defaults). Small instances (20 per"
              " study, 5 studies per patient) stored by DCMTK storescu; every load checked"
              " (every instance acknowledged, the count in the server's own database);"
              " every query's first run checked for its number of matches. Median over"
              f" {scale.get('reps', '?')} repetitions (min–max)."]
    if meta.get("rows_per_second"):
        rates = ", ".join(f"{LABELS[k]} {v:,}/s" for k, v in meta["rows_per_second"].items())
        line = (f"The {meta.get('sizes', {}).get('big')} level: index rows added by the"
                f" index's own add() while the daemon ran ({rates}).")
        if meta.get("not_at_big"):
            line += (f" Not taken there: {', '.join(LABELS[p] for p in meta['not_at_big'])}"
                     " (Orthanc: no such path, and the DIMSE stores do not fit in the run;"
                     " dicomtwist + PG: without --million-pg).")
        lines.append(line)
    lines += ["", "| Measure | unit | " + " | ".join(LABELS[p] for p in peers) + " |",
              "|---|---|" + "---:|" * len(peers)]
    notes = []
    for m in results["measures"].values():
        if not any(m["values"].values()) and not any(m["notes"].values()):
            continue
        arrow = "" if m["higher_is_better"] else " ↓"
        lines.append("| " + " | ".join([m["label"], m["unit"] + arrow,
                                        *(report.cell(m, p) for p in peers)]) + " |")
        for p in peers:
            for note in m["notes"].get(p, []):
                notes.append(f"- {m['label']}, {LABELS[p]}: {note}")
    lines += ["", "↓ lower is better.", ""]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    rows = targets(results)
    lines += ["## Targets (issue 15)", "", "| Target | Measured | Met |", "|---|---|---|"]
    for target, measured, met in rows:
        mark = "–" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {mark} |")
    met_count = sum(1 for *_, met in rows if met)
    judged = sum(1 for *_, met in rows if met is not None)
    lines += ["", f"{met_count} of {judged} targets met.", ""]
    return "\n".join(lines)


def write(results: dict, out: str) -> list[str]:
    """Write ``scaleout-latest.json`` (with the targets) and ``.md`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    results = dict(results, targets=[{"target": t, "measured": m, "met": met}
                                     for t, m, met in targets(results)])
    paths = [os.path.join(out, "scaleout-latest.json"),
             os.path.join(out, "scaleout-latest.md")]
    with open(paths[0], "w") as fp:
        json.dump(results, fp, indent=1)
    with open(paths[1], "w") as fp:
        fp.write(markdown(results))
    return paths


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="10,000 and 50,000 instances, 2 repetitions")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="seconds-long run that only checks the script works (CI)")
    parser.add_argument("--peers", default=",".join(servers.SCALEOUT_SERVERS),
                        help="comma-separated: " + ",".join(servers.SCALEOUT_SERVERS))
    parser.add_argument("--phases", default="workers,index",
                        help="comma-separated subset of workers,index")
    parser.add_argument("--no-million", action="store_true",
                        help="stop the index phase at the DIMSE-loaded size")
    parser.add_argument("--million-pg", action="store_true",
                        help="take ours-pg to the largest size too (its add() path is"
                        " several times slower than sqlite's: 900,000 rows take tens of"
                        " minutes)")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3; quick 2)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="where scaleout-latest.md/.json go (default: benchmarks/results)")
    parser.add_argument("--work", help="scratch directory (default: a new one in /var/tmp)")
    parser.add_argument("--ours-src", metavar="DIR",
                        help="run dicomtwist from this source tree instead of the installed one")
    parser.add_argument("--ours-commit", metavar="REV",
                        help="run dicomtwist as committed at REV (git archive)")
    parser.add_argument("--load-rows", nargs=4, metavar=("LOCATION", "FIRST", "STUDIES", "ROOT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.mode = args.mode or "default"
    return args


def main(argv: list[str]) -> int:
    """Run the phases; write the report; exit 0 unless the benchmark itself broke."""
    args = parse_args(argv)
    if args.load_rows:
        location, first, studies, root = args.load_rows
        print(load_rows(location, int(first), int(studies), root))
        return 0
    scale = SCALES[args.mode]
    if args.reps:
        scale = replace(scale, reps=args.reps)
    if args.no_million:
        scale = replace(scale, big=0)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    for name in ("storescu", "findscu"):
        if not os.access(dcmtk(name), os.X_OK):
            raise SystemExit(f"DCMTK {name} not found at {dcmtk(name)} (apt-get install dcmtk)")
    if servers.postgres_bin() is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install -y postgresql")
    work = args.work or tempfile.mkdtemp(prefix="dicomtwist-scaleout-bench-",
                                         dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    os.makedirs(work, exist_ok=True)
    source = run.select_ours(args.ours_src, args.ours_commit, work)
    results = run.Results()
    names = []
    for name in (n.strip() for n in args.peers.split(",") if n.strip()):
        if name not in servers.SCALEOUT_SERVERS:
            raise SystemExit(f"unknown peer {name!r}; one of"
                             f" {', '.join(servers.SCALEOUT_SERVERS)}")
        why = servers.SCALEOUT_SERVERS[name].available()
        if why:
            run.log(f"skipping {name}: {why}")
            results.skipped[name] = why
        else:
            names.append(name)
    run.raise_fd_limit(4096)
    results.meta = run.metadata(args.mode, run.SCALES["smoke"], ["orthanc"])
    results.meta.update(peers=names, scale=asdict(scale),
                        sizes={"one_study": size_label(data.INSTANCES_PER_STUDY),
                               "level": size_label(scale.level),
                               "big": size_label(scale.big) if scale.big > scale.level else None})
    results.meta["versions"]["dicomtwist"] += f" ({source}; checkout at {results.meta['checkout']})"
    results.meta["load_before"] = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    cluster = servers.PostgresCluster("/var/tmp" if os.path.isdir("/var/tmp") else None)
    bench = None
    try:
        cluster.start()
        servers.OursPostgres.cluster = servers.OrthancPostgres.cluster = cluster
        results.meta["versions"]["postgresql"] = cluster.version()
        bench = ScaleBench(scale, names, work, results, args.mode, args.verbose)
        bench.million_pg = args.million_pg or args.mode == "smoke"
        if "workers" in phases:
            bench.workers_phase()
        if "index" in phases:
            bench.index_phase()
    finally:
        if bench is not None:
            bench.close()
        cluster.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results.meta["runtime_s"] = round(time.monotonic() - started, 1)
    results.meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    paths = write(results.as_dict(), args.out)
    run.log(f"done in {results.meta['runtime_s']:.0f} s: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

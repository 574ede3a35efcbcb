"""Measure dicomtwist's transcoding C-MOVE side by side with Orthanc + GDCM.

Usage::

    python benchmarks/transcode.py                 # the default run (~1 minute)
    python benchmarks/transcode.py --quick         # scaled down (~30 s)
    python benchmarks/transcode.py --smoke         # seconds; only checks it works (CI)
    python benchmarks/transcode.py --reps 7 --out /tmp/results --ours-commit HEAD

Peers: ``ours`` (``dicomqr``, default configuration; the installed package
unless ``--ours-src``/``--ours-commit``) and ``orthanc`` (Orthanc 1.10 with
its GDCM plugin, ``orthanc-gdcm``: :class:`servers.OrthancGdcm`), both from
:data:`servers.TRANSCODE_SERVERS`.  All traffic is on 127.0.0.1.

Two studies of ``count`` CT-like instances (512x512, 12 bits stored in 16,
an ellipse "body" with a dense insert, Gaussian noise: every instance
different) are written with pydicom; the first is compressed to JPEG-LS
Lossless by DCMTK's ``dcmcjpls``.  Both are stored into each archive by
``storescu`` (the JPEG-LS one proposed as JPEG-LS, and checked stored so).
Then, with the peers interleaved (the order rotates every repetition):

1. **JPEG-LS to uncompressed**: C-MOVE (DCMTK ``movescu``) of the JPEG-LS
   study to a DCMTK ``storescp`` whose association profile accepts CT
   Image Storage in Explicit and Implicit VR Little Endian only;
2. **uncompressed to JPEG-LS**: C-MOVE of the uncompressed study to a
   ``storescp`` accepting JPEG-LS Lossless only.

Each move gives instances per second (the ``movescu`` run, from its start
to its exit) and the CPU seconds the server process spent meanwhile
(``utime + stime`` of ``/proc/PID/stat``: all its threads).  A move counts
only if the final response is Success, the destination holds exactly the
study's instances (by SOP Instance UID), every one in an expected syntax,
and the pixels match the originals (three instances a move; compressed ones
decoded by DCMTK's ``dcmdjpls``); otherwise the peer gets a note and no
figure.  Before the measured moves of each direction every server restarts
on its data and makes one unmeasured warm-up move (lazy imports, caches),
checked on every instance.

The report gives the median, the min-max, the ratio ours/Orthanc and the
targets (issue 14: at least Orthanc's throughput both ways), in
``OUT/transcode-latest.md`` and ``OUT/transcode-latest.json``.  See
docs/benchmarks.md, "Transcoding".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import data, report, run, servers  # noqa: E402
from benchmarks.servers import JPEG_LS_LOSSLESS, Server, dcmtk  # noqa: E402

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: Instances whose pixels are checked per move after the first repetition.
SAMPLE = 3
#: Parallel ``dcmcjpls``/``dcmdjpls`` processes.
WORKERS = 4


@dataclass(frozen=True)
class Scale:
    """How much load the run applies."""

    reps: int
    count: int                    # instances per study
    timeout: float = 300.0        # bound on any one client run


SCALES = {
    "smoke": Scale(reps=1, count=4, timeout=30.0),
    "quick": Scale(reps=2, count=20),
    "default": Scale(reps=5, count=100),
}


@dataclass(frozen=True)
class Direction:
    """One measure: which study is moved, and what the destination accepts."""

    key: str
    label: str
    accepted: tuple[str, ...]
    #: Orthanc's ``BuiltinDecoderTranscoderOrder`` for this direction.
    orthanc_order: str


#: Orthanc decodes JPEG-LS with GDCM (its default order, plugins first), but
#: encodes it with DCMTK: GDCM's JPEG-LS encoder, as Debian 12 ships Orthanc
#: 1.10.1 and the GDCM plugin 1.5, kills Orthanc (a segfault in
#: libdcmtkcharls; :meth:`TranscodeBench.probe_gdcm_encoder` records it).
DIRECTIONS = (
    Direction("jls_to_raw", "JPEG-LS Lossless → uncompressed", UNCOMPRESSED, "After"),
    Direction("raw_to_jls", "uncompressed → JPEG-LS Lossless", (JPEG_LS_LOSSLESS,), "Before"),
)


# -- the studies -------------------------------------------------------------------
def ct_like_pixels(count: int, seed: int) -> list[bytes]:
    """``count`` 512x512 frames, 12 bits stored in 16 (CT numbers + 1024):
    air around an elliptic body of soft tissue with a dense insert, plus
    Gaussian noise (sd 4 in air, 20 in the body), so every frame is
    different and compresses about as a real CT slice does."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((xx - 256) / 210.0) ** 2 + ((yy - 256) / 160.0) ** 2 <= 1.0
    frames = []
    for i in range(count):
        insert = ((xx - 230 - i % 40) / 45.0) ** 2 + ((yy - 300) / 35.0) ** 2 <= 1.0
        base = np.where(body, 1064.0, 24.0)
        base[insert & body] = 1700.0
        noise = rng.normal(0.0, 1.0, base.shape) * np.where(body, 20.0, 4.0)
        frames.append(np.clip(base + noise, 0, 4095).astype("<u2").tobytes())
    return frames


def write_study(directory: str, count: int, seed: int, patient_id: str) -> tuple[str, dict]:
    """Write an uncompressed study of :func:`ct_like_pixels` instances.

    :returns: the Study Instance UID and ``{SOP Instance UID: (path, SHA-1
        of the pixel data)}``.
    """
    os.makedirs(directory, exist_ok=True)
    root = data.uid_root()
    ds = data._base(data.CT_IMAGE_STORAGE)
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PatientID = patient_id
    ds.PatientName = f"BENCH^{patient_id}"
    ds.StudyInstanceUID = f"{root}.1"
    ds.SeriesInstanceUID = f"{root}.2"
    ds.StudyDate = "20200101"
    ds.StudyID = "1"
    ds.Rows = ds.Columns = 512
    instances = {}
    for i, pixels in enumerate(ct_like_pixels(count, seed)):
        ds.SOPInstanceUID = f"{root}.3.{i + 1}"
        ds.InstanceNumber = i + 1
        ds.PixelData = pixels
        path = os.path.join(directory, f"ct{i + 1:05d}.dcm")
        data._save(ds, path)
        instances[ds.SOPInstanceUID] = (path, hashlib.sha1(pixels).hexdigest())
    return ds.StudyInstanceUID, instances


def tool(args: list[str], timeout: float) -> None:
    """Run a DCMTK tool; :raises RuntimeError: it failed."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-600:]}")


def compress_study(instances: dict, directory: str, timeout: float) -> dict:
    """``dcmcjpls`` (lossless, its default) every instance into ``directory``.

    :returns: ``instances`` with the compressed paths.
    :raises RuntimeError: a file did not come out as JPEG-LS Lossless.
    """
    os.makedirs(directory, exist_ok=True)
    out = {uid: (os.path.join(directory, os.path.basename(path)), digest)
           for uid, (path, digest) in instances.items()}
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda uid: tool([dcmtk("dcmcjpls"), instances[uid][0], out[uid][0]],
                                       timeout), instances))
    for path, _ in out.values():
        syntax = read_file_meta_info(path).TransferSyntaxUID
        if syntax != JPEG_LS_LOSSLESS:
            raise RuntimeError(f"dcmcjpls wrote {path} in {syntax}")
    return out


def file_syntaxes(directory: str) -> dict[str, int]:
    """Transfer syntax -> count of the Part 10 files under ``directory``
    (an archive's data directory: index files and the like are skipped)."""
    counts: dict[str, int] = {}
    for top, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(top, name)
            try:
                with open(path, "rb") as fp:
                    fp.seek(128)
                    if fp.read(4) != b"DICM":
                        continue
                syntax = str(read_file_meta_info(path).TransferSyntaxUID)
            except (OSError, ValueError, EOFError):
                continue
            counts[syntax] = counts.get(syntax, 0) + 1
    return counts


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a server: ``utime + stime`` of the process and of every
    live descendant (all their threads), plus ``cutime + cstime`` (the
    children it has waited for): codec worker processes count."""
    from benchmarks.servers import process_tree

    total = 0
    for n, member in enumerate(process_tree(pid)):
        try:
            with open(f"/proc/{member}/stat", "rb") as fp:
                stat = fp.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        # Fields 14 to 17 of proc(5), counted from 1 with pid and comm first.
        total += int(fields[11]) + int(fields[12])
        if n == 0:
            total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def pixel_digest(path: str, work: str, compressed: bool, timeout: float) -> str:
    """SHA-1 of a received file's pixel data; a compressed file is first
    decoded by DCMTK's ``dcmdjpls`` (nobody's codec under test here but CharLS
    as DCMTK ships it)."""
    if compressed:
        fd, plain = tempfile.mkstemp(suffix=".dcm", dir=work)
        os.close(fd)
        try:
            tool([dcmtk("dcmdjpls"), path, plain], timeout)
            return hashlib.sha1(dcmread(plain).PixelData).hexdigest()
        finally:
            os.unlink(plain)
    return hashlib.sha1(dcmread(path).PixelData).hexdigest()


# -- the run -------------------------------------------------------------------------
class TranscodeBench:
    """Runs the two measures against the started servers."""

    def __init__(self, scale: Scale, names: list[str], work: str,
                 results: run.Results) -> None:
        self.scale = scale
        self.names = names
        self.work = work
        self.results = results
        self.destination = servers.SyntaxDestination(os.path.join(work, "destination"))
        self.servers: dict[str, Server] = {}
        self.rep = 0
        #: Direction key -> (Study Instance UID, {SOP Instance UID: (path, digest)}).
        self.studies: dict[str, tuple[str, dict]] = {}

    def start(self) -> None:
        """Start every selected server with an empty data directory."""
        for name in self.names:
            cls = servers.TRANSCODE_SERVERS[name]
            server = cls(os.path.join(self.work, f"tc-{name}"), self.destination.port)
            run.log(f"starting {name}")
            server.start()
            self.servers[name] = server
            if name == "orthanc":
                self.results.meta["versions"]["orthanc-gdcm"] = plugin_version(server)

    def stop(self) -> None:
        """Stop and wipe every server; stop the destination."""
        for server in self.servers.values():
            server.terminate()
        for server in self.servers.values():
            server.stop()
            server.wipe()
        self.servers.clear()
        self.destination.stop()

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

    # -- data -------------------------------------------------------------------
    def prepare(self) -> None:
        """Write both studies, compress the first, load both into every server.

        :raises RuntimeError: a study was not stored, or not stored as sent.
        """
        n = self.scale.count
        run.log(f"writing two studies of {n} instances; dcmcjpls on the first")
        jls_uid, raw = write_study(os.path.join(self.work, "jls-src"), n, 1, "TC0001")
        jls = compress_study(raw, os.path.join(self.work, "jls"), self.scale.timeout)
        shutil.rmtree(os.path.join(self.work, "jls-src"), ignore_errors=True)
        raw_uid, raw = write_study(os.path.join(self.work, "raw"), n, 2, "TC0002")
        self.studies = {"jls_to_raw": (jls_uid, jls), "raw_to_jls": (raw_uid, raw)}
        jls_bytes = sum(os.path.getsize(p) for p, _ in jls.values())
        raw_bytes = sum(os.path.getsize(p) for p, _ in raw.values())
        self.results.meta["study"] = {
            "instances": n, "jls_mean_bytes": round(jls_bytes / n),
            "raw_mean_bytes": round(raw_bytes / n),
            "compression_ratio": round(raw_bytes / jls_bytes, 2)}
        run.log(f"  JPEG-LS files {jls_bytes / n / 1e3:.0f} kB, uncompressed"
                f" {raw_bytes / n / 1e3:.0f} kB (ratio {raw_bytes / jls_bytes:.2f})")
        for server in self.servers.values():
            for directory, extra in ((os.path.join(self.work, "jls"), ["-xt"]),
                                     (os.path.join(self.work, "raw"), [])):
                cmd = [dcmtk("storescu"), "-v", "-nh", "+sd", *extra, "-aet", "STORESCU",
                       "-aec", server.ae_title, "127.0.0.1", str(server.port), directory]
                runs, elapsed = run.run_clients([cmd], self.scale.timeout, self.work)
                ok = runs[0].output.count("Received Store Response (Success)")
                if ok != n:
                    raise RuntimeError(f"{server.name} stored {ok} of {n} from {directory}:\n"
                                       f"{runs[0].output[-600:]}")
            stored = file_syntaxes(server.root)
            expected = {JPEG_LS_LOSSLESS: n, EXPLICIT_VR_LITTLE_ENDIAN: n}
            if stored != expected:
                raise RuntimeError(f"{server.name} stored {stored}, expected {expected}")
            run.log(f"  {server.name}: both studies stored as sent")

    # -- the moves -------------------------------------------------------------
    def move(self, server: Server, direction: Direction, verify_all: bool,
             ) -> tuple[float | None, float | None, str]:
        """One C-MOVE of the direction's study to the destination.

        :returns: ``(instances/s, server CPU s, note)``; no figures if the
            move or anything received was wrong (the note says what).
        """
        study_uid, instances = self.studies[direction.key]
        self.destination.clear()
        cmd = [dcmtk("movescu"), "-v", "-S", "-aet", "MOVESCU", "-aec", server.ae_title,
               "-aem", servers.MOVE_DESTINATION, "127.0.0.1", str(server.port),
               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
        pid = server.process.pid
        cpu_before = cpu_seconds(pid)
        runs, elapsed = run.run_clients([cmd], self.scale.timeout, self.work)
        cpu = cpu_seconds(pid) - cpu_before
        problems = []
        if "Received Final Move Response (Success)" not in runs[0].output:
            problems.append("final response not Success")
        received = self.destination.received()
        by_uid = {}
        wrong_syntax: dict[str, int] = {}
        for path in received:
            meta = read_file_meta_info(path)
            by_uid[str(meta.MediaStorageSOPInstanceUID)] = path
            syntax = str(meta.TransferSyntaxUID)
            if syntax not in direction.accepted:
                wrong_syntax[syntax] = wrong_syntax.get(syntax, 0) + 1
        if len(received) != len(instances) or set(by_uid) != set(instances):
            problems.append(f"{len(received)} of {len(instances)} instances received"
                            + ("" if set(by_uid) <= set(instances) else ", some unknown"))
        if wrong_syntax:
            problems.append(f"received in {wrong_syntax}")
        if not problems:
            uids = sorted(instances)
            if not verify_all:
                uids = [uids[0], uids[len(uids) // 2], uids[-1]][:SAMPLE]
            compressed = direction.accepted == (JPEG_LS_LOSSLESS,)
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                digests = list(pool.map(lambda uid: pixel_digest(
                    by_uid[uid], self.work, compressed, self.scale.timeout), uids))
            bad = sum(1 for uid, digest in zip(uids, digests) if digest != instances[uid][1])
            if bad:
                problems.append(f"pixels differ in {bad} of {len(uids)} checked")
        self.destination.clear()
        if problems:
            note = "; ".join(problems)
            run.log(f"  {server.name}: {note}\n{runs[0].output[-400:]}")
            return None, None, note
        return len(instances) / elapsed, cpu, ""

    def measure(self, direction: Direction) -> None:
        """Every repetition of one direction, the peers interleaved."""
        s = self.scale
        speed = self.results.measure(direction.key, f"C-MOVE {direction.label},"
                                     f" {s.count} instances", "inst/s", True)
        cpu = self.results.measure(direction.key + "_cpu", f"Server CPU per move,"
                                   f" {direction.label}", "CPU s", False)
        self.destination.stop()
        self.destination.start(direction.accepted, (data.CT_IMAGE_STORAGE,))
        self.restart_all(direction.orthanc_order)
        run.log(f"warm-up: C-MOVE {direction.label}, every instance checked")
        for server in self.order():
            _, _, note = self.move(server, direction, verify_all=True)
            if note:
                speed.add(server.name, None, f"warm-up: {note}")
                cpu.add(server.name, None, f"warm-up: {note}")
            self.check_alive(server, speed.label)
        for self.rep in range(s.reps):
            run.log(f"rep {self.rep + 1}: C-MOVE {direction.label}")
            for server in self.order():
                rate, seconds, note = self.move(server, direction, verify_all=False)
                speed.add(server.name, rate, note)
                cpu.add(server.name, seconds, note)
                self.check_alive(server, speed.label)
        self.rep = 0

    def restart_all(self, orthanc_order: str) -> None:
        """Restart every live server on its data (Orthanc with this
        ``BuiltinDecoderTranscoderOrder``), so each direction starts alike."""
        for server in self.order():
            if server.name == "orthanc":
                server.set_builtin_order(orthanc_order)
            server.restart()

    def probe_gdcm_encoder(self) -> None:
        """One C-MOVE of the uncompressed study to the JPEG-LS-only destination
        by Orthanc with GDCM first (its default order): whether it survives
        is recorded in the metadata (``orthanc_gdcm_jls_encoder``), never
        as a figure."""
        server = self.servers.get("orthanc")
        if server is None or server.name in self.results.skipped:
            return
        direction = DIRECTIONS[1]
        self.destination.stop()
        self.destination.start(direction.accepted, (data.CT_IMAGE_STORAGE,))
        server.set_builtin_order("After")
        server.restart()
        rate, _, note = self.move(server, direction, verify_all=True)
        if server.alive():
            outcome = f"worked, {rate:.1f} inst/s" if rate else f"failed: {note}"
        else:
            server.process.wait()
            outcome = (f"Orthanc died (exit status {server.process.returncode}) on the"
                       " first instance")
        run.log(f"Orthanc with GDCM first, uncompressed → JPEG-LS: {outcome}")
        self.results.meta["orthanc_gdcm_jls_encoder"] = outcome

    def run_all(self) -> None:
        """Start, load, both directions, the GDCM encoder probe."""
        self.start()
        try:
            self.prepare()
            for direction in DIRECTIONS:
                self.measure(direction)
            self.probe_gdcm_encoder()
        finally:
            self.stop()


# -- the report --------------------------------------------------------------------
LABELS = {"ours": "dicomtwist", "orthanc": "Orthanc + GDCM"}


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 14's target, ``(target, measured, met)``: at least Orthanc's
    throughput in both directions (CPU is reported, not judged)."""
    rows: list[tuple[str, str, bool | None]] = []
    for key, m in results["measures"].items():
        if key.endswith("_cpu"):
            continue
        r = report.ratio(m, "orthanc")
        notes = "; ".join(m["notes"].get("ours", []) + m["notes"].get("orthanc", []))
        measured = "not measured" if r is None else report.times(r)
        if r is None and notes:
            measured += f" ({notes})"
        rows.append((f"{m['label']}: ≥ 1× Orthanc", measured, None if r is None else r >= 1.0))
    return rows


def markdown(results: dict) -> str:
    """The report as markdown."""
    meta = results["meta"]
    peers = [p for p in ("ours", "orthanc") if p in meta.get("peers", [])]
    lines = [f"# Transcoding benchmark ({meta.get('mode')} mode, {meta.get('date')})", ""]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines.append(f"{meta.get('cpus')} CPUs ({meta.get('machine')}, Linux {meta.get('kernel')});"
                 f" {versions}. Run time {meta.get('runtime_s', '?')} s; load average"
                 f" {meta.get('load_before')} before, {meta.get('load_after')} after.")
    for name, why in results.get("skipped", {}).items():
        lines.append(f"Skipped {name}: {why}.")
    study = meta.get("study", {})
    scale = meta.get("scale", {})
    lines += ["", f"Two studies of {study.get('instances', '?')} CT-like instances (512x512,"
              f" 12 bits stored in 16, noisy): JPEG-LS Lossless files of"
              f" {study.get('jls_mean_bytes', 0) / 1e3:.0f} kB (ratio"
              f" {study.get('compression_ratio', '?')}), uncompressed ones of"
              f" {study.get('raw_mean_bytes', 0) / 1e3:.0f} kB. C-MOVE by DCMTK movescu to a"
              " DCMTK storescp accepting only the target syntax; every move checked"
              " (count, UIDs, syntax, pixels). Median over"
              f" {scale.get('reps', '?')} repetitions (min–max). Ratio: how many times"
              " better dicomtwist is (> 1: dicomtwist better; for CPU, Orthanc's figure"
              " divided by ours).", ""]
    if "orthanc" in peers:
        lines += ["Orthanc decodes JPEG-LS with GDCM (`BuiltinDecoderTranscoderOrder`"
                  " `After`, its default) and encodes it with DCMTK (`Before`): with GDCM"
                  " first, the move of the uncompressed study to the JPEG-LS-only"
                  f" destination: {meta.get('orthanc_gdcm_jls_encoder', 'not tried')}.",
                  ""]
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
            row.append(report.times(r) if r is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
        for p in peers:
            for note in m["notes"].get(p, []):
                notes.append(f"- {m['label']}, {LABELS[p]}: {note}")
    lines += ["", "↓ lower is better.", ""]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    rows = targets(results)
    lines += ["## Targets (transcoding)", "", "| Target | Measured | Met |", "|---|---|---|"]
    for target, measured, met in rows:
        mark = "–" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {mark} |")
    met_count = sum(1 for *_, met in rows if met)
    judged = sum(1 for *_, met in rows if met is not None)
    lines += ["", f"{met_count} of {judged} targets met.", ""]
    return "\n".join(lines)


def write(results: dict, out: str) -> list[str]:
    """Write ``transcode-latest.json`` (with the targets) and ``.md`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    results = dict(results, targets=[{"target": t, "measured": m, "met": met}
                                     for t, m, met in targets(results)])
    paths = [os.path.join(out, "transcode-latest.json"),
             os.path.join(out, "transcode-latest.md")]
    with open(paths[0], "w") as fp:
        json.dump(results, fp, indent=1)
    with open(paths[1], "w") as fp:
        fp.write(markdown(results))
    return paths


def plugin_version(server: Server) -> str:
    """The GDCM plugin's version, from Orthanc's ``/plugins/gdcm``."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
        conn.request("GET", "/plugins/gdcm")
        return str(json.loads(conn.getresponse().read()).get("Version", "?"))
    except (OSError, ValueError, http.client.HTTPException):
        return "?"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="20-instance studies, 2 repetitions")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="seconds-long run that only checks the script works (CI)")
    parser.add_argument("--peers", default=",".join(servers.TRANSCODE_SERVERS),
                        help="comma-separated: " + ",".join(servers.TRANSCODE_SERVERS))
    parser.add_argument("--reps", type=int, help="repetitions (default: 5; quick 2)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="where transcode-latest.md/.json go (default: benchmarks/results)")
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
    for name in ("storescu", "storescp", "movescu", "dcmcjpls", "dcmdjpls"):
        if not os.access(dcmtk(name), os.X_OK):
            raise SystemExit(f"DCMTK {name} not found at {dcmtk(name)}")
    work = args.work or tempfile.mkdtemp(prefix="dicomtwist-transcode-bench-",
                                         dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    os.makedirs(work, exist_ok=True)
    source = run.select_ours(args.ours_src, args.ours_commit, work)
    results = run.Results()
    names = []
    for name in (n.strip() for n in args.peers.split(",") if n.strip()):
        if name not in servers.TRANSCODE_SERVERS:
            raise SystemExit(f"unknown peer {name!r}; one of"
                             f" {', '.join(servers.TRANSCODE_SERVERS)}")
        why = servers.TRANSCODE_SERVERS[name].available()
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
    bench = TranscodeBench(scale, names, work, results)
    try:
        bench.run_all()
    finally:
        bench.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results.meta["runtime_s"] = round(time.monotonic() - started, 1)
    results.meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    paths = write(results.as_dict(), args.out)
    run.log(f"done in {results.meta['runtime_s']:.0f} s: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

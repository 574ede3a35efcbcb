"""Memory and speed of streaming one large C-STORE into our acceptor.

Usage::

    python benchmarks/stream_memory.py --size-mb 500

Starts our acceptor (echo + a store handler streaming to a TempFileSink) in
a child process on 127.0.0.1, writes a CT instance with ``--size-mb`` MiB of
pixel data, sends it with DCMTK's ``/usr/bin/storescu``, samples the
acceptor's peak resident set (``VmHWM`` in ``/proc/<pid>/status``) and
prints one markdown table row::

    | size MiB | elapsed s | MiB/s | acceptor RSS before MiB | RSS growth MiB |

Streaming means the growth stays near one PDU plus buffers, whatever the
size.  Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORESCU = "/usr/bin/storescu"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
FRAME = 512 * 512 * 2


def serve(directory: str, max_pdu: int) -> None:
    """Child mode: run our acceptor until killed; print ``LISTENING <port>``."""
    sys.path.insert(0, ROOT)
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from twisted.internet import reactor

    from dicomtwist.acse import AcceptorPolicy
    from dicomtwist.association import AcceptorFactory
    from dicomtwist.dimse.assembly import TempFileSink
    from dicomtwist.services.echo import handle_echo
    from dicomtwist.status import Status

    def sink_for(message, context):
        return TempFileSink(directory)

    def store(request):
        # Only the transfer matters here: drop the file at once.
        os.unlink(request.data)
        return Status.SUCCESS

    syntaxes = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    policy = AcceptorPolicy("BENCHSCP", {"1.2.840.10008.1.1": syntaxes,
                                         CT_IMAGE_STORAGE: syntaxes}, max_pdu=max_pdu)
    factory = AcceptorFactory(reactor, policy, {"echo": handle_echo, "store": store},
                              sink_for=sink_for, dimse_timeout=300)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"LISTENING {port.getHost().port}", flush=True)
    reactor.run()


def write_instance(path: str, size_mb: int) -> int:
    """Write a CT with ``size_mb`` MiB of OW pixel data, a chunk at a time.

    :returns: the file's size.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = max(1, size_mb * (1 << 20) // FRAME)
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BENCH"
    ds.PatientName = "Bench^Large"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    frame = bytes(range(256)) * (FRAME // 256)
    with open(path, "ab") as fp:
        # (7FE0,0010) OW, explicit VR little endian (PS3.5 7.1.2); the last element.
        fp.write(struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW", frames * FRAME))
        for _ in range(frames):
            fp.write(frame)
    return os.path.getsize(path)


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def run(size_mb: int, max_pdu: int) -> str:
    """Run one measurement; return the markdown row."""
    if not os.access(STORESCU, os.X_OK):
        raise SystemExit(f"{STORESCU} not found (DCMTK)")
    work = tempfile.mkdtemp(prefix="dicomtwist-bench-")
    try:
        incoming = os.path.join(work, "incoming")
        os.makedirs(incoming)
        path = os.path.join(work, "large.dcm")
        file_size = write_instance(path, size_mb)
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", incoming,
             "--max-pdu", str(max_pdu)],
            stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            if not line.startswith("LISTENING"):
                raise SystemExit(f"acceptor did not start: {line!r}")
            port = line.split()[1]
            before = memory_kib(child.pid)
            env = dict(os.environ, TCP_NODELAY="1")
            start = time.monotonic()
            scu = subprocess.Popen([STORESCU, "-v", "-aec", "BENCHSCP", "127.0.0.1", port, path],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            peak = before["VmHWM"]
            while scu.poll() is None:
                peak = max(peak, memory_kib(child.pid)["VmHWM"])
                time.sleep(0.02)
            elapsed = time.monotonic() - start
            peak = max(peak, memory_kib(child.pid)["VmHWM"])
            output = scu.stdout.read().decode("utf-8", "replace")
            # storescu -v logs the C-STORE-RSP status; it exits 0 even when
            # the SCP answered with a failure status.
            if scu.returncode != 0 or "Received Store Response (Success)" not in output:
                raise SystemExit(f"storescu failed ({scu.returncode}):\n{output}")
        finally:
            child.terminate()
            child.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = file_size / (1 << 20)
    return (f"| {mib:.0f} | {elapsed:.2f} | {mib / elapsed:.0f} |"
            f" {before['VmRSS'] / 1024:.1f} | {(peak - before['VmRSS']) / 1024:.2f} |")


def main(argv: list[str]) -> None:
    """Parse the command line and print the table row."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500, help="pixel data size in MiB")
    parser.add_argument("--max-pdu", type=int, default=16382,
                        help="the acceptor's maximum PDU length (storescu's fragment size)")
    parser.add_argument("--header", action="store_true", help="print the table header too")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.max_pdu)
        return
    row = run(args.size_mb, args.max_pdu)
    if args.header:
        print("| size MiB | elapsed s | MiB/s | acceptor RSS before MiB | RSS growth MiB |")
        print("|---:|---:|---:|---:|---:|")
    print(row)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Round trips and time of one ``add`` on the PostgreSQL index.

Usage::

    python benchmarks/pg_add.py                 # 2,000 instances, batches of 1 and 16
    python benchmarks/pg_add.py --instances 500 --batches 1 4 16

Starts a throwaway cluster (:class:`servers.PostgresCluster`: ``fsync``
and ``synchronous_commit`` on, as shipped), opens a
:class:`~dicomtwist.storage.index.postgres.PostgresIndex` on an empty
database and indexes small CT instances the way the store pipeline's
committer does (``ArchiveStore.commit_batch``): one transaction per batch,
each instance in a block of its own (``_commit_one``) holding its ``add``
with metadata.  Instances go 20 to a series, one series a study, as
``data.write_small_set`` writes them, so most adds index a new instance
into an existing series and one in 20 opens a new patient, study and
series.

Round trips are counted by a TCP relay between the index and the server
(:class:`Relay`): one each time the server answers after the client has
sent something since its last answer, whatever the number of statements
sent (a pipeline is one).  The relay costs time, so the time is measured
in a second run on a direct connection.  Printed per batch size: round
trips per instance (the pool's connection check, the commits included)
and milliseconds per instance (wall clock, one committer thread), and CPU milliseconds per instance
of this process and of the server processes serving the index.
"""

from __future__ import annotations

import argparse
import os
import sys
import socket
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from benchmarks import data  # noqa: E402
from benchmarks.servers import PostgresCluster  # noqa: E402

class Relay:
    """A TCP relay to the server that counts round trips."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.round_trips = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.listening = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self.port))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            asked = [False]
            threading.Thread(target=self._pump, args=(client, server, asked, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, asked, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, asked: list[bool],
              from_client: bool) -> None:
        while True:
            try:
                chunk = source.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                for s in (source, sink):
                    s.close()
                return
            with self._lock:
                if from_client:
                    asked[0] = True
                elif asked[0]:
                    asked[0] = False
                    self.round_trips += 1
            sink.sendall(chunk)


def _backends_cpu(uri: str) -> float:
    """CPU seconds used so far by the server processes serving the
    database of ``uri`` (other than this query's)."""
    with psycopg.connect(uri, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid != pg_backend_pid()")]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fp:
                fields = fp.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def measure(uri: str, instances: int, batch: int, root: str,
            relay: Relay | None = None) -> tuple[float, float, float]:
    """Index ``instances`` in batches of ``batch`` into the empty database
    at ``uri`` (through ``relay`` if given); milliseconds per instance of
    wall clock, of this process's CPU and of the server's CPU."""
    from pydicom.dataset import Dataset

    from dicomtwist.storage.index import open_index

    index = open_index(uri)
    ds = Dataset()
    for element in data._base(data.CT_IMAGE_STORAGE):
        ds.add(element)
    ds.Rows = ds.Columns = 32
    metadata = zlib.compress(b'{"00080060": {"vr": "CS", "Value": ["CT"]}}')
    items = []
    for k in range(instances):
        n, i = divmod(k, data.INSTANCES_PER_STUDY)
        items.append((n, i))
    if relay is not None:
        relay.round_trips = 0
    server = _backends_cpu(uri)
    cpu = time.process_time()
    start = time.perf_counter()
    for first in range(0, instances, batch):
        with index.transaction():
            for n, i in items[first:first + batch]:
                ds.PatientID = data.patient_id(n)
                ds.PatientName = f"BENCH^{data.patient_id(n)}"
                ds.StudyInstanceUID = f"{root}.{n}"
                ds.SeriesInstanceUID = f"{root}.{n}.1"
                ds.StudyDate = data.study_date(n)
                ds.SOPInstanceUID = f"{root}.{n}.1.{i + 1}"
                ds.InstanceNumber = i + 1
                with index.transaction():
                    index.add(ds, f"rows/{ds.SOPInstanceUID}.dcm",
                              ExplicitVRLittleEndian, 2200, metadata=metadata)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    server = _backends_cpu(uri) - server
    if index.count("IMAGE") != instances:
        raise SystemExit(f"expected {instances} instances, found {index.count('IMAGE')}")
    index.close()
    return tuple(x * 1000 / instances for x in (elapsed, cpu, server))  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--scratch", default="/var/tmp")
    options = parser.parse_args(argv)
    cluster = PostgresCluster(options.scratch)
    cluster.start()
    try:
        print("| batch | round trips / instance | ms / instance | client CPU ms | server CPU ms |")
        print("|---:|---:|---:|---:|---:|")
        relay = Relay(cluster.port)
        for number, batch in enumerate(options.batches):
            names = [f"addbench{number}relay", f"addbench{number}"]
            with psycopg.connect(cluster.uri(), autocommit=True) as conn:
                for name in names:
                    conn.execute(f"CREATE DATABASE {name}")
            root = f"1.2.826.0.1.3680043.10.1077.{number + 1}"
            measure(cluster.uri(names[0]).replace(f":{cluster.port}/", f":{relay.listening}/"),
                    options.instances, batch, root, relay)
            trips = relay.round_trips / options.instances
            ms, cpu, server = measure(cluster.uri(names[1]), options.instances, batch, root)
            print(f"| {batch} | {trips:.2f} | {ms:.3f} | {cpu:.3f} | {server:.3f} |")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

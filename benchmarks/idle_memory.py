"""Python memory per idle association, measured in memory (no sockets).

Builds the archive's acceptor factory as ``twistd dicomqr`` does (default
settings, an sqlite index in a scratch directory), then opens N
associations on in-memory transports: each gets the raw client's
A-ASSOCIATE-RQ (one Verification context, as ``benchmarks/rawclient.py``
sends it) and is answered.  tracemalloc counts what the N established,
idle associations hold, transports excluded (they are made before the
first snapshot); the figure is that divided by N.

Usage: ``python benchmarks/idle_memory.py [N]`` (default 1,000).
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def measure(count: int = 1000, top: int = 0) -> float:
    """Bytes of Python memory per idle association (``top``: also print the
    ``top`` biggest allocation sites)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.python.threadpool import ThreadPool

    from twisted.logger import LogLevel

    from benchmarks import rawclient
    from dicomtwist import log as dlog
    from dicomtwist import tap
    from dicomtwist.config import Config
    from dicomtwist.storage.index import open_index

    work = tempfile.mkdtemp(prefix="dicomtwist-idle-")
    try:
        settings = Config(instance_location=os.path.join(work, "instances"),
                          database_location=os.path.join(work, "index.sqlite"),
                          max_associations=count + 10)
        os.makedirs(settings.instance_location)
        # The daemon's default level: info events are not even made.
        level = dlog.level()
        dlog.set_level(LogLevel.warn)
        reactor = MemoryReactorClock()
        index = open_index(settings.database_location)
        factory = tap.build_factory(settings, reactor, ThreadPool(), index)
        rq = rawclient.associate_rq("QRSCP")
        transports = [StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + n))
                      for n in range(count + 1)]
        held = []

        def open_one(transport: StringTransport) -> None:
            protocol = factory.buildProtocol(transport.getPeer())
            protocol.makeConnection(transport)
            protocol.dataReceived(rq)
            transport.clear()
            held.append(protocol)

        open_one(transports.pop())  # the first fills the caches
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        for transport in transports:
            open_one(transport)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        accepted = len(factory.associations)
        if accepted != count + 1:
            raise RuntimeError(f"{accepted} of {count} associations accepted")
        stats = after.compare_to(before, "lineno")
        if top:
            for stat in stats[:top]:
                print(stat)
        per = sum(stat.size_diff for stat in stats) / count
        for protocol in held:
            protocol.transport.loseConnection()
            protocol.connectionLost(None)
        index.close()
        return per
    finally:
        if "level" in locals():
            dlog.set_level(level)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> None:
    """Print the bytes per idle association (and the top allocation sites)."""
    count = int(argv[0]) if argv else 1000
    per = measure(count, top=25)
    print(f"{per:,.0f} bytes per idle association ({count} associations)")


if __name__ == "__main__":
    main(sys.argv[1:])

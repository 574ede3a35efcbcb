"""Hold many associations open at once, for ``--workers`` tests.

Opens ``--count`` associations to ``host:port`` from as many threads at
once, sends a C-ECHO on each, then prints one JSON line and flushes it::

    {"ready": 16, "echo": [0, 0, ...], "ports": [41234, ...]}

(``ports``: the local port of each association).  It keeps them all open
until its stdin closes, then sends a second C-ECHO on each, releases them
and prints a last JSON line ``{"echo": [0, ...], "released": 16}``.  Run as
a child process so pynetdicom's threads never meet trial's reactor.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from pynetdicom import AE
from pynetdicom.sop_class import Verification


def main(argv: list[str]) -> int:
    """Parse arguments, associate from threads, hold, release."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--called", default="ANY-SCP")
    args = parser.parse_args(argv)

    ae = AE(ae_title="HOLDSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.maximum_associations = args.count
    ae.add_requested_context(Verification)
    associations: list = [None] * args.count
    start = threading.Barrier(args.count)

    def associate(n: int) -> None:
        start.wait()
        associations[n] = ae.associate(args.host, args.port, ae_title=args.called)

    threads = [threading.Thread(target=associate, args=(n,)) for n in range(args.count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def echo() -> list:
        statuses = []
        for assoc in associations:
            if assoc is None or not assoc.is_established:
                statuses.append(None)
                continue
            status = assoc.send_c_echo()
            statuses.append(int(status.Status) if "Status" in status else None)
        return statuses

    ports = [assoc.dul.socket.socket.getsockname()[1] if assoc.is_established else None
             for assoc in associations]
    print(json.dumps({"ready": sum(a.is_established for a in associations),
                      "echo": echo(), "ports": ports}), flush=True)
    sys.stdin.read()
    statuses = echo()
    released = 0
    for assoc in associations:
        if assoc.is_established:
            assoc.release()
            released += 1
    print(json.dumps({"echo": statuses, "released": released}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A pynetdicom Storage requestor that reports every acknowledged instance.

Associates with ``host:port`` and sends a C-STORE of each file in one
association; after each response it prints one line and flushes it, so
that a test which kills the acceptor midway knows exactly which
instances were answered Success::

    STORED 0x0000 1.2.3.4
    STORED 0xA700 1.2.3.5

and ``END <n>`` (n responses) when the association is over, for whatever
reason.  Run as a child process so pynetdicom's threads never meet
trial's reactor.
"""

from __future__ import annotations

import argparse
import sys

from pydicom import dcmread
from pynetdicom import AE


def main(argv: list[str]) -> int:
    """Parse arguments, store the files, print one line per response."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--called", default="ANY-SCP")
    parser.add_argument("--calling", default="STREAMSCU")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)

    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    datasets = [dcmread(path) for path in args.files]
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                                     for ds in datasets}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(args.host, args.port, ae_title=args.called)
    answered = 0
    if assoc.is_established:
        for ds in datasets:
            if not assoc.is_established:
                break
            status = assoc.send_c_store(ds)
            if "Status" not in status:
                break
            answered += 1
            print(f"STORED 0x{int(status.Status):04X} {ds.SOPInstanceUID}", flush=True)
        if assoc.is_established:
            assoc.release()
    print(f"END {answered}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

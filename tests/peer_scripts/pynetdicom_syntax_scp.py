"""A pynetdicom Storage SCP accepting only the transfer syntaxes it is told,
for the transcoding tests.

Each ``--listen AET:PORT:UID[,UID...]`` starts one acceptor on
127.0.0.1:PORT that accepts the storage SOP classes given with
``--sop-class`` (and Verification) in exactly those transfer syntaxes.
An instance received by AET is decoded on arrival with pydicom
(``pixel_array``) and written as ``<output>/<AET>/<SOPInstanceUID>.dcm`` as
it came (its transfer syntax kept) next to ``<SOPInstanceUID>.npy``, the
decoded pixels; one that does not decode is answered 0xC000 and not kept.
Prints ``LISTENING`` once every acceptor accepts connections, and stops
when its stdin is closed.

Run as a child process so pynetdicom's threads never meet trial's reactor.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

#: Secondary Capture (single and multi-frame) and CT.
DEFAULT_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.2",
)


def main(argv: list[str]) -> int:
    """Serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output")
    parser.add_argument("--listen", action="append", required=True,
                        help="AET:PORT:UID[,UID...]")
    parser.add_argument("--sop-class", action="append", default=None)
    args = parser.parse_args(argv)
    sop_classes = args.sop_class or DEFAULT_SOP_CLASSES

    def on_store(event, directory: str) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        try:
            decoded = ds.pixel_array
        except Exception as e:  # a peer reports, it does not crash
            print(f"UNDECODABLE {ds.SOPInstanceUID} {e}", flush=True)
            return 0xC000
        uid = str(ds.SOPInstanceUID)
        np.save(os.path.join(directory, uid + ".npy"), decoded)
        ds.save_as(os.path.join(directory, uid + ".dcm"), enforce_file_format=True)
        return 0x0000

    servers = []
    for listen in args.listen:
        aet, port, syntaxes = listen.split(":")
        directory = os.path.join(args.output, aet)
        os.makedirs(directory, exist_ok=True)
        ae = AE(ae_title=aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_supported_context(Verification)
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, syntaxes.split(","))
        servers.append(ae.start_server(
            ("127.0.0.1", int(port)), block=False,
            evt_handlers=[(evt.EVT_C_STORE, on_store, [directory])]))
    print("LISTENING", flush=True)
    try:
        sys.stdin.read()
    finally:
        for server in servers:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

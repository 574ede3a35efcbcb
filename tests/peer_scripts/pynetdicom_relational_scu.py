"""A pynetdicom requestor of relational queries and retrievals, for
dicomtwist's end-to-end tests.

Associates with ``host:port`` proposing Study Root FIND, MOVE and GET and
Patient Root FIND, with SOP Class Extended Negotiation for each unless
``--no-extended`` (FIND: relational-queries, combined date-time matching,
fuzzy semantic matching of person names, timezone query adjustment, all
1; MOVE and GET: relational-retrieval 1), and the SCP role for the Storage
classes given with ``--storage``.  Then:

- a Study Root C-FIND at SERIES level with Modality ``--modality`` and no
  Study Instance UID;
- a Patient Root C-FIND at IMAGE level with Patient's Name ``--name`` and
  no Patient ID, Study or Series Instance UID;
- a Study Root C-GET of the SOP Instance UIDs ``--get`` (a list, no Study
  or Series Instance UID), writing what it receives to ``--output``;
- a Study Root C-MOVE of the SOP Instance UIDs ``--move`` to ``--move-to``.

Releases and prints one JSON object on stdout: the acceptor's extended
negotiation answers (hex, by SOP class), each operation's statuses and
results::

    {"associated": true, "extended": {"1.2...": "01000000"},
     "series": {"statuses": [65280, 0], "uids": ["1.2.3.4"]},
     "images": {"statuses": [...], "uids": [...]},
     "get": {"statuses": [...], "completed": 2, "failed": 0}, "received": [...],
     "move": {"statuses": [...], "completed": 2, "failed": 0}}

Run as a child process so pynetdicom's threads never meet trial's reactor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)


def extended(uid: str, info: bytes) -> SOPClassExtendedNegotiation:
    """A SOP Class Extended Negotiation item."""
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = uid
    item.service_class_application_information = info
    return item


def statuses(responses, outcome: dict, key: str | None = None) -> dict:
    """Collect the statuses (and the ``key`` of each pending identifier)."""
    outcome.setdefault("statuses", [])
    for status, identifier in responses:
        outcome["statuses"].append(int(status.Status) if "Status" in status else None)
        if key and identifier is not None and status.Status in (0xFF00, 0xFF01):
            outcome.setdefault("uids", []).append(str(identifier[key].value))
        if "NumberOfCompletedSuboperations" in status:
            outcome["completed"] = int(status.NumberOfCompletedSuboperations)
            outcome["failed"] = int(status.get("NumberOfFailedSuboperations", 0))
    return outcome


def main(argv: list[str]) -> int:
    """Parse arguments, talk to the archive, print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--called", default="ANY-SCP")
    parser.add_argument("--calling", default="PYNETREL")
    parser.add_argument("--no-extended", action="store_true")
    parser.add_argument("--modality", default="CT")
    parser.add_argument("--name", default="*")
    parser.add_argument("--get", default="")
    parser.add_argument("--move", default="")
    parser.add_argument("--move-to", default="STORESCP")
    parser.add_argument("--storage", action="append", default=[])
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    received: list[str] = []

    def on_store(event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        ds.save_as(os.path.join(args.output, uid + ".dcm"), enforce_file_format=True)
        received.append(uid)
        return 0x0000

    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    find_classes = [StudyRootQueryRetrieveInformationModelFind,
                    PatientRootQueryRetrieveInformationModelFind]
    retrieve_classes = [StudyRootQueryRetrieveInformationModelGet,
                        StudyRootQueryRetrieveInformationModelMove]
    for sop_class in find_classes + retrieve_classes + args.storage:
        ae.add_requested_context(sop_class)
    ext_neg: list = [build_role(sop_class, scp_role=True) for sop_class in args.storage]
    if not args.no_extended:
        ext_neg += [extended(c, b"\x01\x01\x01\x01") for c in find_classes]
        ext_neg += [extended(c, b"\x01") for c in retrieve_classes]

    result: dict = {"associated": False}
    assoc = ae.associate(args.host, args.port, ae_title=args.called, ext_neg=ext_neg,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if assoc.is_established:
        result["associated"] = True
        result["extended"] = {str(uid): bytes(info).hex()
                              for uid, info in assoc.acceptor.sop_class_extended.items()}

        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.SeriesInstanceUID = ""
        query.Modality = args.modality
        result["series"] = statuses(assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind), {}, "SeriesInstanceUID")

        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.SOPInstanceUID = ""
        query.PatientName = args.name
        result["images"] = statuses(assoc.send_c_find(
            query, PatientRootQueryRetrieveInformationModelFind), {}, "SOPInstanceUID")

        if args.get:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.SOPInstanceUID = args.get.split("\\")
            result["get"] = statuses(assoc.send_c_get(
                query, StudyRootQueryRetrieveInformationModelGet), {})
            result["received"] = sorted(received)
        if args.move:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.SOPInstanceUID = args.move.split("\\")
            result["move"] = statuses(assoc.send_c_move(
                query, args.move_to, StudyRootQueryRetrieveInformationModelMove), {})
        assoc.release()
    print(json.dumps(result), flush=True)
    return 0 if result["associated"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A pynetdicom modality for dicomtwist's DIMSE-N end-to-end tests.

``commit``: a Storage Commitment SCU.  Sends one N-ACTION (Request Storage
Commitment) for ``--ref CLASS:INSTANCE`` items, then waits for the
N-EVENT-REPORT, either on the same association (``--same``: kept open
until the report arrives) or, released at once, on a new association to
its own SCP listening on ``--listen PORT`` (accepting the archive as SCP of
Storage Commitment by role selection).

``listen``: only the modality's own Storage Commitment SCP on ``--listen
PORT``: prints ``LISTENING``, then the first report to arrive (or none
after ``--wait`` seconds).

``mpps``: an MPPS SCU.  N-CREATE of a step IN PROGRESS, N-SET to
COMPLETED, then one more N-SET (which must fail, the step being final).

Prints one JSON object on stdout; run as a child process so pynetdicom's
threads never meet trial's reactor.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep, StorageCommitmentPushModel

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


def report_of(event: evt.Event) -> dict:
    """The N-EVENT-REPORT as JSON."""
    request = event.request
    info = event.event_information
    return {
        "event_type": int(request.EventTypeID),
        "calling": event.assoc.requestor.ae_title,
        "class": str(request.AffectedSOPClassUID),
        "instance": str(request.AffectedSOPInstanceUID),
        "transaction": str(info.TransactionUID),
        "retrieve_ae": str(info.get("RetrieveAETitle", "")),
        "committed": [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)]
                      for i in info.get("ReferencedSOPSequence", [])],
        "failed": [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID),
                    int(i.FailureReason)] for i in info.get("FailedSOPSequence", [])],
    }


class Reports:
    """The N-EVENT-REPORTs received (answered Success), and a wait for the
    answer to the first one to be on its way.

    pynetdicom serves an N-EVENT-REPORT request in a thread of its own and
    fires ``EVT_DIMSE_SENT`` *before* it queues the response's P-DATA for
    its DUL thread.  Releasing (or shutting the server down) as soon as
    that event fires may queue the A-RELEASE-RQ ahead of the response: the
    archive then gets the release first and never the response (which
    pynetdicom drops, or tries to send in Sta7, where its DUL thread dies
    and the release times out).  So :meth:`wait` also waits for that
    serving thread to end: the response is queued by then, ahead of
    anything the caller sends next.
    """

    def __init__(self) -> None:
        self.received: list[dict] = []
        self._answered = threading.Event()
        self._serving: threading.Thread | None = None

    @property
    def handlers(self) -> list:
        """pynetdicom event handlers."""
        return [(evt.EVT_N_EVENT_REPORT, self._on_report), (evt.EVT_DIMSE_SENT, self._on_sent)]

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.received.append(report_of(event))
        return 0x0000, None

    def _on_sent(self, event: evt.Event) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP" and self._serving is None:
            self._serving = threading.current_thread()
            self._answered.set()

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a report to be answered, and
        for its response to be queued for sending."""
        if self._answered.wait(timeout) and self._serving is not threading.current_thread():
            self._serving.join(timeout)


def commit(args: argparse.Namespace) -> dict:
    """Request storage commitment and wait for its report."""
    reports = Reports()
    handlers = reports.handlers
    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(StorageCommitmentPushModel)
    server = None
    if args.listen:
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        server = ae.start_server(("127.0.0.1", args.listen), block=False,
                                 evt_handlers=handlers)
    result: dict = {"associated": False, "action": None, "reports": reports.received}
    assoc = ae.associate(args.host, args.port, ae_title=args.called,
                         evt_handlers=handlers if args.same else None)
    if assoc.is_established:
        result["associated"] = True
        request = Dataset()
        request.TransactionUID = args.transaction
        items = []
        for ref in args.ref:
            sop_class, sop_instance = ref.split(":")
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            items.append(item)
        request.ReferencedSOPSequence = Sequence(items)
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
        result["action"] = int(status.Status) if "Status" in status else None
        if args.same:
            reports.wait(args.wait)
        assoc.release()
        if not args.same:
            reports.wait(args.wait)
    if server is not None:
        server.shutdown()
    return result


def listen(args: argparse.Namespace) -> dict:
    """Wait for one report on our own SCP."""
    reports = Reports()
    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = ae.start_server(("127.0.0.1", args.listen), block=False,
                             evt_handlers=reports.handlers)
    print("LISTENING", flush=True)
    reports.wait(args.wait)
    server.shutdown()
    return {"associated": True, "reports": reports.received}


def step(**values) -> Dataset:
    """An N-CREATE Attribute List (PS3.4 Table F.7.2-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    scheduled = Dataset()
    scheduled.StudyInstanceUID = values["study"]
    scheduled.AccessionNumber = "ACC-MPPS"
    scheduled.RequestedProcedureID = "RP1"
    scheduled.ScheduledProcedureStepID = "SPS1"
    scheduled.ScheduledProcedureStepDescription = "CT head"
    scheduled.ReferencedStudySequence = Sequence()
    scheduled.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled])
    ds.PatientName = "Müller^Anna"
    ds.PatientID = "MPPS1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = "PYNETSCU"
    ds.PerformedStationName = "CT1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20240105"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    return ds


def completion(study: str) -> Dataset:
    """An N-SET Modification List completing the step."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20240105"
    ds.PerformedProcedureStepEndTime = "103000"
    series = Dataset()
    series.SeriesInstanceUID = study + ".1"
    series.ProtocolName = "Head"
    series.PerformingPhysicianName = ""
    series.OperatorsName = "Tech^One"
    series.SeriesDescription = "Axial"
    series.RetrieveAETitle = ""
    image = Dataset()
    image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image.ReferencedSOPInstanceUID = study + ".1.1"
    series.ReferencedImageSequence = Sequence([image])
    series.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence([series])
    return ds


def mpps(args: argparse.Namespace) -> dict:
    """N-CREATE, N-SET COMPLETED, one N-SET too many."""
    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(ModalityPerformedProcedureStep)
    result: dict = {"associated": False}
    assoc = ae.associate(args.host, args.port, ae_title=args.called)
    if assoc.is_established:
        result["associated"] = True
        status, _ = assoc.send_n_create(step(study=args.study), ModalityPerformedProcedureStep,
                                        args.uid)
        result["create"] = int(status.Status)
        status, _ = assoc.send_n_create(step(study=args.study), ModalityPerformedProcedureStep,
                                        args.uid)
        result["duplicate"] = int(status.Status)
        status, _ = assoc.send_n_set(completion(args.study), ModalityPerformedProcedureStep,
                                     args.uid)
        result["complete"] = int(status.Status)
        late = Dataset()
        late.PerformedProcedureStepDescription = "too late"
        status, _ = assoc.send_n_set(late, ModalityPerformedProcedureStep, args.uid)
        result["late"] = int(status.Status)
        result["late_comment"] = str(status.get("ErrorComment", ""))
        assoc.release()
    return result


def main(argv: list[str]) -> int:
    """Parse arguments, talk to the archive, print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("operation", choices=("commit", "listen", "mpps"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--called", default="QRSCP")
    parser.add_argument("--calling", default="PYNETSCU")
    parser.add_argument("--transaction", default="1.2.826.0.1.3680043.2.1143.99")
    parser.add_argument("--ref", action="append", default=[])
    parser.add_argument("--same", action="store_true")
    parser.add_argument("--listen", type=int, default=0)
    parser.add_argument("--wait", type=float, default=20.0)
    parser.add_argument("--uid", default="1.2.826.0.1.3680043.2.1143.500")
    parser.add_argument("--study", default="1.2.826.0.1.3680043.2.1143.400")
    args = parser.parse_args(argv)
    result = {"commit": commit, "listen": listen, "mpps": mpps}[args.operation](args)
    print(json.dumps(result), flush=True)
    return 0 if result["associated"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

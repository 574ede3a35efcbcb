"""Worklist items and queries for the Modality Worklist tests.

DCMTK ships ten example items (``wlistdb/OFFIS/wklist*.dump``) and thirteen
example queries (``wlistqry/wlistqry*.dump``); the end-to-end tests turn
them into files with ``dump2dcm``.  :func:`extra_items` adds items those
lack: several scheduled steps' worth of dates and stations, a protocol
code sequence, referenced studies, a Latin-1 name, a multi-valued station,
an item without a performing physician, and items that must be skipped.
"""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: Modality Worklist Information Model - FIND.
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
ROOT = "1.2.826.0.1.3680043.9.7433.17"


def code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def item(number: int, name: str, patient_id: str, modality: str, station: str | list[str],
         start_date: str, start_time: str, *, charset: str | None = "ISO_IR 100",
         physician: str | None = "WHO^DOCTOR", protocol: Dataset | None = None,
         description: str | None = "PROCEDURE", references: list[Dataset] | None = None,
         procedure_code: Dataset | None = None, **top: object) -> Dataset:
    """A complete worklist item (every type 1 return key filled)."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.AccessionNumber = f"X{number:04d}"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = f"{ROOT}.{number}"
    ds.RequestingPhysician = "REQ^PHYSICIAN"
    ds.RequestedProcedureDescription = f"REQUESTED {number}"
    if procedure_code is not None:
        ds.RequestedProcedureCodeSequence = Sequence([procedure_code])
    ds.RequestedProcedureID = f"RP{number}"
    ds.RequestedProcedurePriority = "ROUTINE"
    if references is not None:
        ds.ReferencedStudySequence = Sequence(references)
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = start_date
    step.ScheduledProcedureStepStartTime = start_time
    if physician is not None:
        step.ScheduledPerformingPhysicianName = physician
    if description is not None:
        step.ScheduledProcedureStepDescription = description
    if protocol is not None:
        step.ScheduledProtocolCodeSequence = Sequence([protocol])
    step.ScheduledProcedureStepID = f"SPS{number}"
    step.ScheduledStationName = f"STATION{number}"
    step.ScheduledProcedureStepLocation = "ROOM 1"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    return ds


def reference(number: int) -> Dataset:
    """A Referenced Study Sequence item."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = f"{ROOT}.{number}.99"
    return ref


def extra_items() -> dict[str, Dataset]:
    """Items (by file name) besides DCMTK's examples, all to be answered."""
    return {
        "ct-morning.wl": item(1, "SMITH^ANNA", "P1", "CT", "CT01", "20240311", "081500",
                              protocol=code("P1", "99LOCAL", "CT HEAD"),
                              references=[reference(1)]),
        "ct-afternoon.wl": item(2, "SMITH^BERT", "P2", "CT", ["CT01", "CT02"], "20240311",
                                "143000", description=None,
                                protocol=code("P2", "99LOCAL", "CT CHEST")),
        "mr-next-day.wl": item(3, "Müller^Jürgen", "P3", "MR", "MR01", "20240312", "090000",
                               procedure_code=code("R3", "99LOCAL", "MR KNEE"),
                               PregnancyStatus=2),
        "us-no-physician.wl": item(4, "JONES^CLARA", "P4", "US", "US01", "20240312",
                                   "170000", physician=None, charset=None),
        "mr-late.wl": item(5, "DOE^JOHN", "P5", "MR", "MR01", "20240313", "235959.5",
                           references=[]),
    }


def bad_items() -> dict[str, Dataset]:
    """Items that are not answered: incomplete ones (``wlmscpfs`` rejects
    them too)."""
    no_step = item(90, "NOSTEP^X", "P90", "CT", "CT01", "20240311", "080000")
    del no_step.ScheduledProcedureStepSequence
    no_id = item(91, "NOID^X", "", "CT", "CT01", "20240311", "080000")
    return {"no-step.wl": no_step, "no-patient-id.wl": no_id}


def write(ds: Dataset, path: str, implicit: bool = False) -> None:
    """Write an item as a DICOM file (with file meta information)."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = WORKLIST_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = str(ds.get("StudyInstanceUID", ROOT + ".0"))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def query(top: dict | None = None, step: dict | None = None,
          empty_step: bool = False) -> Dataset:
    """A worklist query: top-level keys and Scheduled Procedure Step keys."""
    ds = Dataset()
    for keyword, value in (top or {}).items():
        setattr(ds, keyword, value)
    if step is not None or empty_step:
        entry = Dataset()
        for keyword, value in (step or {}).items():
            setattr(entry, keyword, value)
        ds.ScheduledProcedureStepSequence = Sequence([entry])
    return ds

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


#: DCMTK's example items (``wlistdb/OFFIS/wklist1..10.dump``), for when
#: Debian's documentation (where they live) is not installed: accession,
#: name, ID, birth date, medical alerts, allergies, study UID, requesting
#: physician, requested procedure description, modality, contrast agent,
#: station AE titles, start date, start time, performing physician, step
#: description, step ID, station name, location, requested procedure ID,
#: priority.
DCMTK_ITEMS = [
    ("00000", "VIVALDI^ANTONIO", "AV35674", "16780304", "METASTASIS", "TANTAL",
     "1.2.276.0.7230010.3.2.101", "SMITH", "EXAM6", "MR", "BARIUMSULFAT", "AA32\\AA33",
     "19951015", "085607", "JOHNSON", "EXAM74", "SPD3445", "STN456", "B34F56", "RP454G234",
     "LOW"),
    ("00002", "VIVALDI^ANTONIO", "AV35674", "16780304", "ABZESS", "BARIUMSULFAT",
     "1.2.276.0.7230010.3.2.102", "NEWMAN", "EXAM5464", "CT", "", "AB45", "19960406",
     "160700", "ROSS", "EXAM04", "SPD1342", "STNAB89", "B67F66", "RP488M9439", "HIGH"),
    ("00003", "VIVALDI^ANTONIO", "AV35674", "16780304", "LEUKEMIA", "WISMUT",
     "1.2.276.0.7230010.3.2.103", "FALK", "EXAM567", "CR", "", "CC56\\NN77", "19960123",
     "135558", "CONARD", "EXAM5656", "SPD4564", "STN899", "B76F67", "RP56567", "HIGH"),
    ("00004", "HAYDN^FRANZ^JOSEPH", "HF", "17320331", "ABZESS", "TANTAL",
     "1.2.276.0.7230010.3.2.104", "MILLER", "EXAM67", "US", "", "AA32", "19960103", "165709",
     "MEYER", "EXAM98", "SPD73843", "STN34723", "B04F57", "RP634265", "LOW"),
    ("00005", "HAYDN^FRANZ^JOSEPH", "HF", "17320331", "ABZESS", "THORIUM",
     "1.2.276.0.7230010.3.2.105", "NEWMAN", "EXAM8759", "CR", "", "AB45\\DD56", "19951206",
     "094500", "COOPER", "EXAM567", "SPD1234", "STN8903", "B95F66", "RP4734734", "LOW"),
    ("00006", "HAYDN^FRANZ^JOSEPH", "HF", "17320331", "ABZESS", "BARIUMSULFAT",
     "1.2.276.0.7230010.3.2.106", "FALK", "EXAM758", "CT", "", "FG56\\ER67\\JJ56\\TZ77",
     "19930606", "153600", "ROSS", "EXAM9584", "SPD9478", "STN8987", "B67F55", "RP57463",
     "LOW"),
    ("00007", "BEETHOVEN^LUDWIG^VAN", "BLV734623", "18270326", "METASTASIS", "WISMUT",
     "1.2.76.0.7230010.3.2.107", "ROSS", "EXAM8", "NM", "THORIUM", "AZ01", "19960502",
     "140956", "JOHNSON", "EXAM98", "SPD43645", "STN9483", "B56F56", "RP44580", "HIGH"),
    ("00008", "BEETHOVEN^LUDWIG^VAN", "BLV734623", "18270326", "METASTASIS", "THORIUM",
     "1.2.276.0.7230010.3.2.108", "CLARK", "EXAM857", "CT", "", "DS45\\NN77\\GH67",
     "19960423", "110856", "ROSS", "EXAM5596", "SPD8265", "STN656", "B05F07", "RP472", "LOW"),
    ("00009", "MOZART^WOLFGANG^AMADEUS", "MWA484763", "17911205", "ABZESS", "BARIUMSULFAT",
     "1.2.276.0.7230010.3.2.109", "MEIER", "EXAM78", "CT", "", "AA67", "19931204", "075644",
     "JOHNSON", "EXAM56", "SPD57584", "STN345", "B55F56", "RP34734H328", "HIGH"),
    ("00001", "MOZART^WOLFGANG^AMADEUS", "MWA484763", "17911205", "ABZESS", "BARIUMSULFAT",
     "1.2.276.0.7230010.3.2.110", "MILLER", "EXAM8", "MR", "", "TT67", "19960805", "175609",
     "BROWN", "EXAM46", "SPD4548", "STN94594", "B58F56", "RP4474", "LOW"),
]


def dcmtk_items() -> dict[str, Dataset]:
    """DCMTK's ten example items, as ``wklist<N>.wl``."""
    items = {}
    for number, row in enumerate(DCMTK_ITEMS, 1):
        (accession, name, patient_id, birth, alerts, allergies, study, requesting,
         requested, modality, contrast, stations, start_date, start_time, performing,
         description, step_id, station, location, procedure_id, priority) = row
        ds = Dataset()
        ds.AccessionNumber = accession
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = name
        ds.PatientID = patient_id
        ds.PatientBirthDate = birth
        ds.PatientSex = "M"
        ds.MedicalAlerts = alerts
        ds.Allergies = allergies
        ds.StudyInstanceUID = study
        ds.RequestingPhysician = requesting
        ds.RequestedProcedureDescription = requested
        step = Dataset()
        step.Modality = modality
        step.RequestedContrastAgent = contrast
        step.ScheduledStationAETitle = stations.split("\\")
        step.ScheduledProcedureStepStartDate = start_date
        step.ScheduledProcedureStepStartTime = start_time
        step.ScheduledPerformingPhysicianName = performing
        step.ScheduledProcedureStepDescription = description
        step.ScheduledProcedureStepID = step_id
        step.ScheduledStationName = station
        step.ScheduledProcedureStepLocation = location
        step.PreMedication = ""
        step.CommentsOnTheScheduledProcedureStep = ""
        ds.ScheduledProcedureStepSequence = Sequence([step])
        ds.RequestedProcedureID = procedure_id
        ds.RequestedProcedurePriority = priority
        items[f"wklist{number}.wl"] = ds
    return items


#: Every key of DCMTK's fullest example query (wlistqry1/2/7/11).
_FULL_TOP = ("AccessionNumber", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
             "MedicalAlerts", "Allergies", "StudyInstanceUID", "RequestingPhysician",
             "RequestedProcedureDescription", "RequestedProcedureID",
             "RequestedProcedurePriority")
_FULL_STEP = ("Modality", "RequestedContrastAgent", "ScheduledStationAETitle",
              "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
              "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
              "ScheduledProcedureStepID", "ScheduledStationName",
              "ScheduledProcedureStepLocation", "PreMedication",
              "CommentsOnTheScheduledProcedureStep")


def _empty(*keywords: str, **values: str) -> dict[str, str]:
    keys = {keyword: "" for keyword in keywords}
    keys.update(values)
    return keys


def dcmtk_queries() -> dict[str, Dataset]:
    """DCMTK's thirteen example queries (``wlistqry<N>.dump``), as
    ``wlistqry<N>``."""
    codes = Dataset()
    codes.CodeValue = ""
    codes.CodingSchemeDesignator = ""
    codes.CodeMeaning = ""
    qry0 = query({"PatientName": ""})
    qry0.RequestedProcedureCodeSequence = Sequence([codes])
    qry10 = query({"PatientName": "", "RequestedProcedureID": ""},
                  {"Modality": "", "ScheduledProcedureStepLocation": ""})
    qry10.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = Sequence(
        [codes.copy()])
    return {
        "wlistqry0": qry0,
        "wlistqry1": query(_empty(*_FULL_TOP), empty_step=True),
        "wlistqry2": query(_empty(*_FULL_TOP), _empty(
            *_FULL_STEP, ScheduledStationAETitle="AA2", ScheduledStationName="A2")),
        "wlistqry3": query({"PatientName": ""}, empty_step=True),
        "wlistqry4": query({"PatientName": ""}, {"Modality": "DD"}),
        "wlistqry5": query({"PatientName": ""}, _empty(
            "Modality", "ScheduledProcedureStepStartDate", "ScheduledPerformingPhysicianName",
            "ScheduledProcedureStepID", ScheduledProcedureStepStartTime="120000-")),
        "wlistqry6": query({"PatientName": ""}, {"Modality": "", "ScheduledStationAETitle": "AA2"}),
        "wlistqry7": query(_empty(*_FULL_TOP), _empty(*_FULL_STEP, ScheduledStationAETitle="AA2")),
        "wlistqry8": query({"PatientName": ""}, {"Modality": "", "ScheduledStationAETitle": "AA2",
                                                 "ScheduledStationName": "A2"}),
        "wlistqry9": query(_empty("PatientName", "RequestedProcedureID",
                                  "RequestedProcedurePriority"), _empty(
            "Modality", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
            "ScheduledPerformingPhysicianName", "ScheduledProcedureStepLocation",
            ScheduledStationAETitle="AA2", ScheduledStationName="A2")),
        "wlistqry10": qry10,
        "wlistqry11": query(_empty(*_FULL_TOP), _empty(*_FULL_STEP)),
        "wlistqry12": query({"PatientName": ""}, {
            "Modality": "", "ScheduledStationAETitle": "AA4", "ScheduledStationName": "A2",
            "CommentsOnTheScheduledProcedureStep": "*"}),
    }

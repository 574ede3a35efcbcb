"""Test instances for the benchmarks, written with pydicom.

* :func:`write_ct_set`: 512x512 16-bit CT images (0.5 MiB of pixel data
  each), for C-STORE throughput and the C-MOVE/C-GET study;
* :func:`write_small_set`: small CT instances (32x32, a few KB) for the bulk
  load, 20 per study, spread over patients, names and study dates so the
  C-FIND queries select known fractions of the index.

Every call makes new UIDs, so no server ever sees the same instance twice
(a duplicate may be skipped, which would flatter it).
"""

from __future__ import annotations

import datetime
import os
import uuid
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCES_PER_STUDY = 20
#: Studies per patient in the small set (so a PatientID query hits a few).
STUDIES_PER_PATIENT = 5
#: Study dates start here and advance one day per study.
FIRST_DATE = datetime.date(2015, 1, 1)


def uid_root() -> str:
    """A fresh UID root under 2.25 (a UUID as an integer, PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def _base(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    return ds


def _save(ds: Dataset, path: str) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def write_ct_set(directory: str, count: int, study_uid: str | None = None,
                 patient_id: str = "CT0001") -> tuple[list[str], str]:
    """``count`` 0.5 MiB CT images in one study and series.

    :returns: the file paths and the Study Instance UID.
    """
    os.makedirs(directory, exist_ok=True)
    root = uid_root()
    study_uid = study_uid or f"{root}.1"
    ds = _base(CT_IMAGE_STORAGE)
    ds.PatientID = patient_id
    ds.PatientName = f"BENCH^{patient_id}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = f"{root}.2"
    ds.StudyDate = "20200101"
    ds.StudyID = "1"
    ds.Rows = ds.Columns = 512
    ds.PixelData = bytes(range(256)) * (512 * 512 * 2 // 256)
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = f"{root}.3.{i + 1}"
        ds.InstanceNumber = i + 1
        path = os.path.join(directory, f"ct{i + 1:05d}.dcm")
        _save(ds, path)
        paths.append(path)
    return paths, study_uid


@dataclass(frozen=True)
class SmallSet:
    """What :func:`write_small_set` wrote: paths and the keys to query."""

    paths: list[str]
    study_uids: list[str]
    series_uids: list[str]
    patient_ids: list[str]


def patient_id(study: int) -> str:
    """The Patient ID of study number ``study`` (0-based, across all sets)."""
    return f"P{study // STUDIES_PER_PATIENT:06d}"


def study_date(study: int) -> str:
    """The Study Date of study number ``study``: one day per study."""
    return (FIRST_DATE + datetime.timedelta(days=study)).strftime("%Y%m%d")


def write_small_set(directory: str, first_study: int, studies: int) -> SmallSet:
    """Small instances for studies ``first_study`` .. ``+studies``, 20 each.

    Study ``n`` belongs to patient ``P{n // 5}``, named ``BENCH^P{n // 5}``,
    dated :func:`study_date` ``(n)``; each study has one series.
    """
    os.makedirs(directory, exist_ok=True)
    root = uid_root()
    ds = _base(CT_IMAGE_STORAGE)
    ds.Rows = ds.Columns = 32
    ds.PixelData = bytes(32 * 32 * 2)
    paths, studies_out, series_out, patients = [], [], [], []
    for n in range(first_study, first_study + studies):
        ds.PatientID = patient_id(n)
        ds.PatientName = f"BENCH^{patient_id(n)}"
        ds.StudyInstanceUID = f"{root}.{n}"
        ds.SeriesInstanceUID = f"{root}.{n}.1"
        ds.StudyDate = study_date(n)
        ds.StudyID = str(n % 100000)
        studies_out.append(ds.StudyInstanceUID)
        series_out.append(ds.SeriesInstanceUID)
        patients.append(ds.PatientID)
        for i in range(INSTANCES_PER_STUDY):
            ds.SOPInstanceUID = f"{root}.{n}.1.{i + 1}"
            ds.InstanceNumber = i + 1
            path = os.path.join(directory, f"s{n:06d}_{i + 1:02d}.dcm")
            _save(ds, path)
            paths.append(path)
    return SmallSet(paths, studies_out, series_out, patients)

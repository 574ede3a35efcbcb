"""Modality Performed Procedure Step SCP (PS3.4 Annex F.7).

A modality tells the archive that it started a procedure step (N-CREATE,
Performed Procedure Step Status "IN PROGRESS") and how it ended (N-SET to
"COMPLETED" or "DISCONTINUED"); in between it may N-SET more.  The rules
of PS3.4 F.7.2 (Table F.7.2-1) checked here:

- N-CREATE: the step must be new (0x0111 Duplicate SOP Instance); its
  status must be IN PROGRESS (0x0106 Invalid Attribute Value); the type 1
  attributes of N-CREATE must be present (0x0120 Missing Attribute) with a
  value (0x0121 Missing Attribute Value): Scheduled Step Attribute
  Sequence (each item with a Study Instance UID), Performed Procedure Step
  ID, Performed Station AE Title, Performed Procedure Step Start Date and
  Time, Performed Procedure Step Status and Modality.  Type 2 attributes
  may be left out (as most SCPs accept).
- N-SET: the step must exist (0x0112 No Such Object Instance) and still be
  IN PROGRESS, else 0x0110 Processing Failure, "Performed Procedure Step
  Object may no longer be updated" (Error ID 0xA710, F.7.2.2.4); the
  attributes Table F.7.2-1 marks "Not allowed" for N-SET (patient,
  scheduling, station, start, modality, study ID) are refused with
  0x0106; the status may only become COMPLETED or DISCONTINUED; a final
  state needs Performed Procedure Step End Date and Time and at least one
  Performed Series Sequence item (0x0120/0x0121), as the "Final State"
  column asks.
- Values: dates and times must be DICOM DA and TM (0x0106), UIDs valid
  UIDs, Modality a CS, the station an AE title, each Performed Series
  Sequence item needs a Series Instance UID and a Protocol Name.  An end
  before the start is kept but answered 0x0116 (Attribute Value Out of
  Range, a warning in PS3.7 C.4.3) with those attributes in the response.
- Text: the stored step is UTF-8 (ISO_IR 192) once any request used
  another character set, so an N-SET's Specific Character Set does not
  replace the earlier one's meaning (F.7.2.2.3).

Each step is one Part 10 file ``<instances>/.mpps/<SOP Instance UID>.dcm``,
written whole (temporary file, fsync, link or rename, directory fsync):
N-CREATE links it into place, so two nodes sharing the instance directory
cannot both create a step.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from copy import deepcopy
from typing import Any, Iterable

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool

from dicomtwist import events
from dicomtwist import log as dlog
from dicomtwist.association import Response, ServiceRequest
from dicomtwist.errors import DIMSEServiceError
from dicomtwist.status import Status
from dicomtwist.storage.files import fsync_directory, is_valid_uid

__all__ = [
    "COMPLETED",
    "DIRECTORY",
    "DISCONTINUED",
    "IN_PROGRESS",
    "MPPS",
    "ModalityPerformedProcedureStep",
    "MppsError",
    "MppsStore",
    "check_create",
    "check_set",
    "merge",
]

#: The Modality Performed Procedure Step SOP Class (PS3.4 F.7.3).
MPPS = "1.2.840.10008.3.1.2.3.3"
#: Where performed steps are kept, under the instance directory.
DIRECTORY = ".mpps"
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
#: F.7.2.2.4: the Error ID of "may no longer be updated".
NO_LONGER_UPDATABLE = 0xA710
_SUFFIX = ".dcm"

#: Type 1 in N-CREATE (Table F.7.2-1): present, with a value.
CREATE_REQUIRED = (
    "ScheduledStepAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
)
#: "Not allowed" in N-SET (Table F.7.2-1): set once, by the N-CREATE.
NOT_SETTABLE = frozenset({
    "SOPClassUID", "SOPInstanceUID",
    "ScheduledStepAttributesSequence",
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientSex", "ReferencedPatientSequence",
    "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID",
    "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription",
    "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedStationName",
    "PerformedLocation", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "Modality", "StudyID",
})
#: Type 1 in the final state (COMPLETED or DISCONTINUED).
FINAL_REQUIRED = (
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedSeriesSequence",
)
#: Shown in the HTTP list of steps.
SUMMARY = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "Modality", "PatientName",
    "PatientID", "PerformedStationAETitle", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime", "PerformedProcedureStepStatus",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription",
)

_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_CS = re.compile(r"[A-Z0-9_ ]{1,16}")


class MppsError(DIMSEServiceError):
    """A refused N-CREATE or N-SET: a status, a comment, and the tags at
    fault (the response's Attribute Identifier List)."""

    def __init__(self, status: int, comment: str, tags: Iterable[int] = (),
                 error_id: int | None = None) -> None:
        super().__init__(status, comment[:64])
        self.tags = tuple(tags)
        self.error_id = error_id

    def response(self) -> Response:
        """The response that says so."""
        fields: dict[str, Any] = {"error_comment": self.comment}
        if self.tags:
            fields["attribute_identifier_list"] = self.tags
        if self.error_id is not None:
            fields["error_id"] = self.error_id
        return Response(self.status, None, fields)


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def _empty(value: Any) -> bool:
    return value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0)


def _require(ds: Dataset, keywords: Iterable[str], where: str) -> None:
    """Type 1: present (0x0120) with a value (0x0121)."""
    missing = [k for k in keywords if k not in ds]
    if missing:
        raise MppsError(Status.MISSING_ATTRIBUTE, f"{where}: no {missing[0]}",
                        [_tag(k) for k in missing])
    empty = [k for k in keywords if _empty(ds[k].value)]
    if empty:
        raise MppsError(Status.MISSING_ATTRIBUTE_VALUE, f"{where}: empty {empty[0]}",
                        [_tag(k) for k in empty])


def _invalid(keyword: str, why: str) -> MppsError:
    return MppsError(Status.INVALID_ATTRIBUTE_VALUE, f"{keyword} {why}", [_tag(keyword)])


def _check_values(ds: Dataset) -> None:
    """Value checks of the attributes present (0x0106)."""
    for keyword in ("PerformedProcedureStepStartDate", "PerformedProcedureStepEndDate"):
        value = ds.get(keyword)
        if not _empty(value) and not _valid_date(str(value)):
            raise _invalid(keyword, f"{value!s:.20} is not a date")
    for keyword in ("PerformedProcedureStepStartTime", "PerformedProcedureStepEndTime"):
        value = ds.get(keyword)
        if not _empty(value) and not _valid_time(str(value)):
            raise _invalid(keyword, f"{value!s:.20} is not a time")
    status = ds.get("PerformedProcedureStepStatus")
    if status is not None and str(status) not in STATUSES:
        raise _invalid("PerformedProcedureStepStatus", f"{status!s:.20} is unknown")
    modality = ds.get("Modality")
    if not _empty(modality) and not _CS.fullmatch(str(modality)):
        raise _invalid("Modality", "is not a code string")
    station = ds.get("PerformedStationAETitle")
    if not _empty(station) and not _valid_ae(str(station)):
        raise _invalid("PerformedStationAETitle", "is not an AE title")
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        _require(item, ("StudyInstanceUID",), "Scheduled Step Attribute Sequence item")
        if not is_valid_uid(str(item.StudyInstanceUID)):
            raise _invalid("ScheduledStepAttributesSequence", "item with an invalid Study UID")
    for item in ds.get("PerformedSeriesSequence") or []:
        _require(item, ("SeriesInstanceUID", "ProtocolName"), "Performed Series item")
        if not is_valid_uid(str(item.SeriesInstanceUID)):
            raise _invalid("PerformedSeriesSequence", "item with an invalid Series UID")
        for keyword in ("ReferencedImageSequence",
                        "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in item.get(keyword) or []:
                if not (is_valid_uid(str(ref.get("ReferencedSOPClassUID", "")))
                        and is_valid_uid(str(ref.get("ReferencedSOPInstanceUID", "")))):
                    raise _invalid("PerformedSeriesSequence",
                                   f"{keyword} item without valid UIDs")


def _valid_date(value: str) -> bool:
    if not _DA.fullmatch(value):
        return False
    import datetime

    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    if not _TM.fullmatch(value):
        return False
    parts = [int(value[i:i + 2]) for i in range(0, min(len(value), 6), 2)]
    limits = (23, 59, 60)  # 60: a leap second (PS3.5 Table 6.2-1)
    return all(p <= limit for p, limit in zip(parts, limits))


def _valid_ae(value: str) -> bool:
    value = value.strip()
    return 0 < len(value) <= 16 and value.isascii() and value.isprintable() and "\\" not in value


def _out_of_range(ds: Dataset) -> Dataset | None:
    """An end before the start: the attributes concerned (0x0116), or None."""
    start = (str(ds.get("PerformedProcedureStepStartDate") or ""),
             str(ds.get("PerformedProcedureStepStartTime") or ""))
    end = (str(ds.get("PerformedProcedureStepEndDate") or ""),
           str(ds.get("PerformedProcedureStepEndTime") or ""))
    if not (start[0] and end[0]):
        return None
    before = end[0] < start[0] or (end[0] == start[0] and end[1] and start[1]
                                   and end[1].ljust(6, "0") < start[1].ljust(6, "0"))
    if not before:
        return None
    out = Dataset()
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"):
        if keyword in ds:
            out[keyword] = ds[keyword]
    return out


def check_create(ds: Dataset) -> Dataset | None:
    """Apply the N-CREATE rules to an Attribute List.

    :returns: the attributes out of range (answer 0x0116), or None.
    :raises MppsError: it is refused.
    """
    _require(ds, CREATE_REQUIRED, "N-CREATE")
    status = str(ds.PerformedProcedureStepStatus)
    if status != IN_PROGRESS:
        raise MppsError(Status.INVALID_ATTRIBUTE_VALUE,
                        f"N-CREATE with status {status:.20}, not IN PROGRESS",
                        [_tag("PerformedProcedureStepStatus")])
    _check_values(ds)
    return _out_of_range(ds)


def check_set(current: Dataset, modifications: Dataset) -> Dataset | None:
    """Apply the N-SET rules to a Modification List for a stored step.

    :returns: the attributes out of range (answer 0x0116), or None.
    :raises MppsError: it is refused (the step is unchanged).
    """
    status = str(current.get("PerformedProcedureStepStatus", ""))
    if status != IN_PROGRESS:
        raise MppsError(Status.PROCESSING_FAILURE,
                        "Performed Procedure Step Object may no longer be updated",
                        error_id=NO_LONGER_UPDATABLE)
    refused = sorted(int(e.tag) for e in modifications if e.keyword in NOT_SETTABLE)
    if refused:
        raise MppsError(Status.INVALID_ATTRIBUTE_VALUE,
                        "N-SET of attributes set only by the N-CREATE", refused)
    if "PerformedProcedureStepStatus" in modifications and _empty(
            modifications.PerformedProcedureStepStatus):
        raise MppsError(Status.MISSING_ATTRIBUTE_VALUE, "empty Performed Procedure Step Status",
                        [_tag("PerformedProcedureStepStatus")])
    _check_values(modifications)
    merged = merge(current, modifications)
    if str(merged.PerformedProcedureStepStatus) in (COMPLETED, DISCONTINUED):
        _require(merged, FINAL_REQUIRED, f"{merged.PerformedProcedureStepStatus}")
    return _out_of_range(merged)


def merge(current: Dataset, modifications: Dataset) -> Dataset:
    """The step after an N-SET: each modified attribute replaced (a
    sequence as a whole); text in UTF-8 when the two character sets differ."""
    merged = _decoded(current)
    changes = _decoded(modifications)
    charsets = {_charset(current), _charset(modifications)} - {None}
    for element in changes:
        if element.keyword == "SpecificCharacterSet":
            continue
        merged[element.tag] = element
    if charsets and (len(charsets) > 1 or "SpecificCharacterSet" not in merged):
        merged.SpecificCharacterSet = "ISO_IR 192"
    elif charsets:
        merged.SpecificCharacterSet = current.SpecificCharacterSet
    return merged


def _charset(ds: Dataset) -> str | None:
    value = ds.get("SpecificCharacterSet")
    if _empty(value):
        return None
    return "\\".join(value) if not isinstance(value, str) else value


def _decoded(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with its text decoded (``Dataset(ds)`` would share
    its elements)."""
    copy = deepcopy(ds)
    copy.decode()
    return copy


class MppsStore:
    """Performed steps, one Part 10 file each in ``directory`` (blocking
    methods: call them in the thread pool)."""

    log = dlog.logger()

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, uid: str) -> str:
        if not is_valid_uid(uid):
            raise ValueError(f"invalid SOP Instance UID {uid!r}")
        return os.path.join(self.directory, uid + _SUFFIX)

    def _encode(self, ds: Dataset) -> bytes:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MPPS
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = deepcopy(ds)
        ds.file_meta = meta
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    def _temporary(self, data: bytes) -> str:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=self.directory, prefix=".new-", suffix=".tmp")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return path

    def create(self, ds: Dataset) -> None:
        """Keep a new step.

        :raises FileExistsError: a step with its SOP Instance UID exists.
        """
        final = self._path(ds.SOPInstanceUID)
        temporary = self._temporary(self._encode(ds))
        try:
            os.link(temporary, final)
        finally:
            os.unlink(temporary)
        fsync_directory(self.directory)

    def replace(self, ds: Dataset) -> None:
        """Write a changed step over the stored one."""
        final = self._path(ds.SOPInstanceUID)
        temporary = self._temporary(self._encode(ds))
        try:
            os.replace(temporary, final)
        except BaseException:
            os.unlink(temporary)
            raise
        fsync_directory(self.directory)

    def get(self, uid: str) -> Dataset | None:
        """A stored step, or None."""
        try:
            path = self._path(uid)
        except ValueError:
            return None
        try:
            ds = dcmread(path)
        except FileNotFoundError:
            return None
        del ds.file_meta
        return ds

    def all(self) -> list[Dataset]:
        """Every stored step (an unreadable file is skipped, with a warning)."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        steps = []
        for name in names:
            if name.startswith(".") or not name.endswith(_SUFFIX):
                continue
            try:
                ds = dcmread(os.path.join(self.directory, name))
            except Exception as e:
                self.log.warn("MPPS: skipping unreadable {name}: {error}", name=name,
                              error=str(e))
                continue
            del ds.file_meta
            steps.append(ds)
        return steps


class ModalityPerformedProcedureStep:
    """The MPPS SCP of the archive: N-CREATE and N-SET handlers.

    :param directory: the instance directory (steps go in its
        :data:`DIRECTORY` subdirectory).
    """

    log = dlog.logger()

    def __init__(self, reactor: Any, pool: Any, directory: str) -> None:
        self.reactor = reactor
        self.pool = pool
        self.store = MppsStore(os.path.join(directory, DIRECTORY))
        #: One N-CREATE or N-SET at a time per step (read, check, write).
        self._locks: dict[str, DeferredLock] = {}

    def _thread(self, f: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def handle_create(self, request: ServiceRequest) -> Deferred[Response]:
        """N-CREATE handler."""
        return Deferred.fromCoroutine(self._guarded(self._create, request))

    def handle_set(self, request: ServiceRequest) -> Deferred[Response]:
        """N-SET handler."""
        return Deferred.fromCoroutine(self._guarded(self._set, request))

    async def _guarded(self, operation: Any, request: ServiceRequest) -> Response:
        message = request.message
        uid = (getattr(message, "affected_sop_instance_uid", None)
               or getattr(message, "requested_sop_instance_uid", None) or generate_uid())
        if not is_valid_uid(uid):
            raise DIMSEServiceError(Status.INVALID_OBJECT_INSTANCE,
                                    f"invalid SOP Instance UID {uid:.40}")
        lock = self._locks.setdefault(uid, DeferredLock())
        await lock.acquire()
        try:
            return await operation(request, uid)
        except MppsError as e:
            self.log.info("MPPS {operation} of {uid} refused: 0x{status:04X} {comment}",
                          operation=message.NAME, uid=uid, status=e.status, comment=e.comment)
            return e.response()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(uid, None)

    async def _create(self, request: ServiceRequest, uid: str) -> Response:
        ds = request.dataset()
        out_of_range = check_create(ds)
        ds = _decoded(ds) if "SpecificCharacterSet" in ds else ds
        ds.SOPClassUID = MPPS
        ds.SOPInstanceUID = uid
        try:
            await self._thread(self.store.create, ds)
        except FileExistsError:
            raise MppsError(Status.DUPLICATE_SOP_INSTANCE, f"step {uid:.50} exists") from None
        except OSError as e:
            self.log.error("MPPS: cannot keep {uid}: {error}", uid=uid, error=str(e))
            raise MppsError(Status.PROCESSING_FAILURE, f"cannot keep the step: {e.strerror}")
        self.log.info("MPPS {uid} created by {calling}: {status}", uid=uid,
                      calling=request.association.peer_ae_title,
                      status=ds.PerformedProcedureStepStatus)
        _publish(request, ds, "C")
        fields = {"affected_sop_instance_uid": uid}
        if out_of_range is not None:
            return Response(Status.ATTRIBUTE_VALUE_OUT_OF_RANGE, out_of_range, fields)
        return Response(Status.SUCCESS, None, fields)

    async def _set(self, request: ServiceRequest, uid: str) -> Response:
        modifications = request.dataset()
        current = await self._thread(self.store.get, uid)
        if current is None:
            raise MppsError(Status.NO_SUCH_SOP_INSTANCE, f"no step {uid:.50}")
        out_of_range = check_set(current, modifications)
        merged = merge(current, modifications)
        try:
            await self._thread(self.store.replace, merged)
        except OSError as e:
            self.log.error("MPPS: cannot keep {uid}: {error}", uid=uid, error=str(e))
            raise MppsError(Status.PROCESSING_FAILURE, f"cannot keep the step: {e.strerror}")
        self.log.info("MPPS {uid} set by {calling}: {status}", uid=uid,
                      calling=request.association.peer_ae_title,
                      status=merged.PerformedProcedureStepStatus)
        _publish(request, merged, "U")
        if out_of_range is not None:
            return Response(Status.ATTRIBUTE_VALUE_OUT_OF_RANGE, out_of_range)
        return Response(Status.SUCCESS)


def _publish(request: ServiceRequest, step: Dataset, action: str) -> None:
    """Tell the bus a step was kept (the audit trail's Procedure Record)."""
    if not events.bus.observed:
        return
    assoc = request.association
    studies: list[str] = []
    accessions: list[str] = []
    for item in step.get("ScheduledStepAttributesSequence") or ():
        study = str(item.get("StudyInstanceUID") or "")
        if study and study not in studies:
            studies.append(study)
        accession = str(item.get("AccessionNumber") or "")
        if accession and accession not in accessions:
            accessions.append(accession)
    events.bus.publish(events.ProcedureStepRecorded(
        "dimse", assoc.peer_host() or "", assoc.peer_ae_title, str(step.SOPInstanceUID),
        action, str(step.get("PerformedProcedureStepStatus") or ""),
        str(step.get("PatientID") or ""), str(step.get("PatientName") or ""),
        tuple(studies), tuple(accessions), assoc.association_id))

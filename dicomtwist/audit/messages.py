"""DICOM audit messages (PS3.15 A.5, the IHE ATNA record format).

Each builder takes the facts of one audited event and returns the XML of
one ``AuditMessage`` (the schema of PS3.15 A.5.1), UTF-8 encoded, without
an XML declaration (the syslog layer frames it).  The builders know nothing
of the event bus: :mod:`dicomtwist.audit.trail` maps bus events onto them.

Codes are the standard's: DCM codes of CID 400 (Audit Event ID), CID 401
(Audit Event Type Code), CID 402 (Audit Active Participant Role ID Code),
CID 403 (Security Alert Type Code) and CID 404 (Audit Participant Object
ID Type Code) in PS3.16, and the RFC 3881 values PS3.15 A.5.1.2 lists.
"""

from __future__ import annotations

import base64
import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = [
    "Code", "Participant", "Source", "Study",
    "application_activity", "instances_transferred", "begin_transferring",
    "query", "security_alert", "study_deleted", "user_authentication",
    "event_time",
]


@dataclass(frozen=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName``, ``originalText``."""

    code: str
    system: str
    meaning: str


# CID 400: Audit Event ID.
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
BEGIN_TRANSFERRING = Code("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
PROCEDURE_RECORD = Code("110111", "DCM", "Procedure Record")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
# CID 401: Audit Event Type Code.
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
# CID 403: Security Alert Type Code.
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
# CID 402: Audit Active Participant Role ID Code.
APPLICATION = Code("110150", "DCM", "Application")
DESTINATION = Code("110152", "DCM", "Destination Role ID")
SOURCE = Code("110153", "DCM", "Source Role ID")
# CID 404: Audit Participant Object ID Type Code, and RFC 3881's.
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
NODE_ID = Code("110182", "DCM", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")

#: EventOutcomeIndicator values (PS3.15 A.5.2, Table A.5.2-1).
SUCCESS = "0"
MINOR_FAILURE = "4"
SERIOUS_FAILURE = "8"

#: ParticipantObjectTypeCode / ParticipantObjectTypeCodeRole values.
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT = "1", "3"


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a process, a peer node or a user.

    :ivar user_id: who (an AE title, a user name, a process).
    :ivar ae_titles: the AE titles it is known by (AlternativeUserID
        ``AETITLES=A;B``, PS3.15 A.5.2.2).
    :ivar host: its network access point: an IP address or a host name.
    """

    user_id: str
    requestor: bool
    role: Code | None = None
    ae_titles: tuple[str, ...] = ()
    host: str = ""
    user_name: str = ""


@dataclass(frozen=True)
class Source:
    """Who reports: the AuditSourceIdentification, and the archive itself as
    an active participant (its AE title and host)."""

    source_id: str
    ae_title: str
    host: str
    enterprise_site: str = ""

    def participant(self, requestor: bool = False, role: Code | None = None) -> Participant:
        """The archive as an ActiveParticipant."""
        return Participant(self.ae_title, requestor, role, (self.ae_title,), self.host)


@dataclass(frozen=True)
class Study:
    """A study taking part: its UID and, when known, instances by SOP class."""

    uid: str
    #: SOP Class UID -> the SOP Instance UIDs of that class.
    instances: dict[str, tuple[str, ...]] = field(default_factory=dict)


def event_time(seconds: float) -> str:
    """An EventDateTime (xsd:dateTime) in UTC with milliseconds
    (PS3.15 A.5.2.5: unambiguous as to time zone)."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                       "originalText": code.meaning})


def _access_point_type(host: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a name."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "1"
    return "2"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Message:
    """One AuditMessage under construction, in the schema's element order."""

    def __init__(self, event_id: Code, action: str, when: float, outcome: str,
                 types: tuple[Code, ...] = (), description: str = "") -> None:
        self.root = ET.Element("AuditMessage")
        attributes = {"EventActionCode": action, "EventDateTime": event_time(when),
                      "EventOutcomeIndicator": outcome}
        ident = ET.SubElement(self.root, "EventIdentification", attributes)
        _code(ident, "EventID", event_id)
        for code in types:
            _code(ident, "EventTypeCode", code)
        if description:
            ET.SubElement(ident, "EventOutcomeDescription").text = description

    def participant(self, who: Participant) -> None:
        attributes = {"UserID": who.user_id,
                      "UserIsRequestor": "true" if who.requestor else "false"}
        if who.ae_titles:
            attributes["AlternativeUserID"] = "AETITLES=" + ";".join(who.ae_titles)
        if who.user_name:
            attributes["UserName"] = who.user_name
        if who.host:
            attributes["NetworkAccessPointID"] = who.host
            attributes["NetworkAccessPointTypeCode"] = _access_point_type(who.host)
        element = ET.SubElement(self.root, "ActiveParticipant", attributes)
        if who.role is not None:
            _code(element, "RoleIDCode", who.role)

    def source(self, source: Source) -> None:
        attributes = {"AuditSourceID": source.source_id}
        if source.enterprise_site:
            attributes["AuditEnterpriseSiteID"] = source.enterprise_site
        element = ET.SubElement(self.root, "AuditSourceIdentification", attributes)
        # 4: Application Server process tier in a multi-tier system.
        ET.SubElement(element, "AuditSourceTypeCode", {"csd-code": "4"})

    def participant_object(self, object_id: str, id_type: Code, type_code: str,
                           role: str | None = None, name: str = "",
                           query: bytes | None = None,
                           details: tuple[tuple[str, bytes], ...] = ()) -> ET.Element:
        attributes = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code}
        if role is not None:
            attributes["ParticipantObjectTypeCodeRole"] = role
        element = ET.SubElement(self.root, "ParticipantObjectIdentification", attributes)
        _code(element, "ParticipantObjectIDTypeCode", id_type)
        if query is not None:
            ET.SubElement(element, "ParticipantObjectQuery").text = _b64(query)
        elif name:
            ET.SubElement(element, "ParticipantObjectName").text = name
        for kind, value in details:
            ET.SubElement(element, "ParticipantObjectDetail", {"type": kind, "value": _b64(value)})
        return element

    def study(self, study: Study) -> None:
        element = self.participant_object(study.uid, STUDY_INSTANCE_UID, SYSTEM_OBJECT,
                                          ROLE_REPORT)
        if study.instances:
            description = ET.SubElement(element, "ParticipantObjectDescription")
            for sop_class, instances in study.instances.items():
                entry = ET.SubElement(description, "SOPClass",
                                      {"UID": sop_class, "NumberOfInstances": str(len(instances))})
                for uid in instances:
                    ET.SubElement(entry, "Instance", {"UID": uid})

    def patient(self, patient_id: str, name: str = "") -> None:
        self.participant_object(patient_id, PATIENT_NUMBER, PERSON, ROLE_PATIENT, name=name)

    def encode(self) -> bytes:
        return ET.tostring(self.root, encoding="utf-8", xml_declaration=False)


def application_activity(source: Source, when: float, started: bool) -> bytes:
    """Application Activity (PS3.15 A.5.3.1): the archive started or stopped.

    The application is the one active participant (role Application); what
    launched it is not known to it.
    """
    message = _Message(APPLICATION_ACTIVITY, "E", when, SUCCESS,
                       (APPLICATION_START if started else APPLICATION_STOP,))
    message.participant(source.participant(role=APPLICATION))
    message.source(source)
    return message.encode()


def instances_transferred(source: Source, when: float, action: str, outcome: str,
                          sender: Participant, receiver: Participant,
                          studies: tuple[Study, ...],
                          patients: tuple[tuple[str, str], ...],
                          requestor: Participant | None = None,
                          description: str = "") -> bytes:
    """DICOM Instances Transferred (PS3.15 A.5.3.7).

    :param action: ``"C"`` (the receiver created them), ``"R"`` (read and
        sent), ``"U"`` (the receiver updated them).
    :param patients: ``(patient ID, patient name)`` pairs.
    :param requestor: a third participant that asked for the transfer (the
        requestor of a C-MOVE), when it is neither sender nor receiver.
    """
    message = _Message(INSTANCES_TRANSFERRED, action, when, outcome, description=description)
    message.participant(sender)
    message.participant(receiver)
    if requestor is not None:
        message.participant(requestor)
    message.source(source)
    for study in studies:
        message.study(study)
    for patient_id, name in patients:
        message.patient(patient_id, name)
    return message.encode()


def begin_transferring(source: Source, when: float, sender: Participant,
                       receiver: Participant, studies: tuple[Study, ...],
                       patients: tuple[tuple[str, str], ...],
                       requestor: Participant | None = None) -> bytes:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.3)."""
    message = _Message(BEGIN_TRANSFERRING, "E", when, SUCCESS)
    message.participant(sender)
    message.participant(receiver)
    if requestor is not None:
        message.participant(requestor)
    message.source(source)
    for study in studies:
        message.study(study)
    for patient_id, name in patients:
        message.patient(patient_id, name)
    return message.encode()


def study_deleted(source: Source, when: float, outcome: str, deleter: Participant,
                  study: Study, patient: tuple[str, str]) -> bytes:
    """DICOM Study Deleted (PS3.15 A.5.3.8): a study was removed.

    The one active participant is who deleted it (the requestor: the HTTP
    user at an address); the study, with its instances by SOP class, and
    its patient are the participant objects.
    """
    message = _Message(STUDY_DELETED, "D", when, outcome)
    message.participant(deleter)
    message.source(source)
    message.study(study)
    message.patient(*patient)
    return message.encode()


def procedure_record(source: Source, when: float, action: str, outcome: str,
                     requestor: Participant, responder: Participant, step_uid: str,
                     studies: tuple[str, ...], accessions: tuple[str, ...],
                     patient: tuple[str, str], description: str = "") -> bytes:
    """Procedure Record (PS3.15 A.5.3, EventID 110111): a procedure step was created
    (``C``) or updated (``U``).

    The modality that reported it (the requestor) and the archive are the
    active participants; each study it names (with the step's SOP Instance
    UID as ``MPPS`` and its accession numbers) and its patient are the
    participant objects.
    """
    message = _Message(PROCEDURE_RECORD, action, when, outcome, description=description)
    message.participant(requestor)
    message.participant(responder)
    message.source(source)
    for uid in studies:
        element = message.participant_object(uid, STUDY_INSTANCE_UID, SYSTEM_OBJECT,
                                             ROLE_REPORT)
        described = ET.SubElement(element, "ParticipantObjectDescription")
        ET.SubElement(described, "MPPS", {"UID": step_uid})
        for number in accessions:
            ET.SubElement(described, "Accession", {"Number": number})
    message.patient(*patient)
    return message.encode()


def query(source: Source, when: float, outcome: str, requestor: Participant,
          responder: Participant, sop_class_uid: str, query_bytes: bytes,
          transfer_syntax: str = "", uri: str = "") -> bytes:
    """Query (PS3.15 A.5.3.10): a query was received.

    The SOP Queried is the participant object: its SOP Class UID (or, for a
    query that came by HTTP, the request URI), the query itself as
    ParticipantObjectQuery (base64 of the identifier as received) and, for
    DIMSE, a ``TransferSyntax`` detail naming its encoding.
    """
    message = _Message(QUERY, "E", when, outcome)
    message.participant(requestor)
    message.participant(responder)
    message.source(source)
    details = ((("TransferSyntax", transfer_syntax.encode("ascii")),)
               if transfer_syntax else ())
    if sop_class_uid:
        message.participant_object(sop_class_uid, SOP_CLASS_UID, SYSTEM_OBJECT, ROLE_REPORT,
                                   query=query_bytes, details=details)
    else:
        message.participant_object(uri or "-", URI, SYSTEM_OBJECT, ROLE_REPORT,
                                   query=query_bytes, details=details)
    return message.encode()


def security_alert(source: Source, when: float, outcome: str, alert_type: Code,
                   performer: Participant, subject: str, description: str) -> bytes:
    """Security Alert (PS3.15 A.5.3.11).

    The archive reports (first participant); the peer that caused the alert
    performs (UserIsRequestor false, as the table requires); the Alert
    Subject is the peer's node, with the alert's words as its
    ``Alert Description`` detail.
    """
    message = _Message(SECURITY_ALERT, "E", when, outcome, (alert_type,), description)
    message.participant(source.participant())
    message.participant(performer)
    message.source(source)
    message.participant_object(subject or "-", NODE_ID, SYSTEM_OBJECT,
                               details=(("Alert Description", description.encode("utf-8")),))
    return message.encode()


def user_authentication(source: Source, when: float, outcome: str, user: Participant,
                        description: str = "") -> bytes:
    """User Authentication (PS3.15 A.5.3.12): a login (HTTP credentials)
    succeeded or failed; the archive is the authenticating node."""
    message = _Message(USER_AUTHENTICATION, "E", when, outcome, (LOGIN,), description)
    message.participant(user)
    message.participant(source.participant())
    message.source(source)
    return message.encode()

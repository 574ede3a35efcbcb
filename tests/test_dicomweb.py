"""Tests for DICOMweb (PS3.18) through the archive's real HTTP Site.

Every request goes through :func:`dicomtwist.web.site.build_site`'s Site
(its own channel and request classes, so STOW-RS bodies are streamed into
body sinks as they are in production), joined in memory to a treq client
(``treq.testing.RequestTraversalAgent`` with our Site as its server
factory).  Behind the Site: a real :class:`Index` on a temporary sqlite
file and a real :class:`ArchiveStore` writing into a temporary instance
directory.  The thread pools run calls inline and the reactor's
``callFromThread`` too, so each response is complete once the agent has
been flushed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from typing import Any
from urllib.parse import quote

from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from dicomtwist.config import Config
from dicomtwist.services.store import ArchiveStore
from dicomtwist.status import Status
from dicomtwist.storage.files import TEMP_PREFIX, instance_path
from dicomtwist.storage.index import Index
from dicomtwist.web.dicomweb import wado
from dicomtwist.web.dicomweb.dicomjson import dataset_json
from tests.test_store import InlinePool
from dicomtwist.web.dicomweb.multipart import MultipartParser, parse_content_type
from dicomtwist.web.dicomweb.stow import parse_meta
from dicomtwist.web.site import build_site

BASE = "http://archive.example/dicom-web"

CT = get_testdata_file("CT_small.dcm")
MR = get_testdata_file("MR_small.dcm")
J2K = get_testdata_file("JPEG2000.dcm")
RTDOSE = get_testdata_file("rtdose.dcm")

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.91"


class InlineReactor(MemoryReactorClock):
    """A memory reactor whose ``callFromThread`` runs the call at once."""

    def callFromThread(self, f, *args, **kwargs) -> None:
        """Run ``f`` now, on this thread."""
        f(*args, **kwargs)


@implementer(IBodyProducer)
class ChunkedProducer:
    """A request body producer writing its body in ``size``-byte pieces, with
    no length announced (so the body goes chunked) unless ``length``."""

    def __init__(self, body: bytes, size: int = 7, announce: bool = True) -> None:
        self.body = body
        self.size = size
        self.length = len(body) if announce else UNKNOWN_LENGTH

    def startProducing(self, consumer):
        """Write every piece now."""
        for n in range(0, len(self.body), self.size):
            consumer.write(self.body[n:n + self.size])
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""


def body_producer(data: Any) -> ChunkedProducer:
    """treq's ``data_to_body_producer``: bytes as one piece."""
    if isinstance(data, ChunkedProducer):
        return data
    if isinstance(data, str):
        data = data.encode("utf-8")
    return ChunkedProducer(data, size=max(1, len(data)))


def file_bytes(path: str) -> bytes:
    """A file's octets."""
    with open(path, "rb") as fp:
        return fp.read()


def part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A data set as a Part 10 file in ``transfer_syntax``."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def make_dataset(**values: Any) -> Dataset:
    """A small Secondary Capture data set with ``values``."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = values.pop("SOPInstanceUID", generate_uid())
    ds.StudyInstanceUID = values.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = values.pop("SeriesInstanceUID", generate_uid())
    ds.PatientID = "PID"
    ds.Modality = "OT"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def multipart_body(parts: list[tuple[str, bytes]], boundary: str = "b0undary-7",
                   close: bool = True) -> bytes:
    """A ``multipart/related`` body of ``(content type, octets)`` parts."""
    pieces = []
    for content_type, data in parts:
        pieces.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
                      + data + b"\r\n")
    if close:
        pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces)


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary-7'


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart response: ``(headers, octets)``."""
    _, params = parse_content_type(content_type)
    parts: list[list[Any]] = []

    def begin(headers: dict[str, str]) -> None:
        parts.append([headers, bytearray()])

    def data(chunk: Any) -> None:
        parts[-1][1] += bytes(chunk)

    parser = MultipartParser(params["boundary"].encode(), begin, data, lambda: None)
    parser.feed(body)
    parser.close()
    return [(headers, bytes(octets)) for headers, octets in parts]


def without_bulk(model: Any) -> Any:
    """A DICOM JSON model with BulkDataURI values replaced by a marker."""
    if isinstance(model, dict):
        return {k: ("<bulk>" if k == "BulkDataURI" else without_bulk(v))
                for k, v in model.items()}
    if isinstance(model, list):
        return [without_bulk(v) for v in model]
    return model


def bulk_uris(model: Any) -> list[str]:
    """Every BulkDataURI in a DICOM JSON model."""
    found = []
    if isinstance(model, dict):
        for k, v in model.items():
            if k == "BulkDataURI":
                found.append(v)
            else:
                found.extend(bulk_uris(v))
    elif isinstance(model, list):
        for v in model:
            found.extend(bulk_uris(v))
    return found


class Response:
    """What a test sees of an HTTP response."""

    def __init__(self, code: int, headers: Headers, body: bytes, length: Any) -> None:
        self.code = code
        self.headers = headers
        self.body = body
        self.length = length

    def header(self, name: str) -> str | None:
        """A header's (last) value, or None."""
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[-1].decode("latin-1") if values else None

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def parts(self) -> list[tuple[dict[str, str], bytes]]:
        """The body's parts (multipart/related)."""
        return parse_multipart(self.header("content-type") or "", self.body)


class WebTestCase(SynchronousTestCase):
    """Base: the archive's Site over a real index and store, and a client."""

    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.directory = os.path.join(self.base, "instances")
        os.makedirs(self.directory)
        self.config = Config(instance_location=self.directory,
                             database_location=os.path.join(self.base, "index.sqlite"),
                             **self.configure())
        self.reactor = InlineReactor()
        self.pool = InlinePool()
        self.index = Index(self.config.database_location)
        self.addCleanup(self.index.close)
        self.store = ArchiveStore(self.reactor, self.pool, self.directory, self.index,
                                  describe=wado.describe)
        self.site = build_site(self.config, self.reactor, self.pool, self.pool, self.index,
                               self.store)
        self.agent = RequestTraversalAgent(self.site.resource)
        self.agent._serverFactory = self.site
        self.client = HTTPClient(self.agent, data_to_body_producer=body_producer)

    def configure(self) -> dict[str, Any]:
        """Settings of this test case's archive (``http_*``)."""
        return dict(self.settings)

    # Requests

    def request(self, method: str, path: str, headers: dict[str, Any] | None = None,
                body: Any = None, raw: bool = False) -> Response:
        """A request through the Site, answered in full.

        :param raw: through the bare agent (no gzip decoding by treq).
        """
        url = path if path.startswith("http") else BASE + path
        hdrs = {k: v if isinstance(v, list) else [v] for k, v in (headers or {}).items()}
        if raw:
            producer = None if body is None else body_producer(body)
            d = self.agent.request(method.encode(), url.encode(), Headers(hdrs), producer)
        else:
            d = self.client.request(method, url, headers=hdrs, data=body)
        self.flush(d)
        response = self.successResultOf(d)
        collected = response.content() if hasattr(response, "content") else None
        if collected is None:
            from twisted.web.client import readBody

            collected = readBody(response)
        self.flush(collected)
        data = self.successResultOf(collected)
        return Response(response.code, response.headers, data, response.length)

    def flush(self, d: Any) -> None:
        """Move bytes between client and Site until ``d`` has a result (a
        pull producer, as static files use, takes one flush per chunk)."""
        done: list[object] = []
        d.addBoth(lambda result: done.append(True) or result)
        for _ in range(1000):
            self.agent.flush()
            if done:
                return

    def get(self, path: str, **headers: Any) -> Response:
        """GET ``path`` with headers given as keyword arguments (``_`` for ``-``)."""
        return self.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def stow(self, parts: list[tuple[str, bytes]], path: str = "/studies",
             headers: dict[str, Any] | None = None, body: Any = None) -> Response:
        """POST a STOW-RS body of ``parts``."""
        all_headers = {"Content-Type": STOW_TYPE}
        all_headers.update(headers or {})
        return self.request("POST", path, all_headers,
                            body if body is not None else multipart_body(parts))

    # Data

    def ingest(self, data: bytes) -> tuple[int, str]:
        """Store a Part 10 file through the store pipeline (as C-STORE does)."""
        offset, meta = parse_meta(data)
        sink = self.store.spool(meta[2], meta[3], meta[0x10])
        sink.write(memoryview(data[offset:]))
        return self.successResultOf(self.store.store_spooled(
            meta[2], meta[3], meta[0x10], sink.close()))

    def ingest_file(self, path: str) -> Dataset:
        """Store a test file; its data set."""
        status, comment = self.ingest(file_bytes(path))
        self.assertEqual((status, comment), (Status.SUCCESS, ""))
        return dcmread(path)

    def stored_path(self, sop_instance_uid: str) -> str:
        """The stored file of an instance."""
        return instance_path(self.directory, sop_instance_uid)

    def leftovers(self) -> list[str]:
        """Temporary files left in the instance directory."""
        return [n for n in os.listdir(self.directory)
                if n.startswith(TEMP_PREFIX) or n.endswith(".part")]


def rtdose_bytes() -> bytes:
    """rtdose.dcm (Implicit VR Little Endian, 15 frames), its File Meta
    Information's SOP Instance UID made to match the data set's (pydicom's
    copy has them differ, which the archive rightly refuses)."""
    ds = dcmread(RTDOSE)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


#: Generated studies: (patient name, study date, modalities of its series).
PATIENTS = [
    ("Doe^John", "20040115", ["CT"]),
    ("DOE^Jane", "20041231", ["MR", "CT"]),
    ("Smith^Anna", "20050301", ["CT"]),
    ("Müller^Jürgen", "20030101", ["MR"]),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "20040601", ["US"]),
    ("Dow^Jon", "20040116", ["PT"]),
]


class QidoTests(WebTestCase):
    """QIDO-RS searches (PS3.18 10.6) over generated studies."""

    def setUp(self) -> None:
        super().setUp()
        self.studies: dict[str, str] = {}
        self.series: dict[str, list[str]] = {}
        self.instances: dict[str, list[str]] = {}
        for number, (name, date, modalities) in enumerate(PATIENTS):
            study = generate_uid()
            self.studies[name] = study
            for series_number, modality in enumerate(modalities, 1):
                series = generate_uid()
                self.series.setdefault(name, []).append(series)
                for instance_number in (1, 2):
                    ds = make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series,
                                      PatientName=name, PatientID=f"P{number}",
                                      StudyDate=date, Modality=modality,
                                      SeriesNumber=series_number,
                                      InstanceNumber=instance_number,
                                      StudyDescription=f"Study {number}",
                                      SpecificCharacterSet="ISO_IR 192")
                    self.instances.setdefault(series, []).append(ds.SOPInstanceUID)
                    self.assertEqual(self.ingest(part10(ds)), (Status.SUCCESS, ""))

    def uids(self, response: Response, tag: str = "0020000D") -> list[str]:
        """The UIDs (of ``tag``) in a QIDO-RS answer, in order."""
        self.assertEqual(response.code, 200, response.body)
        return [match[tag]["Value"][0] for match in response.json()]

    def names(self, *names: str) -> list[str]:
        """Study Instance UIDs of the generated patients, in index order."""
        return [self.studies[name] for name, _, _ in PATIENTS if name in names]

    def test_all_studies(self) -> None:
        """/studies with no parameters answers every study, in index order,
        as application/dicom+json."""
        response = self.get("/studies")
        self.assertEqual(response.header("content-type"), "application/dicom+json")
        self.assertEqual(self.uids(response), self.names(*(p[0] for p in PATIENTS)))

    def test_study_default_attributes(self) -> None:
        """A study match holds the attributes of PS3.18 Table 6.7.1-2 that
        have a value (the others are left out), numbers as JSON numbers,
        names as PN objects and an absolute Retrieve URL."""
        response = self.get("/studies?PatientID=P1")
        [match] = response.json()
        study = self.studies["DOE^Jane"]
        self.assertEqual(sorted(match), [
            "00080005", "00080020", "00080056", "00080061", "00081190", "00100010",
            "00100020", "0020000D", "00201206", "00201208"])
        self.assertEqual(match["00080020"], {"vr": "DA", "Value": ["20041231"]})
        self.assertEqual(match["00080061"]["vr"], "CS")
        self.assertEqual(sorted(match["00080061"]["Value"]), ["CT", "MR"])
        self.assertEqual(match["00201206"], {"vr": "IS", "Value": [2]})
        self.assertEqual(match["00201208"], {"vr": "IS", "Value": [4]})
        self.assertEqual(match["00100010"], {"vr": "PN", "Value": [{"Alphabetic": "DOE^Jane"}]})
        self.assertEqual(match["00081190"], {"vr": "UR", "Value": [f"{BASE}/studies/{study}"]})
        self.assertEqual(match["00080005"], {"vr": "CS", "Value": ["ISO_IR 192"]})
        self.assertEqual(match["00080056"], {"vr": "CS", "Value": ["ONLINE"]})
        self.assertEqual(list(match), sorted(match))

    def test_person_name_groups(self) -> None:
        """A name with ideographic and phonetic groups (ISO_IR 192) comes back
        as Alphabetic, Ideographic and Phonetic members."""
        response = self.get("/studies?PatientID=P4")
        [match] = response.json()
        self.assertEqual(match["00100010"]["Value"], [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
             "Phonetic": "やまだ^たろう"}])

    def test_non_ascii_match(self) -> None:
        """A non-ASCII name, percent-encoded UTF-8 in the query, matches."""
        response = self.get("/studies?PatientName=" + quote("Müller*"))
        self.assertEqual(self.uids(response), self.names("Müller^Jürgen"))
        self.assertEqual(response.json()[0]["00100010"]["Value"],
                         [{"Alphabetic": "Müller^Jürgen"}])

    def test_wildcards(self) -> None:
        """``*`` and ``?`` match as in C-FIND, case-insensitively for PN."""
        self.assertEqual(self.uids(self.get("/studies?PatientName=doe*")),
                         self.names("Doe^John", "DOE^Jane"))
        self.assertEqual(self.uids(self.get("/studies?PatientName=D?e^J*")),
                         self.names("Doe^John", "DOE^Jane"))
        self.assertEqual(self.uids(self.get("/studies?PatientName=Do?^Jo*")),
                         self.names("Doe^John", "Dow^Jon"))
        self.assertEqual(self.uids(self.get("/studies?PatientName=Do?^Joh?")),
                         self.names("Doe^John"))
        self.assertEqual(self.uids(self.get("/studies?PatientName=smith^anna")),
                         self.names("Smith^Anna"))

    def test_by_tag(self) -> None:
        """An attribute may be named by its tag instead of its keyword."""
        self.assertEqual(self.uids(self.get("/studies?00100010=Smith*")),
                         self.names("Smith^Anna"))

    def test_date_ranges(self) -> None:
        """StudyDate matches a single date, open-ended and closed ranges."""
        self.assertEqual(self.uids(self.get("/studies?StudyDate=20040115")),
                         self.names("Doe^John"))
        self.assertEqual(self.uids(self.get("/studies?StudyDate=20041231-")),
                         self.names("DOE^Jane", "Smith^Anna"))
        self.assertEqual(self.uids(self.get("/studies?StudyDate=-20040101")),
                         self.names("Müller^Jürgen"))
        self.assertEqual(self.uids(self.get("/studies?StudyDate=20040101-20040131")),
                         self.names("Doe^John", "Dow^Jon"))

    def test_uid_list(self) -> None:
        """A list of Study Instance UIDs, ``\\`` percent-encoded as %5C, matches
        each."""
        a, b = self.studies["Smith^Anna"], self.studies["Doe^John"]
        response = self.get(f"/studies?StudyInstanceUID={a}%5C{b}")
        self.assertEqual(self.uids(response), self.names("Doe^John", "Smith^Anna"))

    def test_modalities_in_study(self) -> None:
        """ModalitiesInStudy matches a study having a series of the modality."""
        self.assertEqual(self.uids(self.get("/studies?ModalitiesInStudy=MR")),
                         self.names("DOE^Jane", "Müller^Jürgen"))
        self.assertEqual(self.uids(self.get("/studies?ModalitiesInStudy=US%5CPT")),
                         self.names("Yamada^Tarou=山田^太郎=やまだ^たろう", "Dow^Jon"))

    def test_same_as_c_find(self) -> None:
        """QIDO-RS /studies and C-FIND (Index.find, Study Root) match the same
        studies for the same keys."""
        for name, date in [("doe*", ""), ("D*", "20040101-"), ("*", "-20041231"),
                           ("Smith^Anna", ""), ("M*", "")]:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = ""
            identifier.PatientName = name
            identifier.StudyDate = date
            found = [str(ds.StudyInstanceUID) for ds in self.index.find(identifier, "STUDY")]
            path = f"/studies?PatientName={quote(name)}" + (f"&StudyDate={date}" if date else "")
            self.assertEqual(self.uids(self.get(path)), found, (name, date))
            self.assertTrue(found)

    def test_series_of_study(self) -> None:
        """/studies/{s}/series answers the study's series with their defaults
        and Retrieve URLs."""
        study = self.studies["DOE^Jane"]
        response = self.get(f"/studies/{study}/series")
        self.assertEqual(self.uids(response, "0020000E"), self.series["DOE^Jane"])
        first = response.json()[0]
        self.assertEqual(first["00080060"], {"vr": "CS", "Value": ["MR"]})
        self.assertEqual(first["00200011"], {"vr": "IS", "Value": [1]})
        self.assertEqual(first["00201209"], {"vr": "IS", "Value": [2]})
        self.assertEqual(first["00081190"]["Value"],
                         [f"{BASE}/studies/{study}/series/{self.series['DOE^Jane'][0]}"])
        self.assertNotIn("00100010", first)

    def test_all_series_relational(self) -> None:
        """/series searches every study (relational) and includes the study's
        attributes."""
        response = self.get("/series?Modality=CT")
        expected = [self.series["Doe^John"][0], self.series["DOE^Jane"][1],
                    self.series["Smith^Anna"][0]]
        self.assertEqual(self.uids(response, "0020000E"), expected)
        self.assertEqual(response.json()[1]["00100010"]["Value"],
                         [{"Alphabetic": "DOE^Jane"}])
        self.assertEqual(self.uids(self.get("/series?PatientName=smith*"), "0020000E"),
                         self.series["Smith^Anna"])

    def test_instances_levels(self) -> None:
        """Instances are found under a series, under a study and across studies."""
        study = self.studies["DOE^Jane"]
        mr, ct = self.series["DOE^Jane"]
        response = self.get(f"/studies/{study}/series/{ct}/instances")
        self.assertEqual(self.uids(response, "00080018"), self.instances[ct])
        match = response.json()[0]
        self.assertEqual(match["00081190"]["Value"],
                         [f"{BASE}/studies/{study}/series/{ct}/instances/{self.instances[ct][0]}"])
        self.assertEqual(match["00200013"], {"vr": "IS", "Value": [1]})
        self.assertEqual(match["00080016"]["Value"], ["1.2.840.10008.5.1.4.1.1.7"])
        self.assertEqual(self.uids(self.get(f"/studies/{study}/instances"), "00080018"),
                         self.instances[mr] + self.instances[ct])
        response = self.get(f"/instances?PatientName=DOE^Jane&InstanceNumber=2")
        self.assertEqual(self.uids(response, "00080018"),
                         [self.instances[mr][1], self.instances[ct][1]])
        self.assertEqual(response.json()[0]["00080060"]["Value"], ["MR"])

    def test_includefield(self) -> None:
        """includefield adds attributes, as a list, comma-separated (also
        percent-encoded), by keyword or tag."""
        response = self.get("/studies?PatientID=P0&includefield=StudyDescription")
        self.assertEqual(response.json()[0]["00081030"],
                         {"vr": "LO", "Value": ["Study 0"]})
        response = self.get("/series?PatientID=P0&includefield=00081030%2C00080060")
        [match] = response.json()
        self.assertEqual(match["00081030"]["Value"], ["Study 0"])
        self.assertEqual(match["00080060"]["Value"], ["CT"])
        response = self.get("/studies?PatientID=P0&includefield=StudyDescription"
                            "&includefield=00100020")
        self.assertEqual(response.json()[0]["00100020"]["Value"], ["P0"])

    def test_includefield_all(self) -> None:
        """includefield=all adds every attribute the index keeps for the level."""
        response = self.get("/studies?PatientID=P0&includefield=all")
        [match] = response.json()
        self.assertEqual(match["00081030"]["Value"], ["Study 0"])
        self.assertEqual(match["00080062"]["Value"], ["1.2.840.10008.5.1.4.1.1.7"])
        self.assertNotIn("00080018", match)

    def test_limit_offset(self) -> None:
        """limit and offset page through the matches in index order."""
        everything = self.uids(self.get("/studies"))
        self.assertEqual(self.uids(self.get("/studies?limit=2")), everything[:2])
        self.assertEqual(self.uids(self.get("/studies?limit=2&offset=2")), everything[2:4])
        self.assertEqual(self.uids(self.get("/studies?offset=5")), everything[5:])
        self.assertEqual(self.uids(self.get("/studies?offset=50")), [])

    def test_fuzzymatching_warning(self) -> None:
        """fuzzymatching=true is answered with literal matching and a Warning."""
        response = self.get("/studies?PatientName=Doe^John&fuzzymatching=true")
        self.assertEqual(self.uids(response), self.names("Doe^John"))
        self.assertEqual(response.header("warning"),
                         "299 dicomtwist: The fuzzymatching parameter is not supported. "
                         "Only literal matching has been performed.")

    def test_bad_parameters(self) -> None:
        """A malformed date, an unknown attribute or a bad limit is 400 with a
        JSON error naming it."""
        for query, word in [("StudyDate=2020x", "StudyDate"), ("NoSuchThing=1", "NoSuchThing"),
                            ("limit=abc", "limit"), ("offset=-1", "offset"),
                            ("fuzzymatching=maybe", "fuzzymatching")]:
            response = self.get("/studies?" + query)
            self.assertEqual(response.code, 400, query)
            self.assertEqual(response.header("content-type"), "application/json")
            self.assertEqual(response.json()["status"], 400)
            self.assertIn(word, response.json()["error"])

    def test_not_acceptable(self) -> None:
        """Accept: application/xml is 406; application/json is served as such."""
        self.assertEqual(self.get("/studies", Accept="application/xml").code, 406)
        response = self.get("/studies", Accept="application/json")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "application/json")

    def test_gzip(self) -> None:
        """With Accept-Encoding: gzip a large answer is gzip-encoded, and
        decodes to the plain answer."""
        plain = self.get("/studies")
        response = self.request("GET", "/studies", {"Accept-Encoding": "gzip"}, raw=True)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-encoding"), "gzip")
        self.assertEqual(response.header("vary"), "Accept-Encoding")
        self.assertEqual(response.length, len(response.body))
        self.assertEqual(gzip.decompress(response.body), plain.body)
        self.assertLess(len(response.body), len(plain.body))

    def test_binary_integer_matching(self) -> None:
        """A US attribute (Rows) matches by value and list, with no warning
        from building the identifier."""
        for ds in (make_dataset(Rows=64, Columns=64, PatientName="Rows^A"),
                   make_dataset(Rows=128, Columns=64, PatientName="Rows^B")):
            self.assertEqual(self.ingest(part10(ds)), (Status.SUCCESS, ""))
        self.flushWarnings()
        response = self.get("/instances?Rows=128")
        [match] = response.json()
        self.assertEqual(match["00280010"], {"vr": "US", "Value": [128]})
        self.assertEqual(match["00100010"]["Value"], [{"Alphabetic": "Rows^B"}])
        self.assertEqual(len(self.get("/instances?Rows=64%5C128").json()), 2)
        self.assertEqual(self.flushWarnings(), [])


class WadoTests(WebTestCase):
    """WADO-RS retrieve, metadata, frames, bulk data and rendered images."""

    def setUp(self) -> None:
        super().setUp()
        self.ct = self.ingest_file(CT)
        self.mr = self.ingest_file(MR)
        self.j2k = self.ingest_file(J2K)
        self.assertEqual(self.ingest(rtdose_bytes()), (Status.SUCCESS, ""))
        self.dose = dcmread(io.BytesIO(rtdose_bytes()))

    def path_of(self, ds: Dataset) -> str:
        """The instance path of a data set."""
        return (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")

    def test_retrieve_instance_as_stored(self) -> None:
        """An Explicit VR Little Endian instance retrieved with the default
        Accept is the stored file, byte for byte, with a right Content-Length."""
        response = self.get(self.path_of(self.ct),
                            Accept='multipart/related; type="application/dicom"')
        self.assertEqual(response.code, 200)
        essence, params = parse_content_type(response.header("content-type"))
        self.assertEqual((essence, params["type"]), ("multipart/related", "application/dicom"))
        self.assertEqual(response.length, len(response.body))
        [(headers, data)] = response.parts()
        self.assertEqual(headers["content-type"],
                         "application/dicom; transfer-syntax=1.2.840.10008.1.2.1")
        self.assertEqual(data, file_bytes(self.stored_path(self.ct.SOPInstanceUID)))
        self.assertEqual(dcmread(io.BytesIO(data)).PixelData, self.ct.PixelData)

    def test_retrieve_any_syntax(self) -> None:
        """transfer-syntax=* sends every stored file as it is, a JPEG 2000 one
        included."""
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        for ds in (self.ct, self.j2k, self.dose):
            response = self.get(self.path_of(ds), Accept=accept)
            self.assertEqual(response.code, 200)
            [(headers, data)] = response.parts()
            self.assertEqual(data, file_bytes(self.stored_path(ds.SOPInstanceUID)))
        self.assertEqual(headers["content-type"],
                         "application/dicom; transfer-syntax=1.2.840.10008.1.2")

    def test_retrieve_implicit_converted(self) -> None:
        """An Implicit VR Little Endian instance asked for by default is sent in
        Explicit VR Little Endian, with the same data set."""
        response = self.get(self.path_of(self.dose))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(response.body))
        [(headers, data)] = response.parts()
        self.assertEqual(headers["content-type"],
                         "application/dicom; transfer-syntax=1.2.840.10008.1.2.1")
        sent = dcmread(io.BytesIO(data))
        self.assertEqual(sent.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian)
        self.assertEqual(sent.SOPInstanceUID, self.dose.SOPInstanceUID)
        self.assertEqual(dataset_json(sent, bulk_threshold=1 << 30),
                         dataset_json(self.dose, bulk_threshold=1 << 30))

    def test_retrieve_jpeg2000_converted(self) -> None:
        """A JPEG 2000 instance asked for in the default syntax is decoded to
        Explicit VR Little Endian: the same pixels, the same UIDs; a lossy
        syntax is not acceptable (406); the stored file is unchanged and no
        scratch copy is left."""
        stored = file_bytes(self.stored_path(self.j2k.SOPInstanceUID))
        response = self.get(self.path_of(self.j2k))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(response.body))
        [(headers, data)] = response.parts()
        self.assertEqual(headers["content-type"],
                         "application/dicom; transfer-syntax=1.2.840.10008.1.2.1")
        sent = dcmread(io.BytesIO(data))
        self.assertEqual(sent.SOPInstanceUID, self.j2k.SOPInstanceUID)
        self.assertEqual(sent.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian)
        self.assertEqual(sent.pixel_array.tolist(), self.j2k.pixel_array.tolist())
        response = self.get(self.path_of(self.j2k), accept='multipart/related; '
                            'type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50')
        self.assertEqual(response.code, 406)
        self.assertEqual(file_bytes(self.stored_path(self.j2k.SOPInstanceUID)), stored)
        scratch = os.path.join(self.directory, ".scratch")
        self.assertEqual([name for _, _, names in os.walk(scratch) for name in names], [])

    def test_retrieve_study_and_series(self) -> None:
        """A study and a series are retrieved as one part per instance."""
        mr_path = f"/studies/{self.mr.StudyInstanceUID}"
        response = self.get(mr_path)
        self.assertEqual([data for _, data in response.parts()],
                         [file_bytes(self.stored_path(self.mr.SOPInstanceUID))])
        response = self.get(f"/studies/{self.ct.StudyInstanceUID}/series/"
                            f"{self.ct.SeriesInstanceUID}")
        self.assertEqual([data for _, data in response.parts()],
                         [file_bytes(self.stored_path(self.ct.SOPInstanceUID))])
        self.assertEqual(response.length, len(response.body))

    def test_not_found(self) -> None:
        """Unknown study, series or instance UIDs are 404."""
        ct = self.ct
        for path in [f"/studies/1.2.3", f"/studies/{ct.StudyInstanceUID}/series/1.2.3",
                     f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
                     "/instances/1.2.3",
                     f"/studies/{self.mr.StudyInstanceUID}/series/{ct.SeriesInstanceUID}",
                     f"/studies/1.2.3/metadata"]:
            response = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.json()["status"], 404)

    def test_malformed_paths(self) -> None:
        """Malformed UID segments and encoded ``..`` are 404 before anything is
        read."""
        for path in ["/studies/abc", "/studies/1.02.3", "/studies/..",
                     "/studies/%2e%2e%2f%2e%2e%2fetc", "/studies/1.2/series/%2e%2e",
                     "/studies/1.2/series/..%2f..%2f", "/nothing", "/studies/1.2/bogus"]:
            response = self.get(path)
            self.assertEqual(response.code, 404, path)

    def test_method_not_allowed(self) -> None:
        """POST on /series is 405 with an Allow header; its body is dropped,
        not spooled anywhere."""
        import tempfile

        before = set(os.listdir(tempfile.gettempdir()))
        response = self.request("POST", "/series", {"Content-Type": "application/json"},
                                body=b"{}" + b" " * 200000)
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("allow"), "GET, OPTIONS")
        self.assertEqual(set(os.listdir(tempfile.gettempdir())) - before, set())

    def test_doubly_encoded_segment(self) -> None:
        """A segment is percent-decoded once: ``%252e%252e`` is the text
        ``%2e%2e``, not ``..``, and no UID: 404."""
        response = self.get("/studies/%252e%252e/series")
        self.assertEqual(response.code, 404)

    def test_rendered_frame_past_the_last(self) -> None:
        """frames/2/rendered of a single-frame instance is 404, as frames/2 is."""
        ct = self.ct
        base = (f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
                f"/instances/{ct.SOPInstanceUID}/frames/2")
        self.assertEqual(self.get(base).code, 404)
        self.assertEqual(self.get(base + "/rendered").code, 404)
        self.assertEqual(self.get(base[:-1] + "1/rendered").code, 200)

    def metadata(self, path: str) -> list[dict]:
        """The metadata a path answers (checked to be 200 DICOM JSON)."""
        response = self.get(path)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.header("content-type"), "application/dicom+json")
        return response.json()

    def expected_metadata(self, ds: Dataset) -> dict:
        """What the metadata of a stored instance must be (its data set, no
        File Meta Information)."""
        return without_bulk(dataset_json(ds))

    def test_metadata_instance(self) -> None:
        """An instance's metadata is its data set's DICOM JSON, bulk data as
        absolute BulkDataURIs under the instance."""
        for ds in (self.ct, self.dose, self.j2k):
            [model] = self.metadata(self.path_of(ds) + "/metadata")
            self.assertEqual(without_bulk(model), self.expected_metadata(ds))
            uris = bulk_uris(model)
            self.assertTrue(uris)
            for uri in uris:
                self.assertTrue(uri.startswith(f"{BASE}{self.path_of(ds)}/bulkdata/"), uri)

    def test_metadata_series_and_study(self) -> None:
        """A series' and a study's metadata hold each instance's."""
        ct = self.ct
        series = self.metadata(f"/studies/{ct.StudyInstanceUID}/series/"
                               f"{ct.SeriesInstanceUID}/metadata")
        study = self.metadata(f"/studies/{ct.StudyInstanceUID}/metadata")
        self.assertEqual(series, study)
        self.assertEqual([without_bulk(m) for m in study], [self.expected_metadata(ct)])

    def test_bulkdata_retrievable(self) -> None:
        """The Pixel Data BulkDataURI of the metadata retrieves the pixel data
        as one application/octet-stream part."""
        [model] = self.metadata(self.path_of(self.ct) + "/metadata")
        uri = model["7FE00010"]["BulkDataURI"]
        response = self.get(uri)
        self.assertEqual(response.code, 200)
        [(headers, data)] = response.parts()
        self.assertEqual(headers["content-type"], "application/octet-stream")
        self.assertEqual(data, self.ct.PixelData)

    def test_bulkdata_of_implicit(self) -> None:
        """Every BulkDataURI in the metadata of an Implicit VR Little Endian
        instance is retrievable with the default Accept (as Explicit VR Little
        Endian octets, which are the same)."""
        [model] = self.metadata(self.path_of(self.dose) + "/metadata")
        uri = model["7FE00010"]["BulkDataURI"]
        response = self.get(uri)
        self.assertEqual(response.code, 200, response.body[:200])
        [(headers, data)] = response.parts()
        self.assertEqual(data, self.dose.PixelData)
        for uri in bulk_uris(model):
            self.assertEqual(self.get(uri).code, 200, uri)

    def test_bulkdata_bad_paths(self) -> None:
        """A bulk data path naming nothing, or not a path, is 404."""
        for rest in ("00000000", "..%2f..%2fx", "7FE00010/0", "zz"):
            self.assertEqual(self.get(self.path_of(self.ct) + "/bulkdata/" + rest).code, 404,
                             rest)

    def test_retrieve_as_implicit(self) -> None:
        """An Explicit VR Little Endian instance asked for in Implicit VR Little
        Endian is converted, the data set unchanged."""
        response = self.get(self.path_of(self.ct), Accept='multipart/related;'
                            ' type="application/dicom"; transfer-syntax=1.2.840.10008.1.2')
        [(headers, data)] = response.parts()
        self.assertEqual(headers["content-type"],
                         "application/dicom; transfer-syntax=1.2.840.10008.1.2")
        sent = dcmread(io.BytesIO(data))
        self.assertEqual(sent.file_meta.TransferSyntaxUID, ImplicitVRLittleEndian)
        self.assertEqual(dataset_json(sent, bulk_threshold=1 << 30),
                         dataset_json(self.ct, bulk_threshold=1 << 30))

    def test_accept_parameter(self) -> None:
        """The accept query parameter stands for the Accept header."""
        accept = quote('multipart/related; type="application/dicom"; transfer-syntax=*')
        response = self.get(self.path_of(self.j2k) + "?accept=" + accept)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.parts()[0][1],
                         file_bytes(self.stored_path(self.j2k.SOPInstanceUID)))

    def test_frames_of_implicit(self) -> None:
        """Frames of an Implicit VR Little Endian instance are served with the
        default Accept, labelled Explicit VR Little Endian."""
        response = self.frames(self.dose, "2")
        self.assertEqual(response.code, 200, response.body[:200])
        [(headers, data)] = response.parts()
        size = self.dose.Rows * self.dose.Columns * self.dose.BitsAllocated // 8
        self.assertEqual(data, self.dose.PixelData[size:2 * size])
        self.assertEqual(headers["content-type"],
                         "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1")

    def test_metadata_on_demand(self) -> None:
        """An instance indexed without metadata gets it computed on the first
        request, equal to the kept kind, and then kept in the index."""
        ds = make_dataset(PatientName="Late^Metadata", Rows=2, Columns=2,
                          BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0,
                          SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2",
                          PixelData=b"\x00\x01\x02\x03")
        data = part10(ds)
        # A file of the earlier flat layout, indexed by its name.
        with open(os.path.join(self.directory, ds.SOPInstanceUID + ".dcm"), "wb") as fp:
            fp.write(data)
        self.index.add(ds, ds.SOPInstanceUID + ".dcm", ExplicitVRLittleEndian, len(data))
        [record] = self.index.instances(ds.StudyInstanceUID, metadata=True)
        self.assertIsNone(record.metadata)
        [model] = self.metadata(self.path_of(ds) + "/metadata")
        self.assertEqual(model, dataset_json(ds))
        [record] = self.index.instances(ds.StudyInstanceUID, metadata=True)
        self.assertEqual(json.loads(zlib.decompress(record.metadata)), model)

    def frames(self, ds: Dataset, frames: str, **headers: Any) -> Response:
        """GET frames of an instance."""
        return self.get(self.path_of(ds) + "/frames/" + frames, **headers)

    def test_frame_of_single_frame(self) -> None:
        """Frame 1 of CT_small is its pixel data; frame 2 is 404."""
        response = self.frames(self.ct, "1")
        self.assertEqual(response.code, 200)
        [(headers, data)] = response.parts()
        self.assertEqual(headers["content-type"],
                         "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1")
        self.assertEqual(data, self.ct.PixelData)
        self.assertEqual(self.frames(self.ct, "2").code, 404)

    def test_frames_of_multi_frame(self) -> None:
        """Frames 1 and 3 of rtdose are the right slices of its pixel data."""
        response = self.frames(self.dose, "1,3")
        self.assertEqual(response.code, 200)
        size = self.dose.Rows * self.dose.Columns * self.dose.BitsAllocated // 8
        pixels = self.dose.PixelData
        self.assertEqual([data for _, data in response.parts()],
                         [pixels[:size], pixels[2 * size:3 * size]])
        self.assertEqual(self.frames(self.dose, "16").code, 404)
        self.assertEqual(self.frames(self.dose, "0").code, 400)
        self.assertEqual(self.frames(self.dose, "1,x").code, 400)

    def test_frames_of_jpeg2000(self) -> None:
        """A JPEG 2000 frame asked for with transfer-syntax=* is the
        encapsulated frame, as stored."""
        from pydicom.encaps import generate_frames

        response = self.frames(self.j2k, "1", Accept="multipart/related;"
                               ' type="application/octet-stream"; transfer-syntax=*')
        self.assertEqual(response.code, 200)
        [(headers, data)] = response.parts()
        expected = next(generate_frames(self.j2k.PixelData, number_of_frames=1))
        self.assertEqual(data, expected)
        self.assertEqual(headers["content-type"],
                         f"application/octet-stream; transfer-syntax={JPEG2000_LOSSLESS}")

    def test_frames_of_jpeg2000_decoded(self) -> None:
        """A JPEG 2000 frame asked for as plain octet-stream (Explicit VR
        Little Endian by default) is the decoded frame."""
        response = self.frames(self.j2k, "1", Accept="multipart/related;"
                               ' type="application/octet-stream"')
        self.assertEqual(response.code, 200)
        [(headers, data)] = response.parts()
        self.assertEqual(headers["content-type"],
                         "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1")
        self.assertEqual(data, self.j2k.pixel_array.tobytes())

    def rendered(self, path: str, **headers: Any) -> Image.Image:
        """The image a rendered or thumbnail path answers (checked to be 200)."""
        response = self.get(path, **headers)
        self.assertEqual(response.code, 200, response.body[:200])
        image = Image.open(io.BytesIO(response.body))
        image.load()
        return image

    def test_rendered(self) -> None:
        """Rendered is image/jpeg by default and image/png when asked, of the
        instance's size."""
        image = self.rendered(self.path_of(self.ct) + "/rendered")
        self.assertEqual((image.format, image.size), ("JPEG", (128, 128)))
        image = self.rendered(self.path_of(self.mr) + "/rendered", Accept="image/png")
        self.assertEqual((image.format, image.size), ("PNG", (64, 64)))

    def test_rendered_window_viewport(self) -> None:
        """window= and viewport= are applied; a bad window is 400."""
        path = self.path_of(self.ct) + "/rendered"
        image = self.rendered(path + "?window=40,400&viewport=64,64", Accept="image/png")
        self.assertEqual(image.size, (64, 64))
        narrow = self.rendered(path + "?window=40,1", Accept="image/png")
        wide = self.rendered(path + "?window=40,4000", Accept="image/png")
        self.assertNotEqual(narrow.tobytes(), wide.tobytes())
        for bad in ("window=40", "window=a,b", "window=40,0", "viewport=0,0"):
            self.assertEqual(self.get(f"{path}?{bad}").code, 400, bad)

    def test_thumbnail(self) -> None:
        """Thumbnails of an instance, a series and a study fit in 128 pixels."""
        ct = self.ct
        for path in (self.path_of(ct) + "/thumbnail",
                     f"/studies/{ct.StudyInstanceUID}/thumbnail",
                     f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/thumbnail",
                     self.path_of(self.j2k) + "/thumbnail"):
            image = self.rendered(path)
            self.assertLessEqual(max(image.size), 128, path)
        # 256 columns by 1024 rows, scaled to fit 128 pixels.
        self.assertEqual(self.rendered(self.path_of(self.j2k) + "/thumbnail").size,
                         (32, 128))

    def test_rendered_frame(self) -> None:
        """A frame of a multi-frame instance renders on its own."""
        image = self.rendered(self.path_of(self.dose) + "/frames/2/rendered",
                              Accept="image/png")
        self.assertEqual(image.size, (self.dose.Columns, self.dose.Rows))


class StowTests(WebTestCase):
    """STOW-RS (PS3.18 10.5): bodies streamed into the store pipeline."""

    def tearDown(self) -> None:
        self.assertEqual(self.leftovers(), [])

    def c_find(self, study: str) -> list[str]:
        """The SOP Instance UIDs C-FIND finds in a study."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = study
        identifier.SeriesInstanceUID = ""
        identifier.SOPInstanceUID = ""
        found = []
        for series in {r.series_instance_uid for r in self.index.instances(study)}:
            identifier.SeriesInstanceUID = series
            found += [str(ds.SOPInstanceUID) for ds in self.index.find(identifier, "STUDY")]
        return sorted(found)

    def test_store_two(self) -> None:
        """Two instances are stored (200), answered with their Retrieve URLs,
        found by C-FIND and on disk as sent."""
        ct, mr = file_bytes(CT), file_bytes(MR)
        response = self.stow([("application/dicom", ct), ("application/dicom", mr)])
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.header("content-type"), "application/dicom+json")
        body = response.json()
        self.assertNotIn("00081198", body)
        items = body["00081199"]["Value"]
        expected = []
        for path in (CT, MR):
            ds = dcmread(path)
            expected.append({
                "00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
                "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
                "00081190": {"vr": "UR", "Value": [
                    f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}"]}})
            self.assertEqual(self.c_find(ds.StudyInstanceUID), [ds.SOPInstanceUID])
            stored = dcmread(self.stored_path(ds.SOPInstanceUID))
            self.assertEqual(dataset_json(stored), dataset_json(ds))
        self.assertEqual(items, expected)
        # Two studies: no study-level Retrieve URL.
        self.assertNotIn("00081190", body)

    def test_store_to_study(self) -> None:
        """POST /studies/{study} stores an instance of that study and answers
        the study's Retrieve URL."""
        ds = dcmread(CT)
        response = self.stow([("application/dicom", file_bytes(CT))],
                             path=f"/studies/{ds.StudyInstanceUID}")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["00081190"]["Value"],
                         [f"{BASE}/studies/{ds.StudyInstanceUID}"])
        self.assertEqual(self.c_find(ds.StudyInstanceUID), [ds.SOPInstanceUID])

    def test_other_study_conflict(self) -> None:
        """An instance of another study than the one posted to fails with
        0xA900 (409) and nothing is stored."""
        ds = dcmread(CT)
        other = generate_uid()
        response = self.stow([("application/dicom", file_bytes(CT))],
                             path=f"/studies/{other}")
        self.assertEqual(response.code, 409)
        body = response.json()
        self.assertEqual(body["00081198"]["Value"], [{
            "00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
            "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
            "00081197": {"vr": "US", "Value": [43264]}}])  # 0xA900
        self.assertNotIn("00081199", body)
        self.assertEqual(body["00081190"]["Value"], [f"{BASE}/studies/{other}"])
        self.assertEqual(self.index.count("IMAGE"), 0)
        self.assertEqual(os.listdir(self.directory), [])

    def test_mixed_parts(self) -> None:
        """A good instance and a part that is not DICOM: 202, the good one
        stored, the other failed with 0xC000."""
        ds = dcmread(MR)
        response = self.stow([("application/dicom", b"not a DICOM file at all" * 10),
                              ("application/dicom", file_bytes(MR))])
        self.assertEqual(response.code, 202)
        body = response.json()
        self.assertEqual(body["00081198"]["Value"],
                         [{"00081197": {"vr": "US", "Value": [Status.STORE_CANNOT_UNDERSTAND]}}])
        self.assertEqual([i["00081155"]["Value"] for i in body["00081199"]["Value"]],
                         [[ds.SOPInstanceUID]])
        self.assertEqual(self.c_find(ds.StudyInstanceUID), [ds.SOPInstanceUID])
        self.assertEqual(self.index.count("IMAGE"), 1)

    def test_text_part_fails_alone(self) -> None:
        """A text/plain part fails alone, even holding a DICOM file."""
        response = self.stow([("text/plain", file_bytes(CT)),
                              ("application/dicom", file_bytes(MR))])
        self.assertEqual(response.code, 202)
        self.assertEqual(len(response.json()["00081198"]["Value"]), 1)
        self.assertEqual(self.index.instances(dcmread(CT).StudyInstanceUID), [])
        self.assertEqual(len(self.index.instances(dcmread(MR).StudyInstanceUID)), 1)

    def test_only_bad_parts(self) -> None:
        """A body whose only part is not DICOM is 409."""
        response = self.stow([("application/dicom", b"\x00" * 200)])
        self.assertEqual(response.code, 409)
        self.assertEqual(self.index.count("IMAGE"), 0)

    def test_truncated(self) -> None:
        """A body without its close delimiter: the complete parts are stored
        and the truncation is reported as a failure (202); with no complete
        part it is 400."""
        body = multipart_body([("application/dicom", file_bytes(CT)),
                               ("application/dicom", file_bytes(MR))])
        # The second part never ends: only the first is complete.
        cut = body[:body.rindex(b"--b0undary-7--")] + file_bytes(MR)[:500]
        response = self.stow([], body=cut)
        self.assertEqual(response.code, 202)
        body_json = response.json()
        self.assertEqual([i["00081155"]["Value"] for i in body_json["00081199"]["Value"]],
                         [[dcmread(CT).SOPInstanceUID]])
        self.assertEqual(body_json["00081198"]["Value"],
                         [{"00081197": {"vr": "US", "Value": [Status.STORE_CANNOT_UNDERSTAND]}}])
        self.assertEqual(self.index.count("IMAGE"), 1)
        half = multipart_body([("application/dicom", file_bytes(CT))], close=False)[:3000]
        response = self.stow([], body=half)
        self.assertEqual(response.code, 400)
        self.assertIn("truncated", response.json()["error"])
        self.assertEqual(self.index.count("IMAGE"), 1)

    def test_wrong_content_type(self) -> None:
        """A body that is not multipart/related of application/dicom is 415."""
        for content_type in ("application/dicom", "multipart/related; type=\"application/"
                             "dicom+json\"; boundary=x", "multipart/related", "text/plain"):
            response = self.stow([("application/dicom", file_bytes(CT))],
                                 headers={"Content-Type": content_type})
            self.assertEqual(response.code, 415, content_type)
        self.assertEqual(self.index.count("IMAGE"), 0)

    def test_tiny_chunks(self) -> None:
        """A body arriving 7 bytes at a time is stored identically."""
        body = multipart_body([("application/dicom", file_bytes(CT)),
                               ("application/dicom", rtdose_bytes())])
        site = self.site
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 80))
        protocol = site.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: archive.example\r\n"
                f"Content-Type: {STOW_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        data = head + body
        for n in range(0, len(data), 7):
            protocol.dataReceived(data[n:n + 7])
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200])
        payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(len(payload["00081199"]["Value"]), 2)
        for path, data in ((CT, file_bytes(CT)), (RTDOSE, rtdose_bytes())):
            ds = dcmread(io.BytesIO(data))
            stored = file_bytes(self.stored_path(ds.SOPInstanceUID))
            offset, _ = parse_meta(data)
            stored_offset, _ = parse_meta(stored)
            self.assertEqual(stored[stored_offset:], data[offset:])
        protocol.connectionLost(Failure(Exception("done")))

    def test_chunked_request(self) -> None:
        """A chunked request body (no Content-Length) written in 7-byte pieces
        is stored."""
        body = multipart_body([("application/dicom", file_bytes(MR))])
        response = self.stow([], body=ChunkedProducer(body, size=7, announce=False))
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(self.index.count("IMAGE"), 1)

    def test_large_instance_spilled(self) -> None:
        """An instance over the store's memory limit goes through a temporary
        file and is stored whole, none left behind."""
        self.store.memory_limit = 4096
        response = self.stow([("application/dicom", file_bytes(CT))])
        self.assertEqual(response.code, 200)
        ds = dcmread(CT)
        self.assertEqual(dcmread(self.stored_path(ds.SOPInstanceUID)).PixelData, ds.PixelData)

    def test_replace(self) -> None:
        """Storing an instance twice keeps one, the second."""
        self.assertEqual(self.stow([("application/dicom", file_bytes(CT))]).code, 200)
        self.assertEqual(self.stow([("application/dicom", file_bytes(CT))]).code, 200)
        self.assertEqual(self.index.count("IMAGE"), 1)

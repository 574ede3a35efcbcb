"""End to end: the Modality Worklist of the real ``twistd -n dicomqr
--worklist-location DIR`` against DCMTK's ``wlmscpfs`` over the same files.

The worklist directory holds DCMTK's ten example items (made with
``dump2dcm`` from Debian's ``wlistdb`` examples, or their equivalents from
``tests.worklist_items`` where the documentation is not installed), the
items of :func:`tests.worklist_items.extra_items`, DCMTK's ``lockfile``, a
``*.dcm`` copy of an item, a corrupt ``*.wl`` file and two incomplete
ones.  ``wlmscpfs -csk`` serves it as the called AE title's directory.
Every query (DCMTK's thirteen examples, likewise from ``wlistqry*.dump``,
plus date, time, name, modality and station queries) is sent by DCMTK's
``findscu -W -X`` to both; the answers, read back from the files
``findscu`` writes, must be the same set of data sets, and the response
statuses the same.  Items added over the archive's HTTP endpoint (``curl``
with DICOM JSON) are files ``wlmscpfs`` answers from alike.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import warnings

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests import peers
from tests.helpers import free_port
from tests.worklist_items import (
    WORKLIST_FIND,
    bad_items,
    dcmtk_items,
    dcmtk_queries,
    extra_items,
    item,
    query,
    write,
)

#: Where Debian puts DCMTK's example items and queries (documentation,
#: which minimal installations leave out).
EXAMPLES = "/usr/share/doc/dcmtk/examples"
#: The called AE title: ``wlmscpfs`` reads the items from this
#: subdirectory of its data files path.
WORKLIST_AET = "WORKLIST"
DATE = "ScheduledProcedureStepStartDate"
TIME = "ScheduledProcedureStepStartTime"
#: Keys asked for in the queries of :func:`our_queries`.
NAMES = {"PatientName": "", "PatientID": "", "StudyInstanceUID": "", "AccessionNumber": ""}


def keys(**values: str) -> dict[str, str]:
    """The :data:`NAMES` keys, some with a value."""
    return {**NAMES, **values}


def our_queries() -> dict[str, Dataset]:
    """Our queries besides DCMTK's, by name (some invalid on purpose)."""
    with warnings.catch_warnings():
        # pydicom warns of the invalid values.
        warnings.simplefilter("ignore")
        return _queries()


def _queries() -> dict[str, Dataset]:
    """The queries of :func:`our_queries`."""
    return {
        "date": query(keys(), {DATE: "20240311", TIME: "", "Modality": ""}),
        "date range": query(keys(), {DATE: "19960101-19960501"}),
        "date range, last day included": query(keys(), {DATE: "20240311-20240312", TIME: ""}),
        "date from": query(keys(), {DATE: "20240312-"}),
        "date until": query(keys(), {DATE: "-19951231"}),
        "date and time": query(keys(), {DATE: "20240311", TIME: "1430"}),
        "date and time range": query(keys(), {DATE: "20240311", TIME: "0800-0900"}),
        "date-time range": query(keys(), {DATE: "19960103-19960406", TIME: "1658-1500"}),
        "date-time ranges open": query(keys(), {DATE: "20240312-", TIME: "1200-"}),
        "date range, time until": query(keys(), {DATE: "19960101-19960406", TIME: "-1600"}),
        "time range": query(keys(), {TIME: "120000-"}),
        "time with fraction": query(keys(), {TIME: "235959.5"}),
        "name wildcard": query(keys(PatientName="HAYDN*")),
        "name wildcards": query(keys(PatientName="*WOLF*\\SMITH?ANNA")),
        "name with character set": query(keys(PatientName="Müller*",
                                              SpecificCharacterSet="ISO_IR 100")),
        "patient ID": query(keys(PatientID="AV35674")),
        "accession wildcard": query(keys(AccessionNumber="0000?")),
        "modality": query(keys(), {"Modality": "CT"}),
        "modality universal": query(keys(), {"Modality": "*"}),
        "station": query(keys(), {"ScheduledStationAETitle": "CT02"}),
        "stations": query(keys(), {"ScheduledStationAETitle": "AA33\\MR01"}),
        "station and modality": query(keys(), {"ScheduledStationAETitle": "CT01",
                                               "Modality": "CT"}),
        "performing physician": query(keys(), {"ScheduledPerformingPhysicianName": "JOHN*"}),
        "empty step item": query(keys(), empty_step=True),
        "references and codes": query(keys(ReferencedStudySequence=[],
                                           RequestedProcedureCodeSequence=[],
                                           RequestedProcedureDescription=""),
                                      {"ScheduledProtocolCodeSequence": [],
                                       "ScheduledProcedureStepDescription": ""}),
        "pregnancy status": query(keys(PregnancyStatus=None)),
        "unsupported key": query(keys(StudyDescription="", PatientID="HF")),
        "invalid modality": query(keys(), {"Modality": "CT\\MR"}),
        "invalid date": query(keys(PatientBirthDate="1996")),
    }


def inline(method):
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def canonical(ds: Dataset) -> tuple:
    """A data set as nested tuples of (tag, VR, value), for set comparison."""
    elements = []
    for element in ds:
        if element.VR == "SQ":
            value: object = tuple(canonical(entry) for entry in element.value)
        elif element.value is None:
            value = ""
        elif element.VM > 1:
            value = tuple(str(v) for v in element.value)
        else:
            value = str(element.value)
        elements.append((int(element.tag), element.VR, value))
    return tuple(elements)


def save_query(ds: Dataset, path: str) -> None:
    """Write a query as the DICOM file ``findscu`` sends."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = WORKLIST_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.7433.17.0"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


class WorklistAgainstWlmscpfs(TestCase):
    """Our worklist answers as ``wlmscpfs`` does over the same directory."""

    timeout = 300

    def setUp(self) -> None:
        self.work = os.path.abspath(self.mktemp())
        self.queries = os.path.join(self.work, "queries")
        self.data_files = os.path.join(self.work, "wlmscpfs")
        self.worklist = os.path.join(self.data_files, WORKLIST_AET)
        self.cwd = os.path.join(self.work, "archive")
        for path in (self.queries, self.worklist, self.cwd):
            os.makedirs(path)
        self.port = free_port()
        self.reference_port = free_port()
        self.config = os.path.join(self.work, "qrscp.ini")
        with open(self.config, "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {self.port}\n"
                     f"bind_address: 127.0.0.1\nworklist_location: {self.worklist}\n")

    async def fill(self) -> None:
        """Items, other files and queries into place."""
        examples = os.path.join(EXAMPLES, "wlistdb", "OFFIS")
        dumps = sorted(glob.glob(os.path.join(examples, "wklist*.dump")))
        if dumps:
            for dump in dumps:
                name = os.path.basename(dump)[:-len(".dump")] + ".wl"
                await self.tool(peers.dcmtk("dump2dcm"), "-g", dump,
                               os.path.join(self.worklist, name))
        else:
            for name, ds in dcmtk_items().items():
                write(ds, os.path.join(self.worklist, name))
        for name, ds in {**extra_items(), **bad_items()}.items():
            write(ds, os.path.join(self.worklist, name))
        with open(os.path.join(self.worklist, "corrupt.wl"), "wb") as fp:
            fp.write(b"\x00\x01not a data set" * 20)
        shutil.copy(os.path.join(self.worklist, "ct-morning.wl"),
                    os.path.join(self.worklist, "copy-of-ct-morning.dcm"))
        open(os.path.join(self.worklist, "lockfile"), "w").close()
        dumps = sorted(glob.glob(os.path.join(EXAMPLES, "wlistqry", "wlistqry*.dump")))
        if dumps:
            for dump in dumps:
                name = os.path.basename(dump)[:-len(".dump")]
                await self.tool(peers.dcmtk("dump2dcm"), dump,
                               os.path.join(self.queries, name + ".dcm"))
        else:
            for name, ds in dcmtk_queries().items():
                save_query(ds, os.path.join(self.queries, name + ".dcm"))
        for number, (name, ds) in enumerate(our_queries().items()):
            save_query(ds, os.path.join(self.queries, f"q{number:02d} {name}.dcm"))

    async def tool(self, executable: str, *args: str) -> str:
        """Run a tool to completion; it must succeed."""
        out, err, code = await peers.run_tool(reactor, executable, args)
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output)
        return output

    async def start(self) -> peers.PeerProcess:
        """Start ``wlmscpfs`` and the archive; returns the archive's process."""
        wlmscpfs = peers.start_peer(
            self, reactor, peers.dcmtk("wlmscpfs"),
            ["--single-process", "--keep-char-set", "-dfp", self.data_files,
             str(self.reference_port)], "wlmscpfs")
        await peers.wait_for_port(reactor, self.reference_port, wlmscpfs)
        return await peers.start_dicomqr(self, reactor, self.cwd, self.config, self.port)

    async def ask(self, port: int, called: str, path: str) -> tuple[list[str], list]:
        """``findscu -W`` with a query file; returns the response statuses
        and the answers (canonical), both sorted: a set that keeps count of
        equal answers (several items may give the same one)."""
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        _, err, _ = await peers.run_tool(
            reactor, peers.dcmtk("findscu"),
            ["-v", "-W", "-aet", "MODALITY", "-aec", called, "-X", "-od", out,
             peers.LOCALHOST, str(port), path])
        output = err.decode("utf-8", "replace")
        statuses = [line.split("(", 1)[1].rstrip(")") for line in output.splitlines()
                    if "Received Find Response" in line or "Received Final Find Response" in line]
        self.assertTrue(statuses and "Final" in output, output)
        answers = [canonical(dcmread(f)) for f in glob.glob(os.path.join(out, "*.dcm"))]
        return sorted(statuses), sorted(answers)

    async def compare(self, path: str) -> list:
        """Both answer the query in ``path`` alike; returns the answers."""
        ours = await self.ask(self.port, "QRSCP", path)
        reference = await self.ask(self.reference_port, WORKLIST_AET, path)
        self.assertEqual(ours[0], reference[0], f"statuses of {os.path.basename(path)}")
        self.assertEqual(ours[1], reference[1], f"answers to {os.path.basename(path)}")
        return ours[1]

    @inline
    async def test_same_answers(self) -> None:
        """DCMTK's example queries and ours get the same answers and
        statuses from the archive as from ``wlmscpfs``; the corrupt and
        incomplete files are skipped with one log line each."""
        await self.fill()
        archive = await self.start()
        answered = 0
        for path in sorted(glob.glob(os.path.join(self.queries, "*.dcm"))):
            answers = await self.compare(path)
            answered += len(answers)
        # Not a comparison of nothing with nothing.
        self.assertGreater(answered, 200)
        everything = await self.compare(os.path.join(self.queries, "wlistqry3.dcm"))
        self.assertEqual(len(everything), len(dcmtk_items()) + len(extra_items()))
        output = archive.output()
        for name in ("corrupt.wl", *bad_items()):
            self.assertEqual(output.count(f"Worklist file {name} skipped"), 1, output)
        self.assertNotIn("copy-of-ct-morning", output)

    @inline
    async def test_changes_seen(self) -> None:
        """Files added, changed and removed while the archive runs are seen
        by the next query, as ``wlmscpfs`` sees them."""
        for name, ds in extra_items().items():
            write(ds, os.path.join(self.worklist, name))
        open(os.path.join(self.worklist, "lockfile"), "w").close()
        everyone = os.path.join(self.queries, "everyone.dcm")
        save_query(query({"PatientName": "", "PatientID": ""}, {"Modality": ""}), everyone)
        await self.start()

        def patients(answers: list) -> list[str]:
            return sorted(dict((t, v) for t, _, v in answer)[0x00100020] for answer in answers)

        self.assertEqual(patients(await self.compare(everyone)), ["P1", "P2", "P3", "P4", "P5"])
        # Added (written aside, then renamed in, as a careful writer does).
        added = item(6, "NEW^PATIENT", "P6", "CT", "CT03", "20240314", "100000")
        write(added, os.path.join(self.worklist, "new.wl.tmp"))
        os.replace(os.path.join(self.worklist, "new.wl.tmp"),
                   os.path.join(self.worklist, "new.wl"))
        # Changed in place (same name, new content).
        changed = extra_items()["us-no-physician.wl"]
        changed.PatientID = "P4-CHANGED"
        write(changed, os.path.join(self.worklist, "us-no-physician.wl"))
        # Removed.
        os.unlink(os.path.join(self.worklist, "mr-late.wl"))
        self.assertEqual(patients(await self.compare(everyone)),
                         ["P1", "P2", "P3", "P4-CHANGED", "P6"])
        # Broken: skipped, the others still answer.
        with open(os.path.join(self.worklist, "ct-morning.wl"), "r+b") as fp:
            fp.truncate(100)
        self.assertEqual(patients(await self.compare(everyone)),
                         ["P2", "P3", "P4-CHANGED", "P6"])

    @inline
    async def test_items_over_http(self) -> None:
        """An item PUT over HTTP as DICOM JSON is a file ``wlmscpfs`` reads
        and answers from as the archive does; after a DELETE neither does."""
        http_port = free_port()
        with open(self.config, "a") as fp:
            fp.write(f"http: tcp:{http_port}:interface=127.0.0.1\n")
        open(os.path.join(self.worklist, "lockfile"), "w").close()
        everyone = os.path.join(self.queries, "everyone.dcm")
        save_query(query({"PatientName": "", "PatientID": ""}, empty_step=True), everyone)
        await self.start()
        await peers.wait_for_port(reactor, http_port)
        self.assertEqual(await self.compare(everyone), [])
        body = os.path.join(self.work, "item.json")
        with open(body, "w", encoding="utf-8") as fp:
            item_json = extra_items()["mr-next-day.wl"].to_json_dict()
            json.dump(item_json, fp)
        url = f"http://127.0.0.1:{http_port}/worklist/mr.wl"
        status = await self.tool("/usr/bin/curl", "-s", "-o", "/dev/null", "-w",
                                 "%{http_code}", "-X", "PUT", "-H",
                                 "Content-Type: application/dicom+json",
                                 "--data-binary", f"@{body}", url)
        self.assertEqual(status, "201")
        self.assertEqual(sorted(os.listdir(self.worklist)), ["lockfile", "mr.wl"])
        answers = await self.compare(everyone)
        self.assertEqual(len(answers), 1)
        self.assertIn((0x00100010, "PN", "Müller^Jürgen"), answers[0])
        status = await self.tool("/usr/bin/curl", "-s", "-o", "/dev/null", "-w",
                                 "%{http_code}", "-X", "DELETE", url)
        self.assertEqual(status, "204")
        self.assertEqual(await self.compare(everyone), [])


class WorklistLocationTests(TestCase):
    """``--worklist-location`` on the real daemon's command line."""

    timeout = 60

    @inline
    async def test_not_a_directory(self) -> None:
        """A worklist location that is no directory stops the daemon at
        start, with a message naming it and a non-zero exit code."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        missing = os.path.join(cwd, "no-such-worklist")
        process = peers.PeerProcess(reactor, "twistd dicomqr")
        argv = [*peers.TWISTD, "-n", "--pidfile=", "dicomqr", "--port", str(free_port()),
                "--worklist-location", missing]
        reactor.spawnProcess(process, peers.TWISTD[0], argv, env=peers.daemon_env(), path=cwd)
        self.addCleanup(process.stop)
        code = await process.exited
        self.assertNotEqual(code, 0, process.output())
        self.assertIn(f"--worklist-location/worklist_location {missing!r}: not a directory",
                      process.output())

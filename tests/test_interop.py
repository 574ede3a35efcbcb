"""End-to-end interoperability: dicomtwist against DCMTK and pynetdicom.

Real processes on real loopback ports (127.0.0.1 only), with the real
reactor: DCMTK's ``echoscu``/``storescu`` and a pynetdicom requestor talk to
our acceptor; our requestor talks to DCMTK's ``storescp`` and a pynetdicom
acceptor.  Peers run as child processes (``tests/peers.py``); tests wait on
their exit or on a line they print, never on time.  Received instances are
compared with the originals element by element, not byte by byte.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import struct

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from dicomtwist import IMPLEMENTATION_CLASS_UID
from dicomtwist.acse import PresentationContext
from dicomtwist.association import (
    AcceptorFactory,
    Association,
    ServiceRequest,
    associate,
    file_dataset,
)
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.assembly import TempFileSink
from dicomtwist.services.echo import handle_echo
from dicomtwist.status import Status
from tests import peers
from tests.helpers import CT_IMAGE_STORAGE, VERIFICATION, ct_dataset, free_port, policy

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Explicit VR first, so instances keep the syntax they were stored in.
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
CONTEXTS = {VERIFICATION: SYNTAXES, CT_IMAGE_STORAGE: SYNTAXES, MR_IMAGE_STORAGE: SYNTAXES}
#: What our requestor proposes.
PROPOSED = [(abstract, list(syntaxes)) for abstract, syntaxes in CONTEXTS.items()]
#: (FFFC,FFFC) Data Set Trailing Padding.
TRAILING_PADDING = 0xFFFCFFFC
PREAMBLE = b"\x00" * 128 + b"DICM"


def part10_header(message: m.CStoreRQ, context: PresentationContext) -> bytes:
    """A Part 10 preamble and File Meta Information for an incoming C-STORE.

    The meta group comes from the C-STORE-RQ's UIDs and the presentation
    context's transfer syntax (PS3.10 7.1), so the streamed data set that
    follows it makes a complete file.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = message.affected_sop_class_uid
    meta.MediaStorageSOPInstanceUID = message.affected_sop_instance_uid
    meta.TransferSyntaxUID = context.transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()


class StoreRecorder:
    """A C-STORE SCP for tests: streams data sets to Part 10 files.

    :ivar requests: every C-STORE request served, in order; each one's
        ``data`` is the path of the file it was streamed to.
    :ivar header_sizes: the Part 10 header length written before each.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.requests: list[ServiceRequest] = []
        self.header_sizes: dict[str, int] = {}

    def sink_for(self, message: m.Message, context: PresentationContext) -> TempFileSink:
        """A temporary file starting with the instance's Part 10 header."""
        header = part10_header(message, context)
        sink = TempFileSink(self.directory, header=header)
        self.header_sizes[sink.path] = len(header)
        return sink

    def store(self, request: ServiceRequest) -> Status:
        """Record the request; the file is already complete."""
        self.requests.append(request)
        return Status.SUCCESS

    def received(self) -> dict[str, Dataset]:
        """Every received instance, decoded, by SOP Instance UID."""
        out = {}
        for request in self.requests:
            ds = dcmread(request.data)
            out[str(ds.SOPInstanceUID)] = ds
        return out


def sample_files(directory: str) -> list[str]:
    """Three Part 10 files: pydicom's CT_small and MR_small, and a generated CT."""
    generated = os.path.join(directory, "generated.dcm")
    ds = ct_dataset(pixels=128 * 128, PatientName="Interop^Generated")
    ds.save_as(generated, enforce_file_format=True)
    return [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm"), generated]


def read_by_uid(paths) -> dict[str, Dataset]:
    """Decode Part 10 files, keyed by SOP Instance UID."""
    out = {}
    for path in paths:
        ds = dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds
    return out


class InteropCase(TestCase):
    """Shared fixtures: our acceptor on a loopback port, data set comparison."""

    def serve(self, directory: str | None = None,
              **policy_args) -> tuple[int, StoreRecorder, list[ServiceRequest]]:
        """Listen with our acceptor (echo + streaming store) on 127.0.0.1.

        ``self.accepted`` then lists the associations it accepts.

        :param directory: where received instances go (default: a new one).
        :returns: ``(port, store recorder, echo requests)``.
        """
        if directory is None:
            directory = self.mktemp()
            os.makedirs(directory)
        recorder = StoreRecorder(directory)
        echoes: list[ServiceRequest] = []
        accepted: list[Association] = []
        closed: list[Deferred[None]] = []

        def echo(request: ServiceRequest):
            echoes.append(request)
            return handle_echo(request)

        args = dict(contexts=CONTEXTS)
        args.update(policy_args)
        factory = AcceptorFactory(reactor, policy(**args),
                                  {"echo": echo, "store": recorder.store},
                                  sink_for=recorder.sink_for)
        build = factory.buildProtocol

        def build_and_track(addr):
            assoc = build(addr)
            done: Deferred[None] = Deferred()
            assoc.closed.addBoth(lambda r: (done.callback(None), r)[1])
            accepted.append(assoc)
            closed.append(done)
            return assoc

        factory.buildProtocol = build_and_track
        self.accepted = accepted
        port = reactor.listenTCP(0, factory, interface=peers.LOCALHOST)
        # Cleanups run last-added first: wait for our connections to close
        # (peers release them), then stop listening.
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: defer.gatherResults(list(closed)))
        return port.getHost().port, recorder, echoes

    def assertSameDataset(self, received: Dataset, original: Dataset) -> None:
        """Assert two data sets have the same elements, VRs and values.

        Data Set Trailing Padding is ignored: it has no meaning and DCMTK
        drops it when sending and storing (PS3.10 7.2).
        """
        def tags(ds):
            return sorted(tag for tag in ds.keys() if tag != TRAILING_PADDING)

        self.assertEqual(tags(received), tags(original))
        for element in original:
            if element.tag == TRAILING_PADDING:
                continue
            other = received[element.tag]
            self.assertEqual((other.VR, other.value), (element.VR, element.value),
                             f"{element.tag} {element.name}")

    def assertSameInstances(self, received: dict[str, Dataset], paths) -> None:
        """Assert ``received`` holds exactly the instances in ``paths``."""
        originals = read_by_uid(paths)
        self.assertEqual(sorted(received), sorted(originals))
        for uid, original in originals.items():
            self.assertSameDataset(received[uid], original)


class EchoSCUTests(InteropCase):
    """DCMTK echoscu against our acceptor."""

    async def _echo(self, called: str, **policy_args):
        echoscu = peers.dcmtk("echoscu")
        port, _, echoes = self.serve(**policy_args)
        result = await peers.run_tool(reactor, echoscu,
                                      ["-aet", "ECHOSCU", "-aec", called,
                                       peers.LOCALHOST, str(port)])
        return result, echoes

    async def _test_echo(self) -> None:
        (out, err, code), echoes = await self._echo("TESTSCP")
        self.assertEqual(code, 0, err.decode())
        self.assertEqual(len(echoes), 1)
        self.assertEqual(echoes[0].association.peer_ae_title, "ECHOSCU")

    def test_echo(self):
        """echoscu's C-ECHO reaches our echo handler and echoscu exits 0."""
        return Deferred.fromCoroutine(self._test_echo())

    async def _test_wrong_called_title(self) -> None:
        (out, err, code), echoes = await self._echo("WRONGTITLE", require_called_aet=True)
        self.assertNotEqual(code, 0)
        self.assertIn(b"Association Rejected", out + err)
        self.assertEqual(echoes, [])

    def test_wrong_called_title(self):
        """With require_called_aet, echoscu calling another title is rejected."""
        return Deferred.fromCoroutine(self._test_wrong_called_title())


class StoreSCUTests(InteropCase):
    """DCMTK storescu against our acceptor, which streams to Part 10 files."""

    async def _store(self, files, storescu_args=(), **policy_args) -> StoreRecorder:
        storescu = peers.dcmtk("storescu")
        port, recorder, _ = self.serve(**policy_args)
        out, err, code = await peers.run_tool(
            reactor, storescu,
            ["-aet", "STORESCU", "-aec", "TESTSCP", *storescu_args,
             peers.LOCALHOST, str(port), *files])
        self.assertEqual(code, 0, (out + err).decode())
        return recorder

    async def _test_store_each(self) -> None:
        files = sample_files(self.mktemp_dir())
        for path in files:
            recorder = await self._store([path])
            self.assertSameInstances(recorder.received(), [path])

    def mktemp_dir(self) -> str:
        """A new empty directory for this test."""
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_store_each(self):
        """CT_small, MR_small and a generated CT, each stored with storescu,
        arrive as files equal to the originals."""
        return Deferred.fromCoroutine(self._test_store_each())

    async def _test_one_association(self) -> None:
        files = sample_files(self.mktemp_dir())
        recorder = await self._store(files)
        self.assertEqual(len(self.accepted), 1)
        self.assertEqual(len({id(r.association) for r in recorder.requests}), 1)
        self.assertSameInstances(recorder.received(), files)

    def test_one_association(self):
        """Several files sent by storescu in one association all arrive intact."""
        return Deferred.fromCoroutine(self._test_one_association())

    async def _test_small_pdu(self) -> None:
        files = sample_files(self.mktemp_dir())
        recorder = await self._store(files, ["--max-pdu", "4096"], max_pdu=4096)
        self.assertEqual(len(self.accepted), 1)
        negotiated = self.accepted[0].negotiated
        self.assertEqual((negotiated.peer_max_pdu, negotiated.our_max_pdu), (4096, 4096))
        self.assertSameInstances(recorder.received(), files)

    def test_small_pdu(self):
        """With 4096-byte PDUs both ways, storescu's many fragments reassemble
        into files equal to the originals."""
        return Deferred.fromCoroutine(self._test_small_pdu())


class PynetdicomRequestorTests(InteropCase):
    """A pynetdicom requestor (child process) against our acceptor."""

    async def _test_echo_and_store(self) -> None:
        peers.require_pynetdicom()
        directory = self.mktemp()
        os.makedirs(directory)
        files = sample_files(directory)
        port, recorder, echoes = self.serve()
        out, err, code = await peers.run_script(
            reactor, "pynetdicom_scu.py",
            [peers.LOCALHOST, str(port), *files, "--called", "TESTSCP", "--max-pdu", "8192"])
        self.assertEqual(code, 0, (out + err).decode())
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result["associated"], True)
        self.assertEqual(result["echo"], Status.SUCCESS)
        self.assertEqual(result["store"], [Status.SUCCESS] * len(files))
        self.assertEqual(len(echoes), 1)
        self.assertEqual(self.accepted[0].negotiated.peer_max_pdu, 8192)
        self.assertSameInstances(recorder.received(), files)

    def test_echo_and_store(self):
        """pynetdicom's C-ECHO and C-STOREs succeed and the files arrive intact."""
        return Deferred.fromCoroutine(self._test_echo_and_store())


class StoreSCPTests(InteropCase):
    """Our requestor against DCMTK storescp."""

    async def _exchange(self, storescp_args=()) -> None:
        storescp = peers.dcmtk("storescp")
        directory = self.mktemp()
        output = os.path.join(directory, "received")
        os.makedirs(output)
        files = sample_files(directory)
        port = free_port()
        peer = peers.start_peer(self, reactor, storescp,
                                ["-v", "-aet", "STORESCP", "-od", output, *storescp_args,
                                 str(port)],
                                "storescp")
        await peers.wait_for_port(reactor, port, peer)
        try:
            assoc = await associate(reactor, peers.LOCALHOST, port, contexts=PROPOSED,
                                    called_ae_title="STORESCP", calling_ae_title="DICOMTWIST")
        except Exception as e:
            self.fail(f"{e!r}; storescp said:\n{peer.output()}")
        try:
            rsp = await assoc.echo()
            self.assertEqual(rsp.status, Status.SUCCESS)
            for path in files:
                rsp = await assoc.store(path)
                self.assertEqual(rsp.status, Status.SUCCESS, peer.output())
        finally:
            await assoc.release()
        self.assertSameInstances(read_by_uid(glob.glob(os.path.join(output, "*"))), files)
        return assoc

    def test_echo_and_store(self):
        """storescp answers our C-ECHO and writes files equal to what we stored."""
        return Deferred.fromCoroutine(self._exchange())

    async def _test_small_pdu(self) -> None:
        assoc = await self._exchange(["--max-pdu", "4096"])
        self.assertEqual(assoc.negotiated.peer_max_pdu, 4096)

    def test_small_pdu(self):
        """Against storescp's 4096-byte maximum PDU our fragments still make
        files equal to the originals."""
        return Deferred.fromCoroutine(self._test_small_pdu())


class PynetdicomAcceptorTests(InteropCase):
    """Our requestor against a pynetdicom acceptor (child process)."""

    async def _test_echo_and_store(self) -> None:
        peers.require_pynetdicom()
        directory = self.mktemp()
        output = os.path.join(directory, "received")
        os.makedirs(output)
        files = sample_files(directory)
        peer = peers.start_script_peer(self, reactor, "pynetdicom_scp.py",
                                       [output, "--max-pdu", "4096"])
        line = await peer.wait_for_output(b"LISTENING")
        port = int(line.split()[-1])
        assoc = await associate(reactor, peers.LOCALHOST, port, contexts=PROPOSED,
                                called_ae_title="PYNETSCP")
        try:
            self.assertEqual(assoc.negotiated.peer_max_pdu, 4096)
            rsp = await assoc.echo()
            self.assertEqual(rsp.status, Status.SUCCESS)
            for path in files:
                rsp = await assoc.store(path)
                self.assertEqual(rsp.status, Status.SUCCESS, peer.output())
        finally:
            await assoc.release()
        self.assertSameInstances(read_by_uid(glob.glob(os.path.join(output, "*.dcm"))), files)

    def test_echo_and_store(self):
        """pynetdicom answers our C-ECHO and stores files equal to what we sent."""
        return Deferred.fromCoroutine(self._test_echo_and_store())


#: A data set larger than 100 MB: 220 frames of 512 x 512 x 16 bits.
LARGE_FRAMES = 220
LARGE_PIXEL_BYTES = LARGE_FRAMES * 512 * 512 * 2


def write_large_instance(path: str) -> tuple[Dataset, str]:
    """Write a CT of :data:`LARGE_PIXEL_BYTES` of pixel data (OW).

    :returns: the data set without its pixel data, and the pixels' SHA-256.
    """
    ds = ct_dataset(pixels=16, PatientName="Interop^Large")
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = LARGE_FRAMES
    pixels = random.Random(20240601).randbytes(LARGE_PIXEL_BYTES)
    digest = hashlib.sha256(pixels).hexdigest()
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    del ds.PixelData
    del pixels
    return ds, digest


def tail_sha256(path: str, length: int) -> tuple[bytes, str]:
    """The 12 bytes before a file's last ``length`` bytes, and their hash."""
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        fp.seek(-(length + 12), os.SEEK_END)
        header = fp.read(12)
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return header, digest.hexdigest()


class LargeStoreTests(InteropCase):
    """A C-STORE larger than 100 MB, our requestor to our acceptor."""

    async def _test_large(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.addCleanup(shutil.rmtree, directory, True)
        source = os.path.join(directory, "large.dcm")
        original, digest = write_large_instance(source)
        sent = file_dataset(source)
        # The received copy goes in the same directory, removed with it.
        port, recorder, _ = self.serve(directory)
        assoc = await associate(reactor, peers.LOCALHOST, port, contexts=PROPOSED,
                                called_ae_title="TESTSCP")
        try:
            rsp = await assoc.store(source)
            self.assertEqual(rsp.status, Status.SUCCESS)
        finally:
            await assoc.release()
        self.assertEqual(len(recorder.requests), 1)
        path = recorder.requests[0].data
        self.assertEqual(os.path.getsize(path), recorder.header_sizes[path] + sent.length)
        pixel_header, received_digest = tail_sha256(path, LARGE_PIXEL_BYTES)
        # (7FE0,0010) OW, reserved, 32-bit length: PS3.5 7.1.2.
        self.assertEqual(pixel_header,
                         struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW", LARGE_PIXEL_BYTES))
        self.assertEqual(received_digest, digest)
        header = dcmread(path, stop_before_pixels=True)
        self.assertSameDataset(header, original)

    def test_large_store_streams_to_disk(self):
        """A 110 MiB instance sent from disk arrives whole in the sink's file."""
        return Deferred.fromCoroutine(self._test_large())

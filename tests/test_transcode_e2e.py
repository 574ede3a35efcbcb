"""End to end: transcoding by the real ``twistd -n dicomqr`` for real peers.

Inputs are generated uncompressed Secondary Capture images
(:func:`tests.test_codec.make_image`: grey 8/12/16-bit, signed, RGB,
multi-frame) compressed by encoders nobody here wrote: DCMTK's
``dcmcjpeg``, ``dcmcjpls``, ``dcmcrle`` and GDCM's ``gdcmconv``.  They are
stored as they are with DCMTK's ``storescu`` (``-xf``: a profile written by
the test proposing each file's own SOP class and transfer syntax, since
storescu's ``-x?`` options cover neither JPEG process 14 nor several syntaxes
at once).  What leaves the archive is compared with what DCMTK and GDCM make
of the stored file (``dcmdjpeg``, ``dcmdjpls``, ``dcmdrle``, ``gdcmconv
--raw``): exactly for lossless syntaxes, within tests/test_codec.py's
measured decoder tolerances for lossy ones; every other element, and every
UID, as stored.  Afterwards the archive's files are byte-identical and its
scratch directory is empty.

Peers: DCMTK ``movescu`` to a DCMTK ``storescp`` accepting only
uncompressed syntaxes (``+x=``, its default, or only Implicit VR Little
Endian, ``+xi``), ``getscu`` proposing only uncompressed syntaxes (``+x=``,
its default; its ``+xi`` still proposes Explicit VR Little Endian, so it
cannot narrow that further), ``storescp +xa`` (every syntax) for the
preference order, and a pynetdicom Storage SCP
(``tests/peer_scripts/pynetdicom_syntax_scp.py``) accepting exactly one
compressed syntax per AE title, which decodes what it receives on arrival.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import re
import struct
from dataclasses import dataclass, replace

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SkipTest, TestCase

from dicomtwist.codec import LOSSLESS_TARGETS
from dicomtwist.codec import syntaxes as ts
from tests import peers
from tests.helpers import free_port
from tests.test_codec import (
    J2K_DECODER_TOLERANCE,
    JPEG_BASELINE_TOLERANCE,
    JPEG_DECODER_TOLERANCE,
    PIXEL_MODULE_CHANGES,
    _comparable,
    make_image,
    max_error,
)

GDCMCONV = "/usr/bin/gdcmconv"
UNCOMPRESSED = (ts.EXPLICIT_VR_LITTLE_ENDIAN, ts.IMPLICIT_VR_LITTLE_ENDIAN)
#: Data Set Trailing Padding, which DCMTK may drop.
TRAILING_PADDING = 0xFFFCFFFC


def inline(method):
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def tool_path(name: str) -> str:
    """A DCMTK tool by full path, or gdcmconv.

    :raises SkipTest: it is not installed.
    """
    if name == "gdcmconv":
        if not os.access(GDCMCONV, os.X_OK):
            raise SkipTest(f"gdcmconv not installed at {GDCMCONV}")
        return GDCMCONV
    return peers.dcmtk(name)


@dataclass(frozen=True)
class Compression:
    """How one compressed input is made and how its reference decoding is.

    :param image: :func:`make_image` arguments.
    :param encode: the encoder and its options.
    :param decode: the reference decoder and its options.
    :param tolerance: largest difference allowed between our decoding and
        the reference's (0: lossless, also equal to the original).
    """

    name: str
    syntax: str
    image: dict
    encode: tuple[str, ...]
    decode: tuple[str, ...]
    tolerance: int = 0
    lossy: bool = False


#: Every compressed syntax the archive must decode for an uncompressed peer.
COMPRESSIONS = (
    Compression("jpeg-baseline-grey", ts.JPEG_BASELINE, {}, ("dcmcjpeg", "+eb"),
                ("dcmdjpeg",), JPEG_DECODER_TOLERANCE, lossy=True),
    Compression("jpeg-baseline-rgb", ts.JPEG_BASELINE, {"samples": 3}, ("dcmcjpeg", "+eb"),
                ("dcmdjpeg",), JPEG_DECODER_TOLERANCE, lossy=True),
    Compression("jpeg-extended-12bit", ts.JPEG_EXTENDED, {"bits": 16, "stored": 12},
                ("dcmcjpeg", "+ee"), ("dcmdjpeg",), JPEG_DECODER_TOLERANCE, lossy=True),
    Compression("jpeg-lossless-p14", ts.JPEG_LOSSLESS, {"bits": 16}, ("dcmcjpeg", "+el"),
                ("dcmdjpeg",)),
    # Several fragments per frame (+fs 1: 1 KiB fragments).
    Compression("jpeg-lossless-sv1", ts.JPEG_LOSSLESS_SV1,
                {"bits": 16, "signed": True, "frames": 2}, ("dcmcjpeg", "+e1", "+fs", "1"),
                ("dcmdjpeg",)),
    Compression("jpeg-ls-lossless", ts.JPEG_LS_LOSSLESS, {"samples": 3}, ("dcmcjpls",),
                ("dcmdjpls",)),
    # JPEG-LS decoding is exact even for near-lossless streams.
    Compression("jpeg-ls-near", ts.JPEG_LS_NEAR_LOSSLESS, {"frames": 5},
                ("dcmcjpls", "+en"), ("dcmdjpls",), 0, lossy=True),
    Compression("j2k-lossless", ts.JPEG_2000_LOSSLESS, {"bits": 16, "stored": 12},
                ("gdcmconv", "--j2k"), ("gdcmconv", "--raw")),
    Compression("j2k-lossy", ts.JPEG_2000, {"bits": 16, "stored": 12, "frames": 2},
                ("gdcmconv", "--j2k", "--lossy", "-r", "10"), ("gdcmconv", "--raw"),
                J2K_DECODER_TOLERANCE, lossy=True),
    Compression("rle", ts.RLE_LOSSLESS, {"bits": 16, "frames": 4}, ("dcmcrle",),
                ("dcmdrle",)),
)

#: Uncompressed test images (:func:`make_image` arguments).
UNCOMPRESSED_IMAGES = {
    "grey8": {},
    "signed16": {"bits": 16, "signed": True},
    "rgb": {"samples": 3},
    "frames3": {"bits": 16, "frames": 3},
}


@dataclass
class Instance:
    """One test instance: the file sent, its pixels, how to check it."""

    path: str
    uid: str
    syntax: str
    #: The uncompressed pixels it was made from.
    original: np.ndarray
    #: The reference decoder's pixels and Photometric Interpretation
    #: (the original for uncompressed instances).
    reference: np.ndarray | None = None
    photometric: str | None = None
    tolerance: int = 0
    lossy: bool = False
    name: str = ""


def read(path: str) -> Dataset:
    """A file read with pydicom."""
    return pydicom.dcmread(path)


def stored_files(directory: str) -> dict[str, str]:
    """The archive's files under its instance directory (however it lays
    them out; not its scratch directory), by file name."""
    found = {}
    for parent, directories, names in os.walk(directory):
        directories[:] = [d for d in directories if d != ".scratch"]
        for name in names:
            if name.endswith(".dcm"):
                found[name] = os.path.join(parent, name)
    return found


def digests(directory: str) -> dict[str, str]:
    """SHA-256 of every stored file, by file name."""
    found = {}
    for name, path in stored_files(directory).items():
        with open(path, "rb") as f:
            found[name] = hashlib.sha256(f.read()).hexdigest()
    return found


def final_response(output: str) -> str:
    """The part of ``movescu -d`` output from its final response on."""
    at = output.rfind("Received Final Move Response")
    return output[at:] if at >= 0 else ""


def failed_uids(response: str) -> list[str]:
    """The Failed SOP Instance UID List that ``movescu -d`` printed."""
    listed = re.search(r"\(0008,0058\) UI \[([^\]]*)\]", response)
    return listed.group(1).split("\\") if listed else []


class TranscodeCase(TestCase):
    """Base: a working directory, the daemon and the tools."""

    timeout = 60

    def setUp(self) -> None:
        self.work = os.path.abspath(self.mktemp())
        self.cwd = os.path.join(self.work, "archive")
        self.data = os.path.join(self.work, "data")
        os.makedirs(self.cwd)
        os.makedirs(self.data)
        self.port = free_port()
        self.config = os.path.join(self.work, "qrscp.ini")
        self.study = pydicom.uid.generate_uid()
        self.series = pydicom.uid.generate_uid()
        self.patient_id = "TRANSCODE"

    # -- inputs ---------------------------------------------------------------
    async def run_tool(self, *argv: str) -> str:
        """Run a tool (first argument by name) to success; returns its output."""
        out, err, code = await peers.run_tool(reactor, tool_path(argv[0]), argv[1:])
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, f"{' '.join(argv)}:\n{output}")
        return output

    def image(self, name: str, **kwargs) -> tuple[str, np.ndarray]:
        """An uncompressed image of this test's patient, study and series."""
        path = os.path.join(self.data, f"{name}.dcm")
        pixels = make_image(path, **kwargs)
        ds = read(path)
        ds.PatientID = self.patient_id
        ds.StudyInstanceUID = self.study
        ds.SeriesInstanceUID = self.series
        ds.save_as(path, enforce_file_format=True)
        return path, pixels

    def uncompressed(self, name: str, **kwargs) -> Instance:
        """An uncompressed instance (Explicit VR Little Endian)."""
        path, pixels = self.image(name, **kwargs)
        ds = read(path)
        return Instance(path, str(ds.SOPInstanceUID), ts.EXPLICIT_VR_LITTLE_ENDIAN, pixels,
                        pixels, str(ds.PhotometricInterpretation), name=name)

    async def compressed(self, how: Compression) -> Instance:
        """An image compressed as ``how`` says, with its reference decoding."""
        source, pixels = self.image(f"{how.name}-source", **how.image)
        path = os.path.join(self.data, f"{how.name}.dcm")
        reference = os.path.join(self.data, f"{how.name}-reference.dcm")
        await self.run_tool(*how.encode, source, path)
        await self.run_tool(*how.decode, path, reference)
        ds, ref = read(path), read(reference)
        self.assertEqual(ds.file_meta.TransferSyntaxUID, how.syntax, how.name)
        return Instance(path, str(ds.SOPInstanceUID), how.syntax, pixels, ref.pixel_array,
                        str(ref.PhotometricInterpretation), how.tolerance, how.lossy, how.name)

    # -- the archive ----------------------------------------------------------
    def write_config(self, defaults: str = "", **destinations: str) -> None:
        """The daemon's configuration: [DEFAULT] plus one section per
        destination (its text after the section line)."""
        with open(self.config, "w") as fp:
            fp.write(f"[DEFAULT]\nae_title: QRSCP\nport: {self.port}\n"
                     f"bind_address: 127.0.0.1\n{defaults}")
            for aet, text in destinations.items():
                fp.write(f"[{aet}]\n{text}")

    @staticmethod
    def destination(port: int, *lines: str) -> str:
        """A destination section's text."""
        return "".join(f"{line}\n" for line in (f"address: {peers.LOCALHOST}",
                                                 f"port: {port}", *lines))

    async def start_archive(self) -> peers.PeerProcess:
        """Start the daemon (stopped in the cleanup)."""
        self.archive = await peers.start_dicomqr(self, reactor, self.cwd, self.config,
                                                 self.port)
        return self.archive

    @property
    def instances(self) -> str:
        """The archive's instance directory."""
        return os.path.join(self.cwd, "instances")

    def stored(self, instance: Instance) -> str:
        """The archive's file of an instance."""
        return stored_files(self.instances)[f"{instance.uid}.dcm"]

    async def tool(self, name: str, *args: str, files=(), expect: int | None = 0) -> str:
        """Run a DCMTK SCU against the archive; returns its output."""
        out, err, code = await peers.run_tool(
            reactor, peers.dcmtk(name), ["-aet", name.upper(), "-aec", "QRSCP", *args,
                                         peers.LOCALHOST, str(self.port), *files])
        output = (out + err).decode("utf-8", "replace")
        if expect is not None:
            self.assertEqual(code, expect, f"{name} {' '.join(args)}:\n{output}")
        return output

    async def store(self, instances: list[Instance]) -> None:
        """storescu the instances as they are: a ``-xf`` profile proposes
        each file's SOP class in its own transfer syntax; then each is
        stored in that syntax."""
        pairs: list[tuple[str, str]] = []
        for instance in instances:
            ds = pydicom.dcmread(instance.path, stop_before_pixels=True)
            pair = (str(ds.SOPClassUID), instance.syntax)
            if pair not in pairs:
                pairs.append(pair)
        syntaxes = sorted({syntax for _, syntax in pairs})
        lines = ["[[TransferSyntaxes]]"]
        for i, syntax in enumerate(syntaxes):
            lines += [f"[Syntax{i}]", f"TransferSyntax1 = {syntax}"]
        lines += ["[[PresentationContexts]]", "[AsStored]"]
        for i, (sop_class, syntax) in enumerate(pairs, 1):
            lines.append(f"PresentationContext{i} = {sop_class}\\Syntax{syntaxes.index(syntax)}")
        lines += ["[[Profiles]]", "[AsStored]", "PresentationContexts = AsStored"]
        profile = os.path.join(self.work, "storescu.cfg")
        with open(profile, "w") as fp:
            fp.write("\n".join(lines) + "\n")
        await self.tool("storescu", "-xf", profile, "AsStored",
                        files=[instance.path for instance in instances])

    async def move(self, destination: str, expect: int | None = 0) -> str:
        """movescu (``-d``: it prints the responses) this test's patient to
        ``destination``; returns the output."""
        return await self.tool("movescu", "-d", "-P", "-aem", destination,
                               "-k", "QueryRetrieveLevel=PATIENT",
                               "-k", f"PatientID={self.patient_id}", expect=expect)

    async def storescp(self, port: int, *options: str) -> str:
        """Start DCMTK's storescp on ``port``; returns its output directory."""
        received = os.path.join(self.work, f"storescp-{port}")
        os.makedirs(received)
        peer = peers.start_peer(self, reactor, peers.dcmtk("storescp"),
                                ["-aet", "STORESCP", *options, "-od", received, str(port)],
                                "storescp")
        await peers.wait_for_port(reactor, port, peer)
        return received

    # -- checks ---------------------------------------------------------------
    def received(self, directory: str, pattern: str = "*") -> dict[str, Dataset]:
        """The data sets in ``directory``, by SOP Instance UID."""
        return {str(ds.SOPInstanceUID): ds
                for ds in map(read, glob.glob(os.path.join(directory, pattern)))}

    def assertAsStored(self, received: Dataset, stored: str) -> None:
        """Every element outside the pixel module's changes (PS3.5 8.2) is
        as in the ``stored`` file, and so are the File Meta UIDs."""
        original = read(stored)
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
            self.assertEqual(received.file_meta[keyword].value, original.file_meta[keyword].value)
        tags = (set(original.keys()) | set(received.keys())) - {TRAILING_PADDING}
        for tag in sorted(tags):
            keyword = pydicom.datadict.keyword_for_tag(tag)
            if keyword in PIXEL_MODULE_CHANGES:
                continue
            self.assertIn(tag, original, f"{keyword or tag} added")
            self.assertIn(tag, received, f"{keyword or tag} lost")
            self.assertEqual(_comparable(received[tag]), _comparable(original[tag]),
                             f"{keyword or tag} changed")

    def assertDecoded(self, received: dict[str, Dataset], instances: list[Instance]) -> None:
        """Each instance arrived uncompressed, decoded as the reference
        decoder decodes it (exactly the original when lossless), marked
        lossy when it was, everything else as stored."""
        self.assertEqual(sorted(received), sorted(i.uid for i in instances))
        for instance in instances:
            ds = received[instance.uid]
            self.assertIn(ds.file_meta.TransferSyntaxUID, UNCOMPRESSED, instance.name)
            self.assertLessEqual(max_error(ds.pixel_array, instance.reference),
                                 instance.tolerance, instance.name)
            self.assertEqual(ds.PhotometricInterpretation, instance.photometric, instance.name)
            if instance.lossy:
                self.assertEqual(ds.LossyImageCompression, "01", instance.name)
            else:
                self.assertEqual(max_error(ds.pixel_array, instance.original), 0, instance.name)
                self.assertNotIn("LossyImageCompression", ds, instance.name)
            self.assertAsStored(ds, self.stored(instance))

    def assertUntouched(self, before: dict[str, str]) -> None:
        """The stored files are byte-identical to ``before`` and nothing is
        left in the scratch directory."""
        self.assertEqual(digests(self.instances), before)
        scratch = os.path.join(self.instances, ".scratch")
        self.assertEqual([name for _, _, names in os.walk(scratch) for name in names], [])


class DecompressTests(TranscodeCase):
    """Every compressed syntax reaches peers that accept only uncompressed data."""

    async def stored_compressed(self) -> tuple[list[Instance], dict[str, str]]:
        """Make every compressed input, start the archive, store them;
        returns them and the stored files' digests."""
        instances = list(await gatherResults(
            [Deferred.fromCoroutine(self.compressed(how)) for how in COMPRESSIONS]))
        await self.start_archive()
        await self.store(instances)
        for instance in instances:
            stored = read(self.stored(instance))
            self.assertEqual(stored.file_meta.TransferSyntaxUID, instance.syntax, instance.name)
            if instance.name == "jpeg-lossless-sv1":
                fragments = list(pydicom.encaps.generate_fragments(stored.PixelData))
                self.assertGreater(len(fragments), 2 * stored.NumberOfFrames)
        return instances, digests(self.instances)

    @inline
    async def test_move_to_uncompressed_storescp(self) -> None:
        """C-MOVE of every compressed syntax to a storescp accepting only
        Implicit VR Little Endian delivers DCMTK's/GDCM's decoding,
        everything else as stored."""
        storescp_port = free_port()
        self.write_config(STORESCP=self.destination(storescp_port))
        received = await self.storescp(storescp_port, "+xi")
        instances, before = await self.stored_compressed()
        output = await self.move("STORESCP")
        self.assertIn("0x0000: Success", final_response(output), output)
        self.assertDecoded(self.received(received), instances)
        for ds in self.received(received).values():
            self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.IMPLICIT_VR_LITTLE_ENDIAN)
        self.assertUntouched(before)

    @inline
    async def test_get_to_uncompressed_getscu(self) -> None:
        """C-GET of every compressed syntax by a getscu proposing only
        uncompressed syntaxes delivers DCMTK's/GDCM's decoding."""
        self.write_config()
        instances, before = await self.stored_compressed()
        got = os.path.join(self.work, "got")
        os.makedirs(got)
        output = await self.tool("getscu", "-v", "-P", "+x=", "+B", "-od", got,
                                 "-k", "QueryRetrieveLevel=PATIENT",
                                 "-k", f"PatientID={self.patient_id}")
        self.assertIn("Received C-GET Response (Success)", output)
        self.assertIn(f"Number of Completed Suboperations : {len(instances)}", output)
        for ds in self.received(got).values():
            self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.EXPLICIT_VR_LITTLE_ENDIAN)
        self.assertDecoded(self.received(got), instances)
        self.assertUntouched(before)


#: The lossless syntaxes a destination may accept alone, with its AE title.
LOSSLESS_DESTINATIONS = {
    "RLE": ts.RLE_LOSSLESS,
    "JPEGLS": ts.JPEG_LS_LOSSLESS,
    "J2K": ts.JPEG_2000_LOSSLESS,
    "SV1": ts.JPEG_LOSSLESS_SV1,
}


class DestinationTests(TranscodeCase):
    """Uncompressed instances compressed for destinations that want it, and
    each destination's lossy and preference settings."""

    async def scp(self, **listens: str) -> tuple[str, dict[str, int]]:
        """Start the pynetdicom SCP with one AE title per accepted syntax
        list; returns its output directory and the ports."""
        peers.require_pynetdicom()
        output = os.path.join(self.work, "pynetdicom")
        os.makedirs(output)
        ports = {aet: free_port() for aet in listens}
        args = [output]
        for aet, syntaxes in listens.items():
            args += ["--listen", f"{aet}:{ports[aet]}:{syntaxes}"]
        peer = peers.start_script_peer(self, reactor, "pynetdicom_syntax_scp.py", args)
        await peer.wait_for_output(b"LISTENING")
        self.scp_peer = peer
        return output, ports

    def images(self) -> list[Instance]:
        """The uncompressed test images."""
        return [self.uncompressed(name, **image) for name, image in UNCOMPRESSED_IMAGES.items()]

    @inline
    async def test_lossless_destinations(self) -> None:
        """A destination accepting exactly one lossless compressed syntax
        receives every uncompressed instance in it, decoding to the original
        pixels exactly."""
        wanted = {aet: uid for aet, uid in LOSSLESS_DESTINATIONS.items()
                  if uid in LOSSLESS_TARGETS}
        self.assertTrue({"RLE", "JPEGLS", "J2K"} <= set(wanted))
        output, ports = await self.scp(**wanted)
        self.write_config(**{aet: self.destination(port) for aet, port in ports.items()})
        instances = self.images()
        await self.start_archive()
        await self.store(instances)
        before = digests(self.instances)
        for aet, syntax in wanted.items():
            moved = await self.move(aet)
            self.assertIn("0x0000: Success", final_response(moved), moved)
            directory = os.path.join(output, aet)
            received = self.received(directory, "*.dcm")
            self.assertEqual(sorted(received), sorted(i.uid for i in instances), aet)
            for instance in instances:
                ds = received[instance.uid]
                self.assertEqual(ds.file_meta.TransferSyntaxUID, syntax, aet)
                decoded = np.load(os.path.join(directory, instance.uid + ".npy"))
                self.assertEqual(max_error(decoded, instance.original), 0,
                                 f"{aet} {instance.name}")
                self.assertNotIn("LossyImageCompression", ds)
                self.assertAsStored(ds, self.stored(instance))
        self.assertUntouched(before)

    @inline
    async def test_compressed_to_another_compressed_syntax(self) -> None:
        """JPEG Baseline colour and RLE instances reach a JPEG-LS-only
        destination as JPEG-LS: the RLE one exactly, the Baseline one as
        dcmdjpeg decodes it and still marked lossy."""
        output, ports = await self.scp(JPEGLS=ts.JPEG_LS_LOSSLESS)
        self.write_config(JPEGLS=self.destination(ports["JPEGLS"]))
        by_name = {how.name: how for how in COMPRESSIONS}
        instances = [await self.compressed(by_name["jpeg-baseline-rgb"]),
                     await self.compressed(by_name["rle"])]
        await self.start_archive()
        await self.store(instances)
        before = digests(self.instances)
        moved = await self.move("JPEGLS")
        self.assertIn("0x0000: Success", final_response(moved), moved)
        directory = os.path.join(output, "JPEGLS")
        received = self.received(directory, "*.dcm")
        self.assertEqual(sorted(received), sorted(i.uid for i in instances))
        for instance in instances:
            ds = received[instance.uid]
            self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.JPEG_LS_LOSSLESS)
            decoded = np.load(os.path.join(directory, instance.uid + ".npy"))
            self.assertLessEqual(max_error(decoded, instance.reference), instance.tolerance,
                                 instance.name)
            self.assertEqual(ds.PhotometricInterpretation, instance.photometric)
            self.assertEqual(ds.get("LossyImageCompression"),
                             "01" if instance.lossy else None, instance.name)
            self.assertAsStored(ds, self.stored(instance))
        self.assertUntouched(before)

    @inline
    async def test_lossy_only_destination(self) -> None:
        """A destination accepting only JPEG Baseline fails the sub-operations
        unless configured ``lossy: yes``, and then gets the 8-bit instance
        marked lossy while the 16-bit one, which Baseline cannot hold, fails."""
        output, ports = await self.scp(NOLOSSY=ts.JPEG_BASELINE, LOSSY=ts.JPEG_BASELINE)
        self.write_config(NOLOSSY=self.destination(ports["NOLOSSY"]),
                          LOSSY=self.destination(ports["LOSSY"], "lossy: yes"))
        grey8 = self.uncompressed("grey8")
        grey16 = self.uncompressed("grey16", bits=16)
        await self.start_archive()
        await self.store([grey8, grey16])
        before = digests(self.instances)

        refused = final_response(await self.move("NOLOSSY", expect=None))
        self.assertIn("0xb000", refused)
        self.assertRegex(refused, r"Completed Suboperations\s*: 0\b")
        self.assertRegex(refused, r"Failed Suboperations\s*: 2\b")
        self.assertEqual(sorted(failed_uids(refused)), sorted([grey8.uid, grey16.uid]))
        self.assertEqual(os.listdir(os.path.join(output, "NOLOSSY")), [])

        partly = final_response(await self.move("LOSSY", expect=None))
        self.assertIn("0xb000", partly)
        self.assertRegex(partly, r"Completed Suboperations\s*: 1\b")
        self.assertRegex(partly, r"Failed Suboperations\s*: 1\b")
        self.assertEqual(failed_uids(partly), [grey16.uid])
        directory = os.path.join(output, "LOSSY")
        received = self.received(directory, "*.dcm")
        self.assertEqual(list(received), [grey8.uid])
        ds = received[grey8.uid]
        self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.JPEG_BASELINE)
        self.assertEqual(ds.LossyImageCompression, "01")
        self.assertEqual(ds.LossyImageCompressionMethod, "ISO_10918_1")
        decoded = np.load(os.path.join(directory, grey8.uid + ".npy"))
        self.assertLessEqual(max_error(decoded, grey8.original),
                             JPEG_BASELINE_TOLERANCE * 255)
        self.assertAsStored(ds, self.stored(grey8))
        self.assertUntouched(before)

    @inline
    async def test_preference_uncompressed_first(self) -> None:
        """``preference: uncompressed, lossless, stored`` sends a JPEG-LS
        instance uncompressed to a storescp accepting both, which by default
        gets it as stored."""
        storescp_port = free_port()
        self.write_config(
            ASSTORED=self.destination(storescp_port),
            UNCFIRST=self.destination(storescp_port,
                                      "preference: uncompressed, lossless, stored"))
        received = await self.storescp(storescp_port, "+xa")
        jls = next(how for how in COMPRESSIONS if how.name == "jpeg-ls-lossless")
        instance = await self.compressed(jls)
        await self.start_archive()
        await self.store([instance])
        before = digests(self.instances)

        self.assertIn("0x0000: Success", final_response(await self.move("ASSTORED")))
        ds = self.received(received)[instance.uid]
        self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.JPEG_LS_LOSSLESS)
        self.assertEqual(ds.PixelData, read(self.stored(instance)).PixelData)
        for path in glob.glob(os.path.join(received, "*")):
            os.unlink(path)

        self.assertIn("0x0000: Success", final_response(await self.move("UNCFIRST")))
        ds = self.received(received)[instance.uid]
        self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.EXPLICIT_VR_LITTLE_ENDIAN)
        self.assertDecoded({instance.uid: ds}, [instance])
        self.assertUntouched(before)


def fragment(data: bytes) -> tuple[int, int]:
    """The offset and length of the first pixel data fragment of a file
    holding encapsulated pixel data (after an empty-or-not offset table)."""
    start = data.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
    (table,) = struct.unpack("<L", data[start + 4:start + 8])
    item = start + 8 + table
    (length,) = struct.unpack("<L", data[item + 4:item + 8])
    return item + 8, length


class BadInputTests(TranscodeCase):
    """Stored streams that do not decode fail alone."""

    @inline
    async def test_corrupt_and_truncated_streams(self) -> None:
        """A corrupt and a truncated JPEG-LS stream moved with good instances
        to an uncompressed-only storescp (or got by getscu) fail, counted and
        listed, the others arrive and the daemon still answers C-ECHO."""
        jls = Compression("jpeg-ls", ts.JPEG_LS_LOSSLESS, {"frames": 2}, ("dcmcjpls",),
                          ("dcmdjpls",))
        good = await self.compressed(jls)
        corrupt = await self.compressed(replace(jls, name="corrupt"))
        truncated = await self.compressed(replace(jls, name="truncated"))
        with open(corrupt.path, "rb") as f:
            data = f.read()
        at, length = fragment(data)
        with open(corrupt.path, "wb") as f:
            f.write(data[:at + 2] + b"\xff" * 30 + data[at + 32:])
        with open(truncated.path, "rb") as f:
            data = f.read()
        at, length = fragment(data)
        cut = length // 2 & ~1
        with open(truncated.path, "wb") as f:
            f.write(data[:at - 8] + struct.pack("<HHL", 0xFFFE, 0xE000, cut)
                    + data[at:at + cut] + data[at + length:])
        plain = self.uncompressed("plain", bits=16)

        storescp_port = free_port()
        self.write_config(STORESCP=self.destination(storescp_port))
        received = await self.storescp(storescp_port, "+x=")
        archive = await self.start_archive()
        await self.store([good, corrupt, truncated, plain])
        before = digests(self.instances)
        self.assertEqual(len(before), 4)

        output = final_response(await self.move("STORESCP", expect=None))
        self.assertIn("0xb000", output)
        self.assertRegex(output, r"Completed Suboperations\s*: 2\b")
        self.assertRegex(output, r"Failed Suboperations\s*: 2\b")
        self.assertEqual(sorted(failed_uids(output)), sorted([corrupt.uid, truncated.uid]))
        self.assertDecoded(self.received(received), [good, plain])
        for bad in (corrupt, truncated):
            await archive.wait_for_output(f"Sub-operation for {bad.uid} failed".encode())
        got = os.path.join(self.work, "got")
        os.makedirs(got)
        output = await self.tool("getscu", "-d", "-P", "+x=", "-od", got,
                                 "-k", "QueryRetrieveLevel=PATIENT",
                                 "-k", f"PatientID={self.patient_id}", expect=None)
        self.assertIn("Number of Completed Suboperations : 2", output)
        self.assertIn("Number of Failed Suboperations    : 2", output)
        # getscu does not print (nor read) the final response's identifier.
        self.assertIn("0xb000", output)
        self.assertDecoded(self.received(got), [good, plain])
        echo = await self.tool("echoscu", "-v")
        self.assertIn("Received Echo Response (Success)", echo)
        self.assertUntouched(before)


class IngestTests(TranscodeCase):
    """``store_transfer_syntax: jpeg-ls`` compresses what arrives uncompressed."""

    def unencodable(self, name: str, bits: int) -> Instance:
        """A grey image with Bits Allocated 32 or 1, which JPEG-LS cannot take."""
        path, _ = self.image(name)
        ds = read(path)
        count = ds.Rows * ds.Columns
        if bits == 32:
            pixels = (np.arange(count, dtype=np.uint32) * 800_021).reshape(ds.Rows, ds.Columns)
            ds.PixelData = pixels.tobytes()
        else:
            pixels = (np.arange(count) % 3 == 0).astype(np.uint8).reshape(ds.Rows, ds.Columns)
            ds.PixelData = np.packbits(pixels.ravel(), bitorder="little").tobytes()
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.save_as(path, enforce_file_format=True)
        self.assertEqual(max_error(read(path).pixel_array, pixels), 0)
        return Instance(path, str(ds.SOPInstanceUID), ts.EXPLICIT_VR_LITTLE_ENDIAN, pixels,
                        pixels, "MONOCHROME2", name=name)

    @inline
    async def test_store_as_jpeg_ls(self) -> None:
        """Uncompressed instances are stored as JPEG-LS Lossless, found by
        C-FIND and got back by an uncompressed-only getscu exactly; 32-bit
        and 1-bit images are stored as received, with a warning, and JPEG
        Baseline as it came."""
        self.write_config("store_transfer_syntax: jpeg-ls\n")
        compressible = [self.uncompressed(name, **image)
                        for name, image in UNCOMPRESSED_IMAGES.items()]
        refused = [self.unencodable("bits32", 32), self.unencodable("bits1", 1)]
        baseline = await self.compressed(COMPRESSIONS[0])
        archive = await self.start_archive()
        await self.tool("storescu", files=[i.path for i in compressible + refused])
        await self.store([baseline])
        stored = read(self.stored(baseline))
        self.assertEqual(stored.file_meta.TransferSyntaxUID, ts.JPEG_BASELINE)
        self.assertEqual(stored.PixelData, read(baseline.path).PixelData)

        for instance in compressible:
            ds = pydicom.dcmread(self.stored(instance), stop_before_pixels=True)
            self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.JPEG_LS_LOSSLESS, instance.name)
        for instance in refused:
            ds = pydicom.dcmread(self.stored(instance), stop_before_pixels=True)
            self.assertEqual(ds.file_meta.TransferSyntaxUID, ts.EXPLICIT_VR_LITTLE_ENDIAN,
                             instance.name)
            await archive.wait_for_output(f"Storing {instance.uid} as received".encode())
        for instance in compressible:
            self.assertNotIn(f"Storing {instance.uid} as received", archive.output())

        found = os.path.join(self.work, "found")
        os.makedirs(found)
        output = await self.tool("findscu", "-S", "-X", "-od", found,
                                 "-k", "QueryRetrieveLevel=IMAGE",
                                 "-k", f"StudyInstanceUID={self.study}",
                                 "-k", f"SeriesInstanceUID={self.series}",
                                 "-k", "SOPInstanceUID")
        self.assertEqual(sorted(ds.SOPInstanceUID for ds in
                                map(read, glob.glob(os.path.join(found, "rsp*.dcm")))),
                         sorted(i.uid for i in compressible + refused + [baseline]), output)

        before = digests(self.instances)
        got = os.path.join(self.work, "got")
        os.makedirs(got)
        output = await self.tool("getscu", "-v", "-P", "+x=", "-od", got,
                                 "-k", "QueryRetrieveLevel=PATIENT",
                                 "-k", f"PatientID={self.patient_id}")
        self.assertIn("Received C-GET Response (Success)", output)
        received = self.received(got)
        self.assertEqual(sorted(received),
                         sorted(i.uid for i in compressible + refused + [baseline]))
        self.assertDecoded({baseline.uid: received.pop(baseline.uid)}, [baseline])
        for instance in compressible + refused:
            ds = received[instance.uid]
            self.assertIn(ds.file_meta.TransferSyntaxUID, UNCOMPRESSED, instance.name)
            self.assertEqual(max_error(ds.pixel_array, instance.original), 0, instance.name)
            self.assertNotIn("LossyImageCompression", ds, instance.name)
            self.assertAsStored(ds, instance.path)
        self.assertUntouched(before)

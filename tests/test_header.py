"""Tests for dicomtwist.storage.header, the fast data set header scanner.

The reference is always pydicom: ``dcmread(BytesIO(part 10 bytes),
stop_before_pixels=True)``; ``scan`` must give the same value (``str``) and
VR for every wanted element, and reject what is not well formed (PS3.5 7.1,
7.5, 6.2.2).
"""

from __future__ import annotations

import mmap
import os
import warnings
from io import BytesIO
from struct import pack, unpack_from

import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.dimse.codec import encode_dataset
from dicomtwist.storage import header
from dicomtwist.storage.header import MAX_DEPTH, HeaderError, scan

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
ENCODINGS = {IMPLICIT_LE: (True, True), EXPLICIT_LE: (False, True), EXPLICIT_BE: (False, False)}

PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"

#: pydicom test files that are readable but not well formed data sets;
#: ``scan`` must reject them (their re-encoded headers are still compared).
MALFORMED_TEST_FILES = {
    # Truncated inside Pixel Data (pydicom reads what there is).
    "MR_truncated.dcm": "value of length 8192 runs past the end",
    # Truncated inside a sequence value.
    "rtplan_truncated.dcm": "value of length 976 runs past the end",
    # JPEG Baseline in the file meta, but the data set is Implicit VR: pydicom
    # guesses the switch; a peer must send what it negotiated.
    "SC_rgb_jpeg.dcm": "unknown VR",
}

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


class Encoder:
    """A tiny hand encoder, for exact control of lengths and delimiters."""

    def __init__(self, implicit: bool, little: bool) -> None:
        self.implicit = implicit
        self.endian = "<" if little else ">"

    def element(self, tag: int, vr: str, value: bytes, undefined: bool = False) -> bytes:
        """An element (PS3.5 7.1.2, 7.1.3); ``undefined`` appends a (FFFE,E0DD)."""
        length = UNDEFINED if undefined else len(value)
        group, number = tag >> 16, tag & 0xFFFF
        if self.implicit:
            head = pack(self.endian + "HHL", group, number, length)
        elif vr in _LONG_VRS:
            head = pack(self.endian + "HH2s2xL", group, number, vr.encode(), length)
        else:
            head = pack(self.endian + "HH2sH", group, number, vr.encode(), length)
        return head + value + (self.delimiter(0xE0DD) if undefined else b"")

    def delimiter(self, number: int, length: int = 0) -> bytes:
        """An item (E000) or delimitation item (E00D, E0DD) header."""
        return pack(self.endian + "HHL", 0xFFFE, number, length)

    def item(self, content: bytes, undefined: bool = False) -> bytes:
        """An item (PS3.5 7.5.2), of defined or undefined length."""
        if undefined:
            return self.delimiter(0xE000, UNDEFINED) + content + self.delimiter(0xE00D)
        return self.delimiter(0xE000, len(content)) + content

    def sequence(self, tag: int, items: list[bytes], undefined: bool = False,
                 vr: str = "SQ") -> bytes:
        """A sequence element holding encoded ``items``."""
        return self.element(tag, vr, b"".join(items), undefined)

    def text(self, tag: int, vr: str, value: str, encoding: str = "ascii") -> bytes:
        """A text element padded to even length."""
        raw = value.encode(encoding)
        return self.element(tag, vr, raw + (b"\0" if vr == "UI" else b" ") * (len(raw) % 2))

    def us(self, tag: int, value: int) -> bytes:
        """A US element."""
        return self.element(tag, "US", pack(self.endian + "H", value))

    def ss(self, tag: int, value: int) -> bytes:
        """An SS element."""
        return self.element(tag, "SS", pack(self.endian + "h", value))


def part10(data: bytes, transfer_syntax: str) -> bytes:
    """A Part 10 file around an encoded data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue() + data


def reference(data: bytes, transfer_syntax: str) -> Dataset:
    """What ``dcmread`` makes of an encoded data set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(BytesIO(part10(data, transfer_syntax)), stop_before_pixels=True)


def meta_end(data: bytes) -> int:
    """The offset of the data set in Part 10 bytes: after the preamble, "DICM"
    and the group 0002 elements (always Explicit VR Little Endian, PS3.10 7.1).
    """
    pos = 132
    while pos + 8 <= len(data) and unpack_from("<H", data, pos)[0] == 0x0002:
        if data[pos + 4:pos + 6].decode("latin-1") in _LONG_VRS:
            pos += 12 + unpack_from("<L", data, pos + 8)[0]
        else:
            pos += 8 + unpack_from("<H", data, pos + 6)[0]
    return pos


def differences(scanned: Dataset, ref: Dataset, tags) -> list[str]:
    """The wanted elements whose value or VR differs from dcmread's."""
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values in pydicom's test files
        _compare(scanned, ref, tags, found)
    return found


def _compare(scanned: Dataset, ref: Dataset, tags, found: list[str]) -> None:
    """Append to ``found`` the differences ``differences`` reports."""
    for tag in tags:
        if tag not in ref:
            continue
        theirs = ref[tag]
        if tag not in scanned:
            found.append(f"{BaseTag(tag)} missing")
            continue
        try:
            ours = scanned[tag]
            if (str(ours.value), ours.VR) != (str(theirs.value), theirs.VR):
                found.append(f"{BaseTag(tag)}: {ours.VR} {str(ours.value)[:60]!r} != "
                             f"{theirs.VR} {str(theirs.value)[:60]!r}")
        except Exception as e:
            found.append(f"{BaseTag(tag)}: {e!r}")


def top_level_tags(ds: Dataset) -> frozenset[int]:
    """The tags of a data set's top-level elements below Pixel Data."""
    return frozenset(tag for tag in ds.keys() if tag < PIXEL_DATA)


def readable_test_files() -> list[tuple[str, bytes, Dataset]]:
    """pydicom's test files that dcmread reads (name, bytes, its reading)."""
    files = []
    for path in sorted(get_testdata_files()):
        if os.path.isdir(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        except Exception:
            continue
        files.append((os.path.basename(path), data, ds))
    return files


def transfer_syntax_of(ds: Dataset) -> str:
    """A read file's transfer syntax; the encoding pydicom found if unnamed."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid:
        return uid
    return {v: k for k, v in ENCODINGS.items()}[ds.original_encoding[:2]]


def generated(transfer_syntax: str, un: bool = True) -> bytes:
    """The generated data set, encoded."""
    return b"".join(generated_parts(transfer_syntax, un))


def generated_parts(transfer_syntax: str, un: bool = True) -> list[bytes]:
    """The top-level elements of a data set with nested sequences (defined
    and undefined lengths, 3 deep), private elements, a UN of undefined
    length (Implicit VR LE inside, PS3.5 6.2.2; left out if not ``un``: an
    empty UN instead), multi-valued and UTF-8 text and encapsulated pixel
    data.
    """
    implicit, little = ENCODINGS[transfer_syntax]
    e = Encoder(implicit, little)
    inner = Encoder(True, True)  # a UN value of undefined length
    code = e.text(0x00080100, "SH", "121311") + e.text(0x00080104, "LO", "Localizer")
    purpose = e.sequence(0x0040A170, [e.item(code, undefined=True)], undefined=True)
    image = (e.text(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2")
             + e.text(0x00081155, "UI", "1.2.3.4.5") + purpose)
    images = e.sequence(0x00081140, [e.item(image, undefined=True), e.item(image)])
    series_1 = images + e.text(0x0020000E, "UI", "1.2.3.4")
    series_2 = e.sequence(0x00081140, [e.item(image)], undefined=True)
    un_value = inner.item(inner.text(0x00111010, "LO", "inside UN")
                          + inner.sequence(0x00111011, [inner.item(inner.us(0x00111012, 7),
                                                                   undefined=True)],
                                           undefined=True), undefined=True)
    fragments = [e.item(b""), e.item(b"\xff\xd8\xff\xe0" * 4), e.item(b"\x00\x01\xff\xd9")]
    return [
        e.text(0x00080005, "CS", "ISO_IR 192"),
        e.text(0x00080008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
        e.text(0x00080016, "UI", "1.2.840.10008.5.1.4.1.1.7"),
        e.text(0x00080018, "UI", "1.2.3.4.5.6"),
        e.sequence(0x00081115, [e.item(series_1, undefined=True), e.item(series_2)],
                   undefined=True),
        e.text(0x00090010, "LO", "ACME 1.0"),
        e.text(0x00091001, "LO", "private value"),
        e.us(0x00091002, 42),
        e.text(0x00100010, "PN", JAPANESE, "utf-8"),
        e.text(0x00100020, "LO", "PID-1"),
        e.text(0x00110010, "LO", "ACME UN"),
        # The value, Sequence Delimitation Item included, is Implicit VR LE.
        (e.element(0x00111001, "UN", un_value, undefined=True)[:-8] + inner.delimiter(0xE0DD)
         if un else e.element(0x00111001, "UN", b"")),
        e.sequence(0x00111002, [e.item(e.text(0x00111010, "LO", "private seq"))]),
        e.text(0x00180050, "DS", "1.5"),
        e.text(0x00200032, "DS", "0\\-1.5\\2.25"),
        e.us(0x00280002, 1),
        e.us(0x00280100, 8),
        e.us(0x00280103, 1),
        e.ss(0x00280106, -5),
        e.element(PIXEL_DATA, "OB", b"".join(fragments), undefined=True),
    ]


def top_level_offsets(transfer_syntax: str) -> list[int]:
    """The offsets of the generated data set's top-level elements, and its end."""
    offsets = [0]
    for part in generated_parts(transfer_syntax):
        offsets.append(offsets[-1] + len(part))
    return offsets


class TestFilesTests(SynchronousTestCase):
    """``scan`` against dcmread on every test file pydicom ships."""

    def setUp(self) -> None:
        self.files = readable_test_files()

    def test_files_as_stored(self) -> None:
        """Every readable test file's data set scans to dcmread's values and
        VRs, except the documented malformed ones (HeaderError) and deflated
        ones (NotImplementedError)."""
        failures: list[str] = []
        compared = 0
        for name, data, ds in self.files:
            ts = transfer_syntax_of(ds)
            body = memoryview(data)[meta_end(data):]
            wanted = top_level_tags(ds)
            if pydicom.uid.UID(ts).is_deflated:
                self.assertRaises(NotImplementedError, scan, body, ts, wanted)
            elif name in MALFORMED_TEST_FILES:
                error = self.assertRaises(HeaderError, scan, body, ts, wanted)
                self.assertIn(MALFORMED_TEST_FILES[name], str(error))
            else:
                try:
                    scanned = scan(body, ts, wanted)
                except HeaderError as e:
                    failures.append(f"{name}: {e}")
                    continue
                failures.extend(f"{name}: {d}" for d in differences(scanned, ds, wanted))
                compared += 1
        self.assertEqual(failures, [])
        self.assertGreater(compared, 100)

    def test_files_reencoded(self) -> None:
        """Every readable test file's header, re-encoded in Implicit VR LE,
        Explicit VR LE and Explicit VR BE (other than its own, which
        test_files_as_stored covers), scans to dcmread's reading of it."""
        failures: list[str] = []
        compared = 0
        for name, _, ds in self.files:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header_only = Dataset({tag: ds[tag] for tag in top_level_tags(ds)})
            for ts, encoding in ENCODINGS.items():
                if encoding == ds.original_encoding[:2]:
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        data = encode_dataset(header_only, ts)
                        ref = reference(data, ts)
                except Exception:
                    continue  # a value pydicom cannot write in this encoding
                try:
                    scanned = scan(data, ts, top_level_tags(ref))
                except HeaderError as e:
                    failures.append(f"{name} in {ts}: {e}")
                    continue
                failures.extend(f"{name} in {ts}: {d}"
                                for d in differences(scanned, ref, top_level_tags(ref)))
                compared += 1
        self.assertEqual(failures, [])
        self.assertGreater(compared, 250)


class GeneratedDataSetTests(SynchronousTestCase):
    """``scan`` on a data set exercising every structure, in each encoding."""

    def check(self, transfer_syntax: str) -> Dataset:
        """Scan the generated data set; compare with dcmread; return it."""
        # PS3.5 6.2.2 makes a UN value of undefined length Implicit VR
        # *Little* Endian; pydicom reads it Big Endian and fails.
        data = generated(transfer_syntax, un=transfer_syntax != EXPLICIT_BE)
        ref = reference(data, transfer_syntax)
        tags = top_level_tags(ref)
        scanned = scan(data, transfer_syntax, tags)
        self.assertEqual(differences(scanned, ref, tags), [])
        self.assertEqual(set(scanned.keys()), set(tags))
        return scanned

    def test_implicit_little_endian(self) -> None:
        """Implicit VR Little Endian: all values and VRs are dcmread's."""
        scanned = self.check(IMPLICIT_LE)
        self.assertEqual(len(scanned.ReferencedSeriesSequence[0].ReferencedImageSequence), 2)
        self.assertEqual(scanned.SmallestImagePixelValue, -5)

    def test_explicit_little_endian(self) -> None:
        """Explicit VR Little Endian: all values and VRs are dcmread's; the UN
        of undefined length reads as a sequence."""
        scanned = self.check(EXPLICIT_LE)
        self.assertEqual(scanned[0x00111001].VR, "SQ")
        self.assertEqual(scanned[0x00111001].value[0][0x00111010].value, b"inside UN ")
        purpose = scanned.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
        self.assertEqual(purpose.PurposeOfReferenceCodeSequence[0].CodeMeaning, "Localizer")

    def test_explicit_big_endian(self) -> None:
        """Explicit VR Big Endian: all values and VRs are dcmread's."""
        scanned = self.check(EXPLICIT_BE)
        self.assertEqual(scanned.ImagePositionPatient, [0, -1.5, 2.25])
        self.assertEqual(scanned[0x00091002].value, 42)

    def test_big_endian_un(self) -> None:
        """In Explicit VR Big Endian, a UN value of undefined length is walked
        as Implicit VR Little Endian (PS3.5 6.2.2)."""
        scanned = scan(generated(EXPLICIT_BE), EXPLICIT_BE, {0x00111002, 0x00180050})
        self.assertEqual(scanned[0x00111002].value[0][0x00111010].value, "private seq")
        self.assertEqual(scanned.SliceThickness, 1.5)

    def test_compressed_syntax(self) -> None:
        """A compressed transfer syntax's data set is Explicit VR LE."""
        data = generated(EXPLICIT_LE)
        scanned = scan(data, JPEG_BASELINE, {0x00100010})
        self.assertEqual(str(scanned.PatientName), JAPANESE)

    def test_encapsulated_pixel_data(self) -> None:
        """Wanted encapsulated Pixel Data is its items, without the sequence
        delimiter, as dcmread reads it."""
        for ts in ENCODINGS:
            data = generated(ts, un=ts != EXPLICIT_BE)
            full = pydicom.dcmread(BytesIO(part10(data, ts)))
            scanned = scan(data, ts, {PIXEL_DATA})
            self.assertEqual(scanned[PIXEL_DATA].value, full.PixelData)

    def test_only_wanted(self) -> None:
        """Only wanted elements, Specific Character Set and the private
        creators of wanted private elements are returned, all raw."""
        scanned = scan(generated(EXPLICIT_LE), EXPLICIT_LE, [0x00100020, 0x00091001])
        self.assertEqual(sorted(scanned.keys()),
                         [0x00080005, 0x00090010, 0x00091001, 0x00100020])
        self.assertTrue(all(isinstance(e, RawDataElement) for e in scanned._dict.values()))
        self.assertEqual(scanned[0x00091001].value, "private value")

    def test_implicit_raw_elements(self) -> None:
        """In Implicit VR the raw elements have no VR, as dcmread's."""
        scanned = scan(generated(IMPLICIT_LE), IMPLICIT_LE, {0x00100020})
        self.assertIsNone(scanned._dict[BaseTag(0x00100020)].VR)
        self.assertEqual(scanned[0x00100020].VR, "LO")

    def test_ambiguous_vr_alone(self) -> None:
        """A wanted 'US or SS' element decodes as dcmread's even when Pixel
        Representation is not wanted (it is kept for the decoding)."""
        data = generated(IMPLICIT_LE)
        scanned = scan(data, IMPLICIT_LE, {0x00280106})
        self.assertEqual(scanned[0x00280106].VR, "SS")
        self.assertEqual(scanned[0x00280106].value, -5)
        self.assertEqual(differences(scanned, reference(data, IMPLICIT_LE), {0x00280106}), [])

    def test_private_vr_alone(self) -> None:
        """A wanted private element of a known creator has dcmread's VR in
        Implicit VR even when its creator is not wanted."""
        e = Encoder(True, True)
        data = (e.text(0x00090010, "LO", "GEMS_IDEN_01")
                + e.text(0x00091002, "SH", "CT01"))
        scanned = scan(data, IMPLICIT_LE, {0x00091002})
        self.assertEqual(scanned[0x00091002].VR, "SH")
        self.assertEqual(differences(scanned, reference(data, IMPLICIT_LE), {0x00091002}), [])

    def test_encoding(self) -> None:
        """The data set's original encoding is set as dcmread sets it."""
        for ts in (IMPLICIT_LE, EXPLICIT_LE):
            data = generated(ts)
            scanned = scan(data, ts, ())
            ref = reference(data, ts)
            self.assertEqual(scanned.original_encoding, ref.original_encoding)
            self.assertEqual(scanned.original_character_set, ref.original_character_set)
            self.assertEqual(scanned.original_character_set, ["UTF8"])

    def test_dataset_state(self) -> None:
        """The data set is in the state ``Dataset(elements)`` followed by
        ``set_original_encoding`` leaves it."""
        scanned = scan(generated(EXPLICIT_LE), EXPLICIT_LE, {0x00100020})
        expected = Dataset(dict(scanned._dict))
        expected.set_original_encoding(False, True, ["UTF8"])
        self.assertEqual(vars(scanned), vars(expected))
        self.assertIsNot(scanned._private_blocks, scan(b"", EXPLICIT_LE, ())._private_blocks)

    def test_empty(self) -> None:
        """An empty data set is well formed."""
        self.assertEqual(len(scan(b"", EXPLICIT_LE, {0x00100010})), 0)

    def test_file_meta_group_tolerated(self) -> None:
        """Group 0002 elements in the data set are tolerated, as by pydicom."""
        e = Encoder(False, True)
        data = e.text(0x00020010, "UI", EXPLICIT_LE) + e.text(0x00100020, "LO", "P")
        self.assertEqual(scan(data, EXPLICIT_LE, {0x00100020}).PatientID, "P")


class MmapTests(SynchronousTestCase):
    """``scan`` reads a memory-mapped file in place."""

    def test_mmap(self) -> None:
        """A memoryview slice of an mmap-ed Part 10 file after its meta scans
        like the bytes; the mapping can be closed afterwards."""
        data = part10(generated(EXPLICIT_LE), EXPLICIT_LE)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mapped)[meta_end(data):]
        scanned = scan(view, EXPLICIT_LE, {0x00100010, 0x00081115})
        self.assertEqual(str(scanned.PatientName), JAPANESE)
        self.assertEqual(len(scanned.ReferencedSeriesSequence), 2)
        view.release()
        mapped.close()

    def test_whole_mmap(self) -> None:
        """An mmap of a bare data set scans directly."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(generated(IMPLICIT_LE))
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.assertEqual(scan(mapped, IMPLICIT_LE, {0x00100020}).PatientID, "PID-1")
        mapped.close()


class CharacterSetTests(SynchronousTestCase):
    """Text decodes with (0008,0005) Specific Character Set, as dcmread's."""

    def check(self, character_set, name: str) -> None:
        """Encode a PN with pydicom in each encoding; scan must decode it."""
        ds = Dataset()
        ds.SpecificCharacterSet = character_set
        ds.PatientName = name
        ds.InstitutionName = name.split("=")[-1]
        for ts in ENCODINGS:
            data = encode_dataset(ds, ts)
            scanned = scan(data, ts, {0x00100010, 0x00080080})
            self.assertEqual(str(scanned.PatientName), name)
            self.assertEqual(differences(scanned, reference(data, ts), {0x00100010, 0x00080080}),
                             [])

    def test_iso_2022_ir_87(self) -> None:
        """Japanese PN in ISO 2022 IR 87 (PS3.5 H.3.1)."""
        self.check(["", "ISO 2022 IR 87"], JAPANESE)

    def test_utf8(self) -> None:
        """PN in ISO_IR 192 (UTF-8)."""
        self.check("ISO_IR 192", JAPANESE)

    def test_latin1(self) -> None:
        """PN in ISO_IR 100 (Latin-1)."""
        self.check("ISO_IR 100", "Buc^Jérôme")

    def test_character_set_values(self) -> None:
        """Empty, single, multiple and unknown (0008,0005) values give the data
        set dcmread's original character set, in every encoding."""
        for ts, (implicit, little) in ENCODINGS.items():
            e = Encoder(implicit, little)
            for value in (b"", b"ISO_IR 100", b"\\ISO 2022 IR 87", b"BOGUS "):
                data = e.element(0x00080005, "CS", value) + e.text(0x00100010, "PN", "A^B")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # BOGUS
                    scanned = scan(data, ts, {0x00100010})
                self.assertEqual(scanned.original_character_set,
                                 reference(data, ts).original_character_set)

    def test_multi_valued(self) -> None:
        """Multi-valued text with a character set is dcmread's list."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.OtherPatientNames = ["Müller^Jürgen", "Dupré^René"]
        data = encode_dataset(ds, EXPLICIT_LE)
        scanned = scan(data, EXPLICIT_LE, {0x00101001})
        self.assertEqual([str(n) for n in scanned.OtherPatientNames],
                         ["Müller^Jürgen", "Dupré^René"])


class TransferSyntaxTests(SynchronousTestCase):
    """Transfer syntaxes ``scan`` leaves to pydicom."""

    def test_deflated(self) -> None:
        """Deflated syntaxes raise NotImplementedError."""
        for ts in (DEFLATED_LE, "1.2.840.10008.1.2.4.95"):
            self.assertRaises(NotImplementedError, scan, b"", ts, ())

    def test_unknown(self) -> None:
        """A UID that is not a known transfer syntax raises NotImplementedError."""
        for ts in ("1.2.3.4", "1.2.840.10008.5.1.4.1.1.2"):
            self.assertRaises(NotImplementedError, scan, b"", ts, ())


class MalformedTests(SynchronousTestCase):
    """What is not well formed raises HeaderError saying where and why."""

    def assertMalformed(self, data: bytes, message: str, ts: str = EXPLICIT_LE) -> None:
        """``scan`` rejects ``data`` with an error containing ``message``;
        ``scan_fragments``, with ``data`` in 1-byte fragments read through
        windows of 4 bytes, with the same error."""
        error = self.assertRaises(HeaderError, scan, data, ts, {0x00100010})
        self.assertIn(message, str(error))
        self.patch(header, "WINDOW", 4)
        self.assertEqual(outcome(header.scan_fragments, cut(data, [1]), ts, {0x00100010}),
                         (HeaderError, str(error)))

    def test_truncated_everywhere(self) -> None:
        """Cut at any offset the data set is malformed, unless the cut falls
        between two top-level elements (a shorter, well-formed data set)."""
        for ts in ENCODINGS:
            data = generated(ts)
            boundaries = top_level_offsets(ts)
            self.assertEqual(len(boundaries), 21)
            for end in range(len(data) + 1):
                if end in boundaries:
                    scanned = scan(data[:end], ts, {0x00100020})
                    self.assertEqual(0x00100020 in scanned, end > boundaries[9], end)
                else:
                    self.assertRaises(HeaderError, scan, data[:end], ts, {0x00100020})

    def test_trailing_bytes(self) -> None:
        """Bytes after the last element, fewer than a header, are an error."""
        data = generated(EXPLICIT_LE)
        for extra in (b"\0", b"\0" * 7):
            self.assertMalformed(data + extra, "truncated element header at offset")
        self.assertMalformed(data + b"\0" * 8, "(0000,0000) at offset 0x")
        self.assertMalformed(data + b"\0" * 8, "tag not greater than the previous (7FE0,0010)")

    def test_value_past_end(self) -> None:
        """A length longer than the rest of the data set is an error."""
        e = Encoder(False, True)
        data = e.text(0x00100010, "PN", "A^B")[:-2]
        self.assertMalformed(data, "(0010,0010) at offset 0x0: value of length 4 runs past")
        data = e.element(0x00100010, "OB", b"")[:-4] + pack("<L", 100)
        self.assertMalformed(data, "value of length 100 runs past")

    def test_missing_sequence_delimiter(self) -> None:
        """An undefined-length sequence must end with (FFFE,E0DD)."""
        e = Encoder(False, True)
        data = e.sequence(0x00081115, [e.item(b"")], undefined=True)[:-8]
        self.assertMalformed(data, "(0008,1115): no sequence delimitation item")
        data = e.sequence(0x00081115, [e.item(e.us(0x00280002, 1), undefined=True)],
                          undefined=True)
        self.assertMalformed(data[:-16], "no item delimitation item")

    def test_sequence_delimiter_with_length(self) -> None:
        """Delimitation items have a zero length."""
        e = Encoder(False, True)
        data = e.element(0x00081115, "SQ", e.delimiter(0xE000, UNDEFINED)
                         + e.delimiter(0xE00D, 4))
        bad = data[:8] + pack("<L", UNDEFINED) + data[12:] + e.delimiter(0xE0DD)
        self.assertMalformed(bad, "length not 0")
        bad = (e.element(0x00081115, "SQ", b"")[:8] + pack("<L", UNDEFINED)
               + e.delimiter(0xE0DD, 2))
        self.assertMalformed(bad, "length 2, not 0")

    def test_bad_item_tag(self) -> None:
        """A sequence value holds only items and its delimiter."""
        e = Encoder(False, True)
        data = e.sequence(0x00081115, [e.us(0x00280002, 1)], undefined=True)
        self.assertMalformed(data, "(0028,0002) at offset 0xc in the value of (0008,1115): "
                                   "not an item")
        data = e.sequence(0x00081115, [e.item(e.delimiter(0xE000, 0), undefined=True)],
                          undefined=True)
        self.assertMalformed(data, "expected a data element or an item delimitation item")

    def test_item_past_end(self) -> None:
        """A defined-length item longer than the rest is an error."""
        e = Encoder(False, True)
        data = e.element(0x00081115, "SQ", b"", undefined=True)[:12] + e.delimiter(0xE000, 64)
        self.assertMalformed(data, "item at offset 0xc in the value of (0008,1115): "
                                   "length 64 runs past")

    def test_descending_tags(self) -> None:
        """Top-level tags must increase strictly (PS3.5 7.1)."""
        e = Encoder(False, True)
        patient_id = e.text(0x00100020, "LO", "P")
        name = e.text(0x00100010, "PN", "A^B")
        self.assertMalformed(patient_id + name,
                             "(0010,0010) at offset 0xa: tag not greater than the previous "
                             "(0010,0020)")
        self.assertMalformed(name + name, "tag not greater than the previous")
        implicit = Encoder(True, True)
        self.assertMalformed(implicit.text(0x00100010, "PN", "A^B")
                             + implicit.text(0x00100010, "PN", "C"),
                             "tag not greater", IMPLICIT_LE)

    def test_delimiter_at_top_level(self) -> None:
        """An item or delimiter outside a sequence is an error."""
        e = Encoder(False, True)
        for number in (0xE000, 0xE00D, 0xE0DD):
            self.assertMalformed(e.text(0x00100010, "PN", "A^B") + e.delimiter(number),
                                 "outside a sequence")
            self.assertMalformed(Encoder(True, True).delimiter(number), "outside a sequence",
                                 IMPLICIT_LE)

    def test_unknown_vr(self) -> None:
        """An explicit VR that is not a DICOM VR is an error."""
        e = Encoder(False, True)
        data = e.text(0x00100010, "ZZ", "A^B")
        self.assertMalformed(data, "(0010,0010) at offset 0x0: unknown VR b'ZZ'")
        nested = e.sequence(0x00081115, [e.item(e.text(0x00100010, "pn", "A"), undefined=True)],
                            undefined=True)
        self.assertMalformed(nested, "unknown VR b'pn'")

    def test_undefined_length_vr(self) -> None:
        """Only SQ, UN, OB and OW may have an undefined length."""
        e = Encoder(False, True)
        data = e.element(0x00180015, "UT", b"", undefined=True)
        self.assertMalformed(data, "undefined length for VR UT")

    def test_depth(self) -> None:
        """Undefined-length sequences nest at most MAX_DEPTH deep."""
        for ts, (implicit, little) in ENCODINGS.items():
            e = Encoder(implicit, little)

            def nested(depth: int) -> bytes:
                value = e.us(0x00280002, 1)
                for _ in range(depth):
                    value = e.sequence(0x00081115, [e.item(value, undefined=True)],
                                       undefined=True)
                return value

            ok = scan(nested(MAX_DEPTH), ts, {0x00081115})
            self.assertEqual(len(ok.ReferencedSeriesSequence), 1)
            self.assertMalformed(nested(MAX_DEPTH + 1), "nested deeper than 16", ts)

    def test_messages_are_value_errors(self) -> None:
        """HeaderError is a ValueError, so callers catching those see it."""
        self.assertTrue(issubclass(HeaderError, ValueError))
        self.assertEqual(header.__all__, ["HeaderError", "MAX_DEPTH", "WINDOW", "scan",
                                          "scan_fragments", "tag_object"])


class TagObjectTests(SynchronousTestCase):
    """Every scanned data set keys an element by the one ``tag_object`` of
    its tag, so a lookup with that object finds it by identity."""

    def test_keys_are_the_shared_objects(self) -> None:
        """Two scans key the same tag by the same BaseTag object, equal to
        the tag, and ``ds[tag]`` still works with any spelling."""
        ds = Dataset()
        ds.PatientID = "P1"
        ds.SOPInstanceUID = "1.2.3"
        raw = encode_dataset(ds, "1.2.840.10008.1.2.1")
        first = scan(raw, "1.2.840.10008.1.2.1", {0x00100020, 0x00080018})
        second = scan(raw, "1.2.840.10008.1.2.1", frozenset({0x00100020, 0x00080018}))
        shared = header.tag_object(0x00100020)
        self.assertIsInstance(shared, BaseTag)
        self.assertEqual(shared, 0x00100020)
        for scanned in (first, second):
            self.assertTrue(any(key is shared for key in scanned._dict))
            self.assertIs(scanned._dict.get(shared).tag, shared)
            self.assertEqual(scanned[0x00100020].value, "P1")
            self.assertEqual(scanned["SOPInstanceUID"].value, "1.2.3")
        self.assertIs(header.tag_object(0x00100020), shared)


def outcome(scanner, *args) -> tuple:
    """What a scan gives: its elements (as tuples: tag, VR, length, value,
    offset...) and encoding, or its error's type and message."""
    try:
        ds = scanner(*args)
    except (HeaderError, NotImplementedError) as e:
        return type(e), str(e)
    return ({tag: tuple(element) for tag, element in ds._dict.items()},
            ds.original_encoding, ds.original_character_set)


def cut(data: bytes, sizes: list[int]) -> list[memoryview]:
    """``data`` as memoryview fragments of the given sizes, repeated."""
    view = memoryview(b"\xaa" + data)[1:]  # not a whole bytes object, as received
    parts, pos, turn = [], 0, 0
    while pos < len(data):
        parts.append(view[pos:pos + sizes[turn % len(sizes)]])
        pos += sizes[turn % len(sizes)]
        turn += 1
    return parts


class FragmentTests(SynchronousTestCase):
    """``scan_fragments`` reads a data set still in its received fragments
    as ``scan`` reads it joined: same elements, same errors."""

    def assertSame(self, data: bytes, parts: list, ts: str, wanted) -> None:
        """The fragments scan exactly as the joined bytes."""
        self.assertEqual(b"".join(parts), data)
        self.assertEqual(outcome(header.scan_fragments, parts, ts, wanted),
                         outcome(scan, data, ts, wanted))

    def test_every_cut_in_two(self) -> None:
        """Cut in two at every offset (through tags, VRs, lengths, values,
        items and delimiters), with windows of 1, 12 and 64 bytes, the
        generated data set of every encoding scans as whole."""
        for window in (1, 12, 64):
            self.patch(header, "WINDOW", window)
            for ts in ENCODINGS:
                data = generated(ts, un=ts != EXPLICIT_BE)
                wanted = top_level_tags(reference(data, ts)) | {PIXEL_DATA}
                for at in range(len(data) + 1):
                    self.assertSame(data, [memoryview(data)[:at], memoryview(data)[at:]],
                                    ts, wanted)

    def test_small_fragments(self) -> None:
        """In fragments of 1, 2, 3, 5 and 7 bytes (and mixed), and with the
        default window, the generated data set scans as whole."""
        for window in (1, 8, header.WINDOW):
            self.patch(header, "WINDOW", window)
            for ts in ENCODINGS:
                data = generated(ts, un=ts != EXPLICIT_BE)
                wanted = top_level_tags(reference(data, ts))
                for sizes in ([1], [2], [3], [5], [7], [1, 13, 2, 0, 6]):
                    self.assertSame(data, cut(data, sizes), ts, wanted)

    def test_truncated_everywhere(self) -> None:
        """Cut short at any offset and held in 5-byte fragments, the data
        set gives what ``scan`` gives: the same elements or the same error."""
        self.patch(header, "WINDOW", 16)
        for ts in ENCODINGS:
            data = generated(ts)
            for end in range(len(data) + 1):
                self.assertSame(data[:end], cut(data[:end], [5]), ts, {0x00100020, 0x00081115})

    def test_tag_split(self) -> None:
        """A tag split between fragments (group | element) is read whole."""
        e = Encoder(False, True)
        data = e.text(0x00100010, "PN", "A^B") + e.text(0x00100020, "LO", "P1")
        self.patch(header, "WINDOW", 8)
        parts = [data[:12], data[12:14], data[14:]]  # (0010,0020): "\x10\x00" | "\x20\x00"
        self.assertEqual(header.scan_fragments(parts, EXPLICIT_LE, {0x00100020}).PatientID, "P1")
        self.assertSame(data, parts, EXPLICIT_LE, {0x00100010, 0x00100020})

    def test_vr_split(self) -> None:
        """An explicit VR split between fragments is read whole."""
        e = Encoder(False, True)
        data = e.text(0x00100010, "PN", "A^B") + e.text(0x00100020, "LO", "P1")
        self.patch(header, "WINDOW", 8)
        parts = [data[:17], data[17:]]  # "L" | "O"
        self.assertEqual(header.scan_fragments(parts, EXPLICIT_LE, {0x00100020}).PatientID, "P1")
        self.assertSame(data, parts, EXPLICIT_LE, {0x00100020})
        bad = e.text(0x00100010, "PN", "A^B") + e.text(0x00100020, "ZZ", "P1")
        self.assertEqual(outcome(header.scan_fragments, [bad[:17], bad[17:]], EXPLICIT_LE, ()),
                         (HeaderError, "(0010,0020) at offset 0xc: unknown VR b'ZZ'"))

    def test_length_split(self) -> None:
        """A 16-bit and a 32-bit length split between fragments are read
        whole, and a value running past the end is still found."""
        e = Encoder(False, True)
        pixels = bytes(range(256)) * 64
        data = e.text(0x00100020, "LO", "P1") + e.element(PIXEL_DATA, "OW", pixels)
        self.patch(header, "WINDOW", 8)
        for at in (6, 7, 10 + 9, 10 + 10, 10 + 11):
            parts = [data[:at], data[at:]]
            scanned = header.scan_fragments(parts, EXPLICIT_LE, {0x00100020, PIXEL_DATA})
            self.assertEqual(scanned.PatientID, "P1")
            self.assertEqual(scanned.PixelData, pixels)
        short = data[:-1]
        self.assertEqual(
            outcome(header.scan_fragments, [short[:20], short[20:]], EXPLICIT_LE, ()),
            (HeaderError, "(7FE0,0010) at offset 0xa: value of length 16384 runs past the end "
                          f"of the data set ({len(short):#x})"))

    def test_value_split(self) -> None:
        """A kept value spread over several fragments is joined, exactly."""
        e = Encoder(True, True)
        name = "Doe^" + "J" * 301
        data = e.text(0x00100010, "PN", name) + e.text(0x00100020, "LO", "P1")
        parts = cut(data, [7])
        self.patch(header, "WINDOW", 32)
        scanned = header.scan_fragments(parts, IMPLICIT_LE, {0x00100010, 0x00100020})
        self.assertEqual(scanned._dict[BaseTag(0x00100010)].value_tell, 8)
        self.assertEqual(str(scanned.PatientName), name)
        self.assertEqual(scanned.PatientID, "P1")

    def test_undefined_length_sequence_across_fragments(self) -> None:
        """A sequence of undefined length, its items (one of undefined
        length) and delimiters spread over fragments is walked and kept
        as in a whole buffer; one without its delimiter is an error."""
        for ts, (implicit, little) in ENCODINGS.items():
            e = Encoder(implicit, little)
            item = e.text(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2") + e.text(
                0x00081155, "UI", "1.2.3.4.5")
            data = (e.sequence(0x00081115, [e.item(item, undefined=True), e.item(item)],
                               undefined=True)
                    + e.text(0x00100020, "LO", "P1"))
            self.patch(header, "WINDOW", 8)
            parts = cut(data, [3, 11])
            scanned = header.scan_fragments(parts, ts, {0x00081115, 0x00100020})
            self.assertEqual(len(scanned.ReferencedSeriesSequence), 2)
            self.assertEqual(scanned.ReferencedSeriesSequence[1].ReferencedSOPInstanceUID,
                             "1.2.3.4.5")
            self.assertEqual(scanned.PatientID, "P1")
            self.assertSame(data, parts, ts, {0x00081115, 0x00100020})
            unended = data[:-len(e.text(0x00100020, "LO", "P1")) - 8]
            error = outcome(header.scan_fragments, cut(unended, [3, 11]), ts, ())
            self.assertEqual(error, (HeaderError, "(0008,1115): no sequence delimitation item "
                                                  f"before the end of the data set "
                                                  f"({len(unended):#x})"))

    def test_pixel_data_not_copied(self) -> None:
        """A large value skipped by its length is never copied: scanning a
        1 MB data set held in 16 KB fragments copies about one window."""
        e = Encoder(False, True)
        pixels = b"\x01\x02" * (512 * 1024)
        data = (e.text(0x00100010, "PN", "A^B") + e.text(0x00100020, "LO", "P1")
                + e.element(PIXEL_DATA, "OW", pixels))
        parts = cut(data, [16384])
        copied = []
        original = header._Window.copy

        def copy(self, pos: int, stop: int) -> bytes:
            copied.append(stop - pos)
            return original(self, pos, stop)

        self.patch(header._Window, "copy", copy)
        scanned = header.scan_fragments(parts, EXPLICIT_LE, {0x00100020})
        self.assertEqual(scanned.PatientID, "P1")
        self.assertEqual(copied, [header.WINDOW])

    def test_small_data_set_joined(self) -> None:
        """A data set of at most WINDOW bytes is read as one bytes window,
        whatever its fragments."""
        data = generated(EXPLICIT_LE)
        self.assertLess(len(data), header.WINDOW)
        self.assertSame(data, cut(data, [100]), EXPLICIT_LE, {0x00100020, 0x00081115})
        self.assertSame(data, [data], EXPLICIT_LE, {0x00100020})

    def test_test_files_in_fragments(self) -> None:
        """Every readable pydicom test file's data set, in 1,000-byte
        fragments, scans as whole (elements or error)."""
        compared = 0
        for name, data, ds in readable_test_files():
            ts = transfer_syntax_of(ds)
            body = data[meta_end(data):]
            wanted = top_level_tags(ds)
            self.assertSame(body, cut(body, [1000]), ts, wanted)
            compared += 1
        self.assertGreater(compared, 100)

    def test_empty(self) -> None:
        """No fragments, or empty ones, are an empty, well-formed data set."""
        self.assertEqual(len(header.scan_fragments([], EXPLICIT_LE, {0x00100010})), 0)
        self.assertEqual(len(header.scan_fragments([b"", b""], EXPLICIT_LE, ())), 0)

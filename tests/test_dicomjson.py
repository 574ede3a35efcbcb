"""Tests for :mod:`dicomtwist.web.dicomweb.dicomjson`.

The oracle is pydicom: ``Dataset.to_json_dict`` of ``dcmread`` of the same
bytes, after the same bulk data handling (every binary value is handed to
a recording handler, then turned into our relative BulkDataURI or into
InlineBinary by our threshold), and after these intentional differences,
applied to pydicom's side by :func:`_normalize`:

1. Group Length elements (gggg,0000) are omitted: they describe the
   encoding (PS3.5 7.2, retired), not the data set; pydicom keeps them.
2. An empty value among several (``A\\\\B``) is ``null`` (PS3.18 F.2.5);
   pydicom writes ``""`` (and fails on empty IS, DS or PN values).
3. A PN value lists only its non-empty component groups (PS3.18 F.2.2);
   pydicom writes ``"Ideographic": ""`` when a Phonetic group follows.
4. A sequence without items has no "Value" (PS3.18 F.2.5: an empty
   attribute has none); pydicom writes ``"Value": []``.
5. Non-finite FL/FD values (and DS or IS text that is no number) are
   strings (``"NaN"``, ``"Infinity"``): JSON has no such numbers (RFC 8259
   6), pydicom writes bare ``NaN`` (invalid JSON) or fails.
6. An explicit UN of undefined length is read as a sequence in Implicit VR
   Little Endian (PS3.5 6.2.2); pydicom reads its items in the data set's
   explicit VR.  (No file of pydicom's test data has one.)

Files pydicom cannot read, or whose ``to_json_dict`` raises (it fails on
the invalid values of difference 2 and 5), are only checked not to crash.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
import time
import warnings
import zlib
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.storage.files import dataset_offset
from dicomtwist.web.dicomweb.dicomjson import (
    BULK_THRESHOLD,
    dataset_json,
    decode_bulk_path,
    encode_metadata,
    find_bulk_value,
)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG = "1.2.840.10008.1.2.4.50"

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_NONFINITE = {"NaN", "Infinity", "-Infinity"}


def explicit(group: int, element: int, vr: str, value: bytes, little: bool = True,
             undefined: bool = False) -> bytes:
    """One Explicit VR element (PS3.5 7.1.2)."""
    e = "<" if little else ">"
    length = 0xFFFFFFFF if undefined else len(value)
    if vr in _LONG_VRS:
        return struct.pack(e + "HH2sHL", group, element, vr.encode(), 0, length) + value
    return struct.pack(e + "HH2sH", group, element, vr.encode(), length) + value


def implicit(group: int, element: int, value: bytes, undefined: bool = False,
             little: bool = True) -> bytes:
    """One Implicit VR element (PS3.5 7.1.3)."""
    length = 0xFFFFFFFF if undefined else len(value)
    return struct.pack("<HHL" if little else ">HHL", group, element, length) + value


def item(body: bytes, undefined: bool = False, little: bool = True) -> bytes:
    """One sequence item (PS3.5 7.5.2), with its delimiter if undefined."""
    e = "<" if little else ">"
    if undefined:
        return struct.pack(e + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack(
            e + "HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack(e + "HHL", 0xFFFE, 0xE000, len(body)) + body


def seq_end(little: bool = True) -> bytes:
    """A Sequence Delimitation Item (PS3.5 7.5.2)."""
    return struct.pack("<HHL" if little else ">HHL", 0xFFFE, 0xE0DD, 0)


def _quiet() -> None:
    """pydicom warns about every odd value of its test data: not ours."""
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def pydicom_model(ds: Dataset, threshold: int) -> dict[str, Any]:
    """pydicom's JSON model of ``ds`` with our bulk handling and the
    documented differences applied."""
    records: dict[str, Any] = {}

    def handler(elem: Any) -> str:
        token = f"\0{len(records)}"
        records[token] = elem
        return token

    model = ds.to_json_dict(bulk_data_threshold=0, bulk_data_element_handler=handler)
    return _normalize(model, "", records, threshold)


def _normalize(model: dict[str, Any], prefix: str, records: dict[str, Any],
               threshold: int) -> dict[str, Any]:
    """Apply our bulk threshold and the documented differences."""
    result = {}
    for key, member in model.items():
        if key.endswith("0000"):
            continue  # difference 1
        member = dict(member)
        vr = member["vr"]
        token = member.pop("BulkDataURI", None)
        if token is not None:
            elem = records[token]
            if elem.is_undefined_length or len(elem.value) > threshold:
                member["BulkDataURI"] = f"bulkdata/{prefix}{key}"
            else:
                member["InlineBinary"] = base64.b64encode(elem.value).decode()
        values = member.get("Value")
        if values is not None:
            if vr == "SQ":
                values = [_normalize(v, f"{prefix}{key}/{i}/", records, threshold)
                          for i, v in enumerate(values)]
            elif vr == "PN":
                values = [{k: g for k, g in v.items() if g} or None for v in values]
            elif vr in ("FL", "FD", "DS"):
                values = [v if not isinstance(v, float) or math.isfinite(v) else
                          ("NaN" if v != v else ("Infinity" if v > 0 else "-Infinity"))
                          for v in values]
            if len(values) > 1:
                values = [None if v == "" else v for v in values]  # difference 2
            if values:
                member["Value"] = values
            else:
                del member["Value"]  # difference 4
        result[key] = member
    return result


def dataset_bytes(path: str) -> tuple[bytes, str] | None:
    """The data set bytes of a Part 10 file and its transfer syntax, or None
    if the file has no File Meta Information with a transfer syntax."""
    with open(path, "rb") as fp:
        data = fp.read()
        start = dataset_offset(data)
        try:
            fp.seek(0)
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
        except Exception:
            return None
        if start is None:
            start = fp.tell()
    ts = meta.get("TransferSyntaxUID")
    if not ts:
        return None
    return data[start:], str(ts)


class TestDataTests(SynchronousTestCase):
    """Every file of pydicom's test data, against pydicom."""

    def test_all_files(self) -> None:
        """For every file pydicom reads and encodes (its character set
        files too), our JSON equals
        pydicom's after the documented differences, at two thresholds."""
        _quiet()
        compared = 0
        failures = []
        rejected = set()
        for path in get_testdata_files() + get_charset_files():
            try:
                ds = dcmread(path)
            except Exception:
                continue
            found = dataset_bytes(path)
            if found is None:
                continue
            data, ts = found
            if (ds.original_encoding[0], ds.original_encoding[1]) != (
                    ts == IMPLICIT, ts != BIG) and "1.2.1.99" not in ts:
                # Mislabelled on purpose (pydicom guesses the encoding);
                # the ingest scanner rejects such a data set.
                self.assertRaises(ValueError, encode_metadata, data, ts)
                continue
            for threshold in (BULK_THRESHOLD, 0):
                try:
                    expected = pydicom_model(ds, threshold)
                except Exception:
                    encode_metadata(data, ts, bulk_threshold=threshold)  # no crash
                    continue
                try:
                    ours = json.loads(encode_metadata(data, ts, bulk_threshold=threshold))
                except ValueError:
                    rejected.add(path.rsplit("/", 1)[-1])
                    continue
                if ours != expected:
                    failures.append((path, threshold, _diff(ours, expected)))
                compared += 1
        self.assertEqual(failures, [])
        # Truncated on purpose (pydicom reads what there is): not well formed.
        self.assertEqual(rejected, {"rtplan_truncated.dcm", "MR_truncated.dcm",
                                    "DICOMDIR-nooffset"})
        self.assertGreater(compared, 250)

    def test_dataset_json(self) -> None:
        """dataset_json of a read data set equals encode_metadata's output."""
        _quiet()
        for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "SC_rgb_rle.dcm"):
            path = get_testdata_file(name)
            data, ts = dataset_bytes(path)
            ds = read_dataset(BytesIO(data), ts == IMPLICIT, ts != BIG)
            self.assertEqual(dataset_json(ds), json.loads(encode_metadata(data, ts)), name)

    def test_bulk_uri_callable(self) -> None:
        """dataset_json's bulk_uri makes each BulkDataURI from its path."""
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        model = dataset_json(ds, bulk_uri=lambda p: "https://x/" + p)
        self.assertEqual(model["7FE00010"], {"vr": "OW", "BulkDataURI": "https://x/7FE00010"})

    def test_timing(self) -> None:
        """encode_metadata is several times faster than dcmread and
        to_json_dict (the times are printed for the report)."""
        _quiet()
        for name in ("CT_small.dcm", "MR_small.dcm"):
            path = get_testdata_file(name)
            data, ts = dataset_bytes(path)
            raw = open(path, "rb").read()
            ours = _best(lambda: encode_metadata(data, ts))
            theirs = _best(lambda: dcmread(BytesIO(raw)).to_json_dict(
                bulk_data_threshold=0, bulk_data_element_handler=lambda e: "x"))
            print(f"\n{name}: encode_metadata {ours * 1e3:.3f} ms, "
                  f"pydicom {theirs * 1e3:.3f} ms ({theirs / ours:.0f}x)")
            self.assertLess(ours * 3, theirs)


def _best(call: Any, rounds: int = 5, number: int = 50) -> float:
    """Best mean time of ``call`` over a few rounds."""
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def _diff(ours: dict[str, Any], expected: dict[str, Any]) -> list[Any]:
    """The members that differ, for a readable failure."""
    keys = sorted(set(ours) | set(expected))
    return [(k, ours.get(k), expected.get(k)) for k in keys if ours.get(k) != expected.get(k)]


class HandMadeTests(SynchronousTestCase):
    """Hand-made data sets, against pydicom or expected values."""

    def check(self, data: bytes, ts: str, threshold: int = BULK_THRESHOLD) -> dict[str, Any]:
        """Our model of ``data``, asserted equal to pydicom's; returned."""
        _quiet()
        ds = read_dataset(BytesIO(data), ts == IMPLICIT, ts != BIG)
        ours = json.loads(encode_metadata(data, ts, bulk_threshold=threshold))
        self.assertEqual(ours, pydicom_model(ds, threshold))
        return ours

    def test_latin1(self) -> None:
        """ISO_IR 100 text is decoded as Latin-1."""
        data = (explicit(8, 5, "CS", b"ISO_IR 100") + explicit(0x10, 0x10, "PN", b"M\xfcller^J\xf6rg ")
                + explicit(0x10, 0x20, "LO", b"\xe9t\xe9 "))
        ours = self.check(data, EXPLICIT)
        self.assertEqual(ours["00100010"]["Value"], [{"Alphabetic": "Müller^Jörg"}])

    def test_utf8(self) -> None:
        """ISO_IR 192 text is decoded as UTF-8, also in a nested data set
        with its own character set."""
        name = "山田^太郎".encode("utf-8")
        nested = item(explicit(8, 5, "CS", b"ISO_IR 192") + explicit(0x10, 0x10, "PN", name + b" " * (len(name) % 2)))
        data = (explicit(8, 5, "CS", b"ISO_IR 100") + explicit(8, 0x1115, "SQ", nested)
                + explicit(0x10, 0x10, "PN", b"\xc4^B "))
        ours = self.check(data, EXPLICIT)
        self.assertEqual(ours["00081115"]["Value"][0]["00100010"]["Value"],
                         [{"Alphabetic": "山田^太郎"}])
        self.assertEqual(ours["00100010"]["Value"], [{"Alphabetic": "Ä^B"}])

    def test_japanese_iso2022(self) -> None:
        """ISO 2022 IR 87 (escape sequences) goes through pydicom: all three
        PN groups are decoded (PS3.5 H.3.1 example)."""
        value = (b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^"
                 b"\x1b$B$?$m$&\x1b(B ")
        data = (explicit(8, 5, "CS", b"\\ISO 2022 IR 87 ") + explicit(0x10, 0x10, "PN", value))
        ours = self.check(data, EXPLICIT)
        self.assertEqual(ours["00100010"]["Value"], [{
            "Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}])

    def test_pn_multi_valued_groups(self) -> None:
        """Multi-valued PN: each value an object of its non-empty groups,
        an empty value null."""
        data = explicit(0x10, 0x10, "PN", b"A^B=C^D=E^F\\\\=X=\\G==H ")
        ours = json.loads(encode_metadata(data, EXPLICIT))
        self.assertEqual(ours["00100010"], {"vr": "PN", "Value": [
            {"Alphabetic": "A^B", "Ideographic": "C^D", "Phonetic": "E^F"}, None,
            {"Ideographic": "X"}, {"Alphabetic": "G", "Phonetic": "H"}]})

    def test_empty_values(self) -> None:
        """Empty attributes have no Value; empty values among several are
        null; padding is trimmed per VR."""
        data = (explicit(8, 0x60, "CS", b"") + explicit(8, 0x70, "LO", b" x \\\\y ")
                + explicit(8, 0x80, "LO", b"  ") + explicit(0x10, 0x20, "AE", b" A \\B ")
                + explicit(0x18, 0x50, "DS", b"1.5\\\\+2 ") + explicit(0x20, 0x13, "IS", b" 7\\\\-3 ")
                + explicit(0x28, 0x11, "US", b"") + explicit(0x28, 0x34, "IS", b"  ")
                + explicit(0x40, 0x100, "SQ", b""))
        ours = json.loads(encode_metadata(data, EXPLICIT))
        self.assertEqual(ours, {
            "00080060": {"vr": "CS"},
            "00080070": {"vr": "LO", "Value": [" x", None, "y"]},
            "00080080": {"vr": "LO"},
            "00100020": {"vr": "AE", "Value": ["A", "B"]},
            "00180050": {"vr": "DS", "Value": [1.5, None, 2.0]},
            "00200013": {"vr": "IS", "Value": [7, None, -3]},
            "00280011": {"vr": "US"},
            "00280034": {"vr": "IS"},
            "00400100": {"vr": "SQ"},
        })

    def nested(self, little: bool = True) -> bytes:
        """Nested sequences of undefined length with a bulk value inside."""
        lut = explicit(0x28, 0x1201, "OW", b"\x01\x02" * 600, little)
        inner = explicit(0x40, 0xA730, "SQ", item(explicit(0x40, 0xA040, "CS", b"TEXT", little),
                                                  True, little) + item(b"", True, little)
                         + seq_end(little), little, undefined=True)
        first = item(explicit(8, 0x100, "SH", b"CODE", little) + inner, True, little)
        second = item(explicit(0x28, 0x1101, "US", struct.pack("<HHH" if little else ">HHH", 0, 0, 16), little)
                      + lut, True, little)
        return (explicit(8, 0x16, "UI", b"1.2.3\0", little)
                + explicit(0x54, 0x16, "SQ", first + second + seq_end(little), little, True)
                + explicit(0x7FE0, 0x10, "OW", b"\0" * 2048, little))

    def test_nested_undefined_lengths(self) -> None:
        """Nested undefined-length sequences and items, an empty item as
        {}, bulk data paths inside sequences, found back by
        find_bulk_value."""
        data = self.nested()
        ours = self.check(data, EXPLICIT)
        items = ours["00540016"]["Value"]
        self.assertEqual(items[0]["0040A730"]["Value"][1], {})
        self.assertEqual(items[1]["00281201"],
                         {"vr": "OW", "BulkDataURI": "bulkdata/00540016/1/00281201"})
        self.assertEqual(bytes(find_bulk_value(data, EXPLICIT, "00540016/1/00281201")),
                         b"\x01\x02" * 600)
        self.assertEqual(bytes(find_bulk_value(data, EXPLICIT, "7FE00010")), b"\0" * 2048)
        self.assertEqual(bytes(find_bulk_value(data, EXPLICIT, "00540016/0/0040A730/0/0040A040")),
                         b"TEXT")
        self.assertIsNone(find_bulk_value(data, EXPLICIT, "00540016/2/00281201"))
        self.assertIsNone(find_bulk_value(data, EXPLICIT, "00540017"))
        self.assertIsNone(find_bulk_value(data, EXPLICIT, "bad"))

    def test_big_endian(self) -> None:
        """Explicit VR Big Endian: numbers, AT, nested data."""
        data = (explicit(8, 0x16, "UI", b"1.2\0", False)
                + explicit(0x18, 0x1310, "US", struct.pack(">4H", 0, 256, 512, 0), False)
                + explicit(0x20, 0x9165, "AT", struct.pack(">HH", 0x0020, 0x9056), False)
                + explicit(0x28, 0x9110, "SQ", item(explicit(0x18, 0x88, "DS", b"1.25", False),
                                                      False, False), False)
                + explicit(0x40, 0x9212, "FD", struct.pack(">2d", 1.5, -2.25), False))
        ours = self.check(data, BIG)
        self.assertEqual(ours["00181310"]["Value"], [0, 256, 512, 0])
        self.assertEqual(ours["00209165"]["Value"], ["00209056"])
        self.assertEqual(self.check(self.nested(False), BIG),
                         self.check(self.nested(True), EXPLICIT))

    def test_implicit(self) -> None:
        """Implicit VR: VRs from the dictionary, 'US or SS' by Pixel
        Representation, Pixel Data OW, private elements by their creator."""
        data = (implicit(8, 0x60, b"MR")
                + implicit(9, 0x10, b"GEMS_IDEN_01")
                + implicit(9, 0x1001, b"ABCD")
                + implicit(0x19, 0x10, b"GEMS_ACQU_01")
                + implicit(0x19, 0x1002, struct.pack("<l", -5))
                + implicit(0x28, 0x103, struct.pack("<H", 1))
                + implicit(0x28, 0x106, struct.pack("<h", -100))
                + implicit(0x28, 0x3000, item(implicit(0x28, 0x3002, struct.pack("<3H", 1, 0, 16))
                                              + implicit(0x28, 0x3006, struct.pack("<H", 7)), True)
                           + seq_end(), True)
                + implicit(0x7FE0, 0x10, b"\1\0" * 8))
        ours = self.check(data, IMPLICIT)
        self.assertEqual(ours["00280106"], {"vr": "SS", "Value": [-100]})
        self.assertEqual(ours["7FE00010"]["vr"], "OW")
        # pydicom's private dictionary knows GEMS_IDEN_01 (0009,xx01).
        self.assertEqual(ours["00091001"]["vr"], "LO")

    def test_explicit_un_sequence(self) -> None:
        """An explicit UN of undefined length is a sequence in Implicit VR
        Little Endian (PS3.5 6.2.2; difference 6)."""
        body = item(implicit(0x10, 0x20, b"ID") + implicit(0x10, 0x30, b"20000101"), True)
        data = explicit(0x11, 0x10, "LO", b"ACME") + explicit(0x11, 0x1001, "UN", body + seq_end(),
                                                              undefined=True)
        ours = json.loads(encode_metadata(data, EXPLICIT))
        self.assertEqual(ours["00111001"], {"vr": "SQ", "Value": [{
            "00100020": {"vr": "LO", "Value": ["ID"]},
            "00100030": {"vr": "DA", "Value": ["20000101"]}}]})

    def test_threshold_boundary(self) -> None:
        """A binary value of exactly the threshold is inline, one byte more
        is bulk data."""
        data = explicit(0x29, 0x10, "LO", b"X ") + explicit(0x29, 0x1001, "OB", b"ab") + explicit(0x29, 0x1002, "OB", b"abcd")
        ours = json.loads(encode_metadata(data, EXPLICIT, bulk_threshold=2))
        self.assertEqual(ours["00291001"], {"vr": "OB", "InlineBinary": "YWI="})
        self.assertEqual(ours["00291002"], {"vr": "OB", "BulkDataURI": "bulkdata/00291002"})
        self.assertIn(b'"BulkDataURI":"bulkdata/00291002"', encode_metadata(data, EXPLICIT, bulk_threshold=2))

    def test_encapsulated(self) -> None:
        """Encapsulated Pixel Data is always bulk data; find_bulk_value
        returns its items as stored."""
        data, ts = dataset_bytes(get_testdata_file("SC_rgb_rle.dcm"))
        ours = json.loads(encode_metadata(data, ts, bulk_threshold=1 << 30))
        self.assertEqual(ours["7FE00010"], {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"})
        value = bytes(find_bulk_value(data, ts, "7FE00010"))
        self.assertEqual(value[:4], b"\xfe\xff\x00\xe0")
        self.assertTrue(data.endswith(value + seq_end()))

    def test_deflated(self) -> None:
        """A Deflated Explicit VR LE data set is inflated, then encoded."""
        data = self.nested()
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = packer.compress(data) + packer.flush()
        self.assertEqual(encode_metadata(deflated, DEFLATED), encode_metadata(data, EXPLICIT))
        self.assertEqual(bytes(find_bulk_value(deflated, DEFLATED, "7FE00010")), b"\0" * 2048)

    def test_malformed(self) -> None:
        """A truncated data set or an unknown transfer syntax: ValueError."""
        data = explicit(0x10, 0x10, "PN", b"ABCD")
        self.assertRaises(ValueError, encode_metadata, data[:-2], EXPLICIT)
        self.assertRaises(ValueError, encode_metadata, data, "1.2.3.4")


class BulkPathTests(SynchronousTestCase):
    """decode_bulk_path."""

    def test_paths(self) -> None:
        """Tags and item indexes alternate; anything else is None."""
        self.assertEqual(decode_bulk_path("7FE00010"), (0x7FE00010,))
        self.assertEqual(decode_bulk_path("00540016/0/00281201"), (0x00540016, 0, 0x00281201))
        for bad in ("", "7FE0001", "7FE00010/", "00540016/0", "00540016/x/00281201",
                    "00540016/-1/00281201", "0054001G", "00540016//00281201", "0054 016"):
            self.assertIsNone(decode_bulk_path(bad), bad)

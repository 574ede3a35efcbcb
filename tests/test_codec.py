"""Tests for dicomtwist.codec: transfer-syntax conversion.

Inputs are made by encoders nobody here wrote: DCMTK's dcmcjpeg, dcmcjpls,
dcmcrle and dcmconv, and GDCM's gdcmconv (Debian libgdcm-tools) for JPEG
2000.  Our output is checked against DCMTK's and GDCM's own decoders
(dcmdjpeg, dcmdjpls, dcmdrle, gdcmconv --raw): exactly for lossless data,
within the stated tolerances for lossy data.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tracemalloc

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from dicomtwist.codec import (
    DECODABLE,
    LOSSLESS_TARGETS,
    LOSSY_TARGETS,
    UNCOMPRESSED,
    CodecError,
    can_convert,
    preference,
    transcode,
    transcode_bytes,
)
from dicomtwist.codec import syntaxes as ts

DCMTK = "/usr/bin"
GDCMCONV = "/usr/bin/gdcmconv"

EXPLICIT = ts.EXPLICIT_VR_LITTLE_ENDIAN
IMPLICIT = ts.IMPLICIT_VR_LITTLE_ENDIAN
BIG = ts.EXPLICIT_VR_BIG_ENDIAN
DEFLATED = ts.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN

#: Largest difference allowed between our decoding of a lossy JPEG stream and
#: DCMTK's: both use libjpeg-family IDCTs whose rounding may differ by one
#: (measured: 0 for 8-bit Baseline, 1 for 12-bit Extended).
JPEG_DECODER_TOLERANCE = 1
#: Our JPEG 2000 decoding (OpenJPEG) against gdcmconv --raw (OpenJPEG too).
J2K_DECODER_TOLERANCE = 0
#: Our lossy encodings decoded by DCMTK/GDCM against the original smooth
#: test image, as fractions of the full range: JPEG-LS near-lossless is
#: bounded by NEAR=2 by definition; JPEG 2000 at ratio 10 and JPEG Baseline
#: at quality 90 measured below these on the generated images.
JPEG_LS_NEAR = 2
J2K_LOSSY_TOLERANCE = 0.03
JPEG_BASELINE_TOLERANCE = 0.04

#: Elements transcoding may change (PS3.5 8.2, PS3.3 C.7.6.1.1.5).
PIXEL_MODULE_CHANGES = {
    "PixelData",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
}


def make_image(
    path: str,
    *,
    rows: int = 64,
    columns: int = 80,
    samples: int = 1,
    bits: int = 8,
    stored: int | None = None,
    signed: bool = False,
    frames: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Write an Explicit VR Little Endian Secondary Capture image with a
    smooth pattern plus noise, a few non-pixel elements (a sequence, a
    private element, Latin-1 text) and return its pixels."""
    stored = stored or bits
    rng = np.random.default_rng(seed)
    if signed:
        low, high = -(1 << (stored - 1)), (1 << (stored - 1)) - 1
    else:
        low, high = 0, (1 << stored) - 1
    y, x = np.mgrid[0:rows, 0:columns]
    planes = []
    for frame in range(frames):
        for sample in range(samples):
            wave = np.sin(x / (7.0 + sample) + frame) * np.cos(y / (9.0 + frame))
            planes.append(0.5 + 0.4 * wave)
    pattern = np.array(planes).reshape(frames, samples, rows, columns)
    pattern = np.moveaxis(pattern, 1, -1)
    values = low + pattern * (high - low) + rng.integers(-2, 3, size=pattern.shape)
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (8, True): np.int8, (16, True): np.int16}
    pixels = np.clip(np.rint(values), low, high).astype(dtype[bits, signed])
    if samples == 1:
        pixels = pixels[..., 0]
    if frames == 1:
        pixels = pixels[0]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "CODEC-1"
    ds.Modality = "OT"
    ds.ImageComments = "generated for the codec tests"
    item = Dataset()
    item.CodeValue = "T-D0010"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "Entire body"
    ds.AnatomicRegionSequence = [item]
    ds.add_new(0x00990010, "LO", "DICOMTWIST TEST")
    ds.add_new(0x00991001, "LO", "private value")
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return pixels


def run(*argv: str) -> None:
    """Run a DCMTK/GDCM tool, failing the test with its stderr if it fails."""
    if not os.path.exists(argv[0]):
        raise SkipTest(f"{argv[0]} is not installed")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def pixels(path: str) -> np.ndarray:
    """The pixels of a file, as pydicom's reference decoding gives them."""
    return pydicom.dcmread(path).pixel_array


def _comparable(element: pydicom.DataElement) -> object:
    """An element's value; an unknown private element read from Implicit VR
    is UN (its bytes), so text values compare as stripped text."""
    value = element.value
    if isinstance(value, bytes) and element.VR == "UN":
        return value.decode("latin-1").rstrip(" \x00")
    if isinstance(value, str) and not element.tag.is_private:
        return value
    if isinstance(value, str):
        return value.rstrip(" \x00")
    return value


def max_error(a: np.ndarray, b: np.ndarray) -> int:
    """The largest absolute difference between two pixel arrays."""
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


class _Files(SynchronousTestCase):
    """A scratch directory per test and checks shared by the tests."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def path(self, name: str) -> str:
        """A file name in the scratch directory."""
        return os.path.join(self.dir, name)

    def assertSameElements(self, source: str, target: str, syntax: str) -> None:
        """Every element but the pixel module's changes, and the File Meta
        UIDs, are as in `source`; the File Meta names `syntax`."""
        a, b = pydicom.dcmread(source), pydicom.dcmread(target)
        self.assertEqual(b.file_meta.TransferSyntaxUID, syntax)
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
            self.assertEqual(b.file_meta[keyword].value, a.file_meta[keyword].value)
        tags = set(a.keys()) | set(b.keys())
        for tag in sorted(tags):
            keyword = pydicom.datadict.keyword_for_tag(tag)
            if keyword in PIXEL_MODULE_CHANGES:
                continue
            self.assertIn(tag, a, f"{keyword or tag} added")
            self.assertIn(tag, b, f"{keyword or tag} lost")
            self.assertEqual(_comparable(b[tag]), _comparable(a[tag]), f"{keyword or tag} changed")

    def assertNoFiles(self, *names: str) -> None:
        """None of `names`, nor any partial file, is in the scratch directory."""
        left = sorted(os.listdir(self.dir))
        for name in names:
            self.assertNotIn(name, left)
        scratch = [name for name in left if name.startswith(".")]
        self.assertEqual(scratch, [])


class CanConvertTests(SynchronousTestCase):
    """can_convert and preference decide from UIDs alone."""

    def test_identity(self) -> None:
        """Any syntax converts to itself, even one we cannot decode."""
        self.assertTrue(can_convert("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100"))

    def test_native(self) -> None:
        """Native syntaxes convert into each other."""
        for source in ts.NATIVE:
            for target in ts.NATIVE:
                self.assertTrue(can_convert(source, target), (source, target))

    def test_decompress(self) -> None:
        """Every decodable syntax converts to both uncompressed syntaxes."""
        self.assertTrue({ts.JPEG_BASELINE, ts.JPEG_LS_LOSSLESS, ts.RLE_LOSSLESS} <= DECODABLE)
        for source in DECODABLE:
            for target in UNCOMPRESSED:
                self.assertTrue(can_convert(source, target), source)

    def test_no_codec(self) -> None:
        """A syntax no plugin decodes (MPEG-2) converts to nothing else."""
        self.assertFalse(can_convert("1.2.840.10008.1.2.4.100", EXPLICIT))

    def test_lossless_targets(self) -> None:
        """Uncompressed converts to each lossless target we encode; all four
        are encodable with the packages installed here."""
        self.assertEqual(
            set(LOSSLESS_TARGETS),
            {ts.RLE_LOSSLESS, ts.JPEG_LS_LOSSLESS, ts.JPEG_LOSSLESS_SV1, ts.JPEG_2000_LOSSLESS},
        )
        for target in LOSSLESS_TARGETS:
            self.assertTrue(can_convert(EXPLICIT, target))
            self.assertTrue(can_convert(ts.JPEG_BASELINE, target))

    def test_lossy_needs_permission(self) -> None:
        """A lossy target is refused unless allowed."""
        for target in LOSSY_TARGETS:
            self.assertFalse(can_convert(EXPLICIT, target))
            self.assertTrue(can_convert(EXPLICIT, target, allow_lossy=True))

    def test_limits(self) -> None:
        """Bits Allocated and Photometric Interpretation limit the encoders."""
        self.assertFalse(
            can_convert(EXPLICIT, ts.JPEG_BASELINE, allow_lossy=True, bits_allocated=16)
        )
        self.assertFalse(can_convert(EXPLICIT, ts.RLE_LOSSLESS, bits_allocated=32))
        self.assertFalse(can_convert(EXPLICIT, ts.RLE_LOSSLESS, photometric="YBR_FULL_422"))
        self.assertFalse(can_convert(EXPLICIT, ts.JPEG_LS_LOSSLESS, bits_allocated=1))
        self.assertTrue(can_convert(EXPLICIT, IMPLICIT, bits_allocated=1))
        # Lossy JPEG colour decodes to RGB, which JPEG-LS takes.
        self.assertTrue(
            can_convert(ts.JPEG_BASELINE, ts.JPEG_LS_LOSSLESS, photometric="YBR_FULL_422")
        )

    def test_preference_default(self) -> None:
        """Stored first, then lossless compressed, then uncompressed."""
        offered = [IMPLICIT, ts.RLE_LOSSLESS, EXPLICIT, ts.JPEG_BASELINE, ts.JPEG_LS_LOSSLESS]
        self.assertEqual(
            preference(ts.JPEG_BASELINE, offered),
            [ts.JPEG_BASELINE, ts.JPEG_LS_LOSSLESS, ts.RLE_LOSSLESS, EXPLICIT, IMPLICIT],
        )

    def test_preference_order(self) -> None:
        """The order of the groups is configurable; lossy comes only when
        allowed, last unless named."""
        offered = [ts.JPEG_2000, ts.RLE_LOSSLESS, EXPLICIT]
        self.assertEqual(
            preference(EXPLICIT, offered, order=("uncompressed", "lossless")),
            [EXPLICIT, ts.RLE_LOSSLESS],
        )
        self.assertEqual(
            preference(ts.JPEG_LS_LOSSLESS, offered, allow_lossy=True),
            [ts.RLE_LOSSLESS, EXPLICIT, ts.JPEG_2000],
        )
        self.assertEqual(preference("1.2.840.10008.1.2.4.100", offered), [])
        self.assertRaises(ValueError, preference, EXPLICIT, offered, order=("best",))


class DecompressTests(_Files):
    """Streams made by DCMTK and GDCM decode as their own decoders decode them."""

    def decompress(
        self,
        pixels_in: np.ndarray | None,
        compress: list[str],
        decompress: list[str],
        *,
        tolerance: int = 0,
        target: str = EXPLICIT,
    ) -> tuple[Dataset, int]:
        """Compress ``source.dcm`` with `compress`, transcode it to `target`
        with us and compare with `decompress`'s output.

        :returns: our output data set and the measured maximum error.
        """
        source, compressed = self.path("source.dcm"), self.path("compressed.dcm")
        ours, theirs = self.path("ours.dcm"), self.path("theirs.dcm")
        run(*compress, source, compressed)
        run(*decompress, compressed, theirs)
        transcode(compressed, target, ours)
        self.assertSameElements(compressed, ours, target)
        error = max_error(pixels(ours), pixels(theirs))
        self.assertLessEqual(error, tolerance)
        if pixels_in is not None:
            self.assertEqual(max_error(pixels(ours), pixels_in), 0)
        return pydicom.dcmread(ours), error

    def test_jpeg_baseline_grey(self) -> None:
        """JPEG Baseline 8-bit grey: within the decoder tolerance of
        dcmdjpeg, still marked lossy with the stored ratio and method."""
        make_image(self.path("source.dcm"))
        ds, _ = self.decompress(
            None, [f"{DCMTK}/dcmcjpeg", "+eb"], [f"{DCMTK}/dcmdjpeg"],
            tolerance=JPEG_DECODER_TOLERANCE,
        )
        stored = pydicom.dcmread(self.path("compressed.dcm"))
        self.assertEqual(ds.LossyImageCompression, "01")
        self.assertEqual(ds.LossyImageCompressionRatio, stored.LossyImageCompressionRatio)
        self.assertEqual(ds.LossyImageCompressionMethod, "ISO_10918_1")
        self.assertEqual(ds.PhotometricInterpretation, "MONOCHROME2")

    def test_jpeg_baseline_colour(self) -> None:
        """JPEG Baseline YBR_FULL_422 decodes to RGB, Planar Configuration 0."""
        make_image(self.path("source.dcm"), samples=3)
        self.assertEqual(
            pydicom.dcmread(self.path("source.dcm")).PhotometricInterpretation, "RGB"
        )
        ds, _ = self.decompress(
            None, [f"{DCMTK}/dcmcjpeg", "+eb"], [f"{DCMTK}/dcmdjpeg"],
            tolerance=JPEG_DECODER_TOLERANCE,
        )
        self.assertEqual(
            pydicom.dcmread(self.path("compressed.dcm")).PhotometricInterpretation,
            "YBR_FULL_422",
        )
        self.assertEqual(ds.PhotometricInterpretation, "RGB")
        self.assertEqual(ds.PlanarConfiguration, 0)
        self.assertEqual(ds.LossyImageCompression, "01")

    def test_jpeg_extended_12bit(self) -> None:
        """JPEG Extended 12-bit: within the decoder tolerance of dcmdjpeg."""
        make_image(self.path("source.dcm"), bits=16, stored=12)
        ds, _ = self.decompress(
            None, [f"{DCMTK}/dcmcjpeg", "+ee"], [f"{DCMTK}/dcmdjpeg"],
            tolerance=JPEG_DECODER_TOLERANCE,
        )
        self.assertEqual((ds.BitsAllocated, ds.BitsStored), (16, 12))
        self.assertEqual(ds.LossyImageCompression, "01")

    def test_jpeg_lossless_process14(self) -> None:
        """JPEG Lossless (Process 14) 16-bit: exact."""
        original = make_image(self.path("source.dcm"), bits=16)
        self.decompress(original, [f"{DCMTK}/dcmcjpeg", "+el"], [f"{DCMTK}/dcmdjpeg"])

    def test_jpeg_lossless_sv1_signed(self) -> None:
        """JPEG Lossless SV1, signed 16-bit: exact, to Implicit VR too."""
        original = make_image(self.path("source.dcm"), bits=16, signed=True)
        ds, _ = self.decompress(
            original, [f"{DCMTK}/dcmcjpeg", "+e1"], [f"{DCMTK}/dcmdjpeg"], target=IMPLICIT
        )
        self.assertEqual(ds.PixelRepresentation, 1)
        self.assertNotIn("LossyImageCompression", ds)

    def test_fragmented_multiframe(self) -> None:
        """Several fragments per frame (dcmcjpeg +fs 1) over 3 frames: exact."""
        original = make_image(self.path("source.dcm"), rows=256, columns=256, frames=3)
        self.decompress(
            original, [f"{DCMTK}/dcmcjpeg", "+e1", "+fs", "1"], [f"{DCMTK}/dcmdjpeg"]
        )
        stored = pydicom.dcmread(self.path("compressed.dcm"))
        fragments = list(pydicom.encaps.generate_fragments(stored.PixelData))
        self.assertGreater(len(fragments), 3 * 2)

    def test_jpeg_ls_lossless_colour(self) -> None:
        """JPEG-LS lossless RGB: exact."""
        original = make_image(self.path("source.dcm"), samples=3)
        ds, _ = self.decompress(original, [f"{DCMTK}/dcmcjpls"], [f"{DCMTK}/dcmdjpls"])
        self.assertEqual(ds.PhotometricInterpretation, "RGB")

    def test_jpeg_ls_near_lossless_multiframe(self) -> None:
        """JPEG-LS near-lossless, 5 frames: identical to dcmdjpls (JPEG-LS
        decoding is exact) and within NEAR of the original."""
        original = make_image(self.path("source.dcm"), frames=5)
        ds, error = self.decompress(
            None, [f"{DCMTK}/dcmcjpls", "+en"], [f"{DCMTK}/dcmdjpls"]
        )
        self.assertEqual(error, 0)
        self.assertLessEqual(max_error(pixels(self.path("ours.dcm")), original), JPEG_LS_NEAR)
        self.assertEqual(ds.NumberOfFrames, 5)
        self.assertEqual(ds.LossyImageCompressionMethod, "ISO_14495_1")

    def test_rle_colour_and_16bit(self) -> None:
        """RLE Lossless, RGB and 16-bit multi-frame: exact."""
        original = make_image(self.path("source.dcm"), samples=3)
        self.decompress(original, [f"{DCMTK}/dcmcrle"], [f"{DCMTK}/dcmdrle"])
        for name in ("compressed.dcm", "ours.dcm", "theirs.dcm"):
            os.unlink(self.path(name))
        original = make_image(self.path("source.dcm"), bits=16, frames=4)
        self.decompress(original, [f"{DCMTK}/dcmcrle"], [f"{DCMTK}/dcmdrle"])

    def test_jpeg_2000_lossless(self) -> None:
        """JPEG 2000 lossless (gdcmconv --j2k), RGB and 16-bit: exact."""
        original = make_image(self.path("source.dcm"), samples=3)
        self.decompress(original, [GDCMCONV, "--j2k"], [GDCMCONV, "--raw"])
        for name in ("compressed.dcm", "ours.dcm", "theirs.dcm"):
            os.unlink(self.path(name))
        original = make_image(self.path("source.dcm"), bits=16, stored=12)
        self.decompress(original, [GDCMCONV, "--j2k"], [GDCMCONV, "--raw"])

    def test_jpeg_2000_lossy(self) -> None:
        """JPEG 2000 lossy (gdcmconv --lossy): as gdcmconv --raw decodes it,
        still marked lossy."""
        make_image(self.path("source.dcm"), bits=16, stored=12, frames=2)
        ds, _ = self.decompress(
            None, [GDCMCONV, "--j2k", "--lossy", "-r", "10"], [GDCMCONV, "--raw"],
            tolerance=J2K_DECODER_TOLERANCE,
        )
        self.assertEqual(ds.LossyImageCompression, "01")


class CompressTests(_Files):
    """Our compressed output decodes, by DCMTK's and GDCM's decoders, to the
    original pixels."""

    DECODERS = {
        ts.JPEG_LS_LOSSLESS: [f"{DCMTK}/dcmdjpls"],
        ts.JPEG_LS_NEAR_LOSSLESS: [f"{DCMTK}/dcmdjpls"],
        ts.RLE_LOSSLESS: [f"{DCMTK}/dcmdrle"],
        ts.JPEG_LOSSLESS_SV1: [f"{DCMTK}/dcmdjpeg"],
        ts.JPEG_BASELINE: [f"{DCMTK}/dcmdjpeg"],
        ts.JPEG_2000_LOSSLESS: [GDCMCONV, "--raw"],
        ts.JPEG_2000: [GDCMCONV, "--raw"],
    }

    IMAGES = {
        "grey8": {},
        "grey12": {"bits": 16, "stored": 12},
        "grey16": {"bits": 16},
        "signed16": {"bits": 16, "signed": True},
        "rgb": {"samples": 3},
        "frames5": {"frames": 5},
    }

    def compress(self, target: str, name: str, **image: object) -> tuple[np.ndarray, np.ndarray, Dataset]:
        """Make image `name`, transcode it to `target`, decode it with the
        reference decoder.

        :returns: original pixels, reference-decoded pixels, our data set.
        """
        source, ours, theirs = (self.path(f"{name}-{part}.dcm") for part in ("in", "ours", "theirs"))
        original = make_image(source, **image)
        transcode(source, target, ours, allow_lossy=target in LOSSY_TARGETS)
        self.assertSameElements(source, ours, target)
        run(*self.DECODERS[target], ours, theirs)
        return original, pixels(theirs), pydicom.dcmread(ours)

    def lossless(self, target: str) -> None:
        """Every test image round-trips `target` exactly."""
        for name, image in self.IMAGES.items():
            original, decoded, ds = self.compress(target, name, **image)
            self.assertEqual(max_error(decoded, original), 0, name)
            self.assertNotIn("LossyImageCompression", ds)

    def test_jpeg_ls_lossless(self) -> None:
        """JPEG-LS Lossless (pyjpegls) decodes exactly with dcmdjpls."""
        self.lossless(ts.JPEG_LS_LOSSLESS)

    def test_rle_lossless(self) -> None:
        """RLE Lossless (pylibjpeg-rle) decodes exactly with dcmdrle."""
        self.lossless(ts.RLE_LOSSLESS)

    def test_jpeg_lossless_sv1(self) -> None:
        """JPEG Lossless SV1 (python-gdcm) decodes exactly with dcmdjpeg."""
        self.lossless(ts.JPEG_LOSSLESS_SV1)

    def test_jpeg_2000_lossless(self) -> None:
        """JPEG 2000 Lossless (OpenJPEG) decodes exactly with gdcmconv; RGB is
        written with the reversible colour transform as YBR_RCT."""
        self.lossless(ts.JPEG_2000_LOSSLESS)
        ds = pydicom.dcmread(self.path("rgb-ours.dcm"))
        self.assertEqual(ds.PhotometricInterpretation, "YBR_RCT")

    def assertLossyAttributes(self, ds: Dataset, method: str, source: str) -> None:
        """Lossy Image Compression "01", Method appended, Ratio the real one."""
        self.assertEqual(ds.LossyImageCompression, "01")
        self.assertEqual(ds.LossyImageCompressionMethod, method)
        fragments = sum(len(f) for f in pydicom.encaps.generate_fragments(ds.PixelData))
        stored = pydicom.dcmread(source)
        ratio = len(stored.PixelData) / fragments
        self.assertLessEqual(abs(float(ds.LossyImageCompressionRatio) - ratio), ratio * 0.02)

    def test_jpeg_ls_near_lossless(self) -> None:
        """JPEG-LS near-lossless (NEAR=2) stays within 2 of every pixel."""
        for name in ("grey8", "grey16", "rgb", "frames5"):
            original, decoded, ds = self.compress(
                ts.JPEG_LS_NEAR_LOSSLESS, name, **self.IMAGES[name]
            )
            self.assertLessEqual(max_error(decoded, original), JPEG_LS_NEAR, name)
            self.assertLossyAttributes(ds, "ISO_14495_1", self.path(f"{name}-in.dcm"))

    def test_jpeg_2000_lossy(self) -> None:
        """JPEG 2000 at ratio 10 stays within the stated tolerance; RGB is
        written with the irreversible colour transform as YBR_ICT."""
        for name in ("grey8", "grey12", "rgb"):
            image = self.IMAGES[name]
            original, decoded, ds = self.compress(ts.JPEG_2000, name, **image)
            full = (1 << int(image.get("stored", image.get("bits", 8)))) - 1
            self.assertLessEqual(max_error(decoded, original), J2K_LOSSY_TOLERANCE * full, name)
            self.assertLossyAttributes(ds, "ISO_15444_1", self.path(f"{name}-in.dcm"))
        self.assertEqual(ds.PhotometricInterpretation, "YBR_ICT")

    def test_jpeg_baseline(self) -> None:
        """JPEG Baseline (Pillow) stays within the stated tolerance; RGB is
        written as YBR_FULL_422 and dcmdjpeg gives RGB back."""
        for name in ("grey8", "rgb"):
            original, decoded, ds = self.compress(ts.JPEG_BASELINE, name, **self.IMAGES[name])
            self.assertLessEqual(max_error(decoded, original), JPEG_BASELINE_TOLERANCE * 255, name)
            self.assertLossyAttributes(ds, "ISO_10918_1", self.path(f"{name}-in.dcm"))
        self.assertEqual(ds.PhotometricInterpretation, "YBR_FULL_422")

    def test_lossy_refused(self) -> None:
        """A lossy target without allow_lossy raises and writes nothing."""
        source = self.path("in.dcm")
        make_image(source)
        error = self.assertRaises(CodecError, transcode, source, ts.JPEG_2000, self.path("out.dcm"))
        self.assertIn("allow_lossy", str(error))
        self.assertNoFiles("out.dcm")

    def test_successive_lossy(self) -> None:
        """Lossy on lossy appends Ratio and Method (PS3.3 C.7.6.1.1.5)."""
        source, jpeg, ours = self.path("in.dcm"), self.path("jpeg.dcm"), self.path("ours.dcm")
        make_image(source)
        run(f"{DCMTK}/dcmcjpeg", "+eb", source, jpeg)
        transcode(jpeg, ts.JPEG_LS_NEAR_LOSSLESS, ours, allow_lossy=True)
        ds = pydicom.dcmread(ours)
        self.assertEqual(list(ds.LossyImageCompressionMethod), ["ISO_10918_1", "ISO_14495_1"])
        self.assertEqual(len(ds.LossyImageCompressionRatio), 2)
        self.assertEqual(
            ds.LossyImageCompressionRatio[0],
            pydicom.dcmread(jpeg).LossyImageCompressionRatio,
        )

    def test_compressed_to_compressed(self) -> None:
        """dcmcjpls output re-encoded as RLE decodes exactly with dcmdrle."""
        source, jls, ours, theirs = (self.path(n) for n in ("in.dcm", "jls.dcm", "rle.dcm", "out.dcm"))
        original = make_image(source, bits=16, frames=3)
        run(f"{DCMTK}/dcmcjpls", source, jls)
        transcode(jls, ts.RLE_LOSSLESS, ours)
        self.assertSameElements(jls, ours, ts.RLE_LOSSLESS)
        run(f"{DCMTK}/dcmdrle", ours, theirs)
        self.assertEqual(max_error(pixels(theirs), original), 0)


class NativeTests(_Files):
    """Native syntaxes: Implicit, Big Endian, Deflated."""

    def test_big_endian(self) -> None:
        """Explicit VR Big Endian (dcmconv +tb) to Little Endian and back."""
        source, big, little, back = (self.path(n) for n in ("in.dcm", "be.dcm", "le.dcm", "back.dcm"))
        original = make_image(source, bits=16, frames=2)
        run(f"{DCMTK}/dcmconv", "+tb", source, big)
        transcode(big, EXPLICIT, little)
        self.assertSameElements(big, little, EXPLICIT)
        self.assertEqual(max_error(pixels(little), original), 0)
        transcode(little, BIG, back)
        run(f"{DCMTK}/dcmconv", "+te", back, self.path("check.dcm"))
        self.assertEqual(max_error(pixels(self.path("check.dcm")), original), 0)

    def test_deflated_source(self) -> None:
        """A Deflated file (dcmconv +td) inflates to Explicit VR and to JPEG-LS."""
        source, deflated = self.path("in.dcm"), self.path("deflated.dcm")
        original = make_image(source, samples=3, frames=2)
        run(f"{DCMTK}/dcmconv", "+td", source, deflated)
        self.assertEqual(pydicom.dcmread(deflated).file_meta.TransferSyntaxUID, DEFLATED)
        transcode(deflated, EXPLICIT, self.path("le.dcm"))
        self.assertSameElements(source, self.path("le.dcm"), EXPLICIT)
        self.assertEqual(max_error(pixels(self.path("le.dcm")), original), 0)
        transcode(deflated, ts.JPEG_LS_LOSSLESS, self.path("jls.dcm"))
        run(f"{DCMTK}/dcmdjpls", self.path("jls.dcm"), self.path("out.dcm"))
        self.assertEqual(max_error(pixels(self.path("out.dcm")), original), 0)
        self.assertNoFiles()

    def test_deflated_target(self) -> None:
        """Deflated output (from native and from RLE) reads back in DCMTK."""
        source, rle = self.path("in.dcm"), self.path("rle.dcm")
        original = make_image(source, bits=16, frames=3)
        run(f"{DCMTK}/dcmcrle", source, rle)
        for name, start in (("native", source), ("rle", rle)):
            deflated, back = self.path(f"{name}-deflated.dcm"), self.path(f"{name}-back.dcm")
            transcode(start, DEFLATED, deflated)
            self.assertSameElements(start, deflated, DEFLATED)
            run(f"{DCMTK}/dcmconv", "+te", deflated, back)
            self.assertEqual(max_error(pixels(back), original), 0, name)
        self.assertLess(os.path.getsize(self.path("native-deflated.dcm")), os.path.getsize(source))

    def test_implicit(self) -> None:
        """Explicit to Implicit VR and back keeps every element and pixel."""
        source, implicit, back = self.path("in.dcm"), self.path("implicit.dcm"), self.path("back.dcm")
        original = make_image(source, bits=16, signed=True)
        transcode(source, IMPLICIT, implicit)
        transcode(implicit, EXPLICIT, back)
        self.assertSameElements(source, back, EXPLICIT)
        self.assertEqual(max_error(pixels(implicit), original), 0)
        with open(source, "rb") as a, open(back, "rb") as b:
            self.assertEqual(a.read()[-len(original.tobytes()):], b.read()[-len(original.tobytes()):])

    def test_identity_copies(self) -> None:
        """Same syntax in and out: the stored bytes, unchanged."""
        source, out = self.path("in.dcm"), self.path("out.dcm")
        make_image(source)
        transcode(source, EXPLICIT, out)
        with open(source, "rb") as a, open(out, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_transcode_bytes(self) -> None:
        """transcode_bytes converts a file held in memory."""
        source = self.path("in.dcm")
        original = make_image(source)
        with open(source, "rb") as f:
            data = transcode_bytes(f.read(), ts.RLE_LOSSLESS)
        with open(self.path("rle.dcm"), "wb") as f:
            f.write(data)
        self.assertEqual(max_error(pixels(self.path("rle.dcm")), original), 0)


class BadInputTests(_Files):
    """Bad input raises CodecError with one line and leaves no file."""

    def compressed(self, tool: str = "dcmcjpls") -> tuple[bytes, int, int]:
        """A DCMTK-compressed file, the offset and length of its first fragment."""
        make_image(self.path("in.dcm"), frames=2)
        run(f"{DCMTK}/{tool}", self.path("in.dcm"), self.path("c.dcm"))
        with open(self.path("c.dcm"), "rb") as f:
            data = f.read()
        start = data.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
        (table,) = struct.unpack("<L", data[start + 4:start + 8])
        fragment = start + 8 + table
        (length,) = struct.unpack("<L", data[fragment + 4:fragment + 8])
        return data, fragment + 8, length

    def assertFails(self, data: bytes, target: str = EXPLICIT, reason: str = "") -> CodecError:
        """Transcoding `data` raises CodecError (one line, naming `reason`)
        and leaves nothing behind."""
        with open(self.path("bad.dcm"), "wb") as f:
            f.write(data)
        error = self.assertRaises(CodecError, transcode, self.path("bad.dcm"), target, self.path("out.dcm"))
        self.assertEqual(len(str(error).splitlines()), 1)
        self.assertIn(reason, str(error))
        self.assertNoFiles("out.dcm")
        return error

    def test_truncated_file(self) -> None:
        """A file cut inside its pixel data."""
        data, at, length = self.compressed()
        self.assertFails(data[: at + length // 2], reason="truncated")

    def test_corrupt_stream(self) -> None:
        """JPEG-LS and RLE streams whose headers are overwritten."""
        for tool in ("dcmcjpls", "dcmcrle"):
            data, at, length = self.compressed(tool)
            self.assertFails(data[: at + 2] + b"\xff" * 30 + data[at + 32:], reason="does not decode")

    def test_truncated_stream(self) -> None:
        """A JPEG-LS stream cut short inside a well-formed item."""
        data, at, length = self.compressed()
        cut = length // 2 & ~1
        item = struct.pack("<HHL", 0xFFFE, 0xE000, cut)
        self.assertFails(data[: at - 8] + item + data[at:at + cut] + data[at + length:])

    def test_missing_frames(self) -> None:
        """Number of Frames larger than the fragments hold."""
        data, _, _ = self.compressed()
        ds = pydicom.dcmread(self.path("c.dcm"))
        ds.NumberOfFrames = 7
        ds.save_as(self.path("c7.dcm"))
        with open(self.path("c7.dcm"), "rb") as f:
            self.assertFails(f.read(), reason="frames")

    def test_length_mismatch(self) -> None:
        """Native pixel data shorter than Rows x Columns says, whether
        compressing or only changing the native syntax."""
        make_image(self.path("in.dcm"))
        ds = pydicom.dcmread(self.path("in.dcm"))
        ds.Rows = 65
        ds.save_as(self.path("long.dcm"))
        with open(self.path("long.dcm"), "rb") as f:
            data = f.read()
        for target in (ts.JPEG_LS_LOSSLESS, IMPLICIT):
            self.assertFails(data, target, reason="bytes")

    def test_no_codec(self) -> None:
        """A syntax without a decoder (MPEG-2 labelled) cannot be converted."""
        data, _, _ = self.compressed()
        ds = pydicom.dcmread(self.path("c.dcm"))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.save_as(self.path("mpeg.dcm"))
        with open(self.path("mpeg.dcm"), "rb") as f:
            self.assertFails(f.read(), reason="no conversion")

    def test_corrupt_deflate(self) -> None:
        """A Deflated file whose stream is cut short."""
        make_image(self.path("in.dcm"))
        run(f"{DCMTK}/dcmconv", "+td", self.path("in.dcm"), self.path("d.dcm"))
        with open(self.path("d.dcm"), "rb") as f:
            data = f.read()
        self.assertFails(data[:-200], reason="deflate")

    def test_existing_target_kept(self) -> None:
        """A failed conversion leaves an existing file at the target alone."""
        data, at, length = self.compressed()
        with open(self.path("out.dcm"), "wb") as f:
            f.write(b"earlier")
        with open(self.path("bad.dcm"), "wb") as f:
            f.write(data[: at + length // 2])
        self.assertRaises(CodecError, transcode, self.path("bad.dcm"), EXPLICIT, self.path("out.dcm"))
        with open(self.path("out.dcm"), "rb") as f:
            self.assertEqual(f.read(), b"earlier")


class MemoryTests(_Files):
    """transcode's memory does not grow with the number of frames: one frame
    is decoded at a time, plus the codec's own working copies of it."""

    ROWS = COLUMNS = 512
    FRAME = ROWS * COLUMNS * 2

    def peak(self, source: str, target: str) -> int:
        """Peak traced allocation while transcoding `source` to `target`."""
        transcode(source, target, self.path("warm.dcm"))
        tracemalloc.start()
        try:
            transcode(source, target, self.path("out.dcm"), max_frames=4)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak

    def peaks(self, frames: int) -> dict[str, int]:
        """Peaks of three conversions of a `frames`-frame 16-bit instance."""
        source, rle = self.path(f"big{frames}.dcm"), self.path(f"big{frames}-rle.dcm")
        make_image(source, rows=self.ROWS, columns=self.COLUMNS, bits=16, frames=frames)
        run(f"{DCMTK}/dcmcrle", source, rle)
        return {
            "rle -> explicit": self.peak(rle, EXPLICIT),
            "explicit -> jpeg-ls": self.peak(source, ts.JPEG_LS_LOSSLESS),
            "explicit -> implicit": self.peak(source, IMPLICIT),
        }

    def test_bounded(self) -> None:
        """40 frames of 512x512x16 bits (20 MiB): each conversion peaks
        below 12 frames (6 MiB; the codecs' working copies of one frame),
        and within one frame of its peak for 10 frames."""
        many, few = self.peaks(40), self.peaks(10)
        for name, peak in many.items():
            self.assertLess(peak, 12 * self.FRAME, f"{name}: {peak} bytes")
            self.assertLess(peak - few[name], self.FRAME, f"{name}: {few[name]} -> {peak}")
        # The native copy goes through a small buffer, no frame at all.
        self.assertLess(many["explicit -> implicit"], self.FRAME)

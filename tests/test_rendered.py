"""Tests for dicomtwist.web.dicomweb.rendered: WADO-RS rendered pixels.

Every rendered image is decoded again with Pillow and checked for its
size, mode and, where the standard fixes them, its exact pixel values:
the window formulas of PS3.3 C.11.2.1.2.1 and C.11.2.1.3 are computed by
hand in the comments.  Real images come from pydicom's bundled test files
(those shipped with pydicom itself, so no download is needed).
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.web.dicomweb import rendered
from dicomtwist.web.dicomweb.rendered import (
    NotRenderable,
    RenderError,
    Viewport,
    Window,
    check_renderable,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
)

#: MPEG2 Main Profile / Main Level: pydicom has no decoder for it.
MPEG2 = "1.2.840.10008.1.2.4.100"


def testdata(name: str) -> Dataset:
    """Read one of pydicom's bundled test files.

    :param name: the file name, e.g. ``CT_small.dcm``.
    :returns: the data set, pixel data included.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    assert path is not None, name
    return pydicom.dcmread(path)


def synthetic(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: Any
) -> Dataset:
    """An Explicit VR Little Endian image whose stored values are ``pixels``.

    :param pixels: (rows, columns) or (frames, rows, columns) grayscale.
    :param photometric: the Photometric Interpretation.
    :param attributes: further attributes by keyword.
    :returns: the data set.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def decoded(data: bytes) -> Image.Image:
    """Open rendered bytes with Pillow.

    :param data: an encoded image.
    :returns: the loaded image.
    """
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png_pixels(data: bytes) -> np.ndarray:
    """The pixel values of a rendered PNG.

    :param data: PNG bytes.
    :returns: the array Pillow decodes.
    """
    return np.asarray(decoded(data))


def rendered_values(ds: Dataset, **options: Any) -> list[Any]:
    """Render the first frame as PNG and return its pixel values.

    :param ds: the instance.
    :param options: keyword arguments of ``render``.
    :returns: the pixel values as nested lists.
    """
    return png_pixels(render(ds, None, "image/png", **options)).tolist()


#: Hounsfield units of a 4x4 CT-like frame; stored as HU + 1024 with
#: Rescale Slope 1 and Rescale Intercept -1024.
HU = np.array(
    [
        [-1024, -160, -100, 0],
        [40, 100, 239, 240],
        [1000, 0, 0, 0],
        [0, 0, 0, 0],
    ],
    dtype=np.int16,
)


def ct_like(**attributes: Any) -> Dataset:
    """The 4x4 frame of :data:`HU`, signed 16-bit with a rescale.

    :param attributes: further attributes by keyword.
    :returns: the data set.
    """
    return synthetic(
        (HU + 1024).astype(np.int16),
        RescaleSlope=1,
        RescaleIntercept=-1024,
        **attributes,
    )


class ParseWindowTests(SynchronousTestCase):
    """parse_window reads PS3.18 8.3.5.1.4 ``center,width,function``."""

    def test_functions(self):
        """Each function token, in any case, becomes its VOI LUT Function term."""
        self.assertEqual(parse_window("40,400,linear"), Window(40.0, 400.0, "LINEAR"))
        self.assertEqual(
            parse_window("-600.5, 1500 ,LINEAR-EXACT"),
            Window(-600.5, 1500.0, "LINEAR_EXACT"),
        )
        self.assertEqual(parse_window("0,1e3,Sigmoid"), Window(0.0, 1000.0, "SIGMOID"))

    def test_function_defaults_to_linear(self):
        """``center,width`` without a function means linear."""
        self.assertEqual(parse_window("40,400"), Window(40.0, 400.0, "LINEAR"))

    def test_bad_values(self):
        """Malformed windows raise RenderError naming the window parameter."""
        for value in (
            "",
            "40",
            "40,400,linear,extra",
            "a,400,linear",
            "40,b,linear",
            "40,400,cubic",
            "40,0.5,linear",
            "40,0,linear-exact",
            "40,-5,sigmoid",
            "nan,400,linear",
            "40,inf,linear",
        ):
            exc = self.assertRaises(RenderError, parse_window, value)
            self.assertIn("window", str(exc))
            self.assertEqual(exc.status, 400)


class ParseViewportTests(SynchronousTestCase):
    """parse_viewport reads PS3.18 8.3.5.1.3 ``vw,vh[,sx,sy,sw,sh]``."""

    def test_size_only(self):
        """``vw,vh`` leaves the Source Image Region at its defaults."""
        self.assertEqual(parse_viewport("512,256"), Viewport(512, 256))
        self.assertEqual(parse_viewport("512,256"), (512, 256, None, None, None, None))

    def test_region(self):
        """All four region fields are read; empty ones stay at their default."""
        self.assertEqual(
            parse_viewport("100,100,10,20,30,40"), Viewport(100, 100, 10, 20, 30, 40)
        )
        self.assertEqual(parse_viewport("100,100,,5,,"), Viewport(100, 100, None, 5))

    def test_bad_values(self):
        """Malformed viewports raise RenderError naming the viewport parameter."""
        for value in (
            "",
            "32",
            "32,32,1",
            "32,32,1,2,3",
            "0,32",
            "32,-1",
            "a,32",
            "32.5,32",
            "99999,32",
            "32,32,-1,0,,",
            "32,32,0,0,0,10",
        ):
            exc = self.assertRaises(RenderError, parse_viewport, value)
            self.assertIn("viewport", str(exc))

    def test_flip_rejected(self):
        """A negative sw or sh (a flip) is rejected and says so."""
        exc = self.assertRaises(RenderError, parse_viewport, "32,32,0,0,-10,10")
        self.assertIn("flip", str(exc))


class ParseQualityTests(SynchronousTestCase):
    """parse_quality reads PS3.18 8.3.5.1.2 ``quality``, 1 to 100."""

    def test_values(self):
        """Integers 1 to 100, as text or int, are accepted."""
        self.assertEqual(parse_quality("1"), 1)
        self.assertEqual(parse_quality(" 100 "), 100)
        self.assertEqual(parse_quality(75), 75)

    def test_bad_values(self):
        """Anything else raises RenderError naming the quality parameter."""
        for value in ("0", "101", "abc", "9.5", "", "-3", True, 0):
            exc = self.assertRaises(RenderError, parse_quality, value)
            self.assertIn("quality", str(exc))


class WindowTests(SynchronousTestCase):
    """VOI windows give exactly the values of PS3.3 C.11.2.1.2.1 and C.11.2.1.3."""

    def test_linear(self):
        """window=40,400,linear maps HU by ((x - 39.5) / 399 + 0.5) * 255.

        HU -160 <= 39.5 - 199.5 -> 0; HU 240 > 239.5 -> 255;
        HU -100 -> 38.35 -> 38; HU 0 -> 102.26 -> 102; HU 40 -> 127.82 -> 128;
        HU 100 -> 166.17 -> 166; HU 239 -> exactly 255.
        """
        out = png_pixels(
            render(ct_like(), None, "image/png", window=parse_window("40,400,linear"))
        )
        self.assertEqual(out.dtype, np.uint8)
        self.assertEqual(out[:2].tolist(), [[0, 0, 38, 102], [128, 166, 255, 255]])
        self.assertEqual(out[2, 0], 255)

    def test_linear_exact(self):
        """linear-exact maps HU by ((x - 40) / 400 + 0.5) * 255, no 0.5 shifts.

        HU 0 -> exactly 102; HU 100 -> 165.75 -> 166; HU 239 -> 254.36 -> 254.
        """
        out = png_pixels(
            render(ct_like(), None, "image/png", window=(40, 400, "linear-exact"))
        )
        self.assertEqual(out[:2].tolist(), [[0, 0, 38, 102], [128, 166, 254, 255]])

    def test_sigmoid(self):
        """sigmoid maps HU by 255 / (1 + exp(-4 (x - 40) / 400)).

        HU 40 -> 127.5 -> 128; HU 0 -> 255 / (1 + e^0.4) = 102.33 -> 102;
        HU 240 -> 255 / (1 + e^-2) = 224.60 -> 225.
        """
        out = png_pixels(
            render(ct_like(), None, "image/png", window=("40", "400", "SIGMOID"))
        )
        self.assertEqual(out[1, 0], 128)
        self.assertEqual(out[0, 3], 102)
        self.assertEqual(out[1, 3], 225)

    def test_tuple_checked(self):
        """A window or viewport passed as a plain tuple is checked like text."""
        ds = ct_like()
        for window in (("a", 400, "linear"), (40, 0, "linear"), (40,), (40, 400, "x")):
            self.assertRaises(RenderError, render, ds, None, "image/png", window=window)
        for viewport in ((0, 32), (32,), (32, 32, -1, 0, None, None)):
            self.assertRaises(
                RenderError, render, ds, None, "image/png", viewport=viewport
            )

    def test_dataset_window(self):
        """Without a window parameter the data set's first window is used."""
        ds = ct_like(WindowCenter=[40, 400], WindowWidth=[400, 2000])
        out = png_pixels(render(ds, None, "image/png"))
        self.assertEqual(out[:2].tolist(), [[0, 0, 38, 102], [128, 166, 255, 255]])

    def test_dataset_voi_lut_function(self):
        """The data set's VOI LUT Function LINEAR_EXACT applies to its window."""
        ds = ct_like(WindowCenter=40, WindowWidth=400, VOILUTFunction="LINEAR_EXACT")
        self.assertEqual(png_pixels(render(ds, None, "image/png"))[1, 2], 254)

    def test_parameter_beats_dataset(self):
        """A window parameter overrides the data set's window."""
        ds = ct_like(WindowCenter=1000, WindowWidth=10)
        out = rendered_values(ds, window=Window(40, 400, "LINEAR"))
        self.assertEqual(out[0][3], 102)

    def test_real_dataset_window(self):
        """MR_small's own window 600/1600 equals asking for it explicitly."""
        ds = testdata("MR_small.dcm")
        own = render(ds, None, "image/png")
        asked = render(ds, None, "image/png", window=(600, 1600, "linear"))
        other = render(ds, None, "image/png", window=(600, 400, "linear"))
        self.assertEqual(own, asked)
        self.assertNotEqual(own, other)

    def test_min_max(self):
        """Without any VOI the frame's min and max stretch over 0..255."""
        ds = synthetic(np.array([[0, 100], [200, 300]], dtype=np.uint16))
        self.assertEqual(rendered_values(ds), [[0, 85], [170, 255]])

    def test_voi_lut_sequence(self):
        """A VOI LUT Sequence with 8-bit entries maps stored values as listed."""
        item = Dataset()
        item.LUTDescriptor = [4, 0, 8]
        item.LUTData = [0, 50, 100, 255]
        ds = synthetic(
            np.array([[0, 1], [2, 3]], dtype=np.uint16), VOILUTSequence=Sequence([item])
        )
        self.assertEqual(rendered_values(ds), [[0, 50], [100, 255]])

    def test_modality_lut_sequence(self):
        """A Modality LUT Sequence maps stored values before the VOI window."""
        item = Dataset()
        item.LUTDescriptor = [4, 0, 16]
        item.ModalityLUTType = "HU"
        item.LUTData = [0, 1000, 1001, 3000]
        ds = synthetic(
            np.array([[0, 1], [2, 3]], dtype=np.uint16),
            ModalityLUTSequence=Sequence([item]),
            WindowCenter=1500,
            WindowWidth=3000,
            VOILUTFunction="LINEAR_EXACT",
        )
        # ((y - 1500) / 3000 + 0.5) * 255 for y = 0, 1000, 1001, 3000.
        self.assertEqual(rendered_values(ds), [[0, 85], [85, 255]])

    def test_frame_functional_groups(self):
        """An enhanced multi-frame's per-frame window applies to its own frame."""

        def group(center: float, width: float) -> Dataset:
            voi = Dataset()
            voi.WindowCenter = center
            voi.WindowWidth = width
            voi.VOILUTFunction = "LINEAR_EXACT"
            transform = Dataset()
            transform.RescaleSlope = 1
            transform.RescaleIntercept = -1024
            frame = Dataset()
            frame.FrameVOILUTSequence = Sequence([voi])
            frame.PixelValueTransformationSequence = Sequence([transform])
            return frame

        stored = np.stack([HU + 1024, HU + 1024]).astype(np.int16)
        ds = synthetic(
            stored,
            PerFrameFunctionalGroupsSequence=Sequence([group(40, 400), group(0, 2000)]),
        )
        # Frame 1: HU 0 -> 102.  Frame 2: ((0 - 0) / 2000 + 0.5) * 255 -> 127.5 -> 128.
        self.assertEqual(png_pixels(render(ds, 1, "image/png"))[0, 3], 102)
        self.assertEqual(png_pixels(render(ds, 2, "image/png"))[0, 3], 128)

    def test_monochrome1_inverted(self):
        """MONOCHROME1 renders as 255 minus the MONOCHROME2 rendering."""
        window = Window(40, 400, "LINEAR")
        normal = png_pixels(render(ct_like(), None, "image/png", window=window))
        ds = ct_like(PhotometricInterpretation="MONOCHROME1")
        inverted = png_pixels(render(ds, None, "image/png", window=window))
        self.assertEqual(inverted.tolist(), (255 - normal.astype(int)).tolist())
        self.assertEqual(inverted[0, 0], 255)

    def test_window_ignored_for_color(self):
        """A window parameter does not change a color image."""
        ds = testdata("SC_rgb_rle.dcm")
        self.assertEqual(
            render(ds, None, "image/png"),
            render(ds, None, "image/png", window=(10, 20, "linear")),
        )

    def test_lookup_table_path_equals_direct(self):
        """Rendering through the stored-value lookup table equals the direct path."""
        ds = testdata("CT_small.dcm")
        window = Window(40, 400, "LINEAR")
        fast = render(ds, None, "image/png", window=window)
        self.patch(rendered, "_LUT_LIMIT", 0)
        self.assertEqual(render(ds, None, "image/png", window=window), fast)

    def test_wide_integer_range(self):
        """32-bit values wider than a lookup table still stretch min to max."""
        wide = np.array([[0, 1_000_000], [2_000_000, 3_000_000]], dtype=np.uint32)
        ds = synthetic(wide)
        self.assertEqual(rendered_values(ds), [[0, 85], [170, 255]])

    def test_float_pixel_data(self):
        """Float Pixel Data (PS3.3 C.7.6.24) renders from its min and max."""
        ds = synthetic(np.zeros((2, 2), dtype=np.float32))
        del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        values = np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32)
        ds.FloatPixelData = values.tobytes()
        self.assertEqual(rendered_values(ds), [[0, 64], [128, 255]])


class OutputTests(SynchronousTestCase):
    """Media types, sizes and modes of real images."""

    def test_png_8bit_round_trip(self):
        """8-bit grayscale holding 0..255 comes back from PNG unchanged."""
        values = np.arange(256, dtype=np.uint8).reshape(16, 16)
        self.assertEqual(rendered_values(synthetic(values)), values.tolist())

    def test_ct_small_jpeg(self):
        """CT_small (signed 16-bit, rescaled) renders as a 128x128 L JPEG."""
        image = decoded(render(testdata("CT_small.dcm"), None, "image/jpeg"))
        self.assertEqual(
            (image.format, image.size, image.mode), ("JPEG", (128, 128), "L")
        )

    def test_quality(self):
        """A lower JPEG quality gives a smaller image."""
        ds = testdata("CT_small.dcm")
        low = render(ds, None, "image/jpeg", quality=10)
        high = render(ds, None, "image/jpeg", quality=95)
        self.assertLess(len(low), len(high))
        self.assertRaises(RenderError, render, ds, None, "image/jpeg", quality=0)

    def test_gif(self):
        """image/gif is produced too."""
        image = decoded(render(testdata("MR_small.dcm"), None, "image/gif"))
        self.assertEqual((image.format, image.size), ("GIF", (64, 64)))

    def test_unsupported_media_type(self):
        """A media type we do not produce is NotRenderable (406)."""
        exc = self.assertRaises(
            NotRenderable, render, testdata("MR_small.dcm"), None, "image/tiff"
        )
        self.assertEqual(exc.status, 406)

    def test_compressed_grayscale(self):
        """RLE, JPEG 2000 and JPEG extended grayscale decode and render."""
        reference = render(testdata("MR_small.dcm"), None, "image/png")
        rle = render(testdata("MR_small_RLE.dcm"), None, "image/png")
        self.assertEqual(rle, reference)
        for name, size in (
            ("JPEG2000.dcm", (256, 1024)),
            ("693_J2KI.dcm", (512, 512)),
            ("JPGExtended.dcm", (256, 1024)),
        ):
            image = decoded(render(testdata(name), None, "image/png"))
            self.assertEqual((image.size, image.mode), (size, "L"), name)

    def test_rgb_exact(self):
        """8-bit RGB (RLE) comes back from PNG exactly as stored."""
        ds = testdata("SC_rgb_rle.dcm")
        out = png_pixels(render(ds, None, "image/png"))
        self.assertEqual(out.shape, (100, 100, 3))
        self.assertTrue((out == ds.pixel_array).all())

    def test_rgb_16bit(self):
        """16-bit RGB scales to the same 8-bit image as its 8-bit twin."""
        wide = png_pixels(render(testdata("SC_rgb_rle_16bit.dcm"), None, "image/png"))
        narrow = png_pixels(render(testdata("SC_rgb_rle.dcm"), None, "image/png"))
        self.assertEqual(wide.tolist(), narrow.tolist())

    def test_ybr_converted_to_rgb(self):
        """YBR_FULL JPEG and YBR_FULL_422 native render close to the RGB original."""
        reference = png_pixels(render(testdata("SC_rgb_rle.dcm"), None, "image/png"))
        for name in (
            "SC_rgb_jpeg_dcmtk.dcm",
            "SC_rgb_dcmtk_+eb+cy+np.dcm",
            "SC_ybr_full_422_uncompressed.dcm",
        ):
            out = png_pixels(render(testdata(name), None, "image/png"))
            self.assertEqual(out.shape, (100, 100, 3), name)
            # Unconverted YCbCr would be off by ~100 on red, green and blue bars.
            diff = np.abs(out.astype(int) - reference.astype(int)).mean()
            self.assertLess(diff, 4, name)

    def test_palette_color(self):
        """PALETTE COLOR goes through its 16-bit palette, scaled to 8 bits."""
        ds = testdata("examples_palette.dcm")
        out = png_pixels(render(ds, None, "image/png"))
        self.assertEqual(out.shape, (350, 800, 3))
        expected = apply_color_lut(ds.pixel_array, ds)
        self.assertTrue((out == np.floor(expected / 257 + 0.5).astype(np.uint8)).all())


class FrameTests(SynchronousTestCase):
    """Frame numbers are 1-based and checked."""

    def test_multi_frame(self):
        """Frames of a multi-frame differ; no frame number means frame 1."""
        ds = testdata("rtdose.dcm")
        first = render(ds, 1, "image/png")
        self.assertEqual(render(ds, None, "image/png"), first)
        self.assertNotEqual(render(ds, 15, "image/png"), first)

    def test_multi_frame_jpeg(self):
        """The last frame of a 30-frame YBR JPEG instance renders as RGB."""
        image = decoded(render(testdata("examples_ybr_color.dcm"), 30, "image/jpeg"))
        self.assertEqual((image.size, image.mode), ((320, 240), "RGB"))

    def test_out_of_range(self):
        """Frame 0, a frame past the last, or a non-integer raise RenderError."""
        multi = testdata("rtdose.dcm")
        for frame in (0, 16, -1):
            exc = self.assertRaises(RenderError, render, multi, frame, "image/png")
            self.assertEqual(type(exc), RenderError)
            self.assertIn("frame", str(exc))
        single = testdata("CT_small.dcm")
        self.assertRaises(RenderError, render, single, 2, "image/png")
        self.assertRaises(RenderError, render, single, True, "image/png")


class ViewportTests(SynchronousTestCase):
    """Viewports keep the aspect ratio; regions crop first (PS3.18 8.3.5.1.3)."""

    def test_reduce(self):
        """A 64x32 image in a 32x32 viewport becomes 32x16."""
        ds = synthetic(np.arange(64 * 32, dtype=np.uint16).reshape(32, 64))
        image = decoded(render(ds, None, "image/png", viewport=parse_viewport("32,32")))
        self.assertEqual(image.size, (32, 16))

    def test_enlarge(self):
        """A 64x64 image in a 256x128 viewport is enlarged to 128x128."""
        image = decoded(
            render(testdata("MR_small.dcm"), None, "image/png", viewport=(256, 128))
        )
        self.assertEqual(image.size, (128, 128))

    def test_region(self):
        """The region sx,sy,sw,sh is cut out, pixel for pixel at scale 1."""
        values = np.arange(256, dtype=np.uint8).reshape(16, 16)
        ds = synthetic(values)
        out = rendered_values(ds, viewport=parse_viewport("3,2,4,5,3,2"))
        self.assertEqual(out, values[5:7, 4:7].tolist())

    def test_region_clipped(self):
        """A region reaching past the edge is clipped to the image."""
        ds = synthetic(np.zeros((16, 16), dtype=np.uint8))
        viewport = parse_viewport("100,100,8,8,,")
        image = decoded(render(ds, None, "image/png", viewport=viewport))
        self.assertEqual(image.size, (100, 100))

    def test_region_outside(self):
        """A region starting outside the image raises RenderError."""
        ds = synthetic(np.zeros((16, 16), dtype=np.uint8))
        viewport = parse_viewport("8,8,16,0,,")
        exc = self.assertRaises(
            RenderError, render, ds, None, "image/png", viewport=viewport
        )
        self.assertIn("viewport", str(exc))


class ThumbnailTests(SynchronousTestCase):
    """Thumbnails fit 128 pixels, never enlarged, unless a viewport is given."""

    def test_default_size(self):
        """Large images fit in 128x128; small ones keep their size."""
        for name, size in (
            ("examples_palette.dcm", (128, 56)),
            ("CT_small.dcm", (128, 128)),
            ("MR_small.dcm", (64, 64)),
        ):
            image = decoded(render(testdata(name), None, "image/jpeg", thumbnail=True))
            self.assertEqual(image.size, size, name)

    def test_viewport(self):
        """A viewport sets the thumbnail's size."""
        ds = testdata("CT_small.dcm")
        image = decoded(
            render(ds, None, "image/png", viewport=(32, 32), thumbnail=True)
        )
        self.assertEqual(image.size, (32, 32))

    def test_window_ignored(self):
        """A thumbnail ignores the window parameter."""
        ds = testdata("MR_small.dcm")
        self.assertEqual(
            render(ds, None, "image/png", thumbnail=True),
            render(ds, None, "image/png", thumbnail=True, window=(0, 10, "linear")),
        )


class NotRenderableTests(SynchronousTestCase):
    """What cannot be rendered raises NotRenderable, a RenderError with status 406."""

    def test_no_pixel_data(self):
        """A data set without Pixel Data is NotRenderable."""
        ds = testdata("CT_small.dcm")
        del ds.PixelData
        exc = self.assertRaises(NotRenderable, render, ds, None, "image/png")
        self.assertIsInstance(exc, RenderError)
        self.assertEqual(exc.status, 406)
        self.assertRaises(NotRenderable, check_renderable, ds)

    def test_unsupported_photometric(self):
        """An unknown Photometric Interpretation is NotRenderable."""
        ds = ct_like(PhotometricInterpretation="HSV")
        self.assertRaises(NotRenderable, render, ds, None, "image/png")

    def test_no_decoder(self):
        """A transfer syntax pydicom cannot decode is NotRenderable."""
        ds = ct_like()
        ds.file_meta.TransferSyntaxUID = MPEG2
        self.assertRaises(NotRenderable, check_renderable, ds)
        self.assertRaises(NotRenderable, render, ds, None, "image/png")

    def test_truncated_pixel_data(self):
        """Pixel data too short for its frame is NotRenderable, cause chained."""
        ds = ct_like()
        ds.PixelData = ds.PixelData[:7]
        exc = self.assertRaises(NotRenderable, render, ds, None, "image/png")
        self.assertIsNotNone(exc.__cause__)

    def test_check_passes(self):
        """check_renderable accepts a renderable instance and media type."""
        self.assertIsNone(check_renderable(testdata("CT_small.dcm"), "image/jpeg"))
        self.assertRaises(
            NotRenderable, check_renderable, testdata("CT_small.dcm"), "video/mp4"
        )


class LazyImportTests(SynchronousTestCase):
    """Importing the module loads neither Pillow nor pydicom's pixel code."""

    def test_lazy(self):
        """A fresh interpreter importing rendered has no PIL or pydicom.pixels."""
        code = (
            "import sys, dicomtwist.web.dicomweb.rendered;"
            "print(sorted(m for m in ('PIL', 'pydicom.pixels', 'numpy')"
            " if m in sys.modules))"
        )
        root = Path(rendered.__file__).resolve().parents[3]
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        ).stdout.strip()
        self.assertEqual(out, "[]")

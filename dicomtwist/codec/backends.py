"""The pixel codecs behind the transfer syntaxes: pydicom's back ends, one frame
at a time.

Decoding is pydicom's (:func:`pydicom.pixels.get_decoder`), whose plugins
are pylibjpeg-libjpeg (JPEG, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000, HTJ2K),
pylibjpeg-rle and pydicom itself (RLE), with pyjpegls and python-gdcm as
further plugins where installed.  Encoding is pydicom's for RLE Lossless
(pylibjpeg-rle), JPEG-LS (pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg);
pydicom has no JPEG Lossless SV1 or JPEG Baseline encoder, so SV1 is written
through python-gdcm and Baseline through Pillow (libjpeg).  Each encoder here
turns one decoded frame (an ndarray as pydicom's decoders give it, Planar
Configuration 0) into one JPEG/JPEG-LS/JPEG 2000/RLE stream.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydicom.pixels import get_decoder, get_encoder

if TYPE_CHECKING:
    import numpy as np

# Lossy encodings: the quality we write when lossy output is allowed.
#: JPEG-LS NEAR parameter: no pixel differs by more than this (PS3.5 8.2.3).
JPEG_LS_NEAR = 2
#: JPEG 2000 compression ratio asked of OpenJPEG.
JPEG_2000_RATIO = 10.0
#: libjpeg quality for JPEG Baseline.
JPEG_QUALITY = 90

_RLE = "1.2.840.10008.1.2.5"
_JLS = "1.2.840.10008.1.2.4.80"
_JLS_NEAR = "1.2.840.10008.1.2.4.81"
_J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
_J2K = "1.2.840.10008.1.2.4.91"
_SV1 = "1.2.840.10008.1.2.4.70"
_BASELINE = "1.2.840.10008.1.2.4.50"


@dataclass(frozen=True)
class PixelInfo:
    """The Image Pixel module of one decoded frame (PS3.3 C.7.6.3).

    :param rows: Rows.
    :param columns: Columns.
    :param samples_per_pixel: Samples per Pixel.
    :param bits_allocated: Bits Allocated.
    :param bits_stored: Bits Stored.
    :param pixel_representation: 0 unsigned, 1 two's complement.
    :param photometric: Photometric Interpretation of the decoded pixels.
    """

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str


class FrameEncoder(Protocol):
    """Turns one decoded frame into one compressed stream."""

    def output_photometric(self, info: PixelInfo) -> str:
        """The Photometric Interpretation of the encoded data."""

    def encode(self, frame: np.ndarray, info: PixelInfo) -> bytes:
        """Return the stream for `frame` (shape (rows, columns[, samples]))."""


def can_decode(uid: str) -> bool:
    """Whether an installed pydicom plugin decodes `uid`."""
    try:
        return get_decoder(uid).is_available
    except NotImplementedError:
        return False


def can_encode(uid: str) -> bool:
    """Whether we have a working encoder for `uid`."""
    encoder = ENCODERS.get(uid)
    return encoder is not None and encoder.available()


class _PydicomEncoder:
    """A pydicom encoder (:func:`pydicom.pixels.get_encoder`), one frame.

    :param uid: the target transfer syntax.
    :param plugins: preferred plugin names, tried in order, then any.
    :param options: encoder options (``jls_error``, ``j2k_cr``).
    :param colour: the Photometric Interpretation to write for RGB input,
        when the codec applies a colour transform (JPEG 2000 RCT/ICT).
    """

    def __init__(
        self,
        uid: str,
        plugins: tuple[str, ...] = (),
        options: dict[str, object] | None = None,
        colour: str | None = None,
    ) -> None:
        self._uid = uid
        self._plugins = plugins
        self._options = options or {}
        self._colour = colour

    def available(self) -> bool:
        """Whether pydicom has a plugin for this syntax installed."""
        try:
            return get_encoder(self._uid).is_available
        except NotImplementedError:
            return False

    def output_photometric(self, info: PixelInfo) -> str:
        """RGB becomes YBR_RCT/YBR_ICT for JPEG 2000, else unchanged."""
        if self._colour and info.photometric == "RGB":
            return self._colour
        return info.photometric

    def encode(self, frame: np.ndarray, info: PixelInfo) -> bytes:
        """Encode `frame` with the first preferred plugin that is installed."""
        encoder = get_encoder(self._uid)
        installed = encoder.available_plugins
        plugin = next((name for name in self._plugins if name in installed), "")
        return encoder.encode(
            frame,
            encoding_plugin=plugin,
            rows=info.rows,
            columns=info.columns,
            samples_per_pixel=info.samples_per_pixel,
            bits_allocated=info.bits_allocated,
            bits_stored=info.bits_stored,
            pixel_representation=info.pixel_representation,
            photometric_interpretation=self.output_photometric(info),
            planar_configuration=0,
            number_of_frames=1,
            **self._options,
        )


class _GDCMLosslessSV1Encoder:
    """JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14,
    Selection Value 1), through python-gdcm: pydicom has no SV1 encoder."""

    def available(self) -> bool:
        """Whether python-gdcm is importable."""
        try:
            import gdcm  # noqa: F401
        except ImportError:
            return False
        return True

    def output_photometric(self, info: PixelInfo) -> str:
        """Unchanged: lossless JPEG applies no colour transform here."""
        return info.photometric

    def encode(self, frame: np.ndarray, info: PixelInfo) -> bytes:
        """Build a one-frame gdcm.Image and change its syntax to SV1."""
        import gdcm

        # The image must belong to a gdcm object (here an ImageWriter, as in
        # pydicom's gdcm plugin): a Python-owned gdcm.Image freed while the
        # filter still references it aborts the process.
        writer = gdcm.ImageWriter()
        image = writer.GetImage()
        image.SetNumberOfDimensions(2)
        image.SetDimensions((info.columns, info.rows, 1))
        image.SetPixelFormat(
            gdcm.PixelFormat(
                info.samples_per_pixel,
                info.bits_allocated,
                info.bits_stored,
                info.bits_stored - 1,
                info.pixel_representation,
            )
        )
        image.SetPhotometricInterpretation(
            gdcm.PhotometricInterpretation(
                gdcm.PhotometricInterpretation.GetPIType(info.photometric)
            )
        )
        if info.samples_per_pixel > 1:
            image.SetPlanarConfiguration(0)
        image.SetTransferSyntax(
            gdcm.TransferSyntax(gdcm.TransferSyntax.ExplicitVRLittleEndian)
        )
        element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
        element.SetByteStringValue(frame.tobytes())
        image.SetDataElement(element)
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(
            gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1)
        )
        change.SetInput(image)
        if not change.Change():
            raise ValueError("GDCM could not encode the frame as JPEG Lossless SV1")
        fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
        # python-gdcm hands buffers out as str; surrogateescape gets the bytes
        # back (as pydicom's own gdcm plugin does).
        return b"".join(
            fragments.GetFragment(index)
            .GetByteValue()
            .GetBuffer()
            .encode("utf-8", "surrogateescape")
            for index in range(fragments.GetNumberOfFragments())
        )


class _PillowBaselineEncoder:
    """JPEG Baseline (Process 1) through Pillow's libjpeg: 8-bit grey or RGB,
    colour written as YCbCr with 4:2:2 sub-sampling, so YBR_FULL_422
    (PS3.5 8.2.1)."""

    def available(self) -> bool:
        """Whether Pillow with JPEG support is importable."""
        try:
            from PIL import features
        except ImportError:
            return False
        return bool(features.check_codec("jpg"))

    def output_photometric(self, info: PixelInfo) -> str:
        """RGB is written as YBR_FULL_422; grey is unchanged."""
        return "YBR_FULL_422" if info.photometric == "RGB" else info.photometric

    def encode(self, frame: np.ndarray, info: PixelInfo) -> bytes:
        """Save `frame` as a JPEG Baseline stream."""
        from PIL import Image

        if info.bits_allocated != 8 or info.pixel_representation != 0:
            raise ValueError("JPEG Baseline takes unsigned 8-bit pixels only")
        if info.photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
            raise ValueError(
                f"JPEG Baseline encoding of {info.photometric} is not supported"
            )
        image = Image.fromarray(frame, mode="RGB" if info.samples_per_pixel == 3 else "L")
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:2")
        return out.getvalue()


#: Per target syntax, the encoder we use.
ENCODERS: dict[str, _PydicomEncoder | _GDCMLosslessSV1Encoder | _PillowBaselineEncoder] = {
    _RLE: _PydicomEncoder(_RLE, ("pylibjpeg", "pydicom")),
    _JLS: _PydicomEncoder(_JLS, ("pyjpegls",)),
    _JLS_NEAR: _PydicomEncoder(_JLS_NEAR, ("pyjpegls",), {"jls_error": JPEG_LS_NEAR}),
    _J2K_LOSSLESS: _PydicomEncoder(_J2K_LOSSLESS, ("pylibjpeg",), colour="YBR_RCT"),
    _J2K: _PydicomEncoder(
        _J2K, ("pylibjpeg",), {"j2k_cr": [JPEG_2000_RATIO]}, colour="YBR_ICT"
    ),
    _SV1: _GDCMLosslessSV1Encoder(),
    _BASELINE: _PillowBaselineEncoder(),
}

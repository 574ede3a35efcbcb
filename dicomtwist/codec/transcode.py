"""One stored Part 10 file rewritten in another transfer syntax, frame by frame.

Blocking: callers run :func:`transcode` in a thread pool.  The stored file is
only read.  The new file is written beside its final path and renamed into
place when complete, so on any failure nothing is left at `target_path`.

Memory: the data set before Pixel Data is parsed (pixels excluded), the
pixel element's value is read from the file one frame (or one fragment) at a
time through pydicom's frame generators, each frame is decoded, re-encoded
and written before the next is read; native-to-native copies go in 1 MiB
chunks.  So at most one decoded frame is held, whatever the frame count.
"""

from __future__ import annotations

import copy
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from dicomtwist.codec.backends import ENCODERS, PixelInfo
from dicomtwist.codec.errors import CodecError
from dicomtwist.codec.syntaxes import (
    ALWAYS_LOSSY,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    LOSSY_METHODS,
    LOSSY_TARGETS,
    NATIVE,
    can_convert,
    converts_colour,
    decoded_photometric,
)

if TYPE_CHECKING:
    import numpy as np

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
LOSSY_IMAGE_COMPRESSION_RATIO = 0x00282112

# PS3.5 7.5: item, sequence delimitation; tags as (group, element).
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
_CHUNK = 1 << 20
# Native pixel copies go through one reused buffer of this size (a multiple
# of every swap unit).
_COPY_CHUNK = 1 << 16

_ITEM_HEADER = struct.Struct("<HHL")
# PS3.5 7.1.2: explicit VR with a 4-byte length (OB, OW, OF, OD, UN ...).
_EXPLICIT_LONG = {True: struct.Struct("<HH2sHL"), False: struct.Struct(">HH2sHL")}
_IMPLICIT = struct.Struct("<HHL")
# VRs of File Meta elements with a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = {
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"
}
# Byte-swap unit per VR when the endianness changes (PS3.5 7.3).
_SWAP_UNIT = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
# Placeholder for the new Lossy Image Compression Ratio value: written before
# the ratio is known, patched in place once the last frame is encoded.
_RATIO_PLACEHOLDER = "0" * 16


@dataclass
class _Source:
    """A stored file, parsed up to its pixel data.

    :param path: the file read (for a Deflated source, the inflated copy).
    :param syntax: the stored transfer syntax.
    :param read_syntax: the syntax of `path`'s data set.
    :param preamble: the 128-byte preamble, if the file has one.
    :param file_meta: the stored File Meta Information.
    :param head: every element before the pixel data element.
    :param pixel_tag: the pixel data element's tag, or ``None``.
    :param pixel_vr: its VR (``None`` in Implicit VR).
    :param value_offset: where its value starts in `path`.
    :param value_length: its length, ``None`` if undefined (encapsulated).
    :param fragments: for encapsulated data, the fragment count (no BOT).
    :param tail: every element after the pixel data element.
    """

    path: str
    syntax: str
    read_syntax: str
    preamble: bytes | None
    file_meta: FileMetaDataset
    head: Dataset
    pixel_tag: int | None
    pixel_vr: str | None
    value_offset: int
    value_length: int | None
    fragments: int
    tail: Dataset


def transcode(
    source_path: str,
    target: str,
    target_path: str,
    *,
    allow_lossy: bool = False,
    max_frames: int = 4,
) -> None:
    """Write the Part 10 file at `source_path` to `target_path` in `target`.

    Every element, UID and the File Meta Information are kept as stored,
    except the Transfer Syntax UID and the Image Pixel attributes PS3.5 8.2
    requires to change: Photometric Interpretation (RGB after lossy JPEG
    YCbCr or JPEG 2000 ICT/RCT; YBR_RCT/YBR_ICT after JPEG 2000 compression
    of RGB; YBR_FULL_422 after JPEG Baseline compression of RGB), Planar
    Configuration 0, Lossy Image Compression "01" with Ratio and Method
    appended after lossy compression (PS3.3 C.7.6.1.1.5), and any Extended
    Offset Table dropped.

    :param source_path: the stored file; never modified.
    :param target: the transfer syntax UID to write.
    :param target_path: the new file; replaced only once complete.
    :param allow_lossy: whether `target` may be a lossy syntax.
    :param max_frames: the most decoded frames held at once (at least 1;
        this implementation holds one).
    :raises CodecError: if the conversion is impossible or the input is bad;
        then no file is left at `target_path`.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, not {max_frames}")
    directory = os.path.dirname(os.path.abspath(target_path))
    handle, partial = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(target_path)}.", suffix=".part"
    )
    os.close(handle)
    try:
        with ExitStack() as cleanup:
            _transcode(source_path, target, partial, allow_lossy, directory, cleanup)
        os.replace(partial, target_path)
    except CodecError:
        _unlink(partial)
        raise
    except Exception as exc:
        # Decoders, pydicom's parser and zlib raise what they like; the
        # caller needs one reason it can log and count.
        _unlink(partial)
        raise CodecError(_one_line(exc)) from exc
    except BaseException:
        _unlink(partial)
        raise


def transcode_bytes(
    data: bytes, target: str, *, allow_lossy: bool = False, max_frames: int = 4
) -> bytes:
    """:func:`transcode` for a file held in memory (small instances, tests).

    :param data: a Part 10 file.
    :returns: the Part 10 file in `target`.
    :raises CodecError: as :func:`transcode`.
    """
    with tempfile.TemporaryDirectory(prefix="dicomtwist-codec-") as directory:
        source = os.path.join(directory, "source.dcm")
        target_path = os.path.join(directory, "target.dcm")
        with open(source, "wb") as f:
            f.write(data)
        transcode(
            source, target, target_path, allow_lossy=allow_lossy, max_frames=max_frames
        )
        with open(target_path, "rb") as f:
            return f.read()


def _transcode(
    source_path: str,
    target: str,
    partial: str,
    allow_lossy: bool,
    directory: str,
    cleanup: ExitStack,
) -> None:
    """Do the work of :func:`transcode` into the file `partial`."""
    meta = read_file_meta_info(source_path)
    syntax = meta.get("TransferSyntaxUID")
    if not syntax:
        raise CodecError("the stored file has no Transfer Syntax UID")
    syntax = str(syntax)
    if syntax == target:
        _copy_file(source_path, partial)
        return
    source = _read_source(source_path, syntax, meta, directory, cleanup)
    head = source.head
    photometric = head.get("PhotometricInterpretation")
    bits_allocated = head.get("BitsAllocated")
    if not can_convert(
        syntax,
        target,
        allow_lossy=allow_lossy,
        photometric=str(photometric) if photometric else None,
        bits_allocated=int(bits_allocated) if bits_allocated is not None else None,
    ):
        raise CodecError(
            f"no conversion from {_name(syntax)} to {_name(target)}"
            + ("" if allow_lossy or target not in LOSSY_TARGETS else " without allow_lossy")
        )

    with open(partial, "wb") as out:
        out.write(source.preamble if source.preamble is not None else b"\x00" * 128)
        out.write(b"DICM")
        file_meta = copy.deepcopy(source.file_meta)
        file_meta.TransferSyntaxUID = target
        meta_fp = DicomFileLike(out)
        meta_fp.is_little_endian, meta_fp.is_implicit_VR = True, False
        write_file_meta_info(meta_fp, file_meta, enforce_standard=True)

        deflater = _DeflateWriter(out) if target == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN else None
        fp = DicomFileLike(deflater if deflater is not None else out)
        fp.is_little_endian = target != EXPLICIT_VR_BIG_ENDIAN
        fp.is_implicit_VR = target == IMPLICIT_VR_LITTLE_ENDIAN

        if source.pixel_tag is None or (source.read_syntax in NATIVE and target in NATIVE):
            _copy_native(source, fp)
        else:
            _recode(source, target, fp, out)
        write_dataset(fp, source.tail, parent_encoding=_charset(head))
        if deflater is not None:
            deflater.finish()


def _read_source(
    path: str, syntax: str, meta: FileMetaDataset, directory: str, cleanup: ExitStack
) -> _Source:
    """Parse `path` up to its pixel data and locate the pixel value.

    A Deflated file is first inflated (streaming) into a scratch file beside
    the target, removed by `cleanup`.
    """
    read_syntax = syntax
    preamble = _read_preamble(path)
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        path = _inflate(path, meta, directory, cleanup)
        read_syntax = EXPLICIT_VR_LITTLE_ENDIAN
    little = read_syntax != EXPLICIT_VR_BIG_ENDIAN
    implicit = read_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = dcmread(f, stop_before_pixels=True, force=True)
        # pydicom stops at the start of the first pixel data element's tag.
        start = f.tell()
        header = f.read(8)
        pixel_tag = pixel_vr = None
        value_offset = size
        value_length: int | None = 0
        fragments = 0
        if len(header) == 8:
            if implicit:
                group, element, length = _IMPLICIT.unpack(header)
            else:
                group, element, vr, _ = struct.unpack("<HH2sH" if little else ">HH2sH", header)
                pixel_vr = vr.decode("ascii", "replace")
                rest = f.read(4)
                if len(rest) < 4:
                    raise CodecError("the pixel data element header is truncated")
                (length,) = struct.unpack("<L" if little else ">L", rest)
            pixel_tag = (group << 16) | element
            value_offset = f.tell()
            if length == _UNDEFINED:
                if read_syntax in NATIVE:
                    raise CodecError("native pixel data has an undefined length")
                value_length = None
                fragments = _scan_fragments(f, size)
            else:
                if read_syntax not in NATIVE:
                    raise CodecError("encapsulated pixel data has a defined length")
                if value_offset + length > size:
                    raise CodecError(
                        f"pixel data is truncated: {size - value_offset} of {length} bytes"
                    )
                value_length = length
                f.seek(value_offset + length)
        elif header:
            raise CodecError(f"{len(header)} stray bytes after the data set at {start}")
        tail = read_dataset(f, implicit, little)
    head.file_meta = meta
    return _Source(
        path=path,
        syntax=syntax,
        read_syntax=read_syntax,
        preamble=preamble,
        file_meta=meta,
        head=head,
        pixel_tag=pixel_tag,
        pixel_vr=pixel_vr,
        value_offset=value_offset,
        value_length=value_length,
        fragments=fragments,
        tail=tail,
    )


def _scan_fragments(f: BinaryIO, size: int) -> int:
    """Walk the items of encapsulated pixel data (PS3.5 A.4) to the sequence
    delimiter, checking each length against the file; leave `f` after it.

    :returns: the number of fragments, Basic Offset Table excluded.
    """
    items = 0
    while True:
        header = f.read(8)
        if len(header) < 8:
            raise CodecError("encapsulated pixel data is truncated (no sequence delimiter)")
        group, element, length = _ITEM_HEADER.unpack(header)
        if (group, element) == _SEQUENCE_DELIMITER:
            return max(items - 1, 0)
        if (group, element) != _ITEM:
            raise CodecError(
                f"encapsulated pixel data has ({group:04X},{element:04X}) where an item belongs"
            )
        if length == _UNDEFINED or f.tell() + length > size:
            raise CodecError(f"encapsulated pixel data is truncated in item {items}")
        f.seek(length, os.SEEK_CUR)
        items += 1


def _copy_native(source: _Source, fp: DicomFileLike) -> None:
    """Write the data set with its native pixel value copied in chunks,
    byte-swapped by VR when the endianness changes."""
    head = source.head
    write_dataset(fp, head)
    if source.pixel_tag is None:
        return
    length = source.value_length
    assert length is not None
    if source.pixel_tag == PIXEL_DATA:
        _check_native_length(head, length)
    vr = source.pixel_vr or _native_vr(source.pixel_tag, _pixel_int(head, "BitsAllocated"))
    target_little = fp.is_little_endian
    source_little = source.read_syntax != EXPLICIT_VR_BIG_ENDIAN
    unit = _SWAP_UNIT.get(vr, 1) if target_little != source_little else 1
    padded = length + length % 2
    _write_element_header(fp, source.pixel_tag, vr, padded)
    buffer = bytearray(_COPY_CHUNK)
    with open(source.path, "rb") as f:
        f.seek(source.value_offset)
        remaining = length
        while remaining:
            view = memoryview(buffer)[: min(_COPY_CHUNK, remaining)]
            read = f.readinto(view)
            if not read:
                raise CodecError("pixel data ended early")
            remaining -= read
            if unit > 1:
                import numpy

                words = numpy.frombuffer(view[:read], dtype=f"<u{unit}")
                words.byteswap(inplace=True)
            fp.write(view[:read])
    if padded != length:
        fp.write(b"\x00")


def _recode(source: _Source, target: str, fp: DicomFileLike, out: BinaryIO) -> None:
    """Decode each frame and write it native or re-encoded in `target`."""
    head = source.head
    if source.pixel_tag != PIXEL_DATA:
        raise CodecError("only Pixel Data (7FE0,0010) can be compressed or decompressed")
    rows, columns = _pixel_int(head, "Rows"), _pixel_int(head, "Columns")
    samples = _pixel_int(head, "SamplesPerPixel")
    bits_allocated = _pixel_int(head, "BitsAllocated")
    bits_stored = int(head.get("BitsStored", bits_allocated))
    representation = int(head.get("PixelRepresentation", 0))
    frames = _number_of_frames(head)
    if bits_allocated % 8:
        raise CodecError(f"Bits Allocated {bits_allocated} is only copied between native syntaxes")
    if source.read_syntax in NATIVE:
        assert source.value_length is not None
        _check_native_length(head, source.value_length)
    elif source.fragments < frames:
        raise CodecError(f"{source.fragments} fragments cannot hold {frames} frames")

    decoded = _decoded_frames(source, frames, (rows, columns, samples))
    try:
        first, properties = next(decoded)
    except StopIteration:
        raise CodecError("the pixel data holds no frame") from None
    stored_photometric = str(head.get("PhotometricInterpretation", ""))
    photometric = decoded_photometric(
        source.syntax, str(properties.get("photometric_interpretation", stored_photometric))
    )
    info = PixelInfo(
        rows, columns, samples, bits_allocated, bits_stored, representation, photometric
    )

    for tag in (EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS):
        if tag in head:
            del head[tag]
    if samples > 1 or "PlanarConfiguration" in head:
        head.PlanarConfiguration = 0
    if source.syntax in ALWAYS_LOSSY and "LossyImageCompression" not in head:
        head.LossyImageCompression = "01"

    def frames_in_order() -> Iterator[np.ndarray]:
        nonlocal first
        frame, first = first, None
        yield frame
        del frame
        for frame, _ in decoded:
            yield frame
            del frame

    if target in NATIVE:
        head.PhotometricInterpretation = photometric
        write_dataset(fp, head)
        frame_length = rows * columns * samples * (bits_allocated // 8)
        total = frame_length * frames
        vr = "OB" if bits_allocated == 8 else "OW"
        _write_element_header(fp, PIXEL_DATA, vr, total + total % 2)
        order = "<" if fp.is_little_endian else ">"
        import numpy

        for frame in frames_in_order():
            if frame.dtype.itemsize != bits_allocated // 8:
                raise CodecError(
                    f"decoded {frame.dtype} pixels do not fit Bits Allocated {bits_allocated}"
                )
            frame = numpy.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder(order))
            fp.write(memoryview(frame).cast("B"))
            del frame
        if total % 2:
            fp.write(b"\x00")
        return

    encoder = ENCODERS[target]
    head.PhotometricInterpretation = encoder.output_photometric(info)
    lossy = target in LOSSY_TARGETS
    ratio_at = None
    if lossy:
        ratios = _values(head, "LossyImageCompressionRatio")
        methods = _values(head, "LossyImageCompressionMethod")
        head.LossyImageCompression = "01"
        head.LossyImageCompressionRatio = [*ratios, _RATIO_PLACEHOLDER]
        head.LossyImageCompressionMethod = [*methods, LOSSY_METHODS[target]]
        write_dataset(fp, head[:LOSSY_IMAGE_COMPRESSION_RATIO])
        # Explicit VR Little Endian (every encapsulated syntax): the DS value
        # follows an 8-byte header (PS3.5 7.1.2).
        ratio_at = fp.tell() + 8
        write_dataset(fp, head[LOSSY_IMAGE_COMPRESSION_RATIO:], parent_encoding=_charset(head))
    else:
        write_dataset(fp, head)

    # PS3.5 A.4: undefined length, an empty Basic Offset Table, one fragment
    # per frame, a sequence delimiter.
    fp.write(_EXPLICIT_LONG[True].pack(0x7FE0, 0x0010, b"OB", 0, _UNDEFINED))
    fp.write(_ITEM_HEADER.pack(*_ITEM, 0))
    encoded = 0
    for frame in frames_in_order():
        stream = encoder.encode(frame, info)
        del frame
        padding = len(stream) % 2
        fp.write(_ITEM_HEADER.pack(*_ITEM, len(stream) + padding))
        fp.write(stream)
        if padding:
            fp.write(b"\x00")
        encoded += len(stream) + padding
    fp.write(_ITEM_HEADER.pack(*_SEQUENCE_DELIMITER, 0))

    if ratio_at is not None:
        uncompressed = rows * columns * samples * (bits_allocated // 8) * frames
        ratio = f"{uncompressed / max(encoded, 1):.4f}"[:16].ljust(16)
        end = out.tell()
        out.seek(ratio_at + len("\\".join(ratios)) + (1 if ratios else 0))
        out.write(ratio.encode("ascii"))
        out.seek(end)


def _decoded_frames(
    source: _Source, frames: int, shape: tuple[int, int, int]
) -> Iterator[tuple[np.ndarray, dict[str, object]]]:
    """Yield ``(frame, pixel properties)`` for each of `frames` frames.

    Each frame is read from the file on its own (native: its byte range;
    encapsulated: :func:`pydicom.encaps.generate_frames` over the open file,
    which joins a frame's fragments) and decoded on its own, so nothing of
    the previous frame is alive while the next one is decoded.
    """
    head = source.head
    rows, columns, samples = shape
    want = (rows, columns) if samples == 1 else (rows, columns, samples)
    options = as_pixel_options(head)
    options.pop("extended_offsets", None)
    options["transfer_syntax_uid"] = UID(source.read_syntax)
    options["pixel_keyword"] = "PixelData"
    options["number_of_frames"] = 1
    options["as_rgb"] = converts_colour(source.syntax)
    if source.pixel_vr:
        options["pixel_vr"] = source.pixel_vr
    try:
        decoder = get_decoder(source.read_syntax)
    except NotImplementedError:
        raise CodecError(f"no decoder for {_name(source.read_syntax)}") from None
    plugin = _fastest_plugin(source.read_syntax, decoder.available_plugins)
    if plugin is not None:
        options["decoding_plugin"] = plugin
    with open(source.path, "rb") as f:
        f.seek(source.value_offset)
        for index, encoded in enumerate(_encoded_frames(source, f, frames, want)):
            try:
                frame, properties = decoder.as_array(encoded, **options)
            except Exception as exc:
                raise CodecError(
                    f"frame {index} of {_name(source.read_syntax)} does not decode: "
                    + _last_line(exc)
                ) from exc
            del encoded
            if frame.shape != want:
                raise CodecError(f"frame {index} decoded to {frame.shape}, expected {want}")
            yield frame, properties
            del frame


#: Decoding plugins by speed, measured per family on this project's
#: benchmark images (512x512 16-bit JPEG-LS: pyjpegls 5.1 ms, GDCM 7.2,
#: pylibjpeg 17.7; JPEG 2000: pylibjpeg 2.1, Pillow 2.5, GDCM 4.9).
#: Each decodes the lossless syntaxes exactly (tests/test_codec.py).
_DECODER_ORDER = {
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.90": ("pylibjpeg", "gdcm"),
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "gdcm"),
}
# The JPEG processes keep pydicom's order: pylibjpeg's YCbCr to RGB differs
# from DCMTK's by up to 3 where GDCM's and Pillow's differ by 1.


def _fastest_plugin(syntax: str, available: tuple[str, ...]) -> str | None:
    """The fastest installed decoding plugin for a syntax, or None for
    pydicom's own choice."""
    for name in _DECODER_ORDER.get(syntax, ()):
        if name in available:
            return name
    return None


def _encoded_frames(
    source: _Source, f: BinaryIO, frames: int, shape: tuple[int, ...]
) -> Iterator[bytes]:
    """Yield each frame's bytes as stored: a native frame, or an encoded
    frame wrapped as a one-frame encapsulated value (PS3.5 A.4) for pydicom."""
    if source.read_syntax in NATIVE:
        length = math.prod(shape) * (_pixel_int(source.head, "BitsAllocated") // 8)
        for index in range(frames):
            data = f.read(length)
            if len(data) != length:
                raise CodecError(f"frame {index} of the native pixel data is cut short")
            yield data
        return
    head = source.head
    offsets = None
    if EXTENDED_OFFSET_TABLE in head and EXTENDED_OFFSET_TABLE_LENGTHS in head:
        offsets = (head[EXTENDED_OFFSET_TABLE].value, head[EXTENDED_OFFSET_TABLE_LENGTHS].value)
    count = 0
    for encoded in generate_frames(f, number_of_frames=frames, extended_offsets=offsets):
        if count == frames:
            # JPEG without a Basic Offset Table may split oddly; pydicom
            # then yields more frames than there are.
            break
        count += 1
        padding = len(encoded) % 2
        yield b"".join(
            (
                _ITEM_HEADER.pack(*_ITEM, 0),
                _ITEM_HEADER.pack(*_ITEM, len(encoded) + padding),
                encoded,
                b"\x00" * padding,
            )
        )
    if count < frames:
        raise CodecError(f"the pixel data holds {count} frames, Number of Frames says {frames}")


def _check_native_length(head: Dataset, length: int) -> None:
    """Raise unless `length` is what the Image Pixel attributes describe
    (PS3.5 8.1.1; one trailing pad byte allowed)."""
    rows, columns = _pixel_int(head, "Rows"), _pixel_int(head, "Columns")
    samples = _pixel_int(head, "SamplesPerPixel")
    bits_allocated = _pixel_int(head, "BitsAllocated")
    frames = _number_of_frames(head)
    if str(head.get("PhotometricInterpretation", "")) == "YBR_FULL_422" and samples == 3:
        # PS3.3 C.7.6.3.1.2: two Cb and Cr samples per two pixels.
        samples = 2
    expected = (rows * columns * samples * bits_allocated * frames + 7) // 8
    if length not in (expected, expected + expected % 2):
        raise CodecError(
            f"pixel data is {length} bytes, its attributes describe {expected}"
        )


def _write_element_header(fp: DicomFileLike, tag: int, vr: str, length: int) -> None:
    """Write a pixel element's header in `fp`'s encoding."""
    if fp.is_implicit_VR:
        fp.write(_IMPLICIT.pack(tag >> 16, tag & 0xFFFF, length))
    else:
        fp.write(
            _EXPLICIT_LONG[fp.is_little_endian].pack(
                tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length
            )
        )


def _native_vr(tag: int, bits_allocated: int | None) -> str:
    """The VR of a pixel element read in Implicit VR (PS3.5 8.1.1, 8.2)."""
    if tag == FLOAT_PIXEL_DATA:
        return "OF"
    if tag == DOUBLE_FLOAT_PIXEL_DATA:
        return "OD"
    return "OB" if bits_allocated is not None and bits_allocated <= 8 else "OW"


def _pixel_int(head: Dataset, keyword: str) -> int:
    """An Image Pixel attribute that must be present."""
    value = head.get(keyword)
    if value is None or value == "":
        raise CodecError(f"pixel data without {keyword}")
    return int(value)


def _number_of_frames(head: Dataset) -> int:
    """Number of Frames, 1 when absent or empty (PS3.3 C.7.6.6)."""
    value = head.get("NumberOfFrames")
    frames = int(value) if value not in (None, "") else 1
    if frames < 1:
        raise CodecError(f"Number of Frames is {frames}")
    return frames


def _values(head: Dataset, keyword: str) -> list[str]:
    """An attribute's values as strings, empty when absent."""
    element = head.get(keyword)
    if element is None or element == "":
        return []
    values = element if isinstance(element, MultiValue) else [element]
    return [str(getattr(value, "original_string", value)) for value in values]


def _charset(head: Dataset) -> str | list[str]:
    """The character set elements after the pixel data are written in."""
    return head._character_set


def _read_preamble(path: str) -> bytes | None:
    """The 128-byte preamble, if the file has one followed by ``DICM``."""
    with open(path, "rb") as f:
        start = f.read(132)
    return start[:128] if start[128:132] == b"DICM" else None


def _skip_file_meta(f: BinaryIO) -> int:
    """Position `f` after the preamble and group 0002 (Explicit VR Little
    Endian, PS3.10 7.1) and return that offset."""
    start = f.read(132)
    if start[128:132] != b"DICM":
        f.seek(0)
    while True:
        at = f.tell()
        header = f.read(8)
        if len(header) < 8:
            raise CodecError("the file ends inside its File Meta Information")
        group, _, vr, short = struct.unpack("<HH2sH", header)
        if group != 0x0002:
            f.seek(at)
            return at
        if vr in _LONG_VRS:
            raw = f.read(4)
            if len(raw) < 4:
                raise CodecError("the file ends inside its File Meta Information")
            (length,) = struct.unpack("<L", raw)
        else:
            length = short
        f.seek(length, os.SEEK_CUR)


def _inflate(path: str, meta: FileMetaDataset, directory: str, cleanup: ExitStack) -> str:
    """Inflate a Deflated Explicit VR Little Endian file (PS3.5 A.5) into a
    scratch Explicit VR Little Endian file, in bounded chunks."""
    handle, scratch = tempfile.mkstemp(dir=directory, prefix=".inflate-", suffix=".dcm")
    cleanup.callback(_unlink, scratch)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with os.fdopen(handle, "wb") as out, open(path, "rb") as f:
        _skip_file_meta(f)
        out.write(b"\x00" * 128 + b"DICM")
        inflated_meta = copy.deepcopy(meta)
        inflated_meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
        meta_fp = DicomFileLike(out)
        meta_fp.is_little_endian, meta_fp.is_implicit_VR = True, False
        write_file_meta_info(meta_fp, inflated_meta, enforce_standard=True)
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or f.read(_CHUNK)
            if not chunk:
                raise CodecError("the deflated data set is truncated")
            out.write(inflater.decompress(chunk, _CHUNK))
    return scratch


class _DeflateWriter:
    """A write-only file that deflates (PS3.5 A.5, raw deflate) into `out`;
    :meth:`tell` counts the bytes before compression."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._position = 0

    def write(self, data: bytes) -> int:
        """Compress `data` on to the file."""
        self._out.write(self._deflater.compress(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        """Bytes written so far, before compression."""
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """A deflated stream cannot be rewound."""
        raise OSError("a deflated data set cannot seek")

    def finish(self) -> None:
        """Flush the end of the deflate stream."""
        self._out.write(self._deflater.flush())


def _copy_file(source: str, target: str) -> None:
    """Copy the stored bytes unchanged (identity conversion)."""
    with open(source, "rb") as f, open(target, "wb") as out:
        while chunk := f.read(_CHUNK):
            out.write(chunk)


def _unlink(path: str) -> None:
    """Remove `path` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _name(uid: str) -> str:
    """A transfer syntax UID with its name, for messages."""
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _one_line(exc: BaseException) -> str:
    """The first line of an exception, with its type, for the log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _last_line(exc: BaseException) -> str:
    """The most specific line of a (pydicom, multi-line) exception message:
    its last, which names the plugin's own error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__

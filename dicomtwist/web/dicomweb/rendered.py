"""Pixels of WADO-RS "rendered" and "thumbnail" resources (PS3.18 9.5, 8.3.5).

This module turns one frame of a stored instance into a consumer image
(JPEG, PNG or GIF) and parses the rendering query parameters of PS3.18
8.3.5.1 (``window``, ``viewport``, ``quality``).  It knows nothing of HTTP
or Twisted: the resource in ``wado.py`` negotiates the media type, reads the
data set, and calls :func:`render` in a thread pool sized for codec work
(``deferToThreadPool``), because decoding and resampling block for
milliseconds to seconds.

numpy, Pillow and ``pydicom.pixels`` are imported inside the functions that
need them, so a daemon that never renders never loads them.

The grayscale pipeline is PS3.4 N.2.1.1 (and PS3.3 C.11): stored values ->
Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, PS3.3
C.11.1) -> VOI LUT (a window, PS3.3 C.11.2.1.2; or a VOI LUT Sequence,
C.11.2.1.1) -> inversion for MONOCHROME1 (PS3.3 C.7.6.3.1.2) -> 8-bit
P-values.  Color images (RGB, and YBR_* converted to RGB by the decoder)
are only scaled to 8 bits; PALETTE COLOR goes through its palette (PS3.3
C.7.6.3.1.5, C.7.9).  Then the Source Image Region is cropped and the
result scaled to the viewport (PS3.18 8.3.5.1: "Any Viewport parameters
are applied after any Source Image Region").

Errors, for the caller to map to an HTTP status (PS3.18 8.7, 9.5.3):

* :class:`RenderError` (``status`` 400 Bad Request): a query parameter is
  malformed or out of range, or the requested frame does not exist.
* :class:`NotRenderable` (``status`` 406 Not Acceptable): the instance
  exists but has no representation in the requested rendered media type:
  no pixel data, a photometric interpretation we do not render, a transfer
  syntax without an installed decoder, pixel data that fails to decode, or
  a media type we do not produce.  The original exception, if any, is
  chained (``__cause__``) for the log.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover - typing only; loaded lazily at run time
    import numpy as np
    from pydicom.dataset import Dataset

__all__ = [
    "DEFAULT_QUALITY",
    "MAX_VIEWPORT",
    "MEDIA_TYPES",
    "THUMBNAIL_SIZE",
    "NotRenderable",
    "RenderError",
    "Viewport",
    "Window",
    "check_renderable",
    "parse_quality",
    "parse_viewport",
    "parse_window",
    "render",
]

#: Rendered media types this module produces (PS3.18 8.7.4, Table 8.7.4-1),
#: mapped to the Pillow format name.
MEDIA_TYPES: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
}

#: JPEG quality when the request has no ``quality`` (PS3.18 8.3.5.1.2 leaves
#: the default to the origin server).
DEFAULT_QUALITY = 90

#: Longest side of a thumbnail when the request has no ``viewport``
#: (PS3.18 9.5: the origin server chooses the size of a thumbnail).
THUMBNAIL_SIZE = 128

#: Largest ``vw`` or ``vh`` accepted, so that one request cannot ask for a
#: gigapixel image.
MAX_VIEWPORT = 8192

#: VOI LUT Function defined terms (PS3.3 C.11.2.1.3), by the lower-case
#: token of the ``window`` parameter (PS3.18 8.3.5.1.4).
_WINDOW_FUNCTIONS = {
    "linear": "LINEAR",
    "linear-exact": "LINEAR_EXACT",
    "sigmoid": "SIGMOID",
}

#: Photometric interpretations accepted as input (PS3.3 C.7.6.3.1.2).  The
#: YBR ones are converted to RGB by pydicom's decoders (or here).
_RENDERABLE_PHOTOMETRIC = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_ICT",
        "YBR_RCT",
        "YBR_PARTIAL_420",
    }
)

#: Elements that hold pixel data (PS3.3 C.7.6.3, C.7.6.24).
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: Integer stored values spanning at most this many distinct values are
#: rendered through a lookup table built once per frame (one float per
#: possible value) instead of computing the pipeline on every pixel.
_LUT_LIMIT = 1 << 17


class RenderError(ValueError):
    """A rendering request is malformed: a bad query parameter or frame.

    The caller answers 400 Bad Request (PS3.18 8.3.5.1, 9.5.3).  The
    message names the offending parameter.
    """

    #: The HTTP status the caller should answer with.
    status = 400


class NotRenderable(RenderError):
    """The instance cannot be rendered into the requested media type.

    No pixel data, an unsupported photometric interpretation, a transfer
    syntax without an installed decoder, undecodable pixel data, or an
    unsupported media type.  The caller answers 406 Not Acceptable (PS3.18
    8.7.4: no acceptable rendered representation of the target exists).
    """

    status = 406


class Window(NamedTuple):
    """A parsed ``window`` parameter (PS3.18 8.3.5.1.4).

    ``function`` is the VOI LUT Function defined term of PS3.3 C.11.2.1.3:
    ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.
    """

    center: float
    width: float
    function: str


class Viewport(NamedTuple):
    """A parsed ``viewport`` parameter (PS3.18 8.3.5.1.3).

    ``vw`` x ``vh`` is the size of the viewport in pixels.  ``sx``, ``sy``,
    ``sw``, ``sh`` give the Source Image Region (top left corner, width and
    height, in pixels of the frame); ``None`` means the default: from the
    top left corner to the right and bottom edges of the frame.
    """

    vw: int
    vh: int
    sx: int | None = None
    sy: int | None = None
    sw: int | None = None
    sh: int | None = None


def _number(text: str, parameter: str, what: str) -> float:
    """Parse one finite decimal number of a query parameter.

    :param text: the text of the number.
    :param parameter: the query parameter, for the error message.
    :param what: which value of the parameter, for the error message.
    :returns: the number.
    :raises RenderError: not a finite number.
    """
    try:
        value = float(text.strip())
    except ValueError:
        raise RenderError(
            f"{parameter}: {what} {text.strip()!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise RenderError(f"{parameter}: {what} {text.strip()!r} is not finite")
    return value


def _integer(text: str, parameter: str, what: str) -> int:
    """Parse one decimal integer of a query parameter.

    :param text: the text of the integer (digits, optional sign).
    :param parameter: the query parameter, for the error message.
    :param what: which value of the parameter, for the error message.
    :returns: the integer.
    :raises RenderError: not an integer.
    """
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in ("+", "-") else stripped
    if not digits.isdigit() or not digits.isascii():
        raise RenderError(f"{parameter}: {what} {stripped!r} is not an integer")
    return int(stripped)


def parse_window(value: str) -> Window:
    """Parse ``window=center,width,function`` (PS3.18 8.3.5.1.4).

    ``function`` is ``linear``, ``linear-exact`` or ``sigmoid``, in any
    case; it may be left out (``center,width``), meaning ``linear``.  The
    width must be at least 1 for ``linear`` (PS3.3 C.11.2.1.2.1) and above
    0 for the others (C.11.2.1.3).

    :param value: the parameter's value, after percent-decoding.
    :returns: ``Window(center, width, function)`` with ``function`` as the
        VOI LUT Function defined term (``"LINEAR"``, ``"LINEAR_EXACT"``,
        ``"SIGMOID"``).
    :raises RenderError: malformed, or a width out of range.
    """
    parts = value.split(",")
    if len(parts) not in (2, 3):
        raise RenderError(
            f"window: expected center,width,function, got {value!r}"
        )
    center = _number(parts[0], "window", "center")
    width = _number(parts[1], "window", "width")
    token = parts[2].strip().lower() if len(parts) == 3 else "linear"
    function = _WINDOW_FUNCTIONS.get(token)
    if function is None:
        raise RenderError(
            f"window: function {parts[2].strip()!r} is not one of "
            "linear, linear-exact, sigmoid"
        )
    if function == "LINEAR" and width < 1:
        raise RenderError(f"window: width {width:g} must be at least 1 for linear")
    if width <= 0:
        raise RenderError(f"window: width {width:g} must be greater than 0")
    return Window(center, width, function)


def parse_viewport(value: str) -> Viewport:
    """Parse ``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3).

    ``vw`` and ``vh`` are required, from 1 to :data:`MAX_VIEWPORT`.  The
    Source Image Region fields come all four or not at all; each may be
    empty, meaning its default.  ``sx`` and ``sy`` must not be negative;
    ``sw`` and ``sh`` must be positive: a negative width or height, which
    PS3.18 uses to ask for a flipped image, is rejected, since this server
    does not flip.

    :param value: the parameter's value, after percent-decoding.
    :returns: a :class:`Viewport`.
    :raises RenderError: malformed, out of range, or a flip.
    """
    parts = value.split(",")
    if len(parts) not in (2, 6):
        raise RenderError(
            f"viewport: expected vw,vh or vw,vh,sx,sy,sw,sh, got {value!r}"
        )
    vw = _integer(parts[0], "viewport", "vw")
    vh = _integer(parts[1], "viewport", "vh")
    for name, size in (("vw", vw), ("vh", vh)):
        if not 1 <= size <= MAX_VIEWPORT:
            raise RenderError(
                f"viewport: {name} {size} is not between 1 and {MAX_VIEWPORT}"
            )
    region: list[int | None] = []
    for name, text in zip(("sx", "sy", "sw", "sh"), parts[2:]):
        if not text.strip():
            region.append(None)
            continue
        number = _integer(text, "viewport", name)
        if name in ("sx", "sy") and number < 0:
            raise RenderError(f"viewport: {name} {number} must not be negative")
        if name in ("sw", "sh") and number < 0:
            raise RenderError(
                f"viewport: {name} {number} is negative (flipping the image "
                "is not supported)"
            )
        if name in ("sw", "sh") and number == 0:
            raise RenderError(f"viewport: {name} must not be 0")
        region.append(number)
    return Viewport(vw, vh, *region)


def parse_quality(value: str | int) -> int:
    """Parse ``quality=n`` (PS3.18 8.3.5.1.2), an integer from 1 to 100.

    :param value: the parameter's value (text, or an int already parsed).
    :returns: the quality.
    :raises RenderError: not an integer, or out of range.
    """
    if isinstance(value, bool):
        raise RenderError(f"quality: {value!r} is not an integer")
    number = value if isinstance(value, int) else _integer(value, "quality", "value")
    if not 1 <= number <= 100:
        raise RenderError(f"quality: {number} is not between 1 and 100")
    return number


def _media_format(media_type: str) -> str:
    """The Pillow format for a rendered media type.

    :param media_type: e.g. ``image/jpeg``; parameters and case are ignored.
    :returns: the Pillow format name.
    :raises NotRenderable: not a media type this module produces.
    """
    bare = media_type.split(";", 1)[0].strip().lower()
    try:
        return MEDIA_TYPES[bare]
    except KeyError:
        raise NotRenderable(
            f"media type {media_type!r} is not one of {', '.join(MEDIA_TYPES)}"
        ) from None


def _number_of_frames(ds: Dataset) -> int:
    """Number of Frames (0028,0008), 1 when absent, empty or 0 (PS3.3 C.7.6.6).

    :param ds: the data set.
    :returns: the frame count.
    """
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(frames, 1)


def check_renderable(ds: Dataset, media_type: str | None = None) -> None:
    """Cheap checks, before any decoding, that :func:`render` can work.

    Reads only the header: pixel data present, Rows and Columns present, a
    photometric interpretation we render, a transfer syntax whose decoder
    is installed, and (if given) a media type we produce.  Passing does not
    promise that decoding will succeed.

    :param ds: the instance with its pixel data element; a read that
        defers large values (``dcmread(..., defer_size=...)``) keeps the
        check cheap, one with ``stop_before_pixels`` fails it.
    :param media_type: the negotiated rendered media type, if known.
    :raises NotRenderable: one of the checks failed.
    """
    if media_type is not None:
        _media_format(media_type)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise NotRenderable("the instance has no pixel data")
    if "Rows" not in ds or "Columns" not in ds or not ds.Rows or not ds.Columns:
        raise NotRenderable("the instance has no Rows or Columns")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _RENDERABLE_PHOTOMETRIC:
        raise NotRenderable(
            f"photometric interpretation {photometric!r} cannot be rendered"
        )
    _decoder(ds)


def _decoder(ds: Dataset) -> Any:
    """The pydicom pixel data decoder for the data set's transfer syntax.

    :param ds: the instance; its ``file_meta`` names the transfer syntax.
    :returns: a ``pydicom.pixels.decoders.base.Decoder``.
    :raises NotRenderable: no transfer syntax, none supported, or none of
        the decoder's plugins installed.
    """
    from pydicom.pixels import get_decoder

    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not syntax:
        raise NotRenderable("the instance has no Transfer Syntax UID")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise NotRenderable(
            f"no pixel data decoder for transfer syntax {syntax}"
        ) from exc
    if not decoder.is_available:
        raise NotRenderable(
            f"the decoder for transfer syntax {syntax} is not installed"
        )
    return decoder


def _decode_frame(ds: Dataset, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one frame, and only that frame.

    pydicom converts YBR_FULL and YBR_FULL_422 to RGB, and JPEG 2000's
    YBR_ICT/YBR_RCT likewise; the returned metadata gives the photometric
    interpretation of the array actually returned.

    :param ds: the instance.
    :param index: 0-based frame index, already checked.
    :returns: ``(array, metadata)``; the array is (rows, columns) or
        (rows, columns, samples), planar configuration already undone.
    :raises NotRenderable: no decoder, or the pixel data fails to decode.
    """
    from pydicom.pixels import as_pixel_options

    decoder = _decoder(ds)
    try:
        arr, meta = decoder.as_array(
            ds, index=index, validate=True, raw=False, **as_pixel_options(ds)
        )
    except Exception as exc:  # any decoder failure is a data problem here
        raise NotRenderable(f"the pixel data cannot be decoded: {exc}") from exc
    return arr, dict(meta)


def _functional_value(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """An attribute of a frame, per-frame, shared, or top level (PS3.3 C.7.6.16).

    Enhanced multi-frame instances keep Rescale and Window values in the
    Per-frame and Shared Functional Groups; others keep them at the top.

    :param ds: the instance.
    :param index: 0-based frame index.
    :param sequence: the functional group macro's sequence keyword, e.g.
        ``PixelValueTransformationSequence``.
    :param keyword: the attribute wanted, e.g. ``RescaleSlope``.
    :returns: the value, or ``None`` when absent everywhere.
    """
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0] and items[0][keyword].value is not None:
            return items[0][keyword].value
    value = ds.get(keyword)
    return value if value not in ("", None) else None


def _first(value: Any) -> float | None:
    """The first value of a possibly multi-valued DS element, as a float.

    :param value: an element value (number, MultiValue, or None).
    :returns: the first value, or ``None`` when absent or not a number.
    """
    if value is None:
        return None
    if not isinstance(value, (int, float, str)):
        try:
            value = value[0]
        except (IndexError, TypeError):
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _apply_window(x: np.ndarray, window: Window) -> np.ndarray:
    """Map values through a window to the 0..255 range (PS3.3 C.11.2.1.2-3).

    With y_min 0 and y_max 255: LINEAR (C.11.2.1.2.1) uses c - 0.5 and
    w - 1; LINEAR_EXACT (C.11.2.1.3.2) uses c and w unchanged, both clamped
    below and above the window; SIGMOID (C.11.2.1.3.1) is
    255 / (1 + exp(-4 (x - c) / w)).

    :param x: float64 values (output of the Modality LUT).
    :param window: the window, already checked.
    :returns: float64 values in 0..255.
    """
    import numpy as np

    center, width, function = window
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR":
        center -= 0.5
        width -= 1.0
        if width == 0:
            # No values lie strictly inside: x <= c - 0.5 -> y_min, else y_max.
            return np.where(x > center, 255.0, 0.0)
    y = ((x - center) / width + 0.5) * 255.0
    return np.clip(y, 0.0, 255.0, out=y)


def _dataset_window(ds: Dataset, index: int) -> Window | None:
    """The data set's first Window Center/Width and VOI LUT Function.

    :param ds: the instance.
    :param index: 0-based frame index (for functional groups).
    :returns: the window, or ``None`` when absent or not usable (then the
        next VOI choice applies).
    """
    center = _first(_functional_value(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_functional_value(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None:
        return None
    function = str(
        _functional_value(ds, index, "FrameVOILUTSequence", "VOILUTFunction")
        or "LINEAR"
    ).strip().upper()
    if function not in _WINDOW_FUNCTIONS.values():
        return None
    if (function == "LINEAR" and width < 1) or width <= 0:
        return None
    return Window(center, width, function)


def _normalise_window(window: tuple[Any, ...]) -> Window:
    """Accept a window tuple with either spelling of the function.

    :param window: ``(center, width)`` or ``(center, width, function)``,
        the function as a query token (``linear-exact``) or a defined term
        (``LINEAR_EXACT``).
    :returns: a checked :class:`Window`.
    :raises RenderError: not a valid window.
    """
    if len(window) not in (2, 3):
        raise RenderError(
            f"window: expected (center, width, function), got {window!r}"
        )
    function = str(window[2]) if len(window) == 3 else "linear"
    token = function.strip().lower().replace("_", "-")
    return parse_window(f"{window[0]},{window[1]},{token}")


def _grayscale(
    arr: np.ndarray, ds: Dataset, index: int, photometric: str, window: Window | None
) -> np.ndarray:
    """Render a MONOCHROME1/2 frame to 8-bit P-values (PS3.4 N.2.1.1).

    Modality LUT, then VOI: ``window`` if given, else the data set's first
    window, else its VOI LUT Sequence, else the frame's minimum and maximum
    (after the Modality LUT) stretched over 0..255; then MONOCHROME1 is
    inverted.  Integer frames with a modest range go through a lookup table
    over the stored values actually spanned.

    :param arr: the decoded frame, (rows, columns).
    :param ds: the instance.
    :param index: 0-based frame index.
    :param photometric: ``MONOCHROME1`` or ``MONOCHROME2``.
    :param window: the request's window, or ``None``.
    :returns: uint8 (rows, columns).
    """
    import numpy as np

    if np.issubdtype(arr.dtype, np.integer) and arr.size:
        low = int(arr.min())
        high = int(arr.max())
        if high - low < _LUT_LIMIT:
            offsets = np.subtract(arr, low, dtype=np.int64)
            present = np.bincount(offsets.ravel(), minlength=high - low + 1) > 0
            stored = np.arange(low, high + 1, dtype=np.int64)
            lut = _gray_values(stored, present, ds, index, photometric, window)
            return lut[offsets]
    # Wide integer ranges stay integers, so a Modality LUT still applies.
    values = arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float64)
    return _gray_values(np.asarray(values), None, ds, index, photometric, window)


def _gray_values(
    stored: np.ndarray,
    present: np.ndarray | None,
    ds: Dataset,
    index: int,
    photometric: str,
    window: Window | None,
) -> np.ndarray:
    """The grayscale pipeline on an array of stored values.

    :param stored: stored values: every value of a lookup table's range
        (int64), or the frame itself (float64).
    :param present: for a lookup table, which entries occur in the frame
        (for the min/max fallback); ``None`` when ``stored`` is the frame.
    :param ds: the instance.
    :param index: 0-based frame index.
    :param photometric: ``MONOCHROME1`` or ``MONOCHROME2``.
    :param window: the request's window, or ``None``.
    :returns: uint8 P-values, same shape as ``stored``.
    """
    import numpy as np

    # Modality LUT (PS3.3 C.11.1): a LUT Sequence wins over Rescale.
    if ds.get("ModalityLUTSequence") and np.issubdtype(stored.dtype, np.integer):
        from pydicom.pixels import apply_modality_lut

        x = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    else:
        transform = "PixelValueTransformationSequence"
        slope = _first(_functional_value(ds, index, transform, "RescaleSlope"))
        intercept = _first(_functional_value(ds, index, transform, "RescaleIntercept"))
        x = stored.astype(np.float64)
        if slope is not None and slope != 1.0:
            x *= slope
        if intercept:
            x += intercept

    # VOI (PS3.3 C.11.2): request, data set window, VOI LUT, min/max.
    chosen = window or _dataset_window(ds, index)
    y: np.ndarray | None = None
    if chosen is not None:
        y = _apply_window(x, chosen)
    elif ds.get("VOILUTSequence"):
        y = _voi_lut(x, ds)
    if y is None:
        sample = x if present is None else x[present]
        finite = sample[np.isfinite(sample)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 0.0
        if high > low:
            y = (x - low) * (255.0 / (high - low))
            np.clip(y, 0.0, 255.0, out=y)
        else:
            y = np.zeros_like(x)

    y = np.nan_to_num(y, nan=0.0, posinf=255.0, neginf=0.0)
    if photometric == "MONOCHROME1":
        # Minimum value is white (PS3.3 C.7.6.3.1.2).
        y = 255.0 - y
    # Round half up to the nearest P-value.
    return np.floor(y + 0.5).astype(np.uint8)


def _voi_lut(x: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Apply the first VOI LUT Sequence item, scaled to 0..255 (PS3.3 C.11.2.1.1).

    The LUT's output range is 0 to 2**n - 1, n the third value of its LUT
    Descriptor.

    :param x: float64 Modality LUT output; rounded to integers as the LUT
        input.
    :param ds: the instance.
    :returns: float64 values in 0..255, or ``None`` when the LUT is not
        usable (then the min/max fallback applies).
    """
    import numpy as np
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    descriptor = item.get("LUTDescriptor")
    if not descriptor or len(descriptor) != 3 or "LUTData" not in item:
        return None
    try:
        out = apply_voi(np.rint(x).astype(np.int64), ds, 0)
    except (NotImplementedError, ValueError, AttributeError, IndexError):
        return None
    top = float(2 ** int(descriptor[2]) - 1)
    return np.clip(out.astype(np.float64) * (255.0 / top), 0.0, 255.0)


def _to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    """Scale unsigned samples of ``bits`` significant bits to 0..255.

    :param arr: integer or float samples.
    :param bits: the significant bits (Bits Stored, or the LUT depth).
    :returns: uint8, same shape.
    """
    import numpy as np

    if arr.dtype == np.uint8 and bits == 8:
        return arr
    top = float(2**bits - 1)
    y = arr.astype(np.float64) * (255.0 / top)
    return np.floor(np.clip(y, 0.0, 255.0) + 0.5).astype(np.uint8)


def _color(
    arr: np.ndarray, ds: Dataset, photometric: str, meta: dict[str, Any]
) -> np.ndarray:
    """Render a color frame to 8-bit RGB (PS3.3 C.7.6.3.1.2, C.7.6.3.1.5).

    :param arr: the decoded frame.
    :param ds: the instance (for the palette).
    :param photometric: the photometric interpretation of ``arr``.
    :param meta: the decoder's metadata (for Bits Stored).
    :returns: uint8 (rows, columns, 3).
    :raises NotRenderable: a photometric interpretation we cannot convert.
    """
    import numpy as np

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:  # missing or malformed palette
            raise NotRenderable(f"the palette cannot be applied: {exc}") from exc
        rgb = rgb[..., :3]  # drop any alpha (PS3.3 C.7.6.3.1.5)
        return _to_8bit(rgb, 16 if rgb.dtype == np.uint16 else 8)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise NotRenderable(
            f"photometric interpretation {photometric!r} with "
            f"{arr.shape[-1] if arr.ndim == 3 else 1} samples cannot be rendered"
        )
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        # pydicom's decoders convert already; this is for those that do not.
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, photometric, "RGB")
    elif photometric != "RGB":
        raise NotRenderable(
            f"photometric interpretation {photometric!r} cannot be rendered"
        )
    bits = int(meta.get("bits_stored") or ds.get("BitsStored") or 8)
    return _to_8bit(arr, bits)


def _crop(pixels: np.ndarray, viewport: Viewport) -> np.ndarray:
    """Cut the Source Image Region out of the frame (PS3.18 8.3.5.1.3).

    A region reaching past the frame is clipped to it.

    :param pixels: the rendered frame, rows first.
    :param viewport: the request's viewport.
    :returns: the region (a view).
    :raises RenderError: the region starts outside the frame.
    """
    rows, columns = pixels.shape[:2]
    sx = viewport.sx or 0
    sy = viewport.sy or 0
    if sx >= columns or sy >= rows:
        raise RenderError(
            f"viewport: region origin ({sx},{sy}) is outside the "
            f"{columns}x{rows} image"
        )
    sw = viewport.sw if viewport.sw is not None else columns - sx
    sh = viewport.sh if viewport.sh is not None else rows - sy
    return pixels[sy : sy + sh, sx : sx + sw]


def _fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Largest size with the image's aspect ratio fitting in a box.

    :param width: image width.
    :param height: image height.
    :param box_w: box width.
    :param box_h: box height.
    :returns: ``(width, height)``, each at least 1.
    """
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(
    ds: Dataset,
    frame: int | None,
    media_type: str,
    *,
    window: tuple[Any, ...] | None = None,
    viewport: tuple[Any, ...] | None = None,
    quality: int | None = None,
    thumbnail: bool = False,
) -> bytes:
    """Render one frame of an instance as a consumer image (PS3.18 9.5).

    Blocking (decoding, LUTs, resampling, encoding): run it in a thread pool.

    Frames: ``frame`` is 1-based, as frame numbers are in DICOM (PS3.3
    C.7.6.6).
    ``None``, for the "rendered" or "thumbnail" resource of an instance,
    renders frame 1, also of a multi-frame instance: this server renders
    instances as a single still image, not as a video or an animation.

    Window: the request's ``window`` (as :func:`parse_window` returns it)
    wins; else the data set's first Window Center/Width with its VOI LUT
    Function (in the frame's functional groups for an enhanced
    multi-frame); else its VOI LUT Sequence; else the frame's minimum and
    maximum.  ``window`` is ignored for color images, and for thumbnails,
    which always use the data set's own presentation.

    Viewport: the Source Image Region, if any, is cut out, then scaled to
    the largest size that fits ``vw`` x ``vh`` with the aspect ratio kept:
    reduced or enlarged, since PS3.18 8.3.5.1.3 scales the image to the
    viewport.  Without a viewport a rendered image keeps the frame's size,
    and a thumbnail fits in :data:`THUMBNAIL_SIZE` pixels square, never
    enlarged.

    Output: 8-bit grayscale (``L``) or RGB; JPEG at ``quality`` (default
    :data:`DEFAULT_QUALITY`), PNG and GIF ignore ``quality``.

    :param ds: the instance, with its pixel data and ``file_meta``.
    :param frame: the 1-based frame number, or ``None`` for the first.
    :param media_type: ``image/jpeg``, ``image/png`` or ``image/gif``.
    :param window: ``(center, width, function)`` from :func:`parse_window`.
    :param viewport: ``(vw, vh[, sx, sy, sw, sh])`` from
        :func:`parse_viewport`.
    :param quality: 1..100 from :func:`parse_quality`.
    :param thumbnail: render the "thumbnail" resource (PS3.18 9.5).
    :returns: the encoded image.
    :raises RenderError: a bad parameter or frame number (400).
    :raises NotRenderable: the instance cannot be rendered (406).
    """
    fmt = _media_format(media_type)
    if quality is not None:
        quality = parse_quality(quality)
    chosen_window = None
    if window is not None and not thumbnail:
        chosen_window = (
            window if isinstance(window, Window) else _normalise_window(window)
        )
    port: Viewport | None = None
    if viewport is not None:
        port = (
            viewport
            if isinstance(viewport, Viewport)
            else parse_viewport(
                ",".join("" if part is None else str(part) for part in viewport)
            )
        )
    check_renderable(ds)

    frames = _number_of_frames(ds)
    number = 1 if frame is None else frame
    valid = isinstance(number, int) and not isinstance(number, bool)
    if not valid or not 1 <= number <= frames:
        raise RenderError(f"frame {frame!r} is not between 1 and {frames}")
    index = number - 1

    import numpy as np
    from PIL import Image

    arr, meta = _decode_frame(ds, index)
    photometric = str(
        meta.get("photometric_interpretation") or ds.PhotometricInterpretation
    ).strip()
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise NotRenderable(f"a {photometric} frame must have one sample per pixel")
        pixels = _grayscale(arr, ds, index, photometric, chosen_window)
    else:
        pixels = _color(arr, ds, photometric, meta)

    if port is not None:
        pixels = _crop(pixels, port)
    image = Image.fromarray(np.ascontiguousarray(pixels))

    size: tuple[int, int] | None = None
    if port is not None:
        size = _fit(image.width, image.height, port.vw, port.vh)
    elif thumbnail and max(image.size) > THUMBNAIL_SIZE:
        size = _fit(image.width, image.height, THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    if size is not None and size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)

    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, fmt, quality=quality or DEFAULT_QUALITY)
    else:
        image.save(out, fmt)
    return out.getvalue()

"""A fast, strict scanner for the header of a received data set.

:func:`scan` replaces ``pydicom.dcmread(..., stop_before_pixels=True)`` on
the C-STORE hot path.  It walks *every* top-level data element of one encoded
data set (as received in P-DATA: no preamble, no File Meta Information), which
is our well-formedness check, and keeps only the wanted elements, as
:class:`~pydicom.dataelem.RawDataElement` s that pydicom decodes on access
exactly as if ``dcmread`` had read them.

The encoding rules it checks:

- PS3.5 7.1: a data set is a sequence of data elements in increasing tag
  order.  Implicit VR (7.1.3): tag, 32-bit length.  Explicit VR (7.1.2): tag,
  VR, 16-bit length; or for OB OD OF OL OV OW SQ SV UC UN UR UT UV, tag, VR,
  two reserved bytes, 32-bit length.  Only SQ, UN, OB and OW (and any element
  in Implicit VR) may have the undefined length ``FFFFFFFFH``.
- PS3.5 7.5: a sequence value is items (FFFE,E000), each of defined length or
  ended by an Item Delimitation Item (FFFE,E00D); an undefined-length value
  ends with a Sequence Delimitation Item (FFFE,E0DD).  Encapsulated pixel
  data (PS3.5 A.4) is a sequence of defined-length fragment items.
- PS3.5 6.2.2: the value of a UN element of undefined length is encoded in
  Implicit VR Little Endian, whatever the transfer syntax.

Values of defined length are jumped over, never read, and defined-length
items are not looked into; undefined-length values are walked item by item,
their nested data sets element by element, down to ``MAX_DEPTH`` sequences.
The buffer (possibly a large ``mmap``) is never copied: only the values of
the wanted elements are.  :func:`scan_fragments` reads a data set still in
the fragments it arrived in (a spooled C-STORE), copying only small
windows around the element headers it reads and the wanted values, so
neither the data set nor its Pixel Data is ever joined.
"""

from __future__ import annotations

import mmap
import os
from bisect import bisect_right
from collections.abc import Collection, Sequence
from copy import copy
from functools import lru_cache
from itertools import accumulate
from struct import Struct, error as StructError

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomtwist.storage.files import dataset_offset

__all__ = ["HeaderError", "MAX_DEPTH", "WINDOW", "scan", "scan_fragments", "tag_object"]


class HeaderError(ValueError):
    """The data set is not well formed (the message says where and why)."""


#: Deepest nesting of undefined-length sequences walked (a top-level
#: sequence is at depth 1).
MAX_DEPTH = 16
#: Bytes of a fragmented data set copied at a time to read its element
#: headers (:func:`scan_fragments`): a CT's whole header, up to its Pixel
#: Data element's, fits in one.
WINDOW = 4096

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITATION = 0xFFFEE00D
_SEQUENCE_DELIMITATION = 0xFFFEE0DD
_SPECIFIC_CHARACTER_SET = 0x00080005
_PIXEL_REPRESENTATION = 0x00280103
_LUT_DESCRIPTOR = 0x00283002
_LUT_DATA = 0x00283006

#: Explicit VR -> size of the element header (PS3.5 7.1.2): 12 for the VRs
#: with a 32-bit length, 8 for the others.
_HEADER_SIZE: dict[bytes, tuple[str, int]] = {
    **{vr.encode(): (vr, 12) for vr in "OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()},
    **{vr.encode(): (vr, 8) for vr in
       "AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()},
}
#: Explicit VRs that may have an undefined length (PS3.5 7.1.1, 7.1.2).
_UNDEFINED_VRS = frozenset({"SQ", "UN", "OB", "OW"})

# (implicit VR, little endian) -> element header; items and delimiters
# are always tag + 32-bit length.
_ELEMENT = {
    (True, True): Struct("<HHL"),
    (True, False): Struct(">HHL"),
    (False, True): Struct("<HH2sH"),
    (False, False): Struct(">HH2sH"),
}
_ITEM_HEADER = {True: Struct("<HHL"), False: Struct(">HHL")}
_LENGTH = {True: Struct("<L"), False: Struct(">L")}

#: Transfer syntaxes whose data set is deflated (PS3.5 A.5, A.6) although
#: pydicom 3.0's ``UID.is_deflated`` may not say so.
_DEFLATED = frozenset({
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
})
_ENCODINGS: dict[str, tuple[bool, bool]] = {}

#: Elements whose implicit-VR decoding depends on another element (pydicom
#: resolves 'US or SS' with Pixel Representation, LUT Data with LUT
#: Descriptor): that element is kept too, so the value decodes as dcmread's.
_DEPENDS_ON = {
    **{tag: _PIXEL_REPRESENTATION for tag, entry in DicomDictionary.items()
       if entry[0] == "US or SS"},
    _LUT_DATA: _LUT_DESCRIPTOR,
}


def _where(tag: int, offset: int) -> str:
    """Name an element and its offset for an error message."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) at offset {offset:#x}"


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """Return (implicit VR, little endian) of a transfer syntax's data set.

    :raises NotImplementedError: the data set is deflated, or the UID is not
        a transfer syntax pydicom knows.
    """
    try:
        return _ENCODINGS[transfer_syntax]
    except KeyError:
        pass
    uid = UID(transfer_syntax.rstrip("\0 "))
    try:
        deflated = uid in _DEFLATED or uid.is_deflated
        encoding = (uid.is_implicit_VR, uid.is_little_endian)
    except ValueError:
        raise NotImplementedError(f"unknown transfer syntax {transfer_syntax!r}") from None
    if deflated:
        raise NotImplementedError(f"deflated transfer syntax {uid}")
    if len(_ENCODINGS) < 256:
        _ENCODINGS[transfer_syntax] = encoding
    return encoding


@lru_cache(maxsize=64)
def _keep(wanted: frozenset[int]) -> dict[int, BaseTag]:
    """The tags to keep: ``wanted``, (0008,0005), and what decoding needs.

    Besides Specific Character Set, a private element's creator
    (gggg,00xx) is kept (pydicom finds a private element's implicit VR
    through it), and so is any element in ``_DEPENDS_ON``.
    """
    keep = set(wanted)
    keep.add(_SPECIFIC_CHARACTER_SET)
    for tag in wanted:
        if (tag >> 16) & 1 and (tag & 0xFFFF) >= 0x1000:
            keep.add(tag & 0xFFFF0000 | (tag & 0xFF00) >> 8)
        elif tag in _DEPENDS_ON:
            keep.add(_DEPENDS_ON[tag])
    # Plain int keys: the scan asks ``tag in keep`` of every element, and
    # a BaseTag key would answer each hit through its Python ``__eq__``;
    # the values are the tag objects the kept elements are keyed by.
    return {int(tag): tag_object(int(tag)) for tag in keep}


def scan(buffer: bytes | bytearray | memoryview | mmap.mmap, transfer_syntax: str,
         wanted: frozenset[int] | Collection[int]) -> Dataset:
    """Check a data set's encoding; return its wanted top-level elements.

    :param buffer: one encoded data set (bytes, ``memoryview``, ``mmap``...),
        without preamble or File Meta Information.
    :param transfer_syntax: the UID of its transfer syntax.
    :param wanted: the tags of the top-level elements to return; pass the
        same ``frozenset`` each time (what it implies is cached).
        (0008,0005) Specific Character Set is always returned when present,
        and so are the private creators of wanted private elements and the
        elements that decoding a wanted 'US or SS' or LUT Data value needs.
    :returns: a data set of ``RawDataElement`` s (pydicom decodes each on
        first access, with the data set's character set), with its original
        encoding set as ``dcmread`` sets it.
    :raises HeaderError: the data set is not well formed.
    :raises NotImplementedError: the transfer syntax is deflated or unknown
        (parse it with pydicom).
    """
    implicit, little = _encoding(transfer_syntax)
    keep = _keep(wanted if isinstance(wanted, frozenset) else frozenset(wanted))
    with memoryview(buffer) as view:
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        # A bytes buffer is read as itself: kept values are sliced from it.
        return _scan_top(buffer if type(buffer) is bytes else view, None, implicit, little,
                         keep)


def scan_fragments(parts: Sequence[bytes | memoryview], transfer_syntax: str,
                   wanted: frozenset[int] | Collection[int]) -> Dataset:
    """:func:`scan` of a data set held as its fragments, in order (as a
    C-STORE's arrive), without joining them.

    Only what is read is copied: the element headers, through windows of
    about ``WINDOW`` bytes, and the kept values; a value skipped by its
    length (Pixel Data) is not.  An element, or any field of it, may
    straddle fragments.

    :param parts: ``bytes`` or byte (format ``B``) ``memoryview`` s.
    :raises HeaderError: as :func:`scan`, with the same messages.
    :raises NotImplementedError: as :func:`scan`.
    """
    implicit, little = _encoding(transfer_syntax)
    keep = _keep(wanted if isinstance(wanted, frozenset) else frozenset(wanted))
    if len(parts) == 1 and len(parts[0]) <= WINDOW:
        return _scan_top(bytes(parts[0]), None, implicit, little, keep)
    return _scan_top(b"", _Window.fragments(parts), implicit, little, keep)


def scan_file(path: str, transfer_syntax: str, wanted: frozenset[int] | Collection[int],
              offset: int | None = None) -> Dataset:
    """:func:`scan` of the data set in a file, read through a memory map.

    :param offset: where the data set starts; None: after the File Meta
        Information group its (0002,0000) Group Length measures.
    :raises HeaderError: the data set is not well formed, or the file is
        empty.
    :raises NotImplementedError: deflated or unknown transfer syntax, or
        (``offset`` None) no Group Length to find the data set by: parse
        it with pydicom.
    """
    error: Exception
    with open(path, "rb") as fp:
        if os.fstat(fp.fileno()).st_size == 0:
            raise HeaderError("empty file")
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                start = dataset_offset(view) if offset is None else offset
                if start is None or start > len(view):
                    raise NotImplementedError("no File Meta Information Group Length")
                return scan(view[start:], transfer_syntax, wanted)
            except Exception as e:
                # Raised anew without its traceback, whose frames hold views
                # of the map (the map could not be closed while they live).
                if isinstance(e, (HeaderError, NotImplementedError)):
                    error = type(e)(*e.args)
                else:
                    error = ValueError(str(e))
            finally:
                view.release()
    raise error


@lru_cache(maxsize=64)
def _character_set(value: bytes | None) -> tuple[str, ...]:
    """Python codecs for a (0008,0005) value, as ``read_dataset`` finds them.

    Cached: the conversion costs as much as scanning 20 elements, and a
    peer sends the same few values over and over.
    """
    raw = RawDataElement(BaseTag(_SPECIFIC_CHARACTER_SET), "CS", len(value or b""), value, 0,
                         False, True)
    return tuple(convert_encodings(convert_raw_data_element(raw).value))


# Attribute values a new Dataset may share with the prototype.
_IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple, frozenset)
_PROTOTYPE = vars(Dataset())
#: The prototype's attributes a new data set shares, and those it copies.
_SHARED = {name: value for name, value in _PROTOTYPE.items() if isinstance(value, _IMMUTABLE)}
_COPIED = tuple((name, value) for name, value in _PROTOTYPE.items()
                if not isinstance(value, _IMMUTABLE) and name != "_dict")


def _new_dataset(elements: dict[BaseTag, RawDataElement], implicit: bool, little: bool,
                 encoding: str | list[str]) -> Dataset:
    """Return what ``Dataset(elements)`` then ``set_original_encoding`` would.

    That is how ``pydicom.filereader.read_dataset`` builds a data set, but
    ``Dataset.__init__`` sets its dozen attributes through the costly
    ``Dataset.__setattr__`` (about 10 us, as long as scanning 30 elements);
    here they are copied from a prototype made by ``Dataset()`` itself, the
    mutable ones (dicts) shallow-copied so that no two data sets share them.
    """
    ds = Dataset.__new__(Dataset)
    state = ds.__dict__
    state.update(_SHARED)
    for name, value in _COPIED:
        state[name] = value.copy() if type(value) is dict else copy(value)
    state["_dict"] = elements
    state["_read_implicit"] = implicit
    state["_read_little"] = little
    state["_read_charset"] = encoding
    return ds


class _Window:
    """A data set, whole or in fragments, read through one contiguous window.

    ``window`` holds the data set's bytes ``[base, limit)`` of ``end``.
    A whole buffer is its own window, which never moves (``fixed``).
    Fragments (a data set spooled as received) are read through a copy of
    ``WINDOW`` bytes (more when one read needs more, all of a data set of
    at most ``WINDOW`` bytes), made again where a read falls outside it
    (:meth:`move`): element headers and kept values are copied, a value
    skipped by its length (Pixel Data) never is.  The methods take the
    data set's offsets, whatever the window.
    """

    __slots__ = ("parts", "starts", "end", "window", "base", "limit", "fixed")

    def __init__(self, buffer: bytes | memoryview) -> None:
        """A whole buffer (``bytes`` or a byte ``memoryview``)."""
        self.parts: Sequence[bytes | memoryview] = (buffer,)
        self.starts: list[int] = []
        self.window = buffer
        self.base = 0
        self.end = self.limit = len(buffer)
        self.fixed = True

    @classmethod
    def fragments(cls, parts: Sequence[bytes | memoryview]) -> _Window:
        """The data set in ``parts`` (``bytes`` or byte ``memoryview`` s)."""
        starts = list(accumulate(map(len, parts), initial=0))
        if starts[-1] <= WINDOW:
            return cls(b"".join(parts))
        self = cls(b"")
        self.parts = parts
        self.starts = starts
        self.end = starts[-1]
        self.fixed = False
        return self

    def move(self, pos: int, need: int) -> tuple[bytes | memoryview, int, int]:
        """Make the window start at ``pos`` and hold ``need`` bytes, or all
        that is left (a read past it then raises ``struct.error``, as past
        the end of a whole buffer).  A whole buffer's window stays.

        :returns: the new ``(window, base, limit)``.
        """
        if not self.fixed:
            stop = min(self.end, pos + max(need, WINDOW))
            self.window = self.copy(pos, stop) if pos < stop else b""
            self.base = pos
            self.limit = pos + len(self.window)
        return self.window, self.base, self.limit

    def unpack(self, layout: Struct, pos: int) -> tuple:
        """``layout.unpack_from`` at offset ``pos`` of the data set.

        :raises struct.error: fewer than ``layout.size`` bytes left.
        """
        if pos < self.base or pos + layout.size > self.limit:
            self.move(pos, layout.size)
        return layout.unpack_from(self.window, pos - self.base)

    def copy(self, pos: int, stop: int) -> bytes:
        """The bytes ``[pos, stop)`` of the data set (``stop <= end``)."""
        if self.fixed:
            return bytes(self.window[pos:stop])
        starts = self.starts
        parts = self.parts
        index = bisect_right(starts, pos) - 1
        first = starts[index]
        if stop <= starts[index + 1]:
            return bytes(parts[index][pos - first:stop - first])
        pieces = [parts[index][pos - first:]]
        index += 1
        while starts[index + 1] < stop:
            pieces.append(parts[index])
            index += 1
        pieces.append(parts[index][:stop - starts[index]])
        return b"".join(pieces)


def _scan_top(window: bytes | memoryview, data: _Window | None, implicit: bool, little: bool,
              keep: dict[int, BaseTag]) -> Dataset:
    """Walk the top-level data set (PS3.5 7.1); return its kept elements
    as :func:`scan` does.

    :param window: the whole data set, if ``data`` is None (the
        :class:`_Window` the slow paths need is then made when one does).

    The hot loop: one ``unpack_from`` (two for 32-bit lengths) and a few
    comparisons per element; objects are made only for kept elements.
    It runs on one window with offsets relative to it (``pos``; ``base``
    is the window's offset in the data set) up to ``stop``, the last
    offset from which a whole element header is in the window (all of a
    whole buffer), then moves the window on.  A window it left stays right
    for its own offsets even after a nested walk moved ``data``'s.  A kept
    value of defined length inside a ``bytes`` window is sliced from it
    straight into ``bytes``, and its element made inline.
    """
    new = tuple.__new__
    if data is None:
        end = len(window)
        if type(window) is not bytes:  # each kept value is copied from it by _raw
            data = _Window(window)
    else:
        window = data.window
        end = data.end
    found: dict[BaseTag, RawDataElement] = {}
    previous = -1
    pos = base = 0
    head = 8 if implicit else 12
    try:
        while True:
            # Offsets in this window: the data set's end, the window's.
            last = end - base
            size = len(window)
            stop = last if base + size == end else size - head + 1
            # A kept value ending here or before is sliced from a bytes window.
            sliced = size if type(window) is bytes else -1
            if implicit:
                element = _ELEMENT[True, little].unpack_from
                while pos < stop:
                    group, number, length = element(window, pos)
                    tag = group << 16 | number
                    if not previous < tag < 0xFFFE0000:
                        raise _out_of_order(tag, previous, base + pos)
                    previous = tag
                    start = pos + 8
                    if length == _UNDEFINED:
                        if data is None:
                            data = _Window(window)
                        pos = _sequence_end_in(data, base + start, True, little, 1, tag) + 8 - base
                    else:
                        pos = start + length
                        if pos > last:
                            raise _past_end(tag, base + start - 8, length, end)
                    if tag in keep:
                        tag = keep[tag]
                        if length and length != _UNDEFINED and pos <= sliced:
                            found[tag] = new(RawDataElement, (tag, None, length, window[start:pos],
                                                              base + start, True, little, True,
                                                              False))
                        else:
                            found[tag] = _raw(data or window, tag, None, length, base + start,
                                              base + pos, True, little)
            else:
                element = _ELEMENT[False, little].unpack_from
                length32 = _LENGTH[little].unpack_from
                header_size = _HEADER_SIZE
                while pos < stop:
                    group, number, vr_bytes, length = element(window, pos)
                    tag = group << 16 | number
                    if not previous < tag < 0xFFFE0000:
                        raise _out_of_order(tag, previous, base + pos)
                    try:
                        vr, head = header_size[vr_bytes]
                    except KeyError:
                        raise _unknown_vr(tag, vr_bytes, base + pos) from None
                    previous = tag
                    start = pos + head
                    if head == 12:
                        length = length32(window, pos + 8)[0]
                        if length == _UNDEFINED:
                            if data is None:
                                data = _Window(window)
                            pos = _undefined_end_in(data, base + start, vr, little, 1, tag) + 8
                            if tag in keep:
                                tag = keep[tag]
                                found[tag] = _raw(data, tag, vr, length, base + start, pos,
                                                  False, little)
                            pos -= base
                            continue
                    pos = start + length
                    if pos > last:
                        raise _past_end(tag, base + start - head, length, end)
                    if tag in keep:
                        tag = keep[tag]
                        if length and pos <= sliced:
                            # What _raw makes, without its call and RawDataElement's.
                            found[tag] = new(RawDataElement, (tag, vr, length, window[start:pos],
                                                              base + start, False, little, True,
                                                              False))
                        else:
                            found[tag] = _raw(data or window, tag, vr, length, base + start,
                                              base + pos, False, little)
                head = 12
            if pos >= last:
                break
            # A window's last header straddles its end, or a value was
            # skipped past it: read on from there (never in a whole buffer).
            assert data is not None
            window, base, _ = data.move(base + pos, head)
            pos = 0
    except StructError:
        raise HeaderError(f"truncated element header at offset {base + pos:#x} "
                          f"(data set ends at {end:#x})") from None
    encoding: str | list[str] = default_encoding
    if _SPECIFIC_CHARACTER_SET in found:
        encoding = list(_character_set(found[BaseTag(_SPECIFIC_CHARACTER_SET)].value))
    return _new_dataset(found, implicit, little, encoding)


def _raw(data: _Window | bytes | memoryview, tag: BaseTag, vr: str | None, length: int,
         start: int, stop: int, implicit: bool, little: bool) -> RawDataElement:
    """A kept element, as pydicom's reader would have made it.

    :param data: the data set, or the whole buffer it is (a :class:`_Window`
        of it is made if a value is to be read).
    :param tag: its :func:`tag_object`.
    :param start: the offset of its value.
    :param stop: the offset just after it (after the Sequence Delimitation
        Item if its length is undefined: that item is not part of the value).
    """
    if not length:
        return RawDataElement(tag, vr, length, empty_value_for_VR(vr, raw=True), start,
                              implicit, little)
    if type(data) is not _Window:
        data = _Window(data)
    if length == _UNDEFINED:
        return RawDataElement(tag, _undefined_vr(data, tag, vr, start, little),
                              length, data.copy(start, stop - 8), start, implicit, little)
    return RawDataElement(tag, vr, length, data.copy(start, stop), start, implicit, little)


#: One ``BaseTag`` per kept tag, shared by every scanned data set.
_TAG_OBJECTS: dict[int, BaseTag] = {}


def tag_object(tag: int) -> BaseTag:
    """The ``BaseTag`` the scanner keys element ``tag`` by in every data set
    it returns: look elements up with this very object (``ds._dict.get``)
    and the dictionary finds it by identity, without calling
    ``BaseTag.__eq__`` (Python code) as any other int or tag would.

    Only kept tags are ever made, so the table stays small.
    """
    found = _TAG_OBJECTS.get(tag)
    if found is None:
        found = _TAG_OBJECTS.setdefault(tag, BaseTag(tag))
    return found


def _out_of_order(tag: int, previous: int, offset: int) -> HeaderError:
    """The error for a top-level tag out of order, or an item or delimiter."""
    if tag >= 0xFFFE0000:
        return HeaderError(f"{_where(tag, offset)}: item, delimiter or invalid tag "
                           "outside a sequence")
    return HeaderError(f"{_where(tag, offset)}: tag not greater than the previous "
                       f"({previous >> 16:04X},{previous & 0xFFFF:04X})")


def _unknown_vr(tag: int, vr: bytes, offset: int) -> HeaderError:
    """The error for an explicit VR that is not a DICOM VR."""
    return HeaderError(f"{_where(tag, offset)}: unknown VR {bytes(vr)!r}")


def _past_end(tag: int, offset: int, length: int, end: int) -> HeaderError:
    """The error for a value longer than the rest of the data set."""
    return HeaderError(f"{_where(tag, offset)}: value of length {length} runs past "
                       f"the end of the data set ({end:#x})")


def _undefined_end(view: memoryview, pos: int, vr: str, little: bool, depth: int,
                   tag: int) -> int:
    """:func:`_undefined_end_in` of a whole buffer (DICOM JSON's walk)."""
    return _undefined_end_in(_Window(view), pos, vr, little, depth, tag)


def _sequence_end(view: memoryview, pos: int, implicit: bool, little: bool,
                  depth: int, tag: int) -> int:
    """:func:`_sequence_end_in` of a whole buffer (DICOM JSON's walk)."""
    return _sequence_end_in(_Window(view), pos, implicit, little, depth, tag)


def _undefined_end_in(data: _Window, pos: int, vr: str, little: bool, depth: int,
                      tag: int) -> int:
    """Find the end of an explicit-VR value of undefined length.

    :returns: the offset of its Sequence Delimitation Item.
    :raises HeaderError: the VR may not have an undefined length (PS3.5
        7.1.2), or see ``_sequence_end_in``.
    """
    if vr not in _UNDEFINED_VRS:
        raise HeaderError(f"{_where(tag, pos - 12)}: undefined length for VR {vr}")
    if vr == "UN":
        # PS3.5 6.2.2: a UN value of undefined length is Implicit VR Little Endian.
        return _sequence_end_in(data, pos, True, True, depth, tag)
    return _sequence_end_in(data, pos, False, little, depth, tag)


def _undefined_vr(data: _Window, tag: int, vr: str | None, start: int,
                  little: bool) -> str | None:
    """The VR pydicom's reader gives an element of undefined length.

    Mirrors ``pydicom.filereader.data_element_generator``: an explicit UN
    is read as SQ (PS3.5 6.2.2); an implicit-VR element the dictionary does
    not know is SQ when its value starts with an item.
    """
    if vr == "UN" and config.settings.infer_sq_for_un_vr:
        return "SQ"
    if vr is None:
        try:
            dictionary_VR(tag)
        except KeyError:
            group, number, _ = data.unpack(_ITEM_HEADER[little], start)
            if group << 16 | number == _ITEM:
                return "SQ"
    return vr


def _sequence_end_in(data: _Window, pos: int, implicit: bool, little: bool,
                     depth: int, tag: int) -> int:
    """Walk the items of an undefined-length value (PS3.5 7.5.2, A.4).

    :param pos: the offset of the value.
    :param depth: the nesting depth of this value (1 at top level).
    :param tag: the tag of the element whose value this is, for messages.
    :returns: the offset of the Sequence Delimitation Item.
    :raises HeaderError: a bad or missing item or delimiter, too deep.
    """
    if depth > MAX_DEPTH:
        raise HeaderError(f"{_where(tag, pos)}: sequences nested deeper than {MAX_DEPTH}")
    item = _ITEM_HEADER[little]
    unpack = data.unpack
    end = data.end
    try:
        while True:
            group, number, length = unpack(item, pos)
            marker = group << 16 | number
            if marker == _ITEM:
                if length == _UNDEFINED:
                    pos = _item_end(data, pos + 8, implicit, little, depth)
                elif pos + 8 + length > end:
                    raise HeaderError(f"item at offset {pos:#x} in the value of "
                                      f"({tag >> 16:04X},{tag & 0xFFFF:04X}): length {length} "
                                      f"runs past the end of the data set ({end:#x})")
                else:
                    pos += 8 + length
            elif marker == _SEQUENCE_DELIMITATION:
                if length:
                    raise HeaderError(f"sequence delimitation item at offset {pos:#x}: "
                                      f"length {length}, not 0")
                return pos
            else:
                raise HeaderError(f"{_where(marker, pos)} in the value of "
                                  f"({tag >> 16:04X},{tag & 0xFFFF:04X}): "
                                  "not an item or sequence delimitation item")
    except StructError:
        raise HeaderError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): no sequence delimitation "
                          f"item before the end of the data set ({end:#x})") from None


def _item_end(data: _Window, pos: int, implicit: bool, little: bool, depth: int) -> int:
    """Walk the nested data set of an undefined-length item (PS3.5 7.5.2).

    :param pos: the offset of the item's first element.
    :param depth: the nesting depth of the sequence holding the item.
    :returns: the offset just after its Item Delimitation Item.
    :raises HeaderError: a malformed element or a missing delimiter.
    """
    element = _ELEMENT[implicit, little]
    length32 = _LENGTH[little]
    unpack = data.unpack
    end = data.end
    first = pos
    try:
        while True:
            if implicit:
                group, number, length = unpack(element, pos)
                vr, size = None, 8
            else:
                group, number, vr_bytes, length = unpack(element, pos)
            tag = group << 16 | number
            if group == 0xFFFE:
                if tag != _ITEM_DELIMITATION:
                    raise HeaderError(f"{_where(tag, pos)}: expected a data element or an "
                                      "item delimitation item")
                if unpack(_ITEM_HEADER[little], pos)[2]:
                    raise HeaderError(f"item delimitation item at offset {pos:#x}: "
                                      "length not 0")
                return pos + 8
            if not implicit:
                try:
                    vr, size = _HEADER_SIZE[vr_bytes]
                except KeyError:
                    raise _unknown_vr(tag, vr_bytes, pos) from None
                if size == 12:
                    length = unpack(length32, pos + 8)[0]
            start = pos + size
            if length != _UNDEFINED:
                pos = start + length
                if pos > end:
                    raise _past_end(tag, start - size, length, end)
            elif implicit:
                pos = _sequence_end_in(data, start, True, little, depth + 1, tag) + 8
            else:
                pos = _undefined_end_in(data, start, vr, little, depth + 1, tag) + 8
    except StructError:
        raise HeaderError(f"item starting at offset {first - 8:#x}: no item delimitation "
                          f"item before the end of the data set ({end:#x})") from None

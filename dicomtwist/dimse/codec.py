"""DIMSE command set encoding, P-DATA-TF fragmenting and data set helpers.

Command sets (PS3.7 6.3, 9.3, 10.3, Annex E) are always Implicit VR Little
Endian and hold only group 0000 elements of six VRs, so they are encoded and
decoded here with ``struct`` rather than through pydicom: the command set is
on the path of every message, and a hand-written codec is several times
faster and raises nothing but ``DIMSEDecodeError`` on peer input.  Data sets
(C-FIND identifiers and the like) go through pydicom in ``encode_dataset`` and
``decode_dataset``; ``element_prefix`` serves code that writes simple data
sets itself (C-FIND responses, ``storage.responses``).
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Iterator
from dataclasses import MISSING, fields
from io import BytesIO
from typing import Any, Callable

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from dicomtwist.dimse.messages import COMMAND_FIELDS, CStoreRQ, CStoreRSP, Message
from dicomtwist.errors import DIMSEDecodeError

__all__ = [
    "COMMAND",
    "DATA_SET_ABSENT",
    "DATA_SET_PRESENT",
    "LAST_FRAGMENT",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "decode_command",
    "decode_dataset",
    "element_prefix",
    "encode_command",
    "encode_dataset",
    "fragment",
]

COMMAND = 0x01
"""PDV Message Control Header bit 0: the fragment is command information (PS3.8 E.2)."""

LAST_FRAGMENT = 0x02
"""PDV Message Control Header bit 1: the fragment is the last of its message (PS3.8 E.2)."""

DATA_SET_ABSENT = 0x0101
"""CommandDataSetType (0000,0800) value meaning no data set follows (PS3.7 Annex E)."""

DATA_SET_PRESENT = 0x0000
"""The CommandDataSetType we send when a data set follows; any value but 0x0101 means so."""

_COMMAND_GROUP_LENGTH = 0x0000
_COMMAND_FIELD = 0x0100
_COMMAND_DATA_SET_TYPE = 0x0800

# Command elements (PS3.7 Table E.1-1): message field name -> (element, VR).
# All are in group 0000, so the element number alone is the tag's sort key.
_ELEMENTS: dict[str, tuple[int, str]] = {
    "affected_sop_class_uid": (0x0002, "UI"),
    "requested_sop_class_uid": (0x0003, "UI"),
    "message_id": (0x0110, "US"),
    "message_id_being_responded_to": (0x0120, "US"),
    "move_destination": (0x0600, "AE"),
    "priority": (0x0700, "US"),
    "status": (0x0900, "US"),
    "offending_element": (0x0901, "AT"),
    "error_comment": (0x0902, "LO"),
    "error_id": (0x0903, "US"),
    "affected_sop_instance_uid": (0x1000, "UI"),
    "requested_sop_instance_uid": (0x1001, "UI"),
    "event_type_id": (0x1002, "US"),
    "attribute_identifier_list": (0x1005, "AT"),
    "action_type_id": (0x1008, "US"),
    "number_of_remaining_sub_operations": (0x1020, "US"),
    "number_of_completed_sub_operations": (0x1021, "US"),
    "number_of_failed_sub_operations": (0x1022, "US"),
    "number_of_warning_sub_operations": (0x1023, "US"),
    "move_originator_application_entity_title": (0x1030, "AE"),
    "move_originator_message_id": (0x1031, "US"),
}

# Implicit VR Little Endian element header: group, element, value length.
_ELEMENT_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_AT = struct.Struct("<HH")
# A whole P-DATA-TF PDU header with its one PDV item header (PS3.8 9.3.5,
# E.1, E.2): PDU type, reserved, PDU length; item length, context ID, control.
_PDATA_HEADER = struct.Struct(">BxLLBB")
_PDATA_TF = 0x04
_MAX_PDU_LENGTH_FIELD = 0xFFFFFFFF


# Value encoders and decoders, by VR.


def _pad(value: bytes, pad: bytes) -> bytes:
    """Pad a value to even length (PS3.5 6.2)."""
    return value + pad if len(value) % 2 else value


def _encode_ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _encode_ae(value: str) -> bytes:
    return _pad(value.encode("ascii"), b" ")


def _encode_lo(value: str) -> bytes:
    # The command set uses the default character repertoire (PS3.7 6.3.1).
    return _pad(value.encode("ascii", "replace"), b" ")


def _encode_us(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"US value out of range: {value!r}")
    return _US.pack(value)


def _encode_at(value: tuple[int, ...]) -> bytes:
    parts = []
    for tag in value:
        if not 0 <= tag <= 0xFFFFFFFF:
            raise ValueError(f"AT value out of range: {tag!r}")
        parts.append(_AT.pack(tag >> 16, tag & 0xFFFF))
    return b"".join(parts)


def _decode_ui(raw: bytes) -> str:
    return raw.decode("ascii").rstrip("\x00 ")


def _decode_ae(raw: bytes) -> str:
    return raw.decode("ascii").strip(" \x00")


def _decode_lo(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _decode_us(raw: bytes) -> int:
    if len(raw) != 2:
        raise DIMSEDecodeError(f"US value of {len(raw)} bytes, expected 2")
    return _US.unpack(raw)[0]


def _decode_at(raw: bytes) -> tuple[int, ...]:
    if len(raw) % 4:
        raise DIMSEDecodeError(f"AT value of {len(raw)} bytes, not a multiple of 4")
    return tuple(
        (group << 16) | element
        for group, element in _AT.iter_unpack(raw)
    )


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "UI": _encode_ui,
    "AE": _encode_ae,
    "LO": _encode_lo,
    "US": _encode_us,
    "AT": _encode_at,
}

_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "UI": _decode_ui,
    "AE": _decode_ae,
    "LO": _decode_lo,
    "US": _decode_us,
    "AT": _decode_at,
}


def _layout(cls: type[Message]) -> tuple[tuple[int, str, str, bool], ...]:
    """Return a message class's elements as (element, field, VR, required), by tag."""
    entries = []
    for field in fields(cls):  # type: ignore[arg-type]
        element, vr = _ELEMENTS[field.name]
        required = field.default is MISSING and field.default_factory is MISSING
        entries.append((element, field.name, vr, required))
    return tuple(sorted(entries))


_LAYOUTS = {cls: _layout(cls) for cls in COMMAND_FIELDS.values()}
#: Per message class, ``(element, field, decoder, required)`` by tag.
_DECODING_LAYOUTS = {cls: tuple((element, name, _DECODERS[vr], required)
                                for element, name, vr, required in layout)
                     for cls, layout in _LAYOUTS.items()}
#: Per message class, its optional fields' defaults.
_DEFAULTS = {cls: {field.name: field.default for field in fields(cls)  # type: ignore[arg-type]
                   if field.default is not MISSING}
             for cls in COMMAND_FIELDS.values()}


def encode_command(msg: Message, has_dataset: bool) -> bytes:
    """Encode a message's command set in Implicit VR Little Endian (PS3.7 6.3).

    Elements are written in ascending tag order after a correct Command Group
    Length (0000,0000); optional fields that are ``None`` are left out.

    :param msg: the message.
    :param has_dataset: whether a data set follows the command set; sets
        CommandDataSetType (0000,0800).
    :returns: the encoded command set.
    :raises ValueError: a field value cannot be encoded (non-ASCII UID or AE
        title, number out of range).
    """
    # Memoised: a C-FIND's (or C-MOVE's) pending responses repeat one
    # command set.  Messages are frozen dataclasses, hashable unless a
    # field holds a list.  A C-STORE's never repeats (its SOP Instance
    # UID differs): hashing it would only cost.
    if type(msg) in _NEVER_REPEATED:
        return _encode_command(msg, has_dataset)
    try:
        return _memoised_command(msg, has_dataset)
    except TypeError:
        return _encode_command(msg, has_dataset)


@functools.lru_cache(maxsize=64)
def _memoised_command(msg: Message, has_dataset: bool) -> bytes:
    return _encode_command(msg, has_dataset)


#: Messages whose command sets are not memoised.
_NEVER_REPEATED = frozenset({CStoreRQ, CStoreRSP})
_DATA_SET_TYPE_VALUES = {True: _US.pack(DATA_SET_PRESENT), False: _US.pack(DATA_SET_ABSENT)}
#: Per message class, ``(element, field, encoder)`` in tag order, the
#: CommandField and CommandDataSetType (field None) in their places.
_ENCODING_LAYOUTS = {
    cls: tuple(sorted([(element, name, _ENCODERS[vr]) for element, name, vr, _ in layout]
                      + [(_COMMAND_FIELD, None, None), (_COMMAND_DATA_SET_TYPE, None, None)],
                      key=lambda entry: entry[0]))
    for cls, layout in _LAYOUTS.items()
}


def _encode_command(msg: Message, has_dataset: bool) -> bytes:
    header = _ELEMENT_HEADER.pack
    parts = []
    for element, name, encode in _ENCODING_LAYOUTS[type(msg)]:
        if name is None:
            raw = (_US.pack(msg.COMMAND_FIELD) if element == _COMMAND_FIELD
                   else _DATA_SET_TYPE_VALUES[bool(has_dataset)])
        else:
            value = getattr(msg, name)
            if value is None:
                continue
            raw = encode(value)
        parts.append(header(0x0000, element, len(raw)))
        parts.append(raw)
    body = b"".join(parts)
    return b"".join((
        header(0x0000, _COMMAND_GROUP_LENGTH, 4),
        _UL.pack(len(body)),
        body,
    ))


def _split_elements(data: bytes) -> dict[int, bytes]:
    """Split a command set into its elements, checking every length.

    :returns: element number -> raw value.
    :raises DIMSEDecodeError: the bytes are not a well-formed group 0000.
    """
    elements: dict[int, bytes] = {}
    end = len(data)
    offset = 0
    unpack = _ELEMENT_HEADER.unpack_from
    size = _ELEMENT_HEADER.size
    while offset < end:
        if end - offset < size:
            raise DIMSEDecodeError(f"truncated element header at byte {offset}")
        group, element, length = unpack(data, offset)
        offset += size
        if group != 0x0000:
            raise DIMSEDecodeError(
                f"element ({group:04X},{element:04X}) outside group 0000 in command set")
        if length > end - offset:
            # Also catches the undefined length 0xFFFFFFFF.
            raise DIMSEDecodeError(
                f"element (0000,{element:04X}) length {length} exceeds the command set")
        if element in elements:
            raise DIMSEDecodeError(f"element (0000,{element:04X}) appears twice")
        elements[element] = data[offset:offset + length]
        offset += length
    return elements


#: Recently decoded command sets by their bytes: a peer verifying again
#: and again sends the same C-ECHO-RQ each time, and messages are frozen,
#: so the same bytes may give the same message object.
_COMMAND_MEMO: dict[bytes, tuple[Message, bool]] = {}
#: At most this many; the memo is emptied when full.
COMMAND_MEMO_SIZE = 64
#: Longer command sets are not kept (a C-ECHO-RQ is 72 bytes, a C-STORE-RQ
#: about 160 and never repeats: its SOP Instance UID differs).
COMMAND_MEMO_MAX = 128


def decode_command(data: bytes | memoryview) -> tuple[Message, bool]:
    """Decode a command set received from a peer (PS3.7 6.3, Annex E).

    Command elements a message does not use, and unknown or retired group
    0000 elements, are ignored.  The same bytes as a recent command set
    give the same (immutable) message.

    :param data: the command set, reassembled from its PDV fragments.
    :returns: the message and whether a data set follows it.
    :raises DIMSEDecodeError: the command set is truncated, has a wrong
        Command Group Length, an unknown CommandField, lacks a required
        element or holds an undecodable value.
    """
    data = bytes(data)
    known = _COMMAND_MEMO.get(data)
    if known is not None:
        return known
    decoded = _decode_command(data)
    if len(data) <= COMMAND_MEMO_MAX:
        if len(_COMMAND_MEMO) >= COMMAND_MEMO_SIZE:
            _COMMAND_MEMO.clear()
        _COMMAND_MEMO[data] = decoded
    return decoded


def _decode_command(data: bytes) -> tuple[Message, bool]:
    """:func:`decode_command`, computed."""
    elements = _split_elements(data)
    if not data.startswith(b"\x00\x00\x00\x00"):
        raise DIMSEDecodeError("command set does not start with Command Group Length")
    group_length = elements[_COMMAND_GROUP_LENGTH]
    if len(group_length) != 4:
        raise DIMSEDecodeError(f"Command Group Length of {len(group_length)} bytes")
    declared = _UL.unpack(group_length)[0]
    if declared != len(data) - 12:
        raise DIMSEDecodeError(
            f"Command Group Length {declared} but {len(data) - 12} bytes follow")
    try:
        command_field = _decode_us(elements[_COMMAND_FIELD])
        data_set_type = _decode_us(elements[_COMMAND_DATA_SET_TYPE])
    except KeyError as e:
        raise DIMSEDecodeError(f"missing element (0000,{e.args[0]:04X})") from None
    cls = COMMAND_FIELDS.get(command_field)
    if cls is None:
        raise DIMSEDecodeError(f"unknown CommandField 0x{command_field:04X}")
    # The message's fields, its defaults first: the frozen dataclass is
    # then made without its __init__, whose object.__setattr__ per field
    # costs as much as decoding them (the same object: fields, equality,
    # hash and repr come from the class).
    state = dict(_DEFAULTS[cls])
    for element, name, decode, required in _DECODING_LAYOUTS[cls]:
        raw = elements.get(element)
        if raw is None or (not raw and decode is _decode_us):
            if required:
                raise DIMSEDecodeError(
                    f"{cls.NAME} lacks required element (0000,{element:04X})")
            continue
        try:
            state[name] = decode(raw)
        except UnicodeDecodeError:
            raise DIMSEDecodeError(
                f"element (0000,{element:04X}) is not ASCII") from None
    message = object.__new__(cls)
    message.__dict__.update(state)
    return message, data_set_type != DATA_SET_ABSENT


def fragment(context_id: int, data: bytes | memoryview, is_command: bool,
             max_pdu: int) -> Iterator[bytes]:
    """Split a command set or data set into P-DATA-TF PDUs of one PDV each.

    Each yielded PDU's length field (PS3.8 9.3.5: the bytes after its 6-byte
    header) is at most ``max_pdu``, the peer's Maximum Length Received
    (PS3.8 D.1); 0 means unlimited, bounded only by the 4-byte length field.
    The last PDV has the ``LAST_FRAGMENT`` bit; an empty ``data`` still
    yields one (last, empty) PDV.  ``data`` is sliced, not copied, so a large
    data set is held once plus one PDU.

    :param context_id: the presentation context ID.
    :param data: the encoded command set or data set.
    :param is_command: set the ``COMMAND`` bit in every PDV.
    :param max_pdu: the peer's maximum PDU length, or 0 for no limit.
    :returns: an iterator of encoded P-DATA-TF PDUs.
    :raises ValueError: ``max_pdu`` leaves no room for data.
    """
    # The PDU length counts the PDV item length field (4), the presentation
    # context ID (1) and the control header (1) before the fragment.
    overhead = 6
    if max_pdu == 0 or max_pdu > _MAX_PDU_LENGTH_FIELD:
        max_pdu = _MAX_PDU_LENGTH_FIELD
    if max_pdu <= overhead:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    chunk = max_pdu - overhead
    view = memoryview(data).cast("B")
    control = COMMAND if is_command else 0
    total = len(view)
    start = 0
    while True:
        stop = min(start + chunk, total)
        size = stop - start
        last = stop == total
        header = _PDATA_HEADER.pack(
            _PDATA_TF, size + overhead, size + 2, context_id,
            control | (LAST_FRAGMENT if last else 0))
        yield b"".join((header, view[start:stop]))
        if last:
            return
        start = stop


def _encoding(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """Return (implicit VR, little endian, deflated) for a transfer syntax.

    :raises ValueError: the UID is not a known transfer syntax.
    """
    uid = UID(transfer_syntax_uid)
    return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated


def encode_dataset(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Encode a data set (no preamble, no group 0002) in a transfer syntax.

    Implicit and Explicit VR Little Endian, Explicit VR Big Endian and
    Deflated Explicit VR Little Endian (PS3.5 A.5: raw deflate) are handled;
    other (encapsulated) syntaxes encode as Explicit VR Little Endian.

    :param ds: the data set.
    :param transfer_syntax_uid: the presentation context's transfer syntax.
    :returns: the encoded data set.
    :raises ValueError: the UID is not a known transfer syntax.
    """
    implicit, little, deflated = _encoding(transfer_syntax_uid)
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    encoded = fp.getvalue()
    if deflated:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        encoded = compressor.compress(encoded) + compressor.flush()
    return encoded


IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
"""Implicit VR Little Endian (PS3.5 A.1)."""

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
"""Explicit VR Little Endian (PS3.5 A.2)."""

_TAG = struct.Struct("<HH")
_EXPLICIT_RESERVED = b"\x00\x00"


def element_prefix(tag: int, vr: str, transfer_syntax_uid: str) -> tuple[bytes, struct.Struct]:
    """The start of a data element in Implicit or Explicit VR Little Endian.

    For encoding elements without pydicom (PS3.5 7.1): an element is
    ``prefix + length.pack(len(value)) + value``, the value already padded
    to even length.

    :param tag: the element's tag.
    :param vr: its VR (written in Explicit VR; decides the length field).
    :param transfer_syntax_uid: ``IMPLICIT_VR_LITTLE_ENDIAN`` or
        ``EXPLICIT_VR_LITTLE_ENDIAN``.
    :returns: the bytes before the value length (tag; in Explicit VR also
        the VR and, before a 4-byte length, 2 reserved bytes) and the
        ``Struct`` of the value length.
    :raises ValueError: another transfer syntax, or a VR that is not two
        characters in Explicit VR.
    """
    head = _TAG.pack(tag >> 16, tag & 0xFFFF)
    if transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return head, _UL
    if transfer_syntax_uid != EXPLICIT_VR_LITTLE_ENDIAN:
        raise ValueError(f"not a little endian uncompressed syntax: {transfer_syntax_uid}")
    if len(vr) != 2:
        raise ValueError(f"cannot write VR {vr!r} in Explicit VR")
    if vr in EXPLICIT_VR_LENGTH_32:
        return head + vr.encode("ascii") + _EXPLICIT_RESERVED, _UL
    return head + vr.encode("ascii"), _US


#: Deepest sequence nesting accepted in a received identifier.
MAX_SEQUENCE_DEPTH = 16
#: Largest inflated size of a Deflated data set (a "zip bomb" guard).
MAX_INFLATED_LENGTH = 64 * 1024 * 1024


def _parse_all(ds: Dataset, depth: int = 0) -> None:
    """Parse every element of a data set, nested ones too, checking lengths.

    pydicom reads a value cut short by the end of the data as far as it
    goes; a value shorter than its declared length is a truncated data set.

    :raises DIMSEDecodeError: a value is shorter than its declared length,
        or sequences nest deeper than ``MAX_SEQUENCE_DEPTH``.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        raise DIMSEDecodeError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if (isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF
                and raw.value is not None and len(raw.value) != raw.length):
            raise DIMSEDecodeError(
                f"element {tag} declares {raw.length} bytes but has {len(raw.value)}")
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _parse_all(item, depth + 1)


def decode_dataset(data: bytes | memoryview, transfer_syntax_uid: str) -> Dataset:
    """Decode a data set received in a transfer syntax (see ``encode_dataset``).

    Every element, in sequences too, is parsed here, so a malformed data set
    fails now rather than when a handler reads it.

    :param data: the encoded data set.
    :param transfer_syntax_uid: the presentation context's transfer syntax.
    :returns: the data set.
    :raises DIMSEDecodeError: the transfer syntax is unknown or the bytes are
        not a valid data set in it.
    """
    try:
        implicit, little, deflated = _encoding(transfer_syntax_uid)
    except ValueError as e:
        raise DIMSEDecodeError(f"unknown transfer syntax {transfer_syntax_uid!r}") from e
    raw = bytes(data)
    # pydicom and zlib raise a wide range of exception types on malformed
    # input; all of it is peer input, so all of it becomes DIMSEDecodeError.
    try:
        if deflated:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            raw = inflater.decompress(raw, MAX_INFLATED_LENGTH)
            if inflater.unconsumed_tail:
                raise DIMSEDecodeError(
                    f"deflated data set inflates past {MAX_INFLATED_LENGTH} bytes")
        ds = read_dataset(BytesIO(raw), implicit, little)
        _parse_all(ds)
    except DIMSEDecodeError:
        raise
    except Exception as e:
        raise DIMSEDecodeError(f"undecodable data set: {e}") from e
    return ds

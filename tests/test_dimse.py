"""Tests for dicomtwist.dimse.messages and dicomtwist.dimse.codec."""

from __future__ import annotations

import struct
from dataclasses import FrozenInstanceError

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.dimse import codec
from dicomtwist.dimse.codec import (
    COMMAND,
    LAST_FRAGMENT,
    decode_command,
    decode_dataset,
    encode_command,
    encode_dataset,
    fragment,
)
from dicomtwist.dimse.messages import (
    COMMAND_FIELDS,
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CStoreRQ,
    CStoreRSP,
    NActionRQ,
    NActionRSP,
    NCreateRQ,
    NCreateRSP,
    NDeleteRQ,
    NDeleteRSP,
    NEventReportRQ,
    NEventReportRSP,
    NGetRQ,
    NGetRSP,
    NSetRQ,
    NSetRSP,
    Priority,
)
from dicomtwist.errors import DIMSEDecodeError
from dicomtwist.status import Status

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
FILM_SESSION = "1.2.840.10008.5.1.1.1"

# One message of every class, with typical and optional fields filled in.
MESSAGES = [
    CEchoRQ(message_id=1),
    CEchoRQ(message_id=0xFFFF, affected_sop_class_uid=VERIFICATION),
    CEchoRSP(1, Status.SUCCESS, affected_sop_class_uid=VERIFICATION),
    CEchoRSP(2, Status.PROCESSING_FAILURE, error_comment="Busy"),
    CStoreRQ(3, CT_IMAGE, INSTANCE),
    CStoreRQ(4, CT_IMAGE, INSTANCE + "1", priority=Priority.HIGH,
             move_originator_application_entity_title="MOVESCU",
             move_originator_message_id=9),
    CStoreRSP(3, Status.SUCCESS, CT_IMAGE, INSTANCE),
    CStoreRSP(4, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, CT_IMAGE, INSTANCE,
              offending_element=(0x00100010, 0x7FE00010), error_comment="no pixels"),
    CFindRQ(5, STUDY_FIND, priority=Priority.LOW),
    CFindRSP(5, Status.PENDING, STUDY_FIND),
    CFindRSP(5, Status.UNABLE_TO_PROCESS, STUDY_FIND,
             offending_element=(0x00080052,), error_comment="bad level"),
    CGetRQ(6, STUDY_GET),
    CGetRSP(6, Status.PENDING, STUDY_GET, 10, 2, 1, 0),
    CGetRSP(6, Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES, STUDY_GET,
            None, 12, 1, 0, error_comment="1 failed"),
    CMoveRQ(7, STUDY_MOVE, "STORESCP"),
    CMoveRQ(8, STUDY_MOVE, "A" * 16, priority=Priority.MEDIUM),
    CMoveRSP(7, Status.PENDING, STUDY_MOVE, 3, 1, 0, 0),
    CMoveRSP(8, Status.MOVE_DESTINATION_UNKNOWN, STUDY_MOVE, error_comment="who?"),
    CCancelRQ(7),
    NEventReportRQ(9, PRINTER, PRINTER_INSTANCE, event_type_id=1),
    NEventReportRSP(9, Status.SUCCESS, PRINTER, PRINTER_INSTANCE, event_type_id=1),
    NGetRQ(10, PRINTER, PRINTER_INSTANCE),
    NGetRQ(11, PRINTER, PRINTER_INSTANCE,
           attribute_identifier_list=(0x21100010, 0x21100020)),
    NGetRSP(11, Status.SUCCESS, PRINTER, PRINTER_INSTANCE),
    NGetRSP(11, Status.NO_SUCH_ATTRIBUTE, error_id=3,
            attribute_identifier_list=(0x21100030,)),
    NSetRQ(12, FILM_SESSION, INSTANCE),
    NSetRSP(12, Status.INVALID_ATTRIBUTE_VALUE, FILM_SESSION, INSTANCE,
            offending_element=(0x20000010,), error_comment="copies"),
    NActionRQ(13, FILM_SESSION, INSTANCE, action_type_id=1),
    NActionRSP(13, Status.SUCCESS, FILM_SESSION, INSTANCE, action_type_id=1),
    NCreateRQ(14, FILM_SESSION),
    NCreateRQ(15, FILM_SESSION, INSTANCE),
    NCreateRSP(15, Status.SUCCESS, FILM_SESSION, INSTANCE),
    NCreateRSP(16, Status.DUPLICATE_SOP_INSTANCE, error_id=1),
    NDeleteRQ(17, FILM_SESSION, INSTANCE),
    NDeleteRSP(17, Status.NO_SUCH_SOP_INSTANCE, FILM_SESSION, INSTANCE,
               error_comment="gone"),
]

# C-ECHO-RQ, message ID 1, no data set, spelled out element by element
# (Implicit VR Little Endian: group, element, 4-byte length, value).
C_ECHO_RQ_BYTES = b"".join([
    # (0000,0000) CommandGroupLength UL 4: 56 bytes follow this element
    b"\x00\x00\x00\x00" b"\x04\x00\x00\x00" b"\x38\x00\x00\x00",
    # (0000,0002) AffectedSOPClassUID UI 18: "1.2.840.10008.1.1" + NUL pad
    b"\x00\x00\x02\x00" b"\x12\x00\x00\x00" b"1.2.840.10008.1.1\x00",
    # (0000,0100) CommandField US 2: 0x0030 C-ECHO-RQ
    b"\x00\x00\x00\x01" b"\x02\x00\x00\x00" b"\x30\x00",
    # (0000,0110) MessageID US 2: 1
    b"\x00\x00\x10\x01" b"\x02\x00\x00\x00" b"\x01\x00",
    # (0000,0800) CommandDataSetType US 2: 0x0101 no data set
    b"\x00\x00\x00\x08" b"\x02\x00\x00\x00" b"\x01\x01",
])


def element(number: int, value: bytes) -> bytes:
    """Encode one group 0000 element in Implicit VR Little Endian."""
    return struct.pack("<HHL", 0, number, len(value)) + value


def command_set(*elements: bytes) -> bytes:
    """Prefix elements with a correct Command Group Length."""
    body = b"".join(elements)
    return element(0x0000, struct.pack("<L", len(body))) + body


def parse_pdus(pdus: list[bytes]) -> list[tuple[int, int, int, bytes]]:
    """Parse P-DATA-TF PDUs of one PDV each into (pdu length, context, control, data)."""
    parsed = []
    for pdu in pdus:
        pdu_type, reserved, length = struct.unpack(">BBL", pdu[:6])
        assert pdu_type == 0x04 and reserved == 0
        assert length == len(pdu) - 6
        item_length, context_id, control = struct.unpack(">LBB", pdu[6:12])
        assert item_length == length - 4
        parsed.append((length, context_id, control, pdu[12:]))
    return parsed


class MessageTests(SynchronousTestCase):
    """The message classes and their registry."""

    def test_registry(self) -> None:
        """COMMAND_FIELDS maps each class's COMMAND_FIELD to that class."""
        self.assertEqual(len(COMMAND_FIELDS), 23)
        for command_field, cls in COMMAND_FIELDS.items():
            self.assertEqual(cls.COMMAND_FIELD, command_field)
            self.assertEqual(cls.IS_RESPONSE, bool(command_field & 0x8000))
            self.assertEqual(cls.NAME.endswith("-RSP"), cls.IS_RESPONSE)

    def test_every_class_sampled(self) -> None:
        """The round-trip samples cover every message class."""
        self.assertEqual({type(m) for m in MESSAGES}, set(COMMAND_FIELDS.values()))

    def test_command_fields(self) -> None:
        """Command Field values are those of PS3.7 Annex E."""
        self.assertEqual(CStoreRQ.COMMAND_FIELD, 0x0001)
        self.assertEqual(CStoreRSP.COMMAND_FIELD, 0x8001)
        self.assertEqual(CCancelRQ.COMMAND_FIELD, 0x0FFF)
        self.assertEqual(NDeleteRSP.COMMAND_FIELD, 0x8150)
        self.assertEqual(CStoreRQ.NAME, "C-STORE-RQ")

    def test_frozen(self) -> None:
        """Messages are immutable."""
        msg = CEchoRQ(1)
        with self.assertRaises(FrozenInstanceError):
            msg.message_id = 2  # type: ignore[misc]

    def test_priority(self) -> None:
        """Priority values are those of PS3.7 Annex E."""
        self.assertEqual((Priority.LOW, Priority.MEDIUM, Priority.HIGH), (2, 0, 1))

    def test_summary_request(self) -> None:
        """A request's summary names it and its message ID."""
        self.assertEqual(CEchoRQ(1).summary(), "C-ECHO-RQ message 1")

    def test_summary_response(self) -> None:
        """A response's summary names the request's ID and the status."""
        self.assertEqual(CStoreRSP(3, Status.SUCCESS).summary(),
                         "C-STORE-RSP message 3, status 0x0000 (Success)")
        self.assertEqual(CMoveRSP(4, 0xA801).summary(),
                         "C-MOVE-RSP message 4, status 0xA801 (Move Destination Unknown)")

    def test_summary_cancel(self) -> None:
        """A C-CANCEL-RQ's summary names the operation it cancels."""
        self.assertEqual(CCancelRQ(5).summary(), "C-CANCEL-RQ for message 5")

    def test_summary_every_class(self) -> None:
        """Every sample message has a summary starting with its NAME."""
        for msg in MESSAGES:
            self.assertTrue(msg.summary().startswith(msg.NAME + " "))


class EncodeCommandTests(SynchronousTestCase):
    """encode_command writes Implicit VR Little Endian command sets."""

    def test_c_echo_rq_bytes(self) -> None:
        """A C-ECHO-RQ encodes to the hand-built bytes."""
        self.assertEqual(encode_command(CEchoRQ(1), has_dataset=False), C_ECHO_RQ_BYTES)

    def test_decode_c_echo_rq_bytes(self) -> None:
        """The hand-built C-ECHO-RQ decodes to the message, without a data set."""
        self.assertEqual(decode_command(C_ECHO_RQ_BYTES), (CEchoRQ(1), False))

    def test_pynetdicom_echo(self) -> None:
        """A C-ECHO-RQ command set equals pynetdicom's encoding of it."""
        from pynetdicom.dimse_messages import C_ECHO_RQ
        from pynetdicom.dimse_primitives import C_ECHO

        primitive = C_ECHO()
        primitive.MessageID = 7
        primitive.AffectedSOPClassUID = VERIFICATION
        message = C_ECHO_RQ()
        message.primitive_to_message(primitive)
        (pdata,) = list(message.encode_msg(1, 0))
        ((context_id, pdv),) = pdata.presentation_data_value_list
        self.assertEqual(pdv[:1], b"\x03")
        self.assertEqual(encode_command(CEchoRQ(7), False), pdv[1:])

    def test_pynetdicom_move_rsp(self) -> None:
        """A C-MOVE-RSP command set equals pynetdicom's encoding of it."""
        from pynetdicom.dimse_messages import C_MOVE_RSP
        from pynetdicom.dimse_primitives import C_MOVE

        primitive = C_MOVE()
        primitive.MessageIDBeingRespondedTo = 5
        primitive.Status = 0xFF00
        primitive.AffectedSOPClassUID = STUDY_MOVE
        primitive.NumberOfRemainingSuboperations = 3
        primitive.NumberOfCompletedSuboperations = 1
        primitive.NumberOfFailedSuboperations = 0
        primitive.NumberOfWarningSuboperations = 0
        message = C_MOVE_RSP()
        message.primitive_to_message(primitive)
        (pdata,) = list(message.encode_msg(1, 0))
        ((context_id, pdv),) = pdata.presentation_data_value_list
        ours = encode_command(CMoveRSP(5, Status.PENDING, STUDY_MOVE, 3, 1, 0, 0), False)
        self.assertEqual(ours, pdv[1:])

    def test_group_length(self) -> None:
        """Command Group Length counts every byte after its own element."""
        for msg in MESSAGES:
            encoded = encode_command(msg, True)
            self.assertEqual(encoded[:8], b"\x00\x00\x00\x00\x04\x00\x00\x00")
            self.assertEqual(struct.unpack("<L", encoded[8:12])[0], len(encoded) - 12)

    def test_ascending_even(self) -> None:
        """Elements are in ascending tag order and every value has even length."""
        for msg in MESSAGES:
            encoded = encode_command(msg, False)
            offset, tags = 0, []
            while offset < len(encoded):
                group, number, length = struct.unpack_from("<HHL", encoded, offset)
                self.assertEqual(group, 0)
                self.assertEqual(length % 2, 0)
                tags.append(number)
                offset += 8 + length
            self.assertEqual(tags, sorted(set(tags)))

    def test_data_set_type(self) -> None:
        """CommandDataSetType is 0x0101 without a data set and 0x0000 with one."""
        without = encode_command(CEchoRQ(1), False)
        with_ = encode_command(CEchoRQ(1), True)
        self.assertEqual(without[-2:], b"\x01\x01")
        self.assertEqual(with_[-2:], b"\x00\x00")

    def test_optional_omitted(self) -> None:
        """Optional elements that are None are not written."""
        encoded = encode_command(CStoreRSP(1, 0), False)
        self.assertNotIn(b"\x00\x00\x02\x00", encoded)  # AffectedSOPClassUID
        self.assertNotIn(b"\x00\x00\x02\x09", encoded)  # ErrorComment

    def test_padding(self) -> None:
        """UIDs are padded with NUL, AE titles and comments with a space."""
        encoded = encode_command(
            CMoveRSP(1, 0xC001, "1.2.3", error_comment="odd"), False)
        self.assertIn(element(0x0002, b"1.2.3\x00"), encoded)
        self.assertIn(element(0x0902, b"odd "), encoded)
        encoded = encode_command(CMoveRQ(1, STUDY_MOVE, "ABC"), False)
        self.assertIn(element(0x0600, b"ABC "), encoded)

    def test_out_of_range(self) -> None:
        """A message ID that does not fit in US raises ValueError."""
        self.assertRaises(ValueError, encode_command, CEchoRQ(0x10000), False)


class RoundTripTests(SynchronousTestCase):
    """decode_command inverts encode_command."""

    def test_every_message(self) -> None:
        """Every sample message round-trips, with and without a data set."""
        for msg in MESSAGES:
            for has_dataset in (False, True):
                self.assertEqual(decode_command(encode_command(msg, has_dataset)),
                                 (msg, has_dataset))

    def test_memoryview(self) -> None:
        """decode_command accepts a memoryview."""
        self.assertEqual(decode_command(memoryview(C_ECHO_RQ_BYTES)), (CEchoRQ(1), False))

    def test_repeated_bytes_same_message(self) -> None:
        """The same bytes again give the same (frozen) message object, equal
        to a fresh decoding; other bytes give their own message; a long
        command set is decoded afresh each time."""
        first = decode_command(C_ECHO_RQ_BYTES)
        self.assertIs(decode_command(bytearray(C_ECHO_RQ_BYTES)), first)
        self.assertEqual(first, codec._decode_command(bytes(C_ECHO_RQ_BYTES)))
        other = decode_command(encode_command(CEchoRQ(2), False))
        self.assertEqual(other, (CEchoRQ(2), False))
        long = encode_command(CStoreRQ(3, CT_IMAGE, "1.2." + "3" * 60), True)
        self.assertGreater(len(long), codec.COMMAND_MEMO_MAX)
        self.assertIsNot(decode_command(long), decode_command(long))
        self.assertEqual(decode_command(long), (CStoreRQ(3, CT_IMAGE, "1.2." + "3" * 60), True))

    def test_memo_bounded(self) -> None:
        """The memo holds at most COMMAND_MEMO_SIZE command sets."""
        for message_id in range(1, 3 * codec.COMMAND_MEMO_SIZE):
            self.assertEqual(decode_command(encode_command(CEchoRQ(message_id), False)),
                             (CEchoRQ(message_id), False))
            self.assertLessEqual(len(codec._COMMAND_MEMO), codec.COMMAND_MEMO_SIZE)

    def test_other_present_value(self) -> None:
        """Any CommandDataSetType other than 0x0101 means a data set follows."""
        data = command_set(
            element(0x0002, b"1.2.840.10008.1.1\x00"),
            element(0x0100, b"\x30\x00"),
            element(0x0110, b"\x01\x00"),
            element(0x0800, b"\x02\x01"),
        )
        self.assertEqual(decode_command(data), (CEchoRQ(1), True))

    def test_unknown_elements_ignored(self) -> None:
        """Unknown and retired group 0000 elements, and unused ones, are ignored."""
        data = command_set(
            element(0x0001, b"\x00\x00\x00\x00"),  # retired Length to End
            element(0x0002, b"1.2.840.10008.1.1\x00"),
            element(0x0100, b"\x30\x00"),
            element(0x0110, b"\x01\x00"),
            element(0x0700, b"\x00\x00"),  # Priority: not part of C-ECHO
            element(0x0800, b"\x01\x01"),
            element(0x4000, b"ABCD"),  # retired Message Set ID
        )
        self.assertEqual(decode_command(data), (CEchoRQ(1), False))

    def test_lenient_padding(self) -> None:
        """UIDs padded with a space and AE titles with leading spaces decode trimmed."""
        data = command_set(
            element(0x0002, STUDY_MOVE.encode() + b" " * (len(STUDY_MOVE) % 2)),
            element(0x0100, b"\x21\x00"),
            element(0x0110, b"\x02\x00"),
            element(0x0600, b"  DEST  "),
            element(0x0700, b"\x00\x00"),
            element(0x0800, b"\x00\x00"),
        )
        self.assertEqual(decode_command(data), (CMoveRQ(2, STUDY_MOVE, "DEST"), True))

    def test_empty_optional_number(self) -> None:
        """A zero-length optional US element decodes as absent."""
        data = command_set(
            element(0x0100, b"\x21\x80"),
            element(0x0120, b"\x02\x00"),
            element(0x0800, b"\x01\x01"),
            element(0x0900, b"\x00\x00"),
            element(0x1020, b""),
        )
        self.assertEqual(decode_command(data), (CMoveRSP(2, 0), False))


class DecodeErrorTests(SynchronousTestCase):
    """decode_command raises DIMSEDecodeError on malformed command sets."""

    def assertDecodeError(self, data: bytes) -> None:
        """Assert that decoding data raises DIMSEDecodeError."""
        self.assertRaises(DIMSEDecodeError, decode_command, data)

    def test_empty(self) -> None:
        """An empty command set is rejected."""
        self.assertDecodeError(b"")

    def test_truncated(self) -> None:
        """Every proper prefix of a valid command set is rejected."""
        for msg in (CEchoRQ(1), CStoreRQ(3, CT_IMAGE, INSTANCE)):
            encoded = encode_command(msg, False)
            for size in range(len(encoded)):
                self.assertDecodeError(encoded[:size])

    def test_trailing_bytes(self) -> None:
        """Bytes beyond the group length are rejected."""
        self.assertDecodeError(C_ECHO_RQ_BYTES + b"\x00\x00")

    def test_bad_group_length(self) -> None:
        """A Command Group Length that disagrees with the bytes is rejected."""
        data = bytearray(C_ECHO_RQ_BYTES)
        data[8] += 2
        self.assertDecodeError(bytes(data))

    def test_missing_group_length(self) -> None:
        """A command set without Command Group Length is rejected."""
        self.assertDecodeError(C_ECHO_RQ_BYTES[12:])

    def test_unknown_command_field(self) -> None:
        """An unknown CommandField is rejected."""
        data = C_ECHO_RQ_BYTES.replace(b"\x02\x00\x00\x00\x30\x00", b"\x02\x00\x00\x00\x31\x00")
        self.assertDecodeError(data)

    def test_missing_command_field(self) -> None:
        """A command set without CommandField is rejected."""
        self.assertDecodeError(command_set(element(0x0110, b"\x01\x00"),
                                           element(0x0800, b"\x01\x01")))

    def test_missing_data_set_type(self) -> None:
        """A command set without CommandDataSetType is rejected."""
        self.assertDecodeError(command_set(element(0x0100, b"\x30\x00"),
                                           element(0x0110, b"\x01\x00")))

    def test_missing_required(self) -> None:
        """A C-STORE-RQ without an Affected SOP Instance UID is rejected."""
        self.assertDecodeError(command_set(
            element(0x0002, b"1.2\x00\x00"),
            element(0x0100, b"\x01\x00"),
            element(0x0110, b"\x01\x00"),
            element(0x0800, b"\x00\x00"),
        ))

    def test_bad_us_length(self) -> None:
        """A US element whose value is not 2 bytes is rejected."""
        self.assertDecodeError(command_set(
            element(0x0002, b"1.2.840.10008.1.1\x00"),
            element(0x0100, b"\x30\x00"),
            element(0x0110, b"\x01\x00\x00\x00"),
            element(0x0800, b"\x01\x01"),
        ))

    def test_bad_at_length(self) -> None:
        """An AT element whose length is not a multiple of 4 is rejected."""
        self.assertDecodeError(command_set(
            element(0x0100, b"\x01\x80"),
            element(0x0120, b"\x01\x00"),
            element(0x0800, b"\x01\x01"),
            element(0x0900, b"\x00\xa9"),
            element(0x0901, b"\x10\x00\x10\x00\x01\x00"),
        ))

    def test_non_ascii_uid(self) -> None:
        """A UID that is not ASCII is rejected."""
        self.assertDecodeError(command_set(
            element(0x0002, b"1.2.\xff"),
            element(0x0100, b"\x30\x00"),
            element(0x0110, b"\x01\x00"),
            element(0x0800, b"\x01\x01"),
        ))

    def test_other_group(self) -> None:
        """An element outside group 0000 is rejected."""
        self.assertDecodeError(C_ECHO_RQ_BYTES[:8] + struct.pack("<L", 56 + 10)
                               + C_ECHO_RQ_BYTES[12:]
                               + struct.pack("<HHL", 0x0008, 0x0016, 2) + b"AB")

    def test_duplicate_element(self) -> None:
        """An element that appears twice is rejected."""
        self.assertDecodeError(command_set(
            element(0x0002, b"1.2.840.10008.1.1\x00"),
            element(0x0100, b"\x30\x00"),
            element(0x0110, b"\x01\x00"),
            element(0x0110, b"\x02\x00"),
            element(0x0800, b"\x01\x01"),
        ))

    def test_undefined_length(self) -> None:
        """An element with undefined length is rejected."""
        self.assertDecodeError(C_ECHO_RQ_BYTES[:16] + b"\xff\xff\xff\xff"
                               + C_ECHO_RQ_BYTES[20:])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes either decode or raise DIMSEDecodeError."""
        try:
            decode_command(data)
        except DIMSEDecodeError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(MESSAGES), st.data())
    def test_mutated_command_sets(self, msg: object, data: st.DataObject) -> None:
        """Valid command sets with bytes overwritten either decode or raise DIMSEDecodeError."""
        encoded = bytearray(encode_command(msg, False))  # type: ignore[arg-type]
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(encoded) - 1))
            encoded[position] = data.draw(st.integers(0, 255))
        try:
            decode_command(bytes(encoded))
        except DIMSEDecodeError:
            pass


class FragmentTests(SynchronousTestCase):
    """fragment() splits data into P-DATA-TF PDUs within the peer's limit."""

    def check(self, data: bytes, is_command: bool, max_pdu: int) -> list[tuple[int, int, int, bytes]]:
        """Fragment data and check reassembly, the length limit and control bits."""
        parsed = parse_pdus(list(fragment(3, data, is_command, max_pdu)))
        self.assertEqual(b"".join(p[3] for p in parsed), data)
        for index, (length, context_id, control, _chunk) in enumerate(parsed):
            if max_pdu:
                self.assertLessEqual(length, max_pdu)
            self.assertEqual(context_id, 3)
            self.assertEqual(bool(control & COMMAND), is_command)
            self.assertEqual(bool(control & LAST_FRAGMENT), index == len(parsed) - 1)
            self.assertEqual(control & ~(COMMAND | LAST_FRAGMENT), 0)
        return parsed

    def test_limits(self) -> None:
        """Data of many sizes fragments within 0, 16382, 4096 and 100 byte limits."""
        for max_pdu in (0, 16382, 4096, 100):
            for size in (0, 1, 93, 94, 95, 4089, 4090, 4091, 16375, 16376, 50000):
                data = bytes(i % 251 for i in range(size))
                for is_command in (False, True):
                    self.check(data, is_command, max_pdu)

    def test_unlimited_one_fragment(self) -> None:
        """With max_pdu 0 the whole data is one last fragment."""
        parsed = self.check(b"x" * 100000, False, 0)
        self.assertEqual(len(parsed), 1)

    def test_exact_fit(self) -> None:
        """Data that exactly fills N PDUs yields N full PDUs and no empty one."""
        parsed = self.check(b"y" * (94 * 3), False, 100)
        self.assertEqual([p[0] for p in parsed], [100, 100, 100])

    def test_one_over(self) -> None:
        """One byte past a full PDU yields a second one-byte PDU."""
        parsed = self.check(b"y" * 95, True, 100)
        self.assertEqual([len(p[3]) for p in parsed], [94, 1])
        self.assertEqual([p[2] for p in parsed], [COMMAND, COMMAND | LAST_FRAGMENT])

    def test_empty(self) -> None:
        """Empty data yields one empty last fragment."""
        (pdu,) = list(fragment(1, b"", False, 16382))
        self.assertEqual(pdu, b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x02")

    def test_bytes(self) -> None:
        """A small command fragment has the exact P-DATA-TF layout of PS3.8 9.3.5."""
        (pdu,) = list(fragment(5, b"abcd", True, 0))
        self.assertEqual(pdu, b"".join([
            b"\x04\x00",  # PDU type 4, reserved
            b"\x00\x00\x00\x0a",  # PDU length: 4 + 1 + 1 + 4
            b"\x00\x00\x00\x06",  # PDV item length: 1 + 1 + 4
            b"\x05",  # presentation context ID
            b"\x03",  # command, last fragment
            b"abcd",
        ]))

    def test_memoryview(self) -> None:
        """A memoryview is fragmented like bytes."""
        data = bytes(range(256)) * 10
        self.assertEqual(list(fragment(1, memoryview(data), False, 200)),
                         list(fragment(1, data, False, 200)))

    def test_lazy(self) -> None:
        """fragment is a generator, producing PDUs only as they are asked for."""
        pdus = fragment(1, b"z" * 1000, False, 106)
        self.assertEqual(len(next(pdus)), 6 + 106)

    def test_too_small(self) -> None:
        """A max_pdu that leaves no room for data raises ValueError."""
        self.assertRaises(ValueError, list, fragment(1, b"a", False, 6))

    def test_command_round_trip(self) -> None:
        """A fragmented command set reassembles and decodes."""
        msg = CStoreRQ(3, CT_IMAGE, INSTANCE, move_originator_application_entity_title="X",
                       move_originator_message_id=2)
        encoded = encode_command(msg, True)
        parsed = self.check(encoded, True, 20)
        self.assertEqual(decode_command(b"".join(p[3] for p in parsed)), (msg, True))


class DatasetTests(SynchronousTestCase):
    """encode_dataset and decode_dataset handle C-FIND identifiers."""

    def identifier(self) -> Dataset:
        """Return a small Study level identifier with a sequence."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientName = "Doe^John"
        ds.StudyInstanceUID = INSTANCE
        item = Dataset()
        item.CodeValue = "1"
        ds.ProcedureCodeSequence = Sequence([item])
        return ds

    def test_round_trip(self) -> None:
        """An identifier round-trips in each uncompressed transfer syntax."""
        for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                       ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
            decoded = decode_dataset(encode_dataset(self.identifier(), syntax), syntax)
            self.assertEqual(decoded.PatientName, "Doe^John")
            self.assertEqual(decoded.StudyInstanceUID, INSTANCE)
            self.assertEqual(decoded.ProcedureCodeSequence[0].CodeValue, "1")

    def test_implicit_bytes(self) -> None:
        """Implicit VR Little Endian encoding has no VR bytes."""
        ds = Dataset()
        ds.PatientID = "AB"
        self.assertEqual(encode_dataset(ds, ImplicitVRLittleEndian),
                         b"\x10\x00\x20\x00\x02\x00\x00\x00AB")

    def test_unknown_syntax_encode(self) -> None:
        """Encoding in a UID that is not a transfer syntax raises ValueError."""
        self.assertRaises(ValueError, encode_dataset, Dataset(), "1.2.3.4")

    def test_unknown_syntax_decode(self) -> None:
        """Decoding in a UID that is not a transfer syntax raises DIMSEDecodeError."""
        self.assertRaises(DIMSEDecodeError, decode_dataset, b"", "1.2.3.4")

    def test_garbage(self) -> None:
        """Malformed data sets raise DIMSEDecodeError."""
        for data, syntax in [
            (b"\x10\x00\x20\x00\xff\x00\x00\x00AB", ImplicitVRLittleEndian),
            (b"\x08\x00\x05\x11SQ\x00\x00\x10\x00\x00\x00\x01\x02", ExplicitVRLittleEndian),
            (b"not deflate at all \xff\xfe", DeflatedExplicitVRLittleEndian),
            (b"\x10\x00\x20\x00LO\x08\x00AB", ExplicitVRLittleEndian),
        ]:
            self.assertRaises(DIMSEDecodeError, decode_dataset, data, syntax)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=120),
           st.sampled_from([ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                            ExplicitVRBigEndian]))
    def test_arbitrary_bytes(self, data: bytes, syntax: str) -> None:
        """Arbitrary bytes either decode as a data set or raise DIMSEDecodeError."""
        try:
            decode_dataset(data, syntax)
        except DIMSEDecodeError:
            pass

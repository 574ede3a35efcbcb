"""Tests for dicomtwist.ul.pdu and dicomtwist.ul.items (PS3.8 9.3, Annex D)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.errors import PDUDecodeError
from dicomtwist.ul.items import (
    ITEM_TYPES,
    USER_INFO_SUB_ITEMS,
    AbstractSyntaxSubItem,
    ApplicationContextItem,
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextACItem,
    PresentationContextRQItem,
    RoleSelectionSubItem,
    SOPClassCommonExtendedNegotiationSubItem,
    SOPClassExtendedNegotiationSubItem,
    TransferSyntaxSubItem,
    UnknownSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
)
from dicomtwist.ul.pdu import (
    COMMAND,
    LAST_FRAGMENT,
    PDU_TYPES,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    ContextResult,
    PDataTF,
    PresentationDataValue,
    RejectReason,
    RejectResult,
    RejectSource,
    decode_pdu,
    pdata_header,
)
from tests.fixtures import pdus

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

# One instance of every user information sub-item, unknown ones included.
SUB_ITEMS = (
    MaximumLengthSubItem(16384),
    ImplementationClassUIDSubItem("1.2.3.4"),
    AsynchronousOperationsWindowSubItem(5, 7),
    RoleSelectionSubItem(CT_IMAGE, True, False),
    ImplementationVersionNameSubItem("DICOMTWIST_1"),
    SOPClassExtendedNegotiationSubItem("1.2.840.10008.5.1.4.1.2.1.1", b"\x01\x00\x01"),
    SOPClassCommonExtendedNegotiationSubItem(CT_IMAGE, "1.2.840.10008.4.2", ("1.2.3", "1.2.34")),
    UserIdentityRQSubItem(2, True, b"user", b"secret"),
    UserIdentityACSubItem(b"token"),
    UnknownSubItem(0x7F, b"\x01\x02\x03"),
)

USER_INFORMATION = UserInformationItem(SUB_ITEMS)

RQ = AAssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),
        PresentationContextRQItem(3, CT_IMAGE, (EXPLICIT_LE, IMPLICIT_LE)),
    ),
    user_information=USER_INFORMATION,
)

AC = AAssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextACItem(1, ContextResult.ACCEPTANCE, IMPLICIT_LE),
        PresentationContextACItem(3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
    ),
    user_information=UserInformationItem((MaximumLengthSubItem(0),)),
)


def split(pdu: bytes) -> tuple[int, memoryview]:
    """Split an encoded PDU into its type and a memoryview of its body, as framing does."""
    (length,) = struct.unpack_from(">L", pdu, 2)
    assert length == len(pdu) - 6, "test helper given a badly framed PDU"
    return pdu[0], memoryview(pdu)[6:]


def item_body(item: bytes) -> bytes:
    """Return the bytes of an encoded item after its 4-byte header."""
    return item[4:]


class RoundTripTests(SynchronousTestCase):
    """decode(encode(x)) == x for every PDU, item and sub-item."""

    def test_sub_items(self) -> None:
        """Every user information sub-item class decodes what it encodes."""
        for sub_item in SUB_ITEMS:
            if isinstance(sub_item, UnknownSubItem):
                continue
            encoded = sub_item.encode()
            self.assertEqual(encoded[0], sub_item.ITEM_TYPE)
            self.assertEqual(struct.unpack_from(">H", encoded, 2)[0], len(encoded) - 4)
            self.assertEqual(type(sub_item).decode(item_body(encoded)), sub_item)
            self.assertEqual(type(sub_item).decode(memoryview(item_body(encoded))), sub_item)

    def test_registries(self) -> None:
        """The registries map each type code to the class that carries it."""
        for item_type, item_class in ITEM_TYPES.items():
            self.assertEqual(item_class.ITEM_TYPE, item_type)
        for item_type, item_class in USER_INFO_SUB_ITEMS.items():
            self.assertEqual(item_class.ITEM_TYPE, item_type)
        self.assertEqual(set(USER_INFO_SUB_ITEMS), set(range(0x51, 0x5A)))
        for pdu_type, pdu_class in PDU_TYPES.items():
            self.assertEqual(pdu_class.PDU_TYPE, pdu_type)
        self.assertEqual(set(PDU_TYPES), set(range(1, 8)))

    def test_items(self) -> None:
        """Every A-ASSOCIATE item class decodes what it encodes."""
        for item in (
            ApplicationContextItem("1.2.840.10008.3.1.1.1"),
            AbstractSyntaxSubItem(VERIFICATION),
            TransferSyntaxSubItem(EXPLICIT_LE),
            PresentationContextRQItem(5, CT_IMAGE, (EXPLICIT_LE, IMPLICIT_LE)),
            PresentationContextACItem(5, 0, EXPLICIT_LE),
            PresentationContextACItem(7, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED),
            UserInformationItem(),
            USER_INFORMATION,
        ):
            encoded = item.encode()
            self.assertEqual(encoded[0], item.ITEM_TYPE)
            self.assertEqual(type(item).decode(item_body(encoded)), item)

    def test_unknown_sub_item(self) -> None:
        """An unrecognised user information sub-item survives decode and encode unchanged."""
        encoded = UserInformationItem((UnknownSubItem(0x7F, b"xyz"), MaximumLengthSubItem(1))).encode()
        decoded = UserInformationItem.decode(item_body(encoded))
        self.assertEqual(decoded.sub_items[0], UnknownSubItem(0x7F, b"xyz"))
        self.assertEqual(decoded.maximum_length, 1)
        self.assertEqual(decoded.encode(), encoded)

    def test_pdus(self) -> None:
        """Every PDU class except P-DATA-TF decodes what it encodes."""
        for pdu in (
            RQ,
            AC,
            AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER,
                         RejectReason.CALLED_AE_NOT_RECOGNIZED),
            AReleaseRQ(),
            AReleaseRP(),
            AAbort(),
            AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE),
        ):
            pdu_type, body = split(pdu.encode())
            self.assertEqual(pdu_type, pdu.PDU_TYPE)
            self.assertEqual(decode_pdu(pdu_type, body), pdu)
            self.assertEqual(type(pdu).decode(bytes(body)), pdu)

    def test_pdata_tf(self) -> None:
        """A P-DATA-TF with several PDVs decodes to the same context ids, controls and data."""
        pdu = PDataTF((
            PresentationDataValue(1, COMMAND | LAST_FRAGMENT, b"command"),
            PresentationDataValue(1, 0, b""),
            PresentationDataValue(3, LAST_FRAGMENT, b"\x00" * 1000),
        ))
        pdu_type, body = split(pdu.encode())
        decoded = decode_pdu(pdu_type, body)
        self.assertIsInstance(decoded, PDataTF)
        self.assertEqual(
            [(pdv.context_id, pdv.control, bytes(pdv.data)) for pdv in decoded.pdvs],
            [(pdv.context_id, pdv.control, bytes(pdv.data)) for pdv in pdu.pdvs],
        )

    def test_ae_title_padding(self) -> None:
        """AE titles are sent as 16 space-padded bytes and read back without the spaces."""
        encoded = RQ.encode()
        self.assertEqual(encoded[10:26], b"ANY-SCP         ")
        self.assertEqual(encoded[26:42], b"ECHOSCU         ")
        body = bytearray(encoded[6:])
        body[4:20] = b"  PADDED        "
        self.assertEqual(AAssociateRQ.decode(bytes(body)).called_ae_title, "PADDED")

    def test_ae_title_too_long(self) -> None:
        """Encoding an AE title longer than 16 characters raises ValueError."""
        pdu = AAssociateRQ("A" * 17, "B", (), UserInformationItem())
        self.assertRaises(ValueError, pdu.encode)


class PDataTests(SynchronousTestCase):
    """P-DATA-TF specifics: no copying, and the single-PDV header helper."""

    def test_decode_does_not_copy(self) -> None:
        """Decoding a memoryview body yields PDV data that is a view into the same buffer."""
        buffer = bytearray(PDataTF((PresentationDataValue(1, 0, b"abcd"),)).encode())
        decoded = PDataTF.decode(memoryview(buffer)[6:])
        data = decoded.pdvs[0].data
        self.assertIsInstance(data, memoryview)
        buffer[-1:] = b"Z"
        self.assertEqual(bytes(data), b"abcZ")

    def test_one_pdv_as_several(self) -> None:
        """A P-DATA-TF of one PDV filling its body (decoded without the PDV
        loop) decodes as the same PDV among others does, from bytes or a
        view, its data a view of the body; lengths that do not fill the
        body exactly are refused with reason 6."""
        for data in (b"", b"x", b"\x00" * 1000):
            pdv = PresentationDataValue(5, COMMAND | LAST_FRAGMENT, data)
            body = PDataTF((pdv,)).encode()[6:]
            several = PDataTF.decode(PDataTF((pdv, pdv)).encode()[6:])
            for given in (body, memoryview(body), memoryview(bytearray(body))):
                decoded = PDataTF.decode(given)
                self.assertEqual(len(decoded.pdvs), 1)
                self.assertEqual(tuple(decoded.pdvs[0][:2]), tuple(several.pdvs[0][:2]))
                self.assertEqual(bytes(decoded.pdvs[0].data), bytes(several.pdvs[0].data))
                self.assertIsInstance(decoded.pdvs[0].data, memoryview)
                self.assertIs(type(decoded.pdvs), tuple)
            for wrong in (body[:-1], body + b"\x00", body[:3]):
                self.assertRaises(PDUDecodeError, PDataTF.decode, wrong)

    def test_pdata_header(self) -> None:
        """pdata_header plus the data equals the encoding of a one-PDV P-DATA-TF."""
        data = b"\x01\x02\x03\x04\x05"
        header = pdata_header(7, COMMAND | LAST_FRAGMENT, len(data))
        self.assertEqual(len(header), 12)
        self.assertEqual(header + data,
                         PDataTF((PresentationDataValue(7, COMMAND | LAST_FRAGMENT, data),)).encode())

    def test_pdv_flags(self) -> None:
        """The PDV properties read the command and last-fragment bits of the control byte."""
        pdv = PresentationDataValue(1, COMMAND, b"")
        self.assertTrue(pdv.is_command)
        self.assertFalse(pdv.is_last)
        pdv = PresentationDataValue(1, LAST_FRAGMENT, b"")
        self.assertFalse(pdv.is_command)
        self.assertTrue(pdv.is_last)

    def test_summary(self) -> None:
        """A one-PDV P-DATA-TF summary names its context, kind, fragment and size."""
        pdu = PDataTF((PresentationDataValue(1, COMMAND | LAST_FRAGMENT, b"x" * 74),))
        self.assertEqual(pdu.summary(),
                         "P-DATA-TF PDU: 1 PDV, context 1, command, last fragment, 74 bytes")
        pdu = PDataTF((PresentationDataValue(1, 0, b"x"), PresentationDataValue(3, 2, b"yy")))
        self.assertEqual(pdu.summary(), "P-DATA-TF PDU: 2 PDVs, 3 bytes")


class FixtureTests(SynchronousTestCase):
    """PDUs captured from DCMTK and pynetdicom decode field by field and re-encode exactly."""

    def test_echoscu_rq(self) -> None:
        """DCMTK echoscu's A-ASSOCIATE-RQ decodes to its fields."""
        pdu_type, body = split(pdus.ECHOSCU_RQ)
        rq = decode_pdu(pdu_type, body)
        self.assertIsInstance(rq, AAssociateRQ)
        self.assertEqual(rq.protocol_version, 1)
        self.assertEqual(rq.called_ae_title, "ANY-SCP")
        self.assertEqual(rq.calling_ae_title, "ECHOSCU")
        self.assertEqual(rq.application_context, "1.2.840.10008.3.1.1.1")
        self.assertEqual(rq.presentation_contexts,
                         (PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),))
        info = rq.user_information
        self.assertEqual(info.maximum_length, 16384)
        self.assertEqual(info.implementation_class_uid, "1.2.276.0.7230010.3.0.3.6.7")
        self.assertEqual(info.implementation_version_name, "OFFIS_DCMTK_367")
        self.assertIsNone(info.async_ops_window)
        self.assertEqual(info.role_selections, ())
        self.assertIsNone(info.user_identity)
        self.assertEqual(rq.summary(),
                         "A-ASSOCIATE-RQ PDU: called 'ANY-SCP' calling 'ECHOSCU', 1 presentation context")

    def test_same_rq_bytes_same_object(self) -> None:
        """The same A-ASSOCIATE-RQ bytes again decode to the same (immutable) object."""
        pdu_type, body = split(pdus.ECHOSCU_RQ)
        first = decode_pdu(pdu_type, body)
        self.assertIs(decode_pdu(pdu_type, bytes(body)), first)
        self.assertIs(first.encode(), first.encode())

    def test_rq_memo_bounded(self) -> None:
        """At most RQ_MEMO_SIZE decoded requests are kept."""
        from dicomtwist.ul import pdu as pdu_module
        for index in range(pdu_module.RQ_MEMO_SIZE * 2 + 1):
            rq = AAssociateRQ("ANY-SCP", f"CALLER{index}",
                              (PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),),
                              UserInformationItem((MaximumLengthSubItem(16384),)))
            decode_pdu(*split(rq.encode()))
            self.assertLessEqual(len(pdu_module._RQ_MEMO), pdu_module.RQ_MEMO_SIZE)

    def test_long_rq_not_kept(self) -> None:
        """An A-ASSOCIATE-RQ body longer than RQ_MEMO_MAX_BODY decodes afresh each time."""
        from dicomtwist.ul import pdu as pdu_module
        self.patch(pdu_module, "RQ_MEMO_MAX_BODY", 100)
        self.patch(pdu_module, "_RQ_MEMO", {})
        pdu_type, body = split(pdus.ECHOSCU_RQ)
        self.assertIsNot(decode_pdu(pdu_type, body), decode_pdu(pdu_type, body))

    def test_rq_with_user_identity_not_kept(self) -> None:
        """An A-ASSOCIATE-RQ carrying credentials decodes to a new object each time."""
        rq = AAssociateRQ("ANY-SCP", "ECHOSCU",
                          (PresentationContextRQItem(1, VERIFICATION, (IMPLICIT_LE,)),),
                          UserInformationItem((MaximumLengthSubItem(16384),
                                               UserIdentityRQSubItem(2, True, b"user", b"secret"))))
        pdu_type, body = split(rq.encode())
        first = decode_pdu(pdu_type, body)
        self.assertEqual(first, rq)
        self.assertIsNot(decode_pdu(pdu_type, body), first)

    def test_echoscu_rq_reencoded(self) -> None:
        """Re-encoding echoscu's RQ gives its bytes, with the reserved 0xFF DCMTK sends zeroed."""
        pdu_type, body = split(pdus.ECHOSCU_RQ)
        self.assertEqual(decode_pdu(pdu_type, body).encode(), pdus.ECHOSCU_RQ_REENCODED)
        pdu_type, body = split(pdus.ECHOSCU_RQ_REENCODED)
        self.assertEqual(decode_pdu(pdu_type, body).encode(), pdus.ECHOSCU_RQ_REENCODED)

    def test_storescp_ac(self) -> None:
        """DCMTK storescp's A-ASSOCIATE-AC decodes to its fields and re-encodes exactly."""
        pdu_type, body = split(pdus.STORESCP_AC)
        ac = decode_pdu(pdu_type, body)
        self.assertIsInstance(ac, AAssociateAC)
        self.assertEqual(ac.protocol_version, 1)
        self.assertEqual(ac.called_ae_title, "ANY-SCP")
        self.assertEqual(ac.calling_ae_title, "ECHOSCU")
        self.assertEqual(ac.application_context, "1.2.840.10008.3.1.1.1")
        self.assertEqual(ac.presentation_contexts,
                         (PresentationContextACItem(1, ContextResult.ACCEPTANCE, IMPLICIT_LE),))
        self.assertEqual(ac.user_information.maximum_length, 16384)
        self.assertEqual(ac.user_information.implementation_class_uid, "1.2.276.0.7230010.3.0.3.6.7")
        self.assertEqual(ac.user_information.implementation_version_name, "OFFIS_DCMTK_367")
        self.assertEqual(ac.encode(), pdus.STORESCP_AC)

    def test_storescp_rp(self) -> None:
        """DCMTK storescp's A-RELEASE-RP decodes and re-encodes exactly."""
        pdu_type, body = split(pdus.STORESCP_RP)
        self.assertEqual(decode_pdu(pdu_type, body), AReleaseRP())
        self.assertEqual(AReleaseRP().encode(), pdus.STORESCP_RP)

    def test_release_pdus_shared(self) -> None:
        """A-RELEASE-RQ and -RP carry nothing: each decodes to one shared
        PDU, equal to a new one, and a wrong length is still refused."""
        for pdu in (AReleaseRQ(), AReleaseRP()):
            pdu_type, body = split(pdu.encode())
            decoded = decode_pdu(pdu_type, body)
            self.assertEqual(decoded, pdu)
            self.assertIs(type(decoded), type(pdu))
            self.assertIs(decode_pdu(pdu_type, bytes(body)), decoded)
            self.assertRaises(PDUDecodeError, decode_pdu, pdu_type, bytes(body) + b"\0")

    def test_pynetdicom_rq(self) -> None:
        """pynetdicom's A-ASSOCIATE-RQ decodes to its fields and re-encodes exactly."""
        pdu_type, body = split(pdus.PYNETDICOM_RQ)
        rq = decode_pdu(pdu_type, body)
        self.assertIsInstance(rq, AAssociateRQ)
        self.assertEqual(rq.called_ae_title, "ANY-SCP")
        self.assertEqual(rq.calling_ae_title, "PYNETDICOM")
        self.assertEqual(rq.application_context, "1.2.840.10008.3.1.1.1")
        self.assertEqual(rq.presentation_contexts, (
            PresentationContextRQItem(1, VERIFICATION, (
                IMPLICIT_LE, EXPLICIT_LE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
            )),
            PresentationContextRQItem(3, CT_IMAGE, (EXPLICIT_LE, IMPLICIT_LE)),
        ))
        self.assertEqual(rq.user_information.sub_items, (
            MaximumLengthSubItem(16382),
            ImplementationClassUIDSubItem("1.2.826.0.1.3680043.9.3811.3.0.4"),
            ImplementationVersionNameSubItem("PYNETDICOM_304"),
        ))
        self.assertEqual(rq.encode(), pdus.PYNETDICOM_RQ)

    def test_describe(self) -> None:
        """describe() lists the application context, each context's syntaxes and the user information."""
        lines = decode_pdu(*split(pdus.PYNETDICOM_RQ)).describe()
        text = "\n".join(lines)
        self.assertIn("1.2.840.10008.3.1.1.1", text)
        self.assertIn("Context ID:        3 (Proposed)", text)
        self.assertIn("      1.2.840.10008.1.2.1.99", text)
        self.assertIn("16382", text)
        self.assertIn("PYNETDICOM_304", text)
        lines = decode_pdu(*split(pdus.STORESCP_AC)).describe()
        self.assertIn("    Accepted Transfer Syntax: 1.2.840.10008.1.2", lines)
        self.assertIn("  Context ID:        1 (accepted)", lines)


class TextTests(SynchronousTestCase):
    """UIDs and names are ASCII; padding is dropped on decode."""

    def test_uid_padding_stripped(self) -> None:
        """A UID padded with a NUL (or a space) decodes without the padding."""
        self.assertEqual(AbstractSyntaxSubItem.decode(b"1.2.3\x00"), AbstractSyntaxSubItem("1.2.3"))
        self.assertEqual(TransferSyntaxSubItem.decode(b"1.2.3 "), TransferSyntaxSubItem("1.2.3"))

    def test_uid_not_padded_on_encode(self) -> None:
        """An odd-length UID is encoded without padding."""
        self.assertEqual(AbstractSyntaxSubItem("1.2.3").encode(), b"\x30\x00\x00\x051.2.3")

    def test_non_ascii_uid(self) -> None:
        """A UID with a non-ASCII byte raises PDUDecodeError with abort reason 6."""
        for item_class in (ApplicationContextItem, AbstractSyntaxSubItem, TransferSyntaxSubItem,
                           ImplementationClassUIDSubItem, ImplementationVersionNameSubItem):
            error = self.assertRaises(PDUDecodeError, item_class.decode, b"1.2.\xff")
            self.assertEqual(error.abort_reason, 6)

    def test_non_ascii_ae_title(self) -> None:
        """An AE title with a non-ASCII byte raises PDUDecodeError with abort reason 6."""
        body = bytearray(pdus.PYNETDICOM_RQ[6:])
        body[4] = 0xE9
        error = self.assertRaises(PDUDecodeError, decode_pdu, 1, bytes(body))
        self.assertEqual(error.abort_reason, 6)


class UserInformationTests(SynchronousTestCase):
    """The convenience properties of UserInformationItem."""

    def test_properties(self) -> None:
        """Each property returns the value or sub-items of its kind."""
        info = USER_INFORMATION
        self.assertEqual(info.maximum_length, 16384)
        self.assertEqual(info.implementation_class_uid, "1.2.3.4")
        self.assertEqual(info.implementation_version_name, "DICOMTWIST_1")
        self.assertEqual(info.async_ops_window, AsynchronousOperationsWindowSubItem(5, 7))
        self.assertEqual(info.role_selections, (RoleSelectionSubItem(CT_IMAGE, True, False),))
        self.assertEqual(info.sop_class_extended, (SUB_ITEMS[5],))
        self.assertEqual(info.sop_class_common_extended, (SUB_ITEMS[6],))
        self.assertEqual(info.user_identity, UserIdentityRQSubItem(2, True, b"user", b"secret"))

    def test_empty(self) -> None:
        """An empty user information item has no values."""
        info = UserInformationItem()
        self.assertIsNone(info.maximum_length)
        self.assertIsNone(info.implementation_class_uid)
        self.assertIsNone(info.implementation_version_name)
        self.assertIsNone(info.async_ops_window)
        self.assertEqual(info.role_selections, ())
        self.assertEqual(info.sop_class_extended, ())
        self.assertEqual(info.sop_class_common_extended, ())
        self.assertIsNone(info.user_identity)

    def test_common_extended_version_byte(self) -> None:
        """The common extended negotiation sub-item is sent with sub-item version 0."""
        encoded = SOPClassCommonExtendedNegotiationSubItem("1.2", "1.3").encode()
        self.assertEqual(encoded, b"\x57\x00\x00\x0c\x00\x031.2\x00\x031.3\x00\x00")

    def test_ac_context_without_transfer_syntax(self) -> None:
        """A rejected AC presentation context without a transfer syntax sub-item decodes with ""."""
        self.assertEqual(PresentationContextACItem.decode(b"\x01\x00\x03\x00"),
                         PresentationContextACItem(1, 3, ""))

    def test_ac_context_always_encodes_transfer_syntax(self) -> None:
        """A rejected AC presentation context still encodes one (empty) transfer syntax sub-item."""
        self.assertEqual(PresentationContextACItem(1, 3).encode(),
                         b"\x21\x00\x00\x08\x01\x00\x03\x00\x40\x00\x00\x00")


class MalformedTests(SynchronousTestCase):
    """Malformed input raises PDUDecodeError with the A-ABORT reason of PS3.8 Table 9-26."""

    def assertDecodeError(self, abort_reason: int, pdu_type: int, body: bytes) -> PDUDecodeError:
        """Assert decode_pdu raises PDUDecodeError with ``abort_reason``, and return it."""
        error = self.assertRaises(PDUDecodeError, decode_pdu, pdu_type, body)
        self.assertEqual(error.abort_reason, abort_reason, error)
        return error

    def test_unknown_pdu_type(self) -> None:
        """An unknown PDU type is an unrecognized PDU (reason 1)."""
        for pdu_type in (0x00, 0x08, 0xFF):
            self.assertDecodeError(1, pdu_type, b"\x00\x00\x00\x00")

    def test_truncated_bodies(self) -> None:
        """Every proper prefix of a valid PDU body is rejected with reason 6."""
        for pdu in (pdus.ECHOSCU_RQ, pdus.STORESCP_AC, pdus.PYNETDICOM_RQ, pdus.STORESCP_RP,
                    AAssociateRJ(1, 1, 1).encode(), AAbort().encode()):
            pdu_type, body = split(pdu)
            for end in range(len(body)):
                self.assertDecodeError(6, pdu_type, body[:end])

    def test_reserved_lengths(self) -> None:
        """A-RELEASE, A-ABORT and A-ASSOCIATE-RJ bodies of the wrong length are rejected with reason 6."""
        for pdu_type in (3, 5, 6, 7):
            self.assertDecodeError(6, pdu_type, b"\x00" * 3)
            self.assertDecodeError(6, pdu_type, b"\x00" * 5)

    def test_item_length_overrun(self) -> None:
        """An item whose length runs past the PDU body is rejected with reason 6."""
        body = bytearray(pdus.ECHOSCU_RQ[6:])
        body[68 + 3] = 0x7F  # application context item length 0x007F
        error = self.assertDecodeError(6, 1, bytes(body))
        self.assertEqual(error.offset, 6 + 68 + 4)

    def test_sub_item_length_overrun(self) -> None:
        """A sub-item whose length runs past its item is rejected with reason 6."""
        # Maximum length sub-item claiming 8 bytes inside its 8-byte user information item.
        self.assertRaises(PDUDecodeError, UserInformationItem.decode, b"\x51\x00\x00\x08\x00\x00\x40\x00")
        # Role selection UID length overrunning the sub-item.
        error = self.assertRaises(PDUDecodeError, RoleSelectionSubItem.decode, b"\x00\x09" + b"1.2" + b"\x01\x00")
        self.assertEqual(error.abort_reason, 6)

    def test_fixed_sub_item_lengths(self) -> None:
        """Sub-items with a fixed body size reject any other size with reason 6."""
        for item_class in (MaximumLengthSubItem, AsynchronousOperationsWindowSubItem):
            for size in (0, 3, 5):
                error = self.assertRaises(PDUDecodeError, item_class.decode, b"\x00" * size)
                self.assertEqual(error.abort_reason, 6)
        error = self.assertRaises(PDUDecodeError, RoleSelectionSubItem.decode, b"\x00\x031.2\x01")
        self.assertEqual(error.abort_reason, 6)
        error = self.assertRaises(PDUDecodeError, UserIdentityACSubItem.decode, b"\x00\x01ab")
        self.assertEqual(error.abort_reason, 6)
        error = self.assertRaises(PDUDecodeError, UserIdentityRQSubItem.decode, b"\x01\x00\x00\x01a\x00\x00z")
        self.assertEqual(error.abort_reason, 6)

    def test_common_extended_overrun(self) -> None:
        """A related general SOP class UID overrunning its field is rejected with reason 6."""
        body = b"\x00\x031.2\x00\x031.3\x00\x03\x00\x05ab\x00"
        error = self.assertRaises(PDUDecodeError, SOPClassCommonExtendedNegotiationSubItem.decode, body)
        self.assertEqual(error.abort_reason, 6)

    def test_unknown_item_in_associate(self) -> None:
        """An unknown item type in an A-ASSOCIATE-RQ is an unrecognized PDU parameter (reason 4)."""
        pdu = pdus.PYNETDICOM_RQ + b"\x99\x00\x00\x00"
        pdu = pdu[:2] + struct.pack(">L", len(pdu) - 6) + pdu[6:]
        self.assertDecodeError(4, *split(pdu))

    def test_ac_context_in_rq(self) -> None:
        """An AC presentation context item inside an A-ASSOCIATE-RQ is rejected with reason 4."""
        pdu = AAssociateRQ("A", "B", (), USER_INFORMATION).encode()
        pdu += PresentationContextACItem(1, 0, IMPLICIT_LE).encode()
        pdu = pdu[:2] + struct.pack(">L", len(pdu) - 6) + pdu[6:]
        self.assertDecodeError(4, *split(pdu))

    def test_unknown_sub_item_in_context(self) -> None:
        """An unknown sub-item inside a presentation context is rejected with reason 4."""
        body = b"\x01\x00\x00\x00" + AbstractSyntaxSubItem("1.2").encode() + b"\x41\x00\x00\x00"
        error = self.assertRaises(PDUDecodeError, PresentationContextRQItem.decode, body)
        self.assertEqual(error.abort_reason, 4)
        body = b"\x01\x00\x00\x00" + AbstractSyntaxSubItem("1.2").encode()
        error = self.assertRaises(PDUDecodeError, PresentationContextACItem.decode, body)
        self.assertEqual(error.abort_reason, 4)

    def test_context_without_syntaxes(self) -> None:
        """An RQ presentation context lacking its abstract or transfer syntax is rejected with reason 6."""
        for body in (b"\x01\x00\x00\x00" + TransferSyntaxSubItem("1.2").encode(),
                     b"\x01\x00\x00\x00" + AbstractSyntaxSubItem("1.2").encode(),
                     b"\x01\x00"):
            error = self.assertRaises(PDUDecodeError, PresentationContextRQItem.decode, body)
            self.assertEqual(error.abort_reason, 6)

    def test_repeated_single_items(self) -> None:
        """A second abstract syntax or AC transfer syntax is an unexpected parameter (reason 5)."""
        body = (b"\x01\x00\x00\x00" + AbstractSyntaxSubItem("1.2").encode()
                + AbstractSyntaxSubItem("1.3").encode() + TransferSyntaxSubItem("1.4").encode())
        error = self.assertRaises(PDUDecodeError, PresentationContextRQItem.decode, body)
        self.assertEqual(error.abort_reason, 5)
        body = (b"\x01\x00\x00\x00" + TransferSyntaxSubItem("1.2").encode()
                + TransferSyntaxSubItem("1.3").encode())
        error = self.assertRaises(PDUDecodeError, PresentationContextACItem.decode, body)
        self.assertEqual(error.abort_reason, 5)

    def test_repeated_associate_items(self) -> None:
        """A second application context or user information item is rejected with reason 5."""
        for extra in (ApplicationContextItem("1.2").encode(), UserInformationItem().encode()):
            pdu = RQ.encode() + extra
            pdu = pdu[:2] + struct.pack(">L", len(pdu) - 6) + pdu[6:]
            self.assertDecodeError(5, *split(pdu))

    def test_missing_associate_items(self) -> None:
        """An A-ASSOCIATE-RQ or -AC without application context or user information is rejected."""
        head = pdus.PYNETDICOM_RQ[6:6 + 68]
        app = ApplicationContextItem("1.2.840.10008.3.1.1.1").encode()
        info = UserInformationItem().encode()
        for pdu_type in (1, 2):
            self.assertDecodeError(6, pdu_type, head + app)
            self.assertDecodeError(6, pdu_type, head + info)
            self.assertDecodeError(6, pdu_type, head)

    def test_pdv_length_too_small(self) -> None:
        """A PDV length of 0 or 1 is rejected with reason 6."""
        self.assertDecodeError(6, 4, b"\x00\x00\x00\x00")
        self.assertDecodeError(6, 4, b"\x00\x00\x00\x01\x01")
        self.assertDecodeError(6, 4, b"\x00\x00\x00\x01\x01\x03")

    def test_pdv_overrun(self) -> None:
        """A PDV longer than the P-DATA-TF body, or a cut-short PDV header, is rejected with reason 6."""
        self.assertDecodeError(6, 4, b"\x00\x00\x00\x06\x01\x03abc")
        good = PresentationDataValue(1, 3, b"abc").encode()
        self.assertDecodeError(6, 4, good + b"\x00\x00\x00")

    def test_empty_pdata(self) -> None:
        """A P-DATA-TF without any PDV is rejected with reason 6."""
        self.assertDecodeError(6, 4, b"")


class PropertyTests(SynchronousTestCase):
    """Arbitrary input never escapes as anything but PDUDecodeError."""

    @settings(max_examples=300, deadline=None)
    @given(pdu_type=st.integers(min_value=1, max_value=7), data=st.binary(max_size=300))
    def test_random_bodies(self, pdu_type: int, data: bytes) -> None:
        """Random bytes as a PDU body either decode or raise PDUDecodeError."""
        try:
            pdu = decode_pdu(pdu_type, memoryview(data))
        except PDUDecodeError:
            pass
        else:
            self.assertEqual(pdu.PDU_TYPE, pdu_type)
        # The class decoder itself, without decode_pdu's safety net.
        try:
            PDU_TYPES[pdu_type].decode(data)
        except PDUDecodeError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(
        fixture=st.sampled_from([pdus.ECHOSCU_RQ, pdus.STORESCP_AC, pdus.PYNETDICOM_RQ]),
        position=st.integers(min_value=0),
        value=st.integers(min_value=0, max_value=255),
    )
    def test_mutated_fixtures(self, fixture: bytes, position: int, value: int) -> None:
        """A captured A-ASSOCIATE PDU with one byte changed either decodes or raises PDUDecodeError."""
        body = bytearray(fixture[6:])
        body[position % len(body)] = value
        try:
            PDU_TYPES[fixture[0]].decode(memoryview(body))
        except PDUDecodeError:
            pass

    @settings(max_examples=100, deadline=None)
    @given(
        context_id=st.integers(min_value=1, max_value=255),
        control=st.integers(min_value=0, max_value=3),
        data=st.binary(max_size=100),
    )
    def test_pdata_round_trip(self, context_id: int, control: int, data: bytes) -> None:
        """Any single-PDV P-DATA-TF round-trips and matches pdata_header."""
        encoded = pdata_header(context_id, control, len(data)) + data
        decoded = decode_pdu(*split(encoded))
        self.assertEqual(len(decoded.pdvs), 1)
        pdv = decoded.pdvs[0]
        self.assertEqual((pdv.context_id, pdv.control, bytes(pdv.data)), (context_id, control, data))
        self.assertEqual(decoded.encode(), encoded)


"""Property tests: every PDU we can build survives encode -> decode -> encode
byte for byte, and decoding those bytes gives back the same PDU."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.ul.framing import PDUFramer
from dicomtwist.ul.items import (
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextACItem,
    PresentationContextRQItem,
    RoleSelectionSubItem,
    SOPClassCommonExtendedNegotiationSubItem,
    SOPClassExtendedNegotiationSubItem,
    UnknownSubItem,
    UserIdentityACSubItem,
    UserIdentityRQSubItem,
    UserInformationItem,
)
from dicomtwist.ul.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationDataValue,
    decode_pdu,
)

uids = st.lists(st.integers(1, 99999), min_size=2, max_size=8).map(
    lambda parts: ".".join(map(str, parts)))
ae_titles = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=16).filter(
    lambda t: t.strip("-_") and not t[0].isspace())
context_ids = st.integers(0, 127).map(lambda n: 2 * n + 1)
short_text = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=16)

sub_items = st.one_of(
    st.builds(MaximumLengthSubItem, st.integers(0, 2**32 - 1)),
    st.builds(ImplementationClassUIDSubItem, uids),
    st.builds(ImplementationVersionNameSubItem, short_text),
    st.builds(AsynchronousOperationsWindowSubItem, st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(RoleSelectionSubItem, uids, st.booleans(), st.booleans()),
    st.builds(SOPClassExtendedNegotiationSubItem, uids, st.binary(max_size=8)),
    st.builds(SOPClassCommonExtendedNegotiationSubItem, uids, uids,
              st.lists(uids, max_size=3).map(tuple)),
    st.builds(UserIdentityRQSubItem, st.integers(1, 5), st.booleans(), st.binary(max_size=20),
              st.binary(max_size=20)),
    st.builds(UserIdentityACSubItem, st.binary(max_size=20)),
    st.builds(UnknownSubItem, st.integers(0x5A, 0xFF), st.binary(max_size=12)),
)
user_information = st.lists(sub_items, max_size=6).map(lambda s: UserInformationItem(tuple(s)))

associate_rq = st.builds(
    AAssociateRQ, ae_titles, ae_titles,
    st.lists(st.builds(PresentationContextRQItem, context_ids, uids,
                       st.lists(uids, min_size=1, max_size=4).map(tuple)),
             max_size=6).map(tuple),
    user_information, uids)
associate_ac = st.builds(
    AAssociateAC, ae_titles, ae_titles,
    st.lists(st.builds(PresentationContextACItem, context_ids, st.integers(0, 4), uids),
             max_size=6).map(tuple),
    user_information, uids)
pdata = st.lists(
    st.builds(PresentationDataValue, context_ids, st.integers(0, 3), st.binary(max_size=64)),
    min_size=1, max_size=4).map(lambda pdvs: PDataTF(tuple(pdvs)))
pdus = st.one_of(
    associate_rq, associate_ac,
    st.builds(AAssociateRJ, st.integers(1, 2), st.integers(1, 3), st.integers(1, 7)),
    pdata, st.just(AReleaseRQ()), st.just(AReleaseRP()),
    st.builds(AAbort, st.sampled_from([0, 2]), st.integers(0, 6)),
)


def _comparable(pdu):
    """P-DATA values decode as memoryviews; compare their bytes."""
    if isinstance(pdu, PDataTF):
        return [(p.context_id, p.control, bytes(p.data)) for p in pdu.pdvs]
    return pdu


class RoundTripProperties(SynchronousTestCase):
    """decode(encode(pdu)) == pdu and encode(decode(bytes)) == bytes."""

    @settings(max_examples=400, deadline=None)
    @given(pdus)
    def test_decode_then_encode_gives_back_the_bytes(self, pdu):
        """Framing and decoding our encoding, then encoding again, is exact."""
        wire = pdu.encode()
        [(pdu_type, body)] = list(PDUFramer(0).feed(wire))
        decoded = decode_pdu(pdu_type, body)
        self.assertEqual(_comparable(decoded), _comparable(pdu))
        self.assertEqual(decoded.encode(), wire)

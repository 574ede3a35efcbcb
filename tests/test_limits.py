"""Tests for the acceptor's limits: association count, identifier size."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from dicomtwist.association import AcceptorFactory, associate
from dicomtwist.dimse import assembly
from dicomtwist.dimse.messages import CFindRQ, CStoreRQ
from dicomtwist.errors import AssociationRejected, DIMSEDecodeError
from dicomtwist.services.echo import handle_echo
from tests.helpers import UNCOMPRESSED, VERIFICATION, connect_in_memory, policy


class MaxAssociationsTests(SynchronousTestCase):
    """``max_associations`` refuses extra associations at once."""

    def _associate(self, reactor, factory):
        d = associate(reactor, "127.0.0.1", 11112, called_ae_title="TESTSCP",
                      contexts=[(VERIFICATION, UNCOMPRESSED)])
        client, server, pump = connect_in_memory(reactor, factory)
        pump.flush()
        return d, client, server, pump

    def test_limit_rejects_transiently(self):
        """Past the limit a peer gets A-ASSOCIATE-RJ transient, presentation
        provider, local limit exceeded (2, 3, 2)."""
        reactor = MemoryReactorClock()
        factory = AcceptorFactory(reactor, policy(), {"echo": handle_echo}, max_associations=2)
        first = [self._associate(reactor, factory) for _ in range(2)]
        for d, *_ in first:
            self.successResultOf(d)
        d, client, server, pump = self._associate(reactor, factory)
        error = self.failureResultOf(d, AssociationRejected).value
        self.assertEqual((error.result, error.source, error.reason), (2, 3, 2))
        self.assertEqual(len(factory.active), 2)

    def test_released_association_frees_its_slot(self):
        """Once an association is released a new one is accepted."""
        reactor = MemoryReactorClock()
        factory = AcceptorFactory(reactor, policy(), {"echo": handle_echo}, max_associations=1)
        d, client, server, pump = self._associate(reactor, factory)
        assoc = self.successResultOf(d)
        released = assoc.release()
        pump.flush()
        self.successResultOf(released)
        self.assertEqual(factory.active, set())
        d2, *_ = self._associate(reactor, factory)
        self.successResultOf(d2)

    def test_silent_connection_does_not_count(self):
        """A connection that has not sent its A-ASSOCIATE-RQ holds no slot."""
        reactor = MemoryReactorClock()
        factory = AcceptorFactory(reactor, policy(), {"echo": handle_echo}, max_associations=1)
        factory.buildProtocol(None)
        d, *_ = self._associate(reactor, factory)
        self.successResultOf(d)


class IdentifierLimitTests(SynchronousTestCase):
    """Identifiers held in memory are bounded; C-STORE data sets less so."""

    def test_identifier_over_limit_refused(self):
        """A C-FIND identifier larger than MAX_IDENTIFIER_LENGTH is a decode error."""
        sink = assembly.memory_sink(CFindRQ(1, "1.2"), None)
        with self.assertRaises(DIMSEDecodeError):
            sink.write(memoryview(bytes(assembly.MAX_IDENTIFIER_LENGTH + 1)))

    def test_store_sink_has_the_large_limit(self):
        """A C-STORE data set may exceed the identifier limit in memory."""
        sink = assembly.memory_sink(CStoreRQ(1, "1.2", "1.2.3"), None)
        sink.write(memoryview(bytes(assembly.MAX_IDENTIFIER_LENGTH + 1)))
        self.assertEqual(len(sink.close()), assembly.MAX_IDENTIFIER_LENGTH + 1)


class DataSetLimitTests(SynchronousTestCase):
    """Received identifiers are bounded in nesting and inflated size."""

    def nested(self, depth: int):
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        top = Dataset()
        top.QueryRetrieveLevel = "STUDY"
        current = top
        for _ in range(depth):
            item = Dataset()
            current.ReferencedStudySequence = Sequence([item])
            current = item
        return top

    def test_deep_nesting_refused(self):
        """An identifier nested deeper than MAX_SEQUENCE_DEPTH is a decode error."""
        from dicomtwist.dimse import codec

        ok = codec.encode_dataset(self.nested(codec.MAX_SEQUENCE_DEPTH), UNCOMPRESSED[0])
        codec.decode_dataset(ok, UNCOMPRESSED[0])
        deep = codec.encode_dataset(self.nested(codec.MAX_SEQUENCE_DEPTH + 2), UNCOMPRESSED[0])
        with self.assertRaises(DIMSEDecodeError):
            codec.decode_dataset(deep, UNCOMPRESSED[0])

    def test_deflate_bomb_refused(self):
        """A Deflated data set that inflates past the limit is a decode error."""
        import zlib

        from dicomtwist.dimse import codec

        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        bomb = compressor.compress(bytes(codec.MAX_INFLATED_LENGTH + 1024)) + compressor.flush()
        self.assertLess(len(bomb), 1024 * 1024)
        with self.assertRaises(DIMSEDecodeError):
            codec.decode_dataset(bomb, "1.2.840.10008.1.2.1.99")

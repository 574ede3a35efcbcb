"""Test helpers: in-memory associations, test data sets, free ports."""

from __future__ import annotations

import socket

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from dicomtwist.acse import AcceptorPolicy

UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


def policy(**kwargs) -> AcceptorPolicy:
    """An acceptor policy for tests: Verification and CT, uncompressed."""
    defaults = dict(ae_title="TESTSCP",
                    contexts={VERIFICATION: UNCOMPRESSED, CT_IMAGE_STORAGE: UNCOMPRESSED})
    defaults.update(kwargs)
    return AcceptorPolicy(**defaults)


def connect_in_memory(reactor: MemoryReactorClock, server_factory, index: int = -1):
    """Join the client factory recorded in ``reactor.tcpClients[index]`` to a
    server protocol from ``server_factory``, over in-memory transports.

    :returns: ``(client, server, pump)``; call ``pump.flush()`` to move bytes.
    """
    host, port, client_factory, _timeout, _bind = reactor.tcpClients[index]
    client_addr = IPv4Address("TCP", "127.0.0.1", 40000)
    server_addr = IPv4Address("TCP", host, port)
    client = client_factory.buildProtocol(server_addr)
    server = server_factory.buildProtocol(client_addr)
    pump = iosim.connect(
        server, iosim.FakeTransport(server, isServer=True, hostAddress=server_addr,
                                    peerAddress=client_addr),
        client, iosim.FakeTransport(client, isServer=False, hostAddress=client_addr,
                                    peerAddress=server_addr),
        greet=False,
    )
    pump.flush()
    return client, server, pump


def ct_dataset(pixels: int = 16, **values) -> Dataset:
    """A small, valid CT Image Storage data set (uncompressed pixel data)."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = values.pop("SOPInstanceUID", generate_uid())
    ds.StudyInstanceUID = values.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = values.pop("SeriesInstanceUID", generate_uid())
    ds.PatientID = values.pop("PatientID", "PID1")
    ds.PatientName = values.pop("PatientName", "Test^Patient")
    ds.Modality = "CT"
    ds.Columns = min(pixels, 512)
    ds.Rows = max(1, pixels // ds.Columns)
    pixels = ds.Rows * ds.Columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (pixels * 2 // 256) + bytes(pixels * 2 % 256)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

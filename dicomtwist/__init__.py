"""dicomtwist: a DICOM Query/Retrieve archive and client built on Twisted."""

__version__ = "0.1.0"

#: Our Implementation Class UID (PS3.7 D.3.3.2); the root is a UUID-derived
#: 2.25 UID so that it is globally unique without a registered org root.
IMPLEMENTATION_CLASS_UID = "2.25.186538916463158093766826766958219870371"
#: Our Implementation Version Name (at most 16 characters).
IMPLEMENTATION_VERSION_NAME = "DICOMTWIST_010"

__all__ = ["__version__", "IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME"]

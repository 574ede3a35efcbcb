"""DICOM services (PS3.4) on top of the DIMSE layer."""

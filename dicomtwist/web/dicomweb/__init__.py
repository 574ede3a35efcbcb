"""DICOMweb (PS3.18): QIDO-RS, WADO-RS and STOW-RS over twisted.web."""

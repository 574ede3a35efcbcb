"""twistd plugin: ``twistd dicomqr`` runs the dicomtwist Query/Retrieve archive."""

from twisted.application.service import ServiceMaker

dicomqr = ServiceMaker(
    "dicomtwist QR SCP",
    "dicomtwist.tap",
    "A DICOM Verification, Storage and Query/Retrieve archive",
    "dicomqr",
)

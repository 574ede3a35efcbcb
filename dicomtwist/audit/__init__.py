"""The DICOM audit trail (PS3.15 A.5, IHE ATNA): audit messages for what
happens in the archive, sent as syslog messages (RFC 5424) over UDP or TLS,
or appended to a file.

``messages`` builds the XML, ``syslog`` frames and sends it, ``trail``
observes :data:`dicomtwist.events.bus` and ties the two together.
"""

__all__ = ["messages", "syslog", "trail"]

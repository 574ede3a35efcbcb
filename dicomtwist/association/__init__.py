"""Associations: ACSE negotiation and DIMSE messaging on top of the Upper Layer.

:class:`Association` is the DICOM *service user* of an Upper Layer
connection (:class:`dicomtwist.ul.protocol.DicomProtocol`).  It negotiates
with :mod:`dicomtwist.acse`, reassembles incoming DIMSE messages with
:class:`dicomtwist.dimse.assembly.MessageAssembler`, sends messages in
P-DATA-TF fragments no larger than the peer's maximum, dispatches requests
to service handlers and matches responses to outstanding requests.

The same class serves both roles:

* **acceptor**: built by :class:`AcceptorFactory`; answers the
  A-ASSOCIATE-RQ from its :class:`~dicomtwist.acse.AcceptorPolicy` and
  serves requests with the factory's handlers;
* **requestor**: made by :func:`associate`; offers ``echo``, ``store``,
  ``find``, ``get``, ``move``, ``cancel``, ``release`` and ``abort``, each
  returning a Deferred.

Handlers (PS3.4 services) are called as ``handler(request)`` with a
:class:`ServiceRequest` and may return a value, a Deferred, or -- for
C-FIND/C-GET/C-MOVE -- an iterable or async iterable of pending results.

The package, by seam:

- :mod:`.protocol`: :class:`Association`, establishment, release and
  abort, sending, receiving and serving requests;
- :mod:`.requestor`: the requests an association sends (mixed into
  :class:`Association`);
- :mod:`.handlers`: what a service handler is given and returns;
- :mod:`.files`: stored data sets sent without decoding;
- :mod:`.factories`: :class:`AcceptorFactory`, :class:`RequestorFactory`
  and :func:`associate`.
"""

from dicomtwist.association.factories import AcceptorFactory, RequestorFactory, associate
from dicomtwist.association.files import NATIVE_SYNTAXES, FileDataSet, file_dataset
from dicomtwist.association.handlers import (
    MULTI_RESPONSE,
    RESPONSE_FOR,
    SERVICE_FOR,
    Handler,
    Response,
    ServiceRequest,
)
from dicomtwist.association.protocol import Association
from dicomtwist.association.requestor import VERIFICATION

__all__ = [
    "AcceptorFactory", "Association", "FileDataSet", "Handler", "MULTI_RESPONSE",
    "NATIVE_SYNTAXES", "RESPONSE_FOR", "RequestorFactory", "Response", "SERVICE_FOR",
    "ServiceRequest", "VERIFICATION", "associate", "file_dataset",
]

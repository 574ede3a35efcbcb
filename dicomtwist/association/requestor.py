"""The requestor's side of an association: DIMSE requests we send and the
responses that answer them (``echo``, ``store``, ``find``, ``move``,
``get``, ``cancel``, and the DIMSE-N ``n_event_report``, ``n_get``,
``n_set``, ``n_action``, ``n_create``, ``n_delete``), each a Deferred, with
a DIMSE timer per request.

"Requestor" here means the DIMSE requestor: an association acceptor sends
requests too (a Storage Commitment SCP's N-EVENT-REPORT, a C-GET's
C-STORE sub-operations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dicomtwist.acse import PresentationContext
from dicomtwist.association.files import NATIVE_SYNTAXES, FileDataSet, file_dataset
from dicomtwist.association.handlers import LOG_NAMES, MULTI_RESPONSE, N_SERVICES, Handler
from dicomtwist.dimse import messages as m
from dicomtwist.dimse.codec import decode_dataset, encode_dataset
from dicomtwist.errors import DIMSEDecodeError
from dicomtwist.status import Category, category, status_name

VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class _Outstanding:
    """A request we sent and whose final response we await."""

    deferred: Deferred
    context: PresentationContext
    service: str
    on_response: Callable[[m.Message, Dataset | None], None] | None = None
    responses: list = field(default_factory=list)
    timer: Any = None



class Requestor:
    """Mixed into :class:`~dicomtwist.association.protocol.Association`: the
    requests it sends.  Uses the association's ``negotiated``,
    ``send_message``, ``clock``, ``dimse_timeout`` and ``_outstanding``."""

    def _next_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def context_for(self, abstract_syntax: str,
                    transfer_syntax: str | None = None) -> PresentationContext:
        """An accepted presentation context for an abstract syntax.

        :param transfer_syntax: prefer (and for a stored file, require) this
            transfer syntax.
        :raises ValueError: no such context was accepted.
        """
        if self.negotiated is None:
            raise ValueError("association not established")
        candidates = self.negotiated.by_abstract_syntax.get(abstract_syntax, ())
        if transfer_syntax is not None:
            exact = [c for c in candidates if c.transfer_syntax == transfer_syntax]
            if exact:
                return exact[0]
        if not candidates:
            raise ValueError(f"no accepted presentation context for {abstract_syntax}")
        return candidates[0]

    def _request(self, message: m.Message, context: PresentationContext, data: Any,
                 service: str, on_response: Callable | None = None) -> Deferred:
        d: Deferred = Deferred()
        pending = _Outstanding(d, context, service, on_response)
        self._outstanding[message.message_id] = pending
        # A request queued behind another's data set (several outstanding
        # in an Asynchronous Operations Window) waits for its response only
        # once it is sent: its DIMSE timer starts then.
        queued = bool(self._sending or self._send_queue)
        if not queued:
            self._arm_dimse_timer(message.message_id, pending)
        self.log.info("Sending {name} Request: MsgID {id}",
                      name=LOG_NAMES.get(service, service), id=message.message_id)
        sent = self.send_message(message, context.context_id, data)
        if queued:
            sent.addCallback(self._sent_request, message.message_id, pending)
        sent.addErrback(self._send_failed, message.message_id)
        return d

    def _sent_request(self, _: Any, message_id: int, pending: _Outstanding) -> None:
        """A queued request is on the wire: its DIMSE timer starts."""
        if self._outstanding.get(message_id) is pending:
            self._arm_dimse_timer(message_id, pending)

    def _send_failed(self, failure: Failure, message_id: int) -> None:
        pending = self._outstanding.pop(message_id, None)
        if pending is not None:
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.deferred.errback(failure)

    def _arm_dimse_timer(self, message_id: int, pending: _Outstanding) -> None:
        if self.dimse_timeout is None:
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.reset(self.dimse_timeout)
        else:
            pending.timer = self.clock.callLater(self.dimse_timeout, self._dimse_expired,
                                                 message_id)

    def _dimse_expired(self, message_id: int) -> None:
        self.log.warn("DIMSE timeout: no response to message {id} in {seconds} s, aborting",
                      id=message_id, seconds=self.dimse_timeout)
        self._abort_cause = "DIMSE timeout"
        self.abort_request()
        if self.transport is not None:
            self.transport.loseConnection()

    def _on_response(self, message: m.Message, data: Any) -> None:
        message_id = message.message_id_being_responded_to
        pending = self._outstanding.get(message_id)
        if pending is None:
            self.log.warn("Response {summary} to no request of ours; ignored",
                          summary=message.summary())
            return
        dataset = None
        if isinstance(data, (bytes, bytearray)) and data:
            try:
                dataset = decode_dataset(data, pending.context.transfer_syntax)
            except DIMSEDecodeError as e:
                self.log.warn("Undecodable data set in {summary}: {error}",
                              summary=message.summary(), error=str(e))
        status = message.status
        # Multi-response services (FIND/MOVE/GET) are reported by their
        # callers (movescu prints each one); echo and store are ours to log.
        emit = self.log.debug if pending.service in MULTI_RESPONSE else self.log.info
        emit("Received {name} Response (Status: 0x{status:04X} {status_name})",
                      name=LOG_NAMES.get(pending.service, pending.service), status=status,
                      status_name=status_name(status))
        if category(status) is Category.PENDING:
            self._arm_dimse_timer(message_id, pending)
            pending.responses.append((message, dataset))
            if pending.on_response is not None:
                pending.on_response(message, dataset)
            return
        del self._outstanding[message_id]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        if pending.service in MULTI_RESPONSE:
            pending.responses.append((message, dataset))
            if pending.on_response is not None:
                pending.on_response(message, dataset)
            pending.deferred.callback(pending.responses)
        elif pending.service in N_SERVICES:
            pending.deferred.callback((message, dataset))
        else:
            pending.deferred.callback(message)

    def echo(self) -> Deferred[m.CEchoRSP]:
        """C-ECHO: fires with the C-ECHO-RSP."""
        try:
            context = self.context_for(VERIFICATION)
        except ValueError as e:
            return defer.fail(e)
        message = m.CEchoRQ(self._next_id(), VERIFICATION)
        return self._request(message, context, None, "echo")

    def store(self, dataset: Dataset | str | FileDataSet, *,
              priority: int = m.Priority.MEDIUM,
              move_originator: tuple[str, int] | None = None) -> Deferred[m.CStoreRSP]:
        """C-STORE a data set, a Part 10 file path, or a :class:`FileDataSet`.

        A file whose transfer syntax was accepted is sent as stored, without
        decoding; otherwise it is decoded and re-encoded (uncompressed
        syntaxes only).  Fires with the C-STORE-RSP.
        """
        try:
            if isinstance(dataset, str):
                dataset = file_dataset(dataset)
            if isinstance(dataset, FileDataSet):
                sop_class, sop_instance = dataset.sop_class_uid, dataset.sop_instance_uid
                if not (sop_class and sop_instance):
                    ds = dcmread(dataset.path, stop_before_pixels=True, force=True)
                    sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                context = self.context_for(sop_class, dataset.transfer_syntax)
                if context.transfer_syntax == dataset.transfer_syntax:
                    data: Any = dataset
                elif (dataset.transfer_syntax in NATIVE_SYNTAXES
                      and context.transfer_syntax in NATIVE_SYNTAXES):
                    full = dcmread(dataset.path, force=True)
                    data = encode_dataset(full, context.transfer_syntax)
                else:
                    # Changing an encapsulated (compressed) syntax needs a
                    # codec: refuse rather than send broken pixel data.
                    raise ValueError(f"peer did not accept {dataset.transfer_syntax}"
                                     f" for {sop_class}")
            else:
                sop_class, sop_instance = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
                tsyntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
                context = self.context_for(sop_class, tsyntax)
                if (tsyntax is not None and tsyntax not in NATIVE_SYNTAXES
                        and context.transfer_syntax != tsyntax):
                    raise ValueError(f"peer did not accept {tsyntax} for {sop_class}")
                data = encode_dataset(dataset, context.transfer_syntax)
        except (ValueError, AttributeError, OSError) as e:
            return defer.fail(e)
        kwargs: dict[str, Any] = {}
        if move_originator is not None:
            kwargs = {"move_originator_application_entity_title": move_originator[0],
                      "move_originator_message_id": move_originator[1]}
        message = m.CStoreRQ(self._next_id(), sop_class, sop_instance, priority, **kwargs)
        return self._request(message, context, data, "store")

    def _query(self, cls: type, service: str, identifier: Dataset, sop_class: str,
               on_response: Callable | None, **extra: Any) -> Deferred:
        try:
            context = self.context_for(sop_class)
            data = encode_dataset(identifier, context.transfer_syntax)
        except (ValueError, AttributeError) as e:
            return defer.fail(e)
        message = cls(self._next_id(), sop_class, **extra)
        d = self._request(message, context, data, service, on_response)
        d.message_id = message.message_id  # type: ignore[attr-defined]
        return d

    def find(self, identifier: Dataset, sop_class: str, *,
             on_response: Callable | None = None,
             priority: int = m.Priority.MEDIUM) -> Deferred[list]:
        """C-FIND: fires with every ``(C-FIND-RSP, identifier)``, final last.

        ``on_response`` is called for each response as it arrives.  The
        Deferred has a ``message_id`` attribute for :meth:`cancel`.
        """
        return self._query(m.CFindRQ, "find", identifier, sop_class, on_response,
                           priority=priority)

    def move(self, identifier: Dataset, sop_class: str, destination: str, *,
             on_response: Callable | None = None,
             priority: int = m.Priority.MEDIUM) -> Deferred[list]:
        """C-MOVE to ``destination``: fires with every ``(C-MOVE-RSP, dataset)``."""
        return self._query(m.CMoveRQ, "move", identifier, sop_class, on_response,
                           move_destination=destination, priority=priority)

    def get(self, identifier: Dataset, sop_class: str, *,
            on_store: Handler | None = None, on_response: Callable | None = None,
            priority: int = m.Priority.MEDIUM) -> Deferred[list]:
        """C-GET: fires with every ``(C-GET-RSP, dataset)``.

        The C-STORE sub-operations arrive on this association and go to
        ``on_store`` (or the association's ``"store"`` handler).
        """
        if on_store is not None:
            # The handlers may be the factory's: this association's own copy.
            self.handlers = {**self.handlers, "store": on_store}
        return self._query(m.CGetRQ, "get", identifier, sop_class, on_response,
                           priority=priority)

    def cancel(self, request: int | Deferred) -> None:
        """C-CANCEL an outstanding C-FIND, C-GET or C-MOVE.

        :param request: its message ID, or the Deferred ``find`` & co. gave.
        """
        message_id = request if isinstance(request, int) else request.message_id  # type: ignore[union-attr]
        pending = self._outstanding.get(message_id)
        if pending is None:
            return
        self.log.info("Sending Cancel Request for message {id}", id=message_id)
        self.send_message(m.CCancelRQ(message_id), pending.context.context_id).addErrback(
            lambda f: None)

    # -- DIMSE-N (PS3.7 10.1) --------------------------------------------------
    def _normalized(self, message_class: type, service: str, sop_class: str,
                    dataset: Dataset | None, **fields: Any) -> Deferred:
        """Send a DIMSE-N request on a context for ``sop_class``; fires with
        ``(response, data set or None)``."""
        try:
            context = self.context_for(sop_class)
            data = None if dataset is None else encode_dataset(dataset, context.transfer_syntax)
        except (ValueError, AttributeError) as e:
            return defer.fail(e)
        message = message_class(self._next_id(), **fields)
        return self._request(message, context, data, service)

    def n_event_report(self, sop_class: str, sop_instance: str, event_type: int,
                       event_information: Dataset | None = None
                       ) -> Deferred[tuple[m.NEventReportRSP, Dataset | None]]:
        """N-EVENT-REPORT (PS3.7 10.1.1): report an event about a SOP instance.

        :returns: fires with ``(N-EVENT-REPORT-RSP, Event Reply or None)``.
        """
        return self._normalized(m.NEventReportRQ, "n-event-report", sop_class,
                                event_information, affected_sop_class_uid=sop_class,
                                affected_sop_instance_uid=sop_instance,
                                event_type_id=event_type)

    def n_get(self, sop_class: str, sop_instance: str,
              attributes: tuple[int, ...] | None = None
              ) -> Deferred[tuple[m.NGetRSP, Dataset | None]]:
        """N-GET (PS3.7 10.1.2): read attributes (all of them without a list).

        :param attributes: tags as ints ``(group << 16) | element``.
        :returns: fires with ``(N-GET-RSP, Attribute List or None)``.
        """
        return self._normalized(m.NGetRQ, "n-get", sop_class, None,
                                requested_sop_class_uid=sop_class,
                                requested_sop_instance_uid=sop_instance,
                                attribute_identifier_list=attributes)

    def n_set(self, sop_class: str, sop_instance: str, modifications: Dataset
              ) -> Deferred[tuple[m.NSetRSP, Dataset | None]]:
        """N-SET (PS3.7 10.1.3): change attributes of a SOP instance.

        :returns: fires with ``(N-SET-RSP, Attribute List or None)``.
        """
        return self._normalized(m.NSetRQ, "n-set", sop_class, modifications,
                                requested_sop_class_uid=sop_class,
                                requested_sop_instance_uid=sop_instance)

    def n_action(self, sop_class: str, sop_instance: str, action_type: int,
                 action_information: Dataset | None = None
                 ) -> Deferred[tuple[m.NActionRSP, Dataset | None]]:
        """N-ACTION (PS3.7 10.1.4): ask for an action on a SOP instance.

        :returns: fires with ``(N-ACTION-RSP, Action Reply or None)``.
        """
        return self._normalized(m.NActionRQ, "n-action", sop_class, action_information,
                                requested_sop_class_uid=sop_class,
                                requested_sop_instance_uid=sop_instance,
                                action_type_id=action_type)

    def n_create(self, sop_class: str, sop_instance: str | None = None,
                 attributes: Dataset | None = None
                 ) -> Deferred[tuple[m.NCreateRSP, Dataset | None]]:
        """N-CREATE (PS3.7 10.1.5): create a SOP instance (its UID given,
        or left to the peer, which answers it in the response).

        :returns: fires with ``(N-CREATE-RSP, Attribute List or None)``.
        """
        return self._normalized(m.NCreateRQ, "n-create", sop_class, attributes,
                                affected_sop_class_uid=sop_class,
                                affected_sop_instance_uid=sop_instance)

    def n_delete(self, sop_class: str, sop_instance: str
                 ) -> Deferred[tuple[m.NDeleteRSP, Dataset | None]]:
        """N-DELETE (PS3.7 10.1.6): delete a SOP instance.

        :returns: fires with ``(N-DELETE-RSP, None)``.
        """
        return self._normalized(m.NDeleteRQ, "n-delete", sop_class, None,
                                requested_sop_class_uid=sop_class,
                                requested_sop_instance_uid=sop_instance)

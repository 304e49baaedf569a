"""The sans-IO engine: many ISAKMP SAs, dispatch by cookie pair, timers.

Design note
-----------
The engine owns every ``IsakmpSa`` and the Rust ``CookieTable`` that finds them. It does no
I/O and reads no clock (the aioquic pattern): callers feed it

* ``receive_datagram(data, remote, local, now)`` for each UDP datagram,
* ``handle_timer(now)`` when the deadline from ``get_timer()`` has passed,
* ``initiate(...)`` / ``initiate_quick_mode(...)`` / ``delete(...)`` / ``acquire(...)`` for
  local requests,

and drain ``datagrams_to_send()`` and ``next_event()`` afterwards.

Flow: receive -> dispatch by cookie -> the exchange's transition table -> send and emit.

* Dispatch: a message whose responder cookie is zero and that no SA knows starts a
  responder Main Mode (after the filter lookup and the flood gate, ``engine.admission``;
  no DH work before message 3). A retransmitted message 1 is recognised by the table's
  first-message hash and answered with the same message 2. Other messages go to their SA
  by (CKY-I, CKY-R), falling back to the half-open (CKY-I, 0) entry of our own initiator
  SAs; then by exchange type to ``main_mode``/``aggressive_mode``, ``quick_mode`` (by
  Message ID) or ``informational`` (``ikecore.protocol``), whose transition tables decide
  the reply. Every payload chain passes RFC 2408 section 5.2 first (RESERVED zero, known
  or private-use payload types). Past the half-open stage, ``engine.admission.SaLimits``
  caps what a peer may make us hold (``[limits]``): refused with NO-PROPOSAL-CHOSEN.
* Endpoint (RFC 3947 section 4): an SA follows its peer to a new address or port only for
  a message that is new and authenticated; the move is made tentatively (so that the
  answer goes there) and undone otherwise. A message already processed (a repeat, a
  finished Quick Mode, a spent Message ID) that arrives from elsewhere is a replay.
* Send and emit: replies and requests go to the outgoing queue, facts to the event queue
  (``emit``); both leave only when the caller drains them, after the SA store is written.
* Timers: one heap of (deadline, sequence, SA, Message ID, ``TimerKind``), each kind with
  one handler here (``engine.timers``). Requests are retransmitted as the identical
  datagram with exponential backoff (``Timing``) up to a limit; a duplicate of the last
  request is answered by resending the last reply and changes nothing; every negotiation
  has a deadline; established SAs expire at their lifetime with a Delete.
* Helpers: rekeying (``engine.rekey``) and acquires (``engine.acquire``) act through the
  public ``EngineServices`` methods (``engine.services``) and never import this module.
  The engine tells them where a negotiation ends, right after emitting the event that says
  so: ``_established``, ``_fail``, ``remove_sa`` and ``_quick_mode_ended`` call the acquire
  heap, which may start a Quick Mode or settle acquires there and then.

Peer errors never escape ``receive_datagram``: wire-level garbage is counted
(``InvalidPacketReceived``) and dropped, leaving the SA as it was; a semantic failure
(no proposal chosen, authentication failed) ends the negotiation with the Notify the
error class pins, sent unprotected before keys exist and protected after.
"""

from __future__ import annotations

import datetime
import heapq
import os
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from ikecore import _core, keymat, steering, wire
from ikecore import dh as dh_module
from ikecore import events as ev
from ikecore.config import Config
from ikecore.driver import DriverError, IpsecDriver, IpsecSaKeys, MemoryDriver
from ikecore.engine import acquire, express, persist, rekey
from ikecore.engine.admission import AdmissionControl, SaLimits
from ikecore.engine.timers import TimerKind
from ikecore.errors import (
    AuthenticationFailed,
    ConfigError,
    IkeError,
    InvalidCookie,
    InvalidIdInformation,
    LocalProtocolError,
    NoProposalChosen,
    RemoteProtocolError,
)
from ikecore.events import Address
from ikecore.policy import GenericFilter
from ikecore.protocol import aggressive_mode, auth, dpd, informational, main_mode, nat_traversal, quick_mode
from ikecore.protocol.messages import check_generic_headers
from ikecore.protocol.phase1 import Phase1Handler
from ikecore.protocol.transitions import Row, Send
from ikecore.sa import IpsecSa, IsakmpSa, OrderedIds, Phase1State, Phase2State, QuickModeExchange, Role, message_digest

__all__ = ["Engine"]

ZERO_COOKIE = bytes(8)
MM = wire.ExchangeType.IDENTITY_PROTECTION
QM = wire.ExchangeType.QUICK_MODE
INFO = wire.ExchangeType.INFORMATIONAL
AM = wire.ExchangeType.AGGRESSIVE
KEEPALIVE = b"\xff"
COOKIE_SECRET_LIFETIME = 300.0  # seconds between rotations of the responder-cookie secret
# Finished Message IDs remembered per ISAKMP SA to drop replays; an older replayed QM1
# can at most start a Quick Mode that its sender cannot finish (it lacks our new nonce).
SPENT_MESSAGE_IDS = 4096
# A store write that failed (a full disk) is tried again this many seconds later, first
# for at most STORE_PROBE ISAKMP SAs; negotiation goes on without the store meanwhile.
STORE_RETRY = 1.0
STORE_PROBE = 64

# Errors that end a negotiation (the peer cannot or will not agree) rather than being
# dropped as noise: they come from a message that decrypted and parsed.
_FATAL = (NoProposalChosen, AuthenticationFailed, InvalidIdInformation)

# Timer kinds as small numbers in the heap entries, and back.
_TIMER_KINDS = tuple(TimerKind)
_TIMER_CODES = {kind: code for code, kind in enumerate(_TIMER_KINDS)}

# The ``role`` text of events (``Role.value``, read without Enum's Python-level property).
_ROLE_TEXT = {role: role.value for role in Role}

# A timer handler: (ISAKMP SA, Message ID, deadline, now).
TimerHandler = Callable[[IsakmpSa, int, float, float], None]


def _endpoint_bytes(address: Address) -> bytes:
    return keymat.packed_address(address[0]) + address[1].to_bytes(2, "big")


def _needs_marker(local: Address, remote: Address) -> bool:
    """RFC 3948 framing: peers such as charon use the non-ESP marker off port 500."""
    return local[1] != 500 and remote[1] != 500


class Engine:
    """Sans-IO IKEv1 engine for many peers, initiator and responder.

    Args:
        config: the gateway configuration (filters, policies, timing).
        driver: where Quick Mode SAs go; default an in-memory SA database.
        random: byte source for cookies, nonces and Message IDs (tests inject one).
        keypair: DH key-pair factory ``(group) -> KeyPair`` (tests may inject one).
        keylog: called with a Wireshark IKEv1 decryption-table line per ISAKMP SA, when
            the user asked for a key log.
        wall_clock: the UTC time for certificate validity (default: the system clock).
        store: an ``ikecore.gateway.store.SaStore``: established SAs are loaded from it now and
            what changed is written to it (before any datagram or event leaves); a write
            that fails is reported and tried again once a second, negotiation goes on.
        now: the engine time at start (restored lifetimes are rebased on it).
        worker: (index, count) of this engine among a gateway's worker processes
            (``ikecore.steering``); (0, 1) for a gateway of one process.
    """

    def __init__(self, config: Config, *, driver: IpsecDriver | None = None,
                 random: Callable[[int], bytes] = os.urandom,
                 keypair: Callable[[int], dh_module.KeyPair] | None = None,
                 keylog: Callable[[str], None] | None = None,
                 wall_clock: Callable[[], datetime.datetime] | None = None,
                 store: persist.RecordStore | None = None, now: float = 0.0,
                 worker: tuple[int, int] = (0, 1)) -> None:
        self.config = config
        #: (this worker's index, the gateway's worker count): initiator cookies are
        #: chosen so that ``ikecore.steering.worker_of`` maps them here.
        self.worker = worker
        self.driver: IpsecDriver = driver if driver is not None else MemoryDriver()
        self._random = random
        self._keypair = keypair or dh_module.keypair
        self._keylog = keylog
        self._wall_clock = wall_clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self._sas: dict[int, IsakmpSa] = {}
        # (local IP, peer IP) -> handles, as created: INITIAL-CONTACT decisions without a
        # scan of every SA (a load generator holds 100,000 SAs towards one gateway)
        self._pairs: dict[tuple[str, str], OrderedIds] = {}  # an ordered set per pair
        # hash of the peer identity (ID type, data) -> the established handle(s) with it, and
        # the established SAs without one: INITIAL-CONTACT from one address fronting many
        # identities (charon's load tester) looks at that identity's SAs only
        # (_drop_stale_sas, which still compares the identities themselves)
        self._by_identity: dict[int, int | set[int]] = {}
        self._unidentified: set[int] = set()
        self._cookies = _core.CookieTable()
        self._next_handle = 1
        self._outgoing: list[tuple[bytes, Address, Address]] = []
        self._events: deque[ev.Event] = deque()
        # (deadline, sequence, handle, Message ID, kind's index in _TIMER_KINDS): numbers only,
        # so that the garbage collector stops tracking the entries (a gateway holds millions)
        self._timers: list[tuple[float, int, int, int, int]] = []
        self._timer_seq = 0
        self._on_timer = self._timer_handlers()
        self._now = 0.0
        self._acquires = acquire.AcquireHeap()
        self._rotate_secret_at = float("-inf")
        self._admission = AdmissionControl(config.flood, random)
        self._limits = SaLimits(config.limits, worker[1])
        self._store = store
        # the store's account (engine.persist.Journal); without a store the marks are dropped
        self._journal = persist.Journal() if store is not None else None
        self._dirty: set[int] = self._journal.dirty if self._journal is not None else set()
        self._store_retry_at: float | None = None   # a write failed: the next try, not before
        #: the responder's express lane (engine.express), when the gateway enables one
        self.express: express.Lane | None = None
        if store is not None:
            self._restore(store, now)
        for restored in self._sas.values():
            self._limits.added(restored)

    # --- services lent to the state machines (protocol.services.Services, quick_mode's) and
    # to the helpers (engine.services.EngineServices: also emit, push_timer, filter_for,
    # sa, sas, initiate, initiate_quick_mode, remove_sa, remove_ipsec) ------------------

    def random(self, size: int) -> bytes:
        return self._random(size)

    def keypair(self, group: int) -> dh_module.KeyPair:
        return self._keypair(group)

    def wall_clock(self) -> datetime.datetime:
        return self._wall_clock()

    def keylog(self, line: str) -> None:
        if self._keylog is not None:
            self._keylog(line)

    def keylog_enabled(self) -> bool:
        return self._keylog is not None

    def esp_answered(self, sa: IsakmpSa, qm: QuickModeExchange, offer: bytes, reply: bytes,
                     lifetime: bytes | None) -> None:
        if self.express is not None:
            self.express.esp_answered(sa, qm, offer, reply, lifetime)

    def enable_express(self, flt: GenericFilter | None, *, thread: bool = True) -> bool:
        """Start the responder's express lane (``engine.express``) for filter ``flt``, the one
        every address pair uses; False when it cannot take this configuration on.
        ``thread``: the lane computes g^xy on a thread of its own."""
        self.express = express.Lane.for_engine(self, flt, thread=thread)
        return self.express is not None

    def take_over(self, sa: IsakmpSa, qm: QuickModeExchange | None, *, established: float, done: bool,
                  now: float, keymat: tuple[bytes, bytes] | None = None) -> None:
        """Adopt an SA the express lane negotiated this far (``engine.express.Lane.adopt``
        filled it): register it as message 3 would have (``_stateless_mm3``), then bring it
        where the handlers of messages 5, QM1 and QM3 would have, with their events.
        ``keymat``: the Quick Mode's (inbound, outbound) KEYMAT the lane computed."""
        timing = self.config.timing
        handle = sa.handle = self._next_handle
        self._next_handle += 1
        self._sas[handle] = sa
        self._pairs.setdefault((sa.local[0], sa.remote[0]), OrderedIds())[handle] = None
        refused = self._limits.refuse_isakmp(sa.remote[0])
        self._limits.added(sa)
        self._cookies.insert(sa.initiator_cookie, sa.responder_cookie, handle)
        self._dirty.add(handle)
        self.push_timer(sa.started + timing.negotiation_timeout, handle, 0, TimerKind.TIMEOUT)
        self._events.append(ev.Phase1Started(time=sa.started, handle=handle, role="responder", remote=sa.remote))
        self._events.append(ev.StatelessCookieVerified(time=sa.started, handle=handle, remote=sa.remote))
        if sa.state is Phase1State.R_EXPECT_MM5:
            self._admission.opened(handle, sa.remote[0])
            return
        self._established(sa, established)
        if qm is not None:
            sa.quick_modes[qm.message_id] = qm
            self._events.append(ev.Phase2Started(time=qm.started, handle=handle, message_id=qm.message_id,
                                                 role="responder"))
            self.push_timer(qm.started + timing.negotiation_timeout, handle, qm.message_id, TimerKind.QM_TIMEOUT)
            if done:
                self._now = now
                inbound, outbound = quick_mode.established_keys(sa, qm, keymat)
                try:
                    self.install(sa, qm, inbound, outbound)
                except NoProposalChosen as exc:
                    self._quick_mode_failed(sa, qm, str(exc), now)
                else:
                    qm.state = Phase2State.ESTABLISHED
                    self._quick_mode_established(sa, qm, now)
        if refused is not None:  # over a limit meanwhile: as if refused at message 3
            self.emit(ev.LimitReached(time=now, limit=refused, remote=sa.remote))
            self.remove_sa(sa, f"limits.{refused} reached", notify_peer=True)

    def admit_quick_mode(self, sa: IsakmpSa) -> None:
        """The limits on the peer's Quick Modes (``engine.admission.SaLimits``)."""
        limit = self._limits.refuse_quick_mode(sa)
        if limit is not None:
            self.emit(ev.LimitReached(time=self._now, limit=limit, remote=sa.remote, handle=sa.handle))
            raise NoProposalChosen(f"limits.{limit} = {getattr(self.config.limits, limit)} reached "
                                   f"on ISAKMP SA {sa.handle}")

    def get_spi(self, sa: IsakmpSa) -> bytes:
        try:
            spi = self.driver.get_spi(sa.remote[0], sa.local[0], wire.ProtocolId.IPSEC_ESP)
        except DriverError as exc:
            self.emit(ev.SpiAllocated(time=self._now, spi=None))
            self.emit(ev.DriverFailed(time=self._now, operation="get_spi", reason=str(exc)))
            raise NoProposalChosen(f"IPsec driver has no SPI: {exc}") from exc
        self._events.append(ev.SpiAllocated(time=self._now, spi=spi))
        return spi

    def install(self, sa: IsakmpSa, qm: QuickModeExchange, inbound: IpsecSaKeys,
                outbound: IpsecSaKeys) -> None:
        for operation, keys, done in (("add_outbound", outbound, ev.KeyAdded),
                                      ("update_inbound", inbound, ev.KeyUpdated)):
            try:
                getattr(self.driver, operation)(keys)
            except DriverError as exc:
                self.emit(ev.DriverFailed(time=self._now, operation=operation, reason=str(exc)))
                if operation == "update_inbound":  # no half-installed pair left behind
                    try:
                        self.driver.delete(outbound.spi, outbound.destination, outbound.protocol_id)
                    except DriverError:
                        pass
                raise NoProposalChosen(f"IPsec driver refused {operation}: {exc}") from exc
            self._events.append(done(time=self._now, spi=keys.spi))
        qm.installed = (outbound, inbound)

    # --- public API -----------------------------------------------------------------------

    def initiate(self, remote: Address, *, local: Address, now: float, quick_mode: bool = True,
                 filter_name: str | None = None, natt_port: int | None = None) -> int:
        """Start Main Mode (then Quick Mode unless told not to) with ``remote``.

        Aggressive Mode instead when the filter allows it. ``natt_port``: the peer's NAT-T
        port to float to (default 4500 when ``remote`` is on port 500, else its port).
        Returns the SA handle. Raises ConfigError when no filter covers the address pair.
        """
        self._now = now
        flt = self.filter_for(local, remote, filter_name)
        sa = self._new_sa(Role.INITIATOR, Phase1State.I_EXPECT_MM2, self._cookie(), ZERO_COOKIE,
                          local, remote, flt, now)
        sa.want_quick_mode = quick_mode
        sa.initial_contact = len(self._pairs.get((local[0], remote[0]), ())) <= 1  # only this SA
        sa.non_esp_marker = _needs_marker(local, remote)
        sa.natt_port = natt_port or (nat_traversal.NAT_T_PORT if remote[1] == 500 else remote[1])
        self._cookies.insert(sa.initiator_cookie, ZERO_COOKIE, sa.handle)
        self._events.append(ev.Phase1Started(time=now, handle=sa.handle, role=_ROLE_TEXT[sa.role], remote=remote))
        if flt.aggressive:
            self._send_request(sa, aggressive_mode.start_initiator(sa, self), now, AM, 1)
            return sa.handle
        self._send_request(sa, main_mode.start_initiator(sa, self), now, MM, 1)
        return sa.handle

    def initiate_quick_mode(self, handle: int, now: float, *, rekey_of: bytes | None = None) -> int:
        """Start one more Quick Mode on an established ISAKMP SA; returns its Message ID.

        ``rekey_of``: the spi_in of the IPsec SA this one replaces (see ``rekey``).
        """
        self._now = now
        sa = self._sas.get(handle)
        if sa is None or sa.state is not Phase1State.ESTABLISHED:
            raise LocalProtocolError(f"ISAKMP SA {handle} is not established")
        message_id = self._message_id(sa)
        qm = QuickModeExchange(message_id, Role.INITIATOR, Phase2State.I_EXPECT_QM2, now, sa.esp_policy)
        qm.rekey_of = rekey_of
        sa.quick_modes[message_id] = qm
        self._events.append(ev.Phase2Started(time=now, handle=handle, message_id=message_id, role="initiator"))
        window = sa.generic_filter.quick_mode_window
        if window and sum(1 for q in sa.quick_modes.values() if q.state is Phase2State.I_EXPECT_QM2) > window:
            qm.state = Phase2State.I_QUEUED  # started when one of ours in flight ends
            return message_id
        self._start_quick_mode(sa, qm, now)
        return message_id

    def _start_quick_mode(self, sa: IsakmpSa, qm: QuickModeExchange, now: float) -> None:
        qm.started, qm.state = now, Phase2State.I_EXPECT_QM2
        try:
            datagram = quick_mode.start_initiator(sa, qm, self)
        except NoProposalChosen as exc:
            del sa.quick_modes[qm.message_id]
            self._quick_mode_ended(ev.Phase2Failed(time=now, handle=sa.handle, message_id=qm.message_id,
                                                   role="initiator", reason=str(exc)))
            return
        self._send_qm_request(sa, qm, datagram, now, 1)
        self.push_timer(now + self.config.timing.negotiation_timeout, sa.handle, qm.message_id,
                        TimerKind.QM_TIMEOUT)

    def _next_quick_mode(self, handle: int) -> None:
        """An initiator Quick Mode ended: start the oldest one the window held back."""
        sa = self._sas.get(handle)
        if sa is None or sa.state is not Phase1State.ESTABLISHED:
            return
        queued = next((q for q in sa.quick_modes.values() if q.state is Phase2State.I_QUEUED), None)
        if queued is not None:
            self._start_quick_mode(sa, queued, self._now)

    def delete(self, handle: int, now: float, reason: str = "deleted by user") -> None:
        """Delete an ISAKMP SA and its IPsec SAs, telling the peer with Delete payloads."""
        self._now = now
        sa = self._sas.get(handle)
        if sa is not None:
            self.remove_sa(sa, reason, notify_peer=True)

    def rekey(self, handle: int, now: float, spi_in: bytes | None = None) -> None:
        """Rekey now: the ISAKMP SA (new Main Mode), or its IPsec SA ``spi_in`` (new Quick Mode)."""
        self._now = now
        sa = self._sas.get(handle)
        if sa is None or sa.state is not Phase1State.ESTABLISHED:
            raise LocalProtocolError(f"ISAKMP SA {handle} is not established")
        if spi_in is None:
            rekey.fire_isakmp_rekey(self, sa, now)
            return
        ipsec = next((s for s in sa.ipsec_sas if s.spi_in == spi_in), None)
        if ipsec is None:
            raise LocalProtocolError(f"ISAKMP SA {handle} has no IPsec SA with SPI {spi_in.hex()}")
        rekey.rekey_ipsec(self, sa, ipsec, now)

    def ipsec_lifetime_expired(self, spi_in: bytes, now: float, *, hard: bool) -> bool:
        """The driver reports a kilobyte limit of inbound SA ``spi_in``: soft rekeys, hard deletes."""
        self._now = now
        return rekey.lifetime_expired(self, spi_in, hard, now)

    def acquire(self, remote: Address, *, local: Address, now: float, filter_name: str | None = None) -> int:
        """The IPsec driver asks for SAs for traffic to ``remote``: see ``ikecore.engine.acquire``.

        Returns the acquire id that the AcquireSucceeded / AcquireFailed event will carry.
        """
        self._now = now
        return self._acquires.start(self, remote, local, now, filter_name)

    def acquire_counts(self) -> tuple[int, int]:
        """(acquires pending, of which queued behind another acquire's Main Mode)."""
        return self._acquires.counts()

    def soft_sas(self, now: float) -> list[dict[str, Any]]:
        """Soft associations (clear text after an unanswered Main Mode) still in force: JSON rows."""
        return self._acquires.soft_snapshot(now)

    def receive_datagram(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        """Process one UDP datagram received on ``local`` from ``remote``: each ISAKMP
        message it carries, in order. Never raises."""
        self._now = now
        try:
            self._receive(bytes(data), remote, local, now)
        except Exception as exc:  # noqa: BLE001 - peer bytes must never raise out
            self._failed(remote, exc)

    def _failed(self, remote: Address, exc: Exception) -> None:
        """Count what a peer's message raised: an invalid packet (a bug is one too, never a crash)."""
        if isinstance(exc, RemoteProtocolError):
            self._invalid(remote, str(exc), exc.notify_type)
        else:
            self._invalid(remote, f"internal error: {exc!r}", None)

    def datagrams_to_send(self) -> list[tuple[bytes, Address, Address]]:
        """Drain the queue: (datagram, remote address, local address) triples."""
        if self._journal is None:  # no store (the journal exists with one): nothing to write first
            self._dirty.clear()
        else:
            self._persist()
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> ev.Event | None:
        if self._journal is not None:
            self._persist()
        elif self._dirty:  # as datagrams_to_send: a caller drains every event this way
            self._dirty.clear()
        events = self._events
        return events.popleft() if events else None

    def get_timer(self) -> float | None:
        """The earliest time ``handle_timer`` must be called, or None."""
        deadline = self._timers[0][0] if self._timers else None
        retry = self._store_retry_at   # a failed store write is tried again through the timer
        if retry is not None and (deadline is None or retry < deadline):
            deadline = retry
        if self.express is not None:  # its negotiations' deadlines: handed over, then timed out
            lane = self.express.rust.next_deadline()
            if lane is not None and (deadline is None or lane < deadline):
                deadline = lane
        return deadline

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``: retransmissions, timeouts, expiries."""
        self._now = now
        if self.express is not None:
            self.express.rust.tick(now)
            self.express.adopt_all(now)
        timers, on_timer = self._timers, self._on_timer
        while timers and timers[0][0] <= now:
            deadline, _seq, handle, message_id, code = heapq.heappop(timers)
            self._dirty.add(handle)
            sa = self._sas.get(handle)
            if sa is not None:
                on_timer[_TIMER_KINDS[code]](sa, message_id, deadline, now)

    def sa(self, handle: int) -> IsakmpSa | None:
        return self._sas.get(handle)

    def sas(self) -> list[IsakmpSa]:
        return list(self._sas.values())

    def sas_with_identity(self, peer_id: wire.IdPayload) -> list[IsakmpSa]:
        found = self._by_identity.get(hash((peer_id.id_type, bytes(peer_id.data))))
        handles = [] if found is None else [found] if isinstance(found, int) else sorted(found)
        return [self._sas[h] for h in handles if h in self._sas]

    @property
    def half_open(self) -> int:
        return int(self._cookies.half_open)

    @property
    def persistent(self) -> bool:
        """True when the engine writes its SAs to a store (``store=``)."""
        return self._store is not None

    @property
    def sa_limits(self) -> SaLimits:
        """The ``[limits]`` accounting (``engine.admission.SaLimits``)."""
        return self._limits

    @property
    def admission(self) -> AdmissionControl:
        """The responder's half-open limits and stateless cookies (``ikecore.engine.admission``)."""
        return self._admission

    @property
    def cookie_table(self) -> _core.CookieTable:
        """The (CKY-I, CKY-R) -> handle table (``ikecore._core.CookieTable``)."""
        return self._cookies

    def flood_stats(self) -> dict[str, int]:
        """Responder half-open SAs, sources holding them, cached offers (ikecore.engine.admission)."""
        return self._admission.stats()

    # --- receive path ---------------------------------------------------------------------

    def _receive(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        """Frame one datagram: a NAT keepalive, the non-ESP marker (only off port 500,
        RFC 3948), then each complete ISAKMP message by its header Length (``wire.split_messages``):
        several in one datagram are processed in order, bytes after the last are counted
        (an invalid packet: a Length that does not account for the datagram)."""
        if data == KEEPALIVE:
            return  # NAT keepalive (RFC 3948 section 2.3)
        marker = False
        if data[:4] == wire.NON_ESP_MARKER and wire.marker_allowed(local[1], remote[1]):
            data, marker = data[4:], True
        if len(data) >= wire.HEADER_LEN and int.from_bytes(data[24:28], "big") == len(data):
            # the usual datagram: one whole message (split_messages' first case, inline)
            self._receive_message(data, remote, local, now, marker)
            return
        messages, trailing = wire.split_messages(data)
        if not messages:
            raise wire_error(*wire.framing_problem(data))
        if not trailing and len(messages) == 1:
            self._receive_message(data, remote, local, now, marker)
            return
        for message in messages:
            try:
                self._receive_message(message, remote, local, now, marker)
            except Exception as exc:  # noqa: BLE001 - one message's fault never stops the next
                self._failed(remote, exc)
        if trailing:
            self._invalid(remote, f"{trailing} bytes after the last ISAKMP message of the datagram ignored",
                          wire.NotifyType.UNEQUAL_PAYLOAD_LENGTHS)

    def _receive_message(self, data: bytes, remote: Address, local: Address, now: float, marker: bool) -> None:
        """One ISAKMP message: an invalid header is an invalid packet whatever its cookies;
        then the SA its cookies name, or message 1, or an invalid cookie."""
        problem = wire.header_problem(data)
        if problem is not None:
            raise wire_error(*problem)
        handle = self._cookies.lookup(data)
        exchange_type = data[18]
        if handle is None:
            if data[8:16] == ZERO_COOKIE:
                self._receive_first(data, remote, local, now, marker)
            elif not self._stateless_mm3(data, remote, local, now, marker):
                wire.parse(data)  # incorrect payload lengths: an invalid packet, not an invalid cookie
                self.emit(ev.InvalidCookieReceived(time=now, remote=remote))
            return
        sa = self._sas[handle]
        self._dirty.add(handle)
        if remote[0] != sa.remote[0]:
            raise InvalidCookie(f"cookies of SA {handle} arrived from {remote[0]}, not {sa.remote[0]}")
        if exchange_type in (MM, AM) and message_digest(data) == sa.last_received:
            # The row that handled it says whether the peer missed our answer (we resend
            # it) or our own retransmission timer runs (we ignore the repeat).
            handled = (aggressive_mode.HANDLED if exchange_type == AM else main_mode.HANDLED).get((sa.role, sa.state))
            if handled is not None and handled.answers_repeat and sa.last_sent:
                self._resend_reply(sa, sa.last_sent, exchange_type)
            return
        message = wire.parse(data)
        self._events.append(ev.DatagramReceived(
            time=now, exchange_type=exchange_type, length=len(data),
            message_number=_message_number(sa, exchange_type, message.message_id)))
        plain = None
        if not message.encrypted:
            plain = message.payloads  # a new list each reading: read once, handed on
            check_generic_headers(plain)
        if exchange_type == AM:
            # AM3 is checked against the NAT-D of the addresses it was sent for; no reply follows.
            fresh = self._dispatch(sa, message, data, now)
            # Only the responder follows (AM3 may arrive from the initiator's NAT-T port); the
            # initiator floated itself for AM3 and must not move back to where AM2 came from.
            if fresh and sa.handle in self._sas and sa.state is Phase1State.ESTABLISHED \
                    and sa.role is Role.RESPONDER:
                nat_traversal.follow(sa, remote, local, marker)
            return
        if message.encrypted:
            # RFC 3947 section 4: only a new, authenticated message moves the SA's endpoint
            # (and only one with the non-ESP marker can: would_move is False without it).
            moved = None
            if marker:
                if nat_traversal.would_move(sa, remote, local, marker) and self._processed(sa, message, data):
                    self.emit(ev.ReplayDropped(time=now, handle=sa.handle, remote=remote,
                                               message_id=message.message_id, reason="endpoint"))
                    raise wire_error(f"a message of SA {handle} already processed, repeated from {remote[0]} "
                                     f"port {remote[1]} (replay)", wire.NotifyType.INVALID_MESSAGE_ID)
                moved = nat_traversal.follow(sa, remote, local, marker)  # tentatively: the answer goes there
            try:
                fresh = self._dispatch(sa, message, data, now)
            except Exception:
                nat_traversal.restore(sa, moved)
                raise
            if not fresh:
                nat_traversal.restore(sa, moved)
            elif sa.handle in self._sas:
                dpd.on_traffic(sa, now)
            return
        self._dispatch(sa, message, data, now, plain)

    def _processed(self, sa: IsakmpSa, message: wire.Message, data: bytes) -> bool:
        """Whether ``message`` was processed already: the repeat of an exchange's last message,
        a message of a finished Quick Mode, or one whose Message ID is spent."""
        exchange_type = message.exchange_type
        if exchange_type in (MM, AM):
            return message_digest(data) == sa.last_received
        qm = sa.quick_modes.get(message.message_id) if exchange_type == QM else None
        if qm is not None:
            return message_digest(data) == qm.last_received or qm.state is Phase2State.ESTABLISHED
        return message.message_id in sa.spent_message_ids

    def _dispatch(self, sa: IsakmpSa, message: wire.Message, data: bytes, now: float,
                  plain: list[wire.Payload] | None = None) -> bool:
        """Hand a message to its exchange (``plain``: its payloads, already read when it is
        unencrypted). True when it was new and authenticated (not a repeat, not a message
        that failed verification): only then may the SA follow it."""
        exchange_type = message.exchange_type
        if exchange_type in (MM, AM):
            fresh = self._main_mode(sa, message, data, now, plain)
        elif exchange_type == QM:
            fresh = self._quick_mode(sa, message, data, now)
        elif exchange_type == INFO:
            fresh = self._informational(sa, message, now)
        else:
            raise wire_error(f"exchange type {exchange_type} is not supported",
                             wire.NotifyType.UNSUPPORTED_EXCHANGE_TYPE)
        chosen = sa.chosen
        if chosen is not None and chosen.lifetime_kilobytes:  # only such SAs count their octets
            rekey.count_octets(self, sa, len(data), now)
        return fresh

    def _receive_first(self, data: bytes, remote: Address, local: Address, now: float, marker: bool) -> None:
        source = _endpoint_bytes(remote)
        known = self._cookies.find_first(source, data)
        if known is not None and known in self._sas:
            sa = self._sas[known]
            exchange_type = data[18]  # a repeat of the message 1 this SA answered
            first = aggressive_mode.FIRST if exchange_type == AM else main_mode.FIRST
            if first.answers_repeat and sa.last_sent:
                self._resend_reply(sa, sa.last_sent, exchange_type)
            return
        message = wire.parse(data)
        self._events.append(ev.DatagramReceived(time=now, exchange_type=message.exchange_type, message_number=1,
                                                length=len(data)))
        plain = message.payloads
        check_generic_headers(plain)  # RFC 2408 5.2: dropped, not answered
        if message.exchange_type == INFO:
            for payload in message.payloads:
                if isinstance(payload, wire.NotifyPayload):
                    self.emit(ev.NotifyReceived(time=now, handle=None, remote=remote,
                                                 notify_type=payload.notify_type, protected=False))
            return
        if message.exchange_type not in (MM, AM):
            raise wire_error(f"exchange type {message.exchange_type} cannot start a negotiation",
                             wire.NotifyType.UNSUPPORTED_EXCHANGE_TYPE)
        if message.message_id != 0:
            raise wire_error("Main Mode message 1 with a non-zero Message ID", wire.NotifyType.INVALID_MESSAGE_ID)
        flt = self.config.filter_for(local[0], remote[0])
        if now >= self._rotate_secret_at:  # RFC 2408 2.5.3: change the local secret periodically
            self._cookies.rotate_secret()
            self._rotate_secret_at = now + COOKIE_SECRET_LIFETIME
        cookie_r = bytes(self._cookies.make_cookie(source, _endpoint_bytes(local)))
        if flt is None:
            self.emit(ev.Phase1Failed(time=now, handle=0, role="responder", remote=remote,
                                       reason="no filter matches the peer", notify_type=wire.NotifyType.NO_PROPOSAL_CHOSEN))
            self._send_raw(informational.build_unprotected(
                message.initiator_cookie, cookie_r, informational.notify(wire.NotifyType.NO_PROPOSAL_CHOSEN)),
                remote, local, marker)
            return
        aggressive = message.exchange_type == AM
        if self._over_limit(message.initiator_cookie, cookie_r, remote, local, now, marker):
            return
        if self._admit_first(message, remote, local, flt, now, marker):
            return
        sa = self._new_sa(Role.RESPONDER, Phase1State.R_EXPECT_AM1 if aggressive else Phase1State.R_EXPECT_MM1,
                          message.initiator_cookie, cookie_r, local, remote, flt, now)
        self._admission.opened(sa.handle, remote[0])
        sa.non_esp_marker = marker or _needs_marker(local, remote)
        self._events.append(ev.Phase1Started(time=now, handle=sa.handle, role=_ROLE_TEXT[sa.role], remote=remote))
        module = aggressive_mode if aggressive else main_mode
        try:
            reply = aggressive_mode.receive(sa, message, self) if aggressive \
                else main_mode.receive(sa, message, self, plain)
        except RemoteProtocolError as exc:
            self._fail(sa, str(exc), exc.notify_type, now)
            return
        self._cookies.insert(sa.initiator_cookie, sa.responder_cookie, sa.handle)
        self._cookies.remember_first(source, data, sa.handle)
        sa.first_message = data
        sa.last_received = message_digest(data)
        assert reply is not None
        self._send_next(sa, module.FIRST, reply, message.exchange_type, now)

    # --- flood gate (policy and design note in ikecore.engine.admission) -----------------------------

    def _admit_first(self, message: wire.Message, remote: Address, local: Address, flt: GenericFilter,
                     now: float, marker: bool) -> bool:
        """True when message 1 was answered statelessly or refused; False: keep an SA."""
        gate = self._admission
        lane = self.express
        if gate.stateless() or (lane is not None and flt is lane.filter and message.exchange_type == MM):
            if message.exchange_type == AM:
                # Aggressive Mode answers message 1 with a DH value: never for an
                # unproven source under flood. The peer may retry, or use Main Mode.
                self.emit(ev.HalfOpenRefused(time=now, remote=remote,
                                             reason="Aggressive Mode refused above the cookie threshold"))
                return True
            self._stateless_mm2(message, remote, local, flt, now, marker)
            return True
        return not self._make_room(remote, now)

    def _over_limit(self, cky_i: bytes, cky_r: bytes, remote: Address, local: Address, now: float,
                    marker: bool) -> bool:
        """True when one more ISAKMP SA from ``remote`` would pass a limit (``[limits]``): it is
        refused with NO-PROPOSAL-CHOSEN (RFC 2408 section 5.1), nothing kept."""
        limit = self._limits.refuse_isakmp(remote[0])
        if limit is None:
            return False
        self.emit(ev.LimitReached(time=now, limit=limit, remote=remote))
        notify_type = wire.NotifyType.NO_PROPOSAL_CHOSEN
        self._send_raw(informational.build_unprotected(cky_i, cky_r, informational.notify(notify_type)),
                       remote, local, marker or _needs_marker(local, remote))
        self.emit(ev.NotifySent(time=now, handle=None, remote=remote, notify_type=notify_type, protected=False))
        return True

    def _make_room(self, remote: Address, now: float) -> bool:
        """Apply the half-open limits for one more SA from ``remote``; False: refused."""
        gate = self._admission
        if gate.source_full(remote[0]):
            self.emit(ev.HalfOpenRefused(time=now, remote=remote, reason="per-source half-open limit"))
            return False
        for handle in gate.make_room():
            gate.closed(handle)
            victim = self._sas.get(handle)
            if victim is not None:
                self.emit(ev.HalfOpenDropped(time=now, handle=handle, remote=victim.remote))
                self._fail(victim, "half-open limit: oldest dropped", None, now, answer=False)
        return True

    def _stateless_mm2(self, message: wire.Message, remote: Address, local: Address, flt: GenericFilter,
                       now: float, marker: bool) -> None:
        if not any(p.payload_type == wire.PayloadType.SA for p in message.payloads):
            raise wire_error("Main Mode message 1 without an SA payload", wire.NotifyType.INVALID_PAYLOAD_TYPE)
        # the whole payload chain (SA and vendor IDs: NAT-T, DPD) is what message 3 rebuilds
        chain = bytes([message.next_payload]) + bytes(message.body)
        cky_r = self._admission.make_cookie(message.initiator_cookie, _endpoint_bytes(remote),
                                            _endpoint_bytes(local), chain, now)
        if cky_r is None:
            self.emit(ev.HalfOpenRefused(time=now, remote=remote, reason="offer too large for a stateless reply"))
            return
        probe = IsakmpSa(0, Role.RESPONDER, Phase1State.R_EXPECT_MM1, message.initiator_cookie, cky_r, local,
                         remote, flt, self.config.ike_policies[flt.ike_policy],
                         self.config.esp_policies[flt.esp_policy], now)
        marker = marker or _needs_marker(local, remote)
        try:
            reply = main_mode.receive(probe, message, self)
        except RemoteProtocolError as exc:
            self.emit(ev.Phase1Failed(time=now, handle=0, role="responder", remote=remote, reason=str(exc),
                                      notify_type=exc.notify_type))
            if exc.notify_type is not None:
                self._send_raw(informational.build_unprotected(
                    message.initiator_cookie, cky_r, informational.notify(exc.notify_type)), remote, local, marker)
            return
        assert reply is not None
        self._admission.answered(chain, reply)   # the receive fast path may answer this offer too
        if self.express is not None:  # and the express lane go on from its message 3
            self.express.offer_answered(_core.offer_digest(chain), probe)
        self.emit(ev.StatelessCookieSent(time=now, remote=remote))
        self.emit(ev.DatagramSent(time=now, exchange_type=MM, message_number=2, length=len(reply)))
        self._send_raw(reply, remote, local, marker)

    def _stateless_mm3(self, data: bytes, remote: Address, local: Address, now: float, marker: bool) -> bool:
        """Message 3 for a stateless message 2: verify the cookie, rebuild the SA, go on.

        Returns False when the cookie pair is simply unknown (an invalid cookie)."""
        if data[18] != MM or data[19] & wire.Flag.ENCRYPTION or data[20:24] != bytes(4):
            return False
        cky_i, cky_r = data[:8], data[8:16]
        ok, offer = self._admission.verify_cookie(cky_i, cky_r, _endpoint_bytes(remote), _endpoint_bytes(local), now)
        flt = self.config.filter_for(local[0], remote[0]) if ok else None
        if offer is None or flt is None:
            return False
        message = wire.parse(data)
        check_generic_headers(message.payloads)
        if self._over_limit(cky_i, cky_r, remote, local, now, marker) or not self._make_room(remote, now):
            return True
        first = wire.Message(cky_i, cky_r, MM, wire.parse_payloads(offer[0], offer[1:]))
        sa = self._new_sa(Role.RESPONDER, Phase1State.R_EXPECT_MM1, cky_i, cky_r, local, remote, flt, now)
        self._admission.opened(sa.handle, remote[0])
        sa.non_esp_marker = marker or _needs_marker(local, remote)
        self.emit(ev.Phase1Started(time=now, handle=sa.handle, role=_ROLE_TEXT[sa.role], remote=remote))
        self.emit(ev.StatelessCookieVerified(time=now, handle=sa.handle, remote=remote))
        try:
            sa.last_sent = main_mode.receive(sa, first, self) or b""
        except RemoteProtocolError as exc:  # pragma: no cover - the same choice succeeded at message 1
            self._fail(sa, str(exc), exc.notify_type, now)
            return True
        self._cookies.insert(cky_i, cky_r, sa.handle)
        self.emit(ev.DatagramReceived(time=now, exchange_type=MM, message_number=3, length=len(data)))
        self._main_mode(sa, message, data, now)
        return True

    def _main_mode(self, sa: IsakmpSa, message: wire.Message, data: bytes, now: float,
                   plain: list[wire.Payload] | None = None) -> bool:
        state_before = sa.state
        exchange = message.exchange_type
        table = aggressive_mode.TRANSITIONS if exchange == AM else main_mode.TRANSITIONS
        try:
            reply = aggressive_mode.receive(sa, message, self) if exchange == AM \
                else main_mode.receive(sa, message, self, plain)
        except _FATAL as exc:
            if isinstance(exc, AuthenticationFailed):
                self.emit(ev.AuthenticationFailed(time=now, handle=sa.handle, remote=sa.remote, reason=str(exc)))
            self._fail(sa, str(exc), exc.notify_type, now)
            return False
        except RemoteProtocolError as exc:
            if sa.dh is None and state_before in (Phase1State.I_EXPECT_MM4, Phase1State.I_EXPECT_AM2):
                # Our single-use DH private value went into a rejected message: this
                # negotiation cannot finish (found by tests/enginefuzz.py); end it.
                self._fail(sa, str(exc), exc.notify_type, now)
                return False
            raise
        sa.last_received = message_digest(data)
        sa.next_retransmit = None
        if state_before in (Phase1State.I_EXPECT_MM2, Phase1State.I_EXPECT_AM2):
            self._cookies.promote(sa.initiator_cookie, sa.responder_cookie, sa.handle)
        if reply is not None:
            self._send_next(sa, table[(state_before, exchange)], reply, exchange, now)
        if sa.state is Phase1State.ESTABLISHED:
            self._established(sa, now)
        return True

    def _established(self, sa: IsakmpSa, now: float) -> None:
        assert sa.chosen is not None
        self._admission.closed(sa.handle)
        sa.established = now
        sa.expires = now + sa.chosen.lifetime
        if sa.first_message:  # message 1 can no longer be a retransmission worth answering
            self._cookies.forget_first(_endpoint_bytes(sa.remote), sa.first_message)
            sa.first_message = b""
        sa.forget_negotiation()
        self._index_identity(sa)
        self.push_timer(sa.expires, sa.handle, 0, TimerKind.EXPIRE)
        rekey.isakmp_established(self, sa, now)
        if self._journal is not None:  # adoption moved IPsec SAs: their rows change
            self._dirty.update(self._pairs.get((sa.local[0], sa.remote[0]), ()))
        sa.last_heard = now
        if sa.nat in ("local", "both") and self.config.timing.nat_keepalive > 0:
            self.push_timer(now + self.config.timing.nat_keepalive, sa.handle, 0, TimerKind.NAT_KEEPALIVE)
        if dpd.enabled(sa, self.config.timing.dpd_delay):
            self.push_timer(now + self.config.timing.dpd_delay, sa.handle, 0, TimerKind.DPD)
        if sa.role is Role.RESPONDER and sa.initial_contact:
            self.emit(ev.NotifyReceived(time=now, handle=sa.handle, remote=sa.remote,
                                        notify_type=wire.NotifyType.INITIAL_CONTACT, protected=True))
            self._drop_stale_sas(sa)
        self._events.append(ev.Phase1Established(
            time=now, handle=sa.handle, role=_ROLE_TEXT[sa.role], local=sa.local, remote=sa.remote,
            initiator_cookie=sa.initiator_cookie, responder_cookie=sa.responder_cookie,
            proposal=sa.chosen.name, duration=now - sa.started))
        self._acquires.phase1_established(self, sa.handle, now)
        if sa.want_quick_mode:
            sa.want_quick_mode = False
            self.initiate_quick_mode(sa.handle, now)

    def _quick_mode(self, sa: IsakmpSa, message: wire.Message, data: bytes, now: float) -> bool:
        """One Quick Mode message; True when it was new and authenticated."""
        if sa.state is not Phase1State.ESTABLISHED:
            raise wire_error("Quick Mode before the ISAKMP SA is established", wire.NotifyType.INVALID_EXCHANGE_TYPE)
        if message.message_id == 0 or not message.encrypted:
            raise wire_error("Quick Mode needs a Message ID and encryption", wire.NotifyType.INVALID_MESSAGE_ID)
        qm = sa.quick_modes.get(message.message_id)
        if qm is not None and message_digest(data) == qm.last_received:
            # The row that handled it says whether to answer (QM2 again for a repeated QM1,
            # QM3 again for a repeated QM2) or to ignore the repeat.
            handled = quick_mode.HANDLED.get((qm.role, qm.state))
            if handled is not None and handled.answers_repeat and qm.last_sent:
                self._resend_reply(sa, qm.last_sent, QM)
            return False
        if qm is not None and qm.state is Phase2State.ESTABLISHED:
            # Any other message of a finished exchange (a replayed QM1, our own QM1 reflected)
            # is a replay, as it is once the exchange is forgotten and its Message ID spent.
            raise self._replay(sa, message.message_id, now)
        new = qm is None
        if qm is None:
            self._check_replay(sa, message.message_id, now)
            qm = QuickModeExchange(message.message_id, Role.RESPONDER, Phase2State.R_EXPECT_QM1, now, sa.esp_policy)
        state_before = qm.state
        try:
            reply = quick_mode.receive(sa, qm, message, self)
        except RemoteProtocolError as exc:
            if new:  # nothing of this exchange is kept: its PFS secret, if any, goes now
                sa.cipher.forget(message.message_id)
                keymat.wipe(qm.g_qm_xy)
            spent_dh = qm.dh is None and state_before is Phase2State.I_EXPECT_QM2 \
                and bool(qm.esp_policy.pfs_group)   # our PFS value is gone (tests/enginefuzz.py)
            if (isinstance(exc, _FATAL) or spent_dh) and state_before is not Phase2State.ESTABLISHED:
                self._quick_mode_ended(ev.Phase2Failed(time=now, handle=sa.handle, message_id=qm.message_id,
                                                       role=_ROLE_TEXT[qm.role], reason=str(exc),
                                                       notify_type=exc.notify_type))
                self._notify_protected(sa, exc.notify_type, spi=qm.spi_out if qm.role is Role.RESPONDER else qm.spi_in)
                sa.quick_modes.pop(qm.message_id, None)
                keymat.wipe(qm.g_qm_xy)
                self._spend(sa, qm.message_id)
                return not isinstance(exc, AuthenticationFailed)  # a refusal after HASH verified
            raise
        if new:
            sa.quick_modes[qm.message_id] = qm
            self._events.append(ev.Phase2Started(time=now, handle=sa.handle, message_id=qm.message_id, role="responder"))
            self.push_timer(now + self.config.timing.negotiation_timeout, sa.handle, qm.message_id, TimerKind.QM_TIMEOUT)
        qm.last_received = message_digest(data)
        qm.next_retransmit = None
        if reply is not None:
            row = quick_mode.TRANSITIONS[(state_before, QM)]
            if row.send is Send.REQUEST:
                self._send_qm_request(sa, qm, reply, now, row.message_number + 1)
            else:
                qm.last_sent = reply
                self._send(sa, reply, QM, row.message_number + 1)
        if qm.state is Phase2State.ESTABLISHED:
            self._quick_mode_established(sa, qm, now)
        return True

    def _check_replay(self, sa: IsakmpSa, message_id: int, now: float) -> None:
        """A protected message whose Message ID is spent is a replay: counted, no effect."""
        if message_id in sa.spent_message_ids:
            raise self._replay(sa, message_id, now)

    def _replay(self, sa: IsakmpSa, message_id: int, now: float) -> RemoteProtocolError:
        """Count a replay (``ReplayDropped``); returns the error that drops the message."""
        self.emit(ev.ReplayDropped(time=now, handle=sa.handle, remote=sa.remote, message_id=message_id))
        return wire_error(f"Message ID {message_id:#010x} was already used (replay)",
                          wire.NotifyType.INVALID_MESSAGE_ID)

    def _spend(self, sa: IsakmpSa, message_id: int) -> None:
        """Remember a finished Message ID (the newest SPENT_MESSAGE_IDS per ISAKMP SA)."""
        spent = sa.spent_message_ids
        if message_id in spent:
            return
        spent[message_id] = None
        journal = self._journal
        if journal is not None:
            journal.mark_spent(sa.handle, message_id, True)
        while len(spent) > SPENT_MESSAGE_IDS:
            oldest = next(iter(spent))
            del spent[oldest]
            if journal is not None:
                journal.mark_spent(sa.handle, oldest, False)

    def _quick_mode_established(self, sa: IsakmpSa, qm: QuickModeExchange, now: float) -> None:
        assert qm.chosen is not None
        mode = "transport" if qm.esp_policy.mode == "transport" else "tunnel"
        local_ts, remote_ts = quick_mode.selector_texts(sa)
        ipsec = IpsecSa(sa.handle, qm.message_id, qm.spi_in, qm.spi_out, qm.chosen, mode,
                        local_ts, remote_ts, now, now + qm.chosen.lifetime, keys=qm.installed)
        sa.ipsec_sas.append(ipsec)
        self._spend(sa, qm.message_id)  # a restored engine must know it too
        self.push_timer(ipsec.expires, sa.handle, qm.message_id, TimerKind.IPSEC_EXPIRE)
        journal = self._journal
        in_force = [i for i in sa.ipsec_sas if not i.superseded] if journal is not None else []
        rekey.ipsec_established(self, sa, ipsec, qm, now)
        if journal is not None:  # its row, and the rows of the SAs it superseded
            journal.mark_ipsec(sa.handle, ipsec.spi_in)
            for other in in_force:
                if other.superseded:
                    journal.mark_ipsec(sa.handle, other.spi_in)
        # Keep the exchange a while to answer a retransmitted QM2 with our QM3. The responder's
        # (kept only to ignore a repeated QM3) goes at its QM_TIMEOUT: one timer less per SA.
        if qm.role is Role.INITIATOR:
            self.push_timer(now + self.config.timing.negotiation_timeout, sa.handle, qm.message_id,
                            TimerKind.QM_FORGET)
        qm.forget_negotiation()
        sa.cipher.forget(qm.message_id)  # a repeat is known by its bytes, never decrypted
        self._quick_mode_ended(ev.Phase2Established(
            time=now, handle=sa.handle, message_id=qm.message_id, role=_ROLE_TEXT[qm.role], spi_in=qm.spi_in,
            spi_out=qm.spi_out, proposal=qm.chosen.name, duration=now - qm.started))

    def _informational(self, sa: IsakmpSa, message: wire.Message, now: float) -> bool:
        """One Informational message; True when it was protected (so new and authenticated)."""
        if not message.encrypted:
            for payload in message.payloads:
                if not isinstance(payload, wire.NotifyPayload):
                    continue
                self.emit(ev.NotifyReceived(time=now, handle=sa.handle, remote=sa.remote,
                                            notify_type=payload.notify_type, protected=False))
                if sa.state is not Phase1State.ESTABLISHED and payload.notify_type < 8192:
                    name = _notify_name(payload.notify_type)
                    self._fail(sa, f"peer sent {name}", None, now, answer=False)
                    return False
            return False
        if sa.crypto is None or sa.state is not Phase1State.ESTABLISHED:
            raise wire_error("protected informational before the ISAKMP SA is established",
                             wire.NotifyType.INVALID_FLAGS)
        self._check_replay(sa, message.message_id, now)
        payloads = informational.receive_protected(sa, message)
        self._spend(sa, message.message_id)
        for payload in payloads:  # N and D payloads only
            if sa.state is not Phase1State.ESTABLISHED:
                break  # deleted by an earlier payload (or its answer ended the kilobyte lifetime)
            if isinstance(payload, wire.NotifyPayload):
                self._on_notify(sa, payload, now)
            elif isinstance(payload, wire.DeletePayload) and self._on_delete(sa, payload, now):
                break
        return True

    def _on_notify(self, sa: IsakmpSa, payload: wire.NotifyPayload, now: float) -> None:
        self.emit(ev.NotifyReceived(time=now, handle=sa.handle, remote=sa.remote,
                                    notify_type=payload.notify_type, protected=True))
        if payload.notify_type == wire.NotifyType.R_U_THERE:
            ack = informational.notify(wire.NotifyType.R_U_THERE_ACK, spi=payload.spi, data=payload.data)
            self._send(sa, informational.build_protected(sa, [ack], self._message_id(sa)), INFO, 1)
            self.emit(ev.NotifySent(time=now, handle=sa.handle, remote=sa.remote,
                                    notify_type=wire.NotifyType.R_U_THERE_ACK, protected=True))
        elif payload.notify_type == wire.NotifyType.R_U_THERE_ACK:
            dpd.on_ack(sa, payload, now)
        elif payload.notify_type == wire.NotifyType.INITIAL_CONTACT:
            self._drop_stale_sas(sa)
        elif payload.notify_type < 8192:
            self._quick_mode_refused(sa, payload, now)

    def _quick_mode_refused(self, sa: IsakmpSa, payload: wire.NotifyPayload, now: float) -> None:
        """A protected error notify (NO-PROPOSAL-CHOSEN, ...) ends the Quick Mode in flight it
        names by the initiator's offered SPI (either role: the responder refuses QM1, the
        initiator refuses QM2, e.g. when its kernel takes no SA), or our only one in flight
        when it names none; never guessed among several (they go on, or time out)."""
        waiting = [q for q in sa.quick_modes.values()
                   if (q.role is Role.INITIATOR and q.state is Phase2State.I_EXPECT_QM2)
                   or (q.role is Role.RESPONDER and q.state is Phase2State.R_EXPECT_QM3)]
        spi = bytes(payload.spi)
        if len(spi) == 4 and payload.protocol_id == wire.ProtocolId.IPSEC_ESP:
            waiting = [q for q in waiting if (q.spi_in if q.role is Role.INITIATOR else q.spi_out) == spi]
        elif spi:
            return
        if len(waiting) == 1:
            self._quick_mode_failed(sa, waiting[0], f"peer sent {_notify_name(payload.notify_type)}", now)

    def _drop_stale_sas(self, sa: IsakmpSa) -> None:
        """INITIAL-CONTACT: the peer rebooted; its other SAs with us are stale (RFC 2407 4.6.3.3).

        "The peer" is its address and its identity, as strongSwan reads it: one address may
        front many identities (charon's load tester), which are not each other's reboot."""
        candidates: Collection[int] = self._pairs.get((sa.local[0], sa.remote[0]), ())
        key = _identity(sa.peer_id)
        if key is not None:  # a match has this identity or none: the shorter way to find it
            found = self._by_identity.get(key)
            same = [] if found is None else [found] if isinstance(found, int) else list(found)
            if len(same) + len(self._unidentified) < len(candidates):
                candidates = [*same, *self._unidentified]
        for other in [self._sas[h] for h in list(candidates) if h in self._sas]:
            if other is not sa and other.remote[0] == sa.remote[0] and other.state is Phase1State.ESTABLISHED \
                    and _same_id(other.peer_id, sa.peer_id):
                self.remove_sa(other, "peer sent INITIAL-CONTACT", notify_peer=False)

    def _index_identity(self, sa: IsakmpSa) -> None:
        key, index = _identity(sa.peer_id), self._by_identity
        if key is None:
            self._unidentified.add(sa.handle)
            return
        found = index.get(key)
        if found is None:
            index[key] = sa.handle  # the usual case: one SA per identity, no list
        elif isinstance(found, int):
            if found != sa.handle:
                index[key] = {found, sa.handle}
        else:
            found.add(sa.handle)

    def _unindex_identity(self, sa: IsakmpSa) -> None:
        self._unidentified.discard(sa.handle)
        key = _identity(sa.peer_id)
        if key is None:
            return
        index = self._by_identity
        found = index.get(key)
        if isinstance(found, int):
            if found == sa.handle:
                del index[key]
        elif found is not None and sa.handle in found:
            found.discard(sa.handle)
            if len(found) == 1:
                index[key] = next(iter(found))

    def _on_delete(self, sa: IsakmpSa, payload: wire.DeletePayload, now: float) -> bool:
        """Honour a Delete payload; True when the ISAKMP SA itself is gone."""
        spis = tuple(bytes(s) for s in payload.spis)
        self.emit(ev.DeleteReceived(time=now, handle=sa.handle, protocol_id=payload.protocol_id, spis=spis))
        if payload.protocol_id == wire.ProtocolId.ISAKMP:
            if sa.initiator_cookie + sa.responder_cookie in spis:
                self.remove_sa(sa, "deleted by peer", notify_peer=False)
                return True
            return False
        for ipsec in list(sa.ipsec_sas):
            if ipsec.spi_out in spis:
                self.remove_ipsec(sa, ipsec, "deleted by peer", notify_peer=False)
        return False

    # --- timers (the kinds and their design note: engine.timers) --------------------------

    def push_timer(self, deadline: float, handle: int, message_id: int, kind: TimerKind) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, handle, message_id, _TIMER_CODES[kind]))

    def _timer_handlers(self) -> dict[TimerKind, TimerHandler]:
        """Every timer kind's handler: (sa, message_id, deadline, now), run when it is due."""
        handlers: dict[TimerKind, TimerHandler] = {
            TimerKind.RETRANSMIT: self._on_retransmit,
            TimerKind.TIMEOUT: self._on_timeout,
            TimerKind.EXPIRE: self._on_expire,
            TimerKind.REKEY: self._on_rekey,
            TimerKind.RETIRE: self._on_retire,
            TimerKind.NAT_KEEPALIVE: self._on_nat_keepalive,
            TimerKind.DPD: self._on_dpd,
            TimerKind.QM_RETRANSMIT: self._on_qm_retransmit,
            TimerKind.QM_TIMEOUT: self._on_qm_timeout,
            TimerKind.QM_FORGET: self._on_qm_forget,
            TimerKind.IPSEC_EXPIRE: self._on_ipsec_expire,
            TimerKind.IPSEC_REKEY: self._on_ipsec_rekey,
            TimerKind.IPSEC_RETIRE: self._on_ipsec_retire,
        }
        assert handlers.keys() == set(TimerKind), "every timer kind needs a handler"
        return handlers

    def _on_retransmit(self, sa: IsakmpSa, _message_id: int, deadline: float, now: float) -> None:
        if sa.next_retransmit != deadline:
            return  # answered, or a later retransmission took over
        timing = self.config.timing
        if sa.retransmits >= timing.retransmit_tries:
            self._fail(sa, "retransmission limit reached; peer does not answer", None, now, answer=False)
            return
        sa.retransmits += 1
        self.emit(ev.RetransmitSent(time=now, handle=sa.handle, exchange_type=MM, attempt=sa.retransmits))
        self._transmit(sa, sa.last_sent)
        sa.next_retransmit = now + timing.retransmit_timeout * timing.retransmit_backoff ** sa.retransmits
        self.push_timer(sa.next_retransmit, sa.handle, 0, TimerKind.RETRANSMIT)

    def _on_timeout(self, sa: IsakmpSa, _message_id: int, _deadline: float, now: float) -> None:
        if sa.state is not Phase1State.ESTABLISHED:
            self._fail(sa, "negotiation timed out", None, now, answer=False)
        else:  # established long enough that no MM5/AM3 repeat is coming
            sa.last_sent = sa.last_received = b""

    def _on_expire(self, sa: IsakmpSa, _message_id: int, deadline: float, _now: float) -> None:
        if sa.expires == deadline:
            self.remove_sa(sa, "lifetime expired", notify_peer=True)

    def _on_rekey(self, sa: IsakmpSa, _message_id: int, _deadline: float, now: float) -> None:
        rekey.fire_isakmp_rekey(self, sa, now)

    def _on_retire(self, sa: IsakmpSa, _message_id: int, _deadline: float, _now: float) -> None:
        rekey.retire(self, sa)

    def _on_nat_keepalive(self, sa: IsakmpSa, _message_id: int, _deadline: float, now: float) -> None:
        if sa.state is Phase1State.ESTABLISHED:
            self._send_raw(KEEPALIVE, sa.remote, sa.local, False)  # RFC 3948 2.3: one 0xFF, no marker
            self.emit(ev.NatKeepaliveSent(time=now, handle=sa.handle))
            self.push_timer(now + self.config.timing.nat_keepalive, sa.handle, 0, TimerKind.NAT_KEEPALIVE)

    def _on_dpd(self, sa: IsakmpSa, _message_id: int, _deadline: float, now: float) -> None:
        if sa.state is not Phase1State.ESTABLISHED:
            return
        timing = self.config.timing
        action = dpd.on_timer(sa, now, timing.dpd_delay, timing.dpd_timeout, timing.retransmit_timeout)
        if action.kind == "dead":
            self.emit(ev.DeadPeerDetected(time=now, handle=sa.handle, remote=sa.remote,
                                          unanswered=len(sa.dpd_pending)))
            self.remove_sa(sa, "dead peer (no R-U-THERE-ACK)", notify_peer=False)
            return
        if action.kind == "probe" and action.payload is not None:
            self._send(sa, informational.build_protected(sa, [action.payload], self._message_id(sa)), INFO, 1)
            self.emit(ev.NotifySent(time=now, handle=sa.handle, remote=sa.remote,
                                    notify_type=wire.NotifyType.R_U_THERE, protected=True))
        if action.next_check is not None:
            self.push_timer(action.next_check, sa.handle, 0, TimerKind.DPD)

    def _on_qm_retransmit(self, sa: IsakmpSa, message_id: int, deadline: float, now: float) -> None:
        qm = sa.quick_modes.get(message_id)
        if qm is None or qm.next_retransmit != deadline:
            return
        timing = self.config.timing
        if qm.retransmits >= timing.retransmit_tries:
            self._quick_mode_failed(sa, qm, "retransmission limit reached", now)
            return
        qm.retransmits += 1
        self.emit(ev.RetransmitSent(time=now, handle=sa.handle, exchange_type=QM, attempt=qm.retransmits))
        self._transmit(sa, qm.last_sent)
        qm.next_retransmit = now + timing.retransmit_timeout * timing.retransmit_backoff ** qm.retransmits
        self.push_timer(qm.next_retransmit, sa.handle, message_id, TimerKind.QM_RETRANSMIT)

    def _on_qm_timeout(self, sa: IsakmpSa, message_id: int, deadline: float, now: float) -> None:
        qm = sa.quick_modes.get(message_id)
        if qm is None:
            return
        if qm.state is not Phase2State.ESTABLISHED:
            self._quick_mode_failed(sa, qm, "Quick Mode timed out", now)
        elif qm.role is Role.RESPONDER:
            self._on_qm_forget(sa, message_id, deadline, now)

    def _on_qm_forget(self, sa: IsakmpSa, message_id: int, _deadline: float, _now: float) -> None:
        qm = sa.quick_modes.get(message_id)
        if qm is not None and qm.state is Phase2State.ESTABLISHED:
            sa.quick_modes.pop(message_id, None)
            sa.cipher.forget(message_id)
            self._spend(sa, message_id)

    def _on_ipsec_expire(self, sa: IsakmpSa, message_id: int, deadline: float, _now: float) -> None:
        for ipsec in list(sa.ipsec_sas):
            if ipsec.message_id == message_id and ipsec.expires == deadline:
                self.remove_ipsec(sa, ipsec, "lifetime expired", notify_peer=True)

    def _on_ipsec_rekey(self, sa: IsakmpSa, message_id: int, _deadline: float, now: float) -> None:
        rekey.fire_ipsec_rekey(self, sa, message_id, now)

    def _on_ipsec_retire(self, sa: IsakmpSa, message_id: int, _deadline: float, _now: float) -> None:
        rekey.retire_ipsec(self, sa, message_id)

    def _quick_mode_failed(self, sa: IsakmpSa, qm: QuickModeExchange, reason: str, now: float) -> None:
        sa.quick_modes.pop(qm.message_id, None)
        keymat.wipe(qm.g_qm_xy)
        sa.cipher.forget(qm.message_id)
        self._spend(sa, qm.message_id)
        self._quick_mode_ended(ev.Phase2Failed(time=now, handle=sa.handle, message_id=qm.message_id,
                                               role=_ROLE_TEXT[qm.role], reason=reason))

    # --- sending --------------------------------------------------------------------------

    def _transmit(self, sa: IsakmpSa, datagram: bytes) -> None:
        self._send_raw(datagram, sa.remote, sa.local, sa.non_esp_marker)

    def _send_raw(self, datagram: bytes, remote: Address, local: Address, marker: bool) -> None:
        self._outgoing.append((wire.NON_ESP_MARKER + datagram if marker else datagram, remote, local))

    def _send(self, sa: IsakmpSa, datagram: bytes, exchange_type: int, number: int) -> None:
        size = len(datagram)
        self._events.append(ev.DatagramSent(time=self._now, exchange_type=exchange_type, message_number=number,
                                            length=size))
        self._outgoing.append((wire.NON_ESP_MARKER + datagram if sa.non_esp_marker else datagram,
                               sa.remote, sa.local))  # _transmit, inline: every message goes here
        chosen = sa.chosen
        if chosen is not None and chosen.lifetime_kilobytes:  # only such SAs count their octets
            rekey.count_octets(self, sa, size, self._now)

    def _send_request(self, sa: IsakmpSa, datagram: bytes, now: float, exchange_type: int, number: int) -> None:
        sa.last_sent = datagram
        sa.retransmits = 0
        sa.next_retransmit = now + self.config.timing.retransmit_timeout
        self.push_timer(sa.next_retransmit, sa.handle, 0, TimerKind.RETRANSMIT)
        self._send(sa, datagram, exchange_type, number)

    def _send_reply(self, sa: IsakmpSa, datagram: bytes, exchange_type: int, number: int) -> None:
        sa.last_sent = datagram
        self._send(sa, datagram, exchange_type, number)

    def _send_next(self, sa: IsakmpSa, row: Row[Phase1State, Phase1Handler], datagram: bytes, exchange_type: int,
                   now: float) -> None:
        """Send the phase 1 message that ``row``'s handler returned, the way the row says."""
        sa.last_sent = datagram
        if row.send is Send.REQUEST:  # as _send_request: retransmitted until answered
            sa.retransmits = 0
            sa.next_retransmit = now + self.config.timing.retransmit_timeout
            self.push_timer(sa.next_retransmit, sa.handle, 0, TimerKind.RETRANSMIT)
        self._send(sa, datagram, exchange_type, row.message_number + 1)

    def _send_qm_request(self, sa: IsakmpSa, qm: QuickModeExchange, datagram: bytes, now: float,
                         number: int) -> None:
        qm.last_sent = datagram
        qm.retransmits = 0
        qm.next_retransmit = now + self.config.timing.retransmit_timeout
        self.push_timer(qm.next_retransmit, sa.handle, qm.message_id, TimerKind.QM_RETRANSMIT)
        self._send(sa, datagram, QM, number)

    def _resend_reply(self, sa: IsakmpSa, datagram: bytes, exchange_type: int) -> None:
        self.emit(ev.DuplicateReceived(time=self._now, handle=sa.handle, exchange_type=exchange_type))
        self._transmit(sa, datagram)

    def _notify_protected(self, sa: IsakmpSa, notify_type: int | None, spi: bytes = b"") -> None:
        """A protected error notify; ``spi``: the ESP SPI of the refused Quick Mode's
        offer (the initiator's inbound SPI), so the peer knows which one failed."""
        if notify_type is None or sa.crypto is None:
            return
        payload = informational.notify(notify_type, protocol_id=wire.ProtocolId.IPSEC_ESP, spi=spi) if spi \
            else informational.notify(notify_type)
        self._send(sa, informational.build_protected(sa, [payload], self._message_id(sa)), INFO, 1)
        self.emit(ev.NotifySent(time=self._now, handle=sa.handle, remote=sa.remote,
                                notify_type=notify_type, protected=True))

    # --- SA lifecycle ---------------------------------------------------------------------

    def filter_for(self, local: Address, remote: Address, name: str | None) -> GenericFilter:
        """The filter named ``name``, else the one covering the address pair (ConfigError if none)."""
        if name is not None:
            for named in self.config.filters:
                if named.name == name:
                    return named
            raise ConfigError("filter", f"no filter named {name!r}")
        flt = self.config.filter_for(local[0], remote[0])
        if flt is None:
            raise ConfigError("filter", f"no filter covers {local[0]} <-> {remote[0]}; add one")
        return flt

    def _new_sa(self, role: Role, state: Phase1State, cookie_i: bytes, cookie_r: bytes,
                local: Address, remote: Address, flt: GenericFilter, now: float) -> IsakmpSa:
        handle = self._next_handle
        self._next_handle += 1
        sa = IsakmpSa(handle, role, state, cookie_i, cookie_r, local, remote, flt,
                      auth.ike_policy_for(flt, self.config.ike_policies[flt.ike_policy]),
                      self.config.esp_policies[flt.esp_policy], now)
        self._sas[handle] = sa
        self._pairs.setdefault((local[0], remote[0]), OrderedIds())[handle] = None
        self._limits.added(sa)
        self.push_timer(now + self.config.timing.negotiation_timeout, handle, 0, TimerKind.TIMEOUT)
        return sa

    def _cookie(self) -> bytes:
        while True:
            cookie = steering.steer_cookie(self._random(8), *self.worker)
            if cookie != ZERO_COOKIE:
                return cookie

    def _message_id(self, sa: IsakmpSa) -> int:
        while True:
            message_id = int.from_bytes(self._random(4), "big")
            if message_id and message_id not in sa.quick_modes and message_id not in sa.spent_message_ids:
                self._spend(sa, message_id)  # ours: a reflected copy is a replay too
                return message_id

    def _fail(self, sa: IsakmpSa, reason: str, notify_type: int | None, now: float, *, answer: bool = True) -> None:
        """End a negotiation that cannot succeed, answering with ``notify_type`` if any."""
        if answer and notify_type is not None:
            if sa.crypto is not None and sa.state is Phase1State.ESTABLISHED:
                self._notify_protected(sa, notify_type)
            else:
                self._send(sa, informational.build_unprotected(
                    sa.initiator_cookie, sa.responder_cookie, informational.notify(notify_type)), INFO, 1)
                self.emit(ev.NotifySent(time=now, handle=sa.handle, remote=sa.remote,
                                        notify_type=notify_type, protected=False))
        sa.failure = reason
        sa.state = Phase1State.FAILED
        self.emit(ev.Phase1Failed(time=now, handle=sa.handle, role=_ROLE_TEXT[sa.role], remote=sa.remote,
                                  reason=reason, notify_type=notify_type))
        self._acquires.phase1_failed(self, sa.handle, reason, now)
        self._forget(sa)

    def remove_sa(self, sa: IsakmpSa, reason: str, *, notify_peer: bool) -> None:
        """Delete an ISAKMP SA and its IPsec SAs (Delete payloads to the peer if asked)."""
        for ipsec in list(sa.ipsec_sas):
            self.remove_ipsec(sa, ipsec, reason, notify_peer=notify_peer)
        if notify_peer and sa.state is Phase1State.ESTABLISHED:
            delete = informational.delete_isakmp(sa)
            self._send(sa, informational.build_protected(sa, [delete], self._message_id(sa)), INFO, 1)
            self.emit(ev.DeleteSent(time=self._now, handle=sa.handle, protocol_id=wire.ProtocolId.ISAKMP,
                                    spis=(sa.initiator_cookie + sa.responder_cookie,)))
        sa.state = Phase1State.DELETED
        self.emit(ev.SaDeleted(time=self._now, handle=sa.handle, phase=1, spi=None, reason=reason))
        self._acquires.isakmp_deleted(self, sa.handle, reason, self._now)
        self._forget(sa)

    def remove_ipsec(self, sa: IsakmpSa, ipsec: IpsecSa, reason: str, *, notify_peer: bool) -> None:
        """Delete one IPsec SA (a Delete payload to the peer if asked)."""
        if ipsec not in sa.ipsec_sas:
            return
        sa.ipsec_sas.remove(ipsec)
        if self._journal is not None:
            self._journal.mark_ipsec(sa.handle, ipsec.spi_in)
        if notify_peer and sa.state is Phase1State.ESTABLISHED:
            delete = informational.delete_esp([ipsec.spi_in])
            self._send(sa, informational.build_protected(sa, [delete], self._message_id(sa)), INFO, 1)
            self.emit(ev.DeleteSent(time=self._now, handle=sa.handle, protocol_id=wire.ProtocolId.IPSEC_ESP,
                                    spis=(ipsec.spi_in,)))
        for spi, destination in ((ipsec.spi_in, sa.local[0]), (ipsec.spi_out, sa.remote[0])):
            try:
                self.driver.delete(spi, destination, wire.ProtocolId.IPSEC_ESP)
            except DriverError as exc:
                self.emit(ev.DriverFailed(time=self._now, operation="delete", reason=str(exc)))
        ipsec.wipe_keys()
        self.emit(ev.SaDeleted(time=self._now, handle=sa.handle, phase=2, spi=ipsec.spi_in, reason=reason))

    def _forget(self, sa: IsakmpSa) -> None:
        self._admission.closed(sa.handle)
        self._limits.removed(sa)
        self._dirty.add(sa.handle)
        if self._sas.pop(sa.handle, None) is not None:
            self._unindex_identity(sa)
            key = (sa.local[0], sa.remote[0])
            handles = self._pairs.get(key)
            if handles is None or sa.handle not in handles:  # the peer's address changed (NAT)
                key, handles = next(((k, h) for k, h in self._pairs.items() if sa.handle in h), (key, None))
            if handles is not None:
                del handles[sa.handle]
                if not handles:
                    del self._pairs[key]
        self._cookies.remove(sa.initiator_cookie, sa.responder_cookie)
        self._cookies.remove(sa.initiator_cookie, ZERO_COOKIE)
        if sa.first_message:
            self._cookies.forget_first(_endpoint_bytes(sa.remote), sa.first_message)
        sa.wipe_keys()  # after any Delete or Notify above was sealed with them
        sa.next_retransmit = None

    # --- the SA store (design note in ikecore.gateway.store, records: engine.persist) -------

    def _restore(self, store: persist.RecordStore, now: float) -> None:
        """Take back the stored SAs; what cannot be is reported (StoreFailed "load") and
        left in the store as it is."""
        self._now = now
        journal = self._journal
        assert journal is not None
        isakmp = ipsec_count = 0
        restored: list[tuple[int, int]] = []
        for stored in store.load():
            handle = self._next_handle
            try:
                sa, left_out = persist.load_sa(stored, self.config, now, handle)
            except (ValueError, KeyError, TypeError, IndexError, IkeError) as exc:
                self.emit(ev.StoreFailed(time=now, operation="load",
                                         reason=f"SA {stored.cookies.hex()} not loaded (left in the store): {exc}"))
                continue
            for reason in left_out:
                self.emit(ev.StoreFailed(time=now, operation="load", reason=f"{reason} (left in the store)"))
            self._next_handle += 1
            if sa.expires is not None and sa.expires <= now:
                journal.gone.append(stored.cookies)  # expired while we were down: deleted at the next write
                continue
            journal.restored(sa)
            self._sas[handle] = sa
            self._pairs.setdefault((sa.local[0], sa.remote[0]), OrderedIds())[handle] = None
            if sa.state is Phase1State.ESTABLISHED:
                self._index_identity(sa)
            self._cookies.insert(sa.initiator_cookie, sa.responder_cookie, handle)
            if sa.expires is not None:
                self.push_timer(sa.expires, handle, 0, TimerKind.EXPIRE)
                rekey.schedule_isakmp(self, sa, now)
            if sa.nat in ("local", "both") and self.config.timing.nat_keepalive > 0:
                self.push_timer(now + self.config.timing.nat_keepalive, handle, 0, TimerKind.NAT_KEEPALIVE)
            if dpd.enabled(sa, self.config.timing.dpd_delay):
                self.push_timer(now + self.config.timing.dpd_delay, handle, 0, TimerKind.DPD)
            isakmp += 1
            for ipsec in list(sa.ipsec_sas):
                if ipsec.expires <= now:
                    sa.ipsec_sas.remove(ipsec)
                    journal.mark_ipsec(handle, ipsec.spi_in)
                    continue
                self._reinstall(ipsec)
                self.push_timer(ipsec.expires, handle, ipsec.message_id, TimerKind.IPSEC_EXPIRE)
                if not ipsec.superseded:
                    rekey.schedule_ipsec(self, sa, ipsec)
                ipsec_count += 1
            restored.append((handle, len(sa.ipsec_sas)))
        self.emit(ev.SasRestored(time=now, isakmp=isakmp, ipsec=ipsec_count, sas=tuple(restored)))

    def _reinstall(self, ipsec: IpsecSa) -> None:
        """Hand a restored IPsec SA's keys to the driver again (a fresh driver lost them)."""
        restore = getattr(self.driver, "restore", None)
        try:
            if restore is not None:
                restore(*ipsec.keys)
            else:
                self.driver.add_outbound(ipsec.keys[0])
                self.driver.update_inbound(ipsec.keys[1])
        except (DriverError, IndexError) as exc:
            self.emit(ev.DriverFailed(time=self._now, operation="restore", reason=str(exc)))

    def _persist(self) -> None:
        """Write what changed to the store in one transaction (no-op without a store).

        A write that fails (a full disk) never stalls the engine: the failure is reported
        (StoreFailed "write": counted by the monitor, logged rate-limited by the gateway),
        negotiation goes on, the changes stay marked, and the write is tried again
        STORE_RETRY seconds later through ``get_timer`` (first for STORE_PROBE ISAKMP SAs,
        then, once that worked, for everything that waited)."""
        journal, store = self._journal, self._store
        if journal is None or store is None:
            self._dirty.clear()
            return
        if not journal.pending():
            return
        retry = self._store_retry_at
        if retry is not None and self._now < retry:
            return
        try:
            store.write(journal.build(self._sas, self._now, STORE_PROBE if retry is not None else None))
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop negotiation
            self._store_retry_at = self._now + STORE_RETRY
            self.emit(ev.StoreFailed(time=self._now, operation="write",
                                     reason=f"{exc} (negotiation goes on; next try in {STORE_RETRY:g} s)"))
            return
        journal.commit()
        if retry is not None:
            self._store_retry_at = None
            self._persist()   # the probe was written: now everything that waited

    # --- events ---------------------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        """Queue ``event`` for ``next_event``."""
        self._events.append(event)

    def _quick_mode_ended(self, event: ev.Phase2Established | ev.Phase2Failed) -> None:
        """Queue a Quick Mode's outcome, then move what waited for it: the next Quick Mode
        the window held back (after one of ours), then the acquires (engine.acquire)."""
        self._events.append(event)
        if event.role == "initiator":
            self._next_quick_mode(event.handle)
        self._acquires.quick_mode_ended(self, event)

    def _invalid(self, remote: Address, reason: str, notify_type: int | None) -> None:
        self.emit(ev.InvalidPacketReceived(time=self._now, remote=remote, reason=reason, notify_type=notify_type))


def wire_error(reason: str, notify_type: int | None = None) -> RemoteProtocolError:
    """A peer message the engine cannot use: PAYLOAD-MALFORMED unless told otherwise."""
    from ikecore.errors import PayloadMalformed

    return PayloadMalformed(reason, notify_type=notify_type)


def _identity(peer_id: wire.IdPayload | None) -> int | None:
    """The index key of a peer identity: a hash (SAs found by it are compared in full)."""
    return None if peer_id is None else hash((peer_id.id_type, bytes(peer_id.data)))


def _same_id(a: wire.IdPayload | None, b: wire.IdPayload | None) -> bool:
    return a is None or b is None or (a.id_type, bytes(a.data)) == (b.id_type, bytes(b.data))


def _message_number(sa: IsakmpSa, exchange_type: int, message_id: int) -> int:
    """Which message of its exchange a received datagram is (1-based; 0 when unknown)."""
    if exchange_type in (MM, AM):
        table = main_mode.TRANSITIONS if exchange_type == MM else aggressive_mode.TRANSITIONS
        row = table.get((sa.state, exchange_type))
        return row.message_number if row is not None else 0
    if exchange_type == QM:
        qm = sa.quick_modes.get(message_id)
        qm_row = quick_mode.TRANSITIONS.get((qm.state if qm else Phase2State.R_EXPECT_QM1, QM))
        return qm_row.message_number if qm_row is not None else 0
    return 1 if exchange_type == INFO else 0


def _notify_name(notify_type: int) -> str:
    try:
        return wire.NotifyType(notify_type).name.replace("_", "-")
    except ValueError:
        return f"notify {notify_type}"

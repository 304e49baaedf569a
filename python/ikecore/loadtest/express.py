"""The load generator's express lane: whole negotiations in Rust, one outcome per phase.

Design note
-----------
A load generator's peers all negotiate the same kind of SA: one pre-shared key, one IKE
suite, one ESP suite, one Quick Mode. ``ExpressEngine`` runs them in
``ikecore._core.ExpressInitiator`` (``rust/express/initiator.rs``) and offers ``LoadTest``
the surface of an ``Engine`` it uses (``initiate``, ``receive_datagram``,
``datagrams_to_send``, ``next_event``, ``get_timer``, ``handle_timer``), with the events
``LoadTest`` reads: ``Phase1Established``, ``Phase2Established``, ``Phase1Failed``,
``Phase2Failed`` and ``RetransmitSent``.

Python decides once: ``lane_for`` builds the lane's profile from a scratch ``Engine``
with the generator's own config (its MM1 bytes, SA offer and vendor IDs included) and
the ESP policy's own transforms, so both paths send the same offers. Anything the lane
does not take on gets ``None`` and the engine instead: signatures, Aggressive Mode,
forced NAT-T, PFS, several IKE or ESP suites, other than one Quick Mode per peer, or a
caller that injects its own randomness or key pairs (tests that need repeatable bytes).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from ikecore import _core, keymat, wire
from ikecore import events as ev
from ikecore.config import Config
from ikecore.engine.core import Engine
from ikecore.events import Address
from ikecore.protocol import nat_traversal

__all__ = ["ExpressEngine", "lane_for"]

_SPI_MARK = b"\xde\xad\xbe\xef"
MM = int(wire.ExchangeType.IDENTITY_PROTECTION)
QM = int(wire.ExchangeType.QUICK_MODE)


def _notify_name(notify_type: int) -> str:
    try:
        return wire.NotifyType(notify_type).name.replace("_", "-")
    except ValueError:
        return f"notify {notify_type}"


def _esp_offer(transforms: list[wire.Transform]) -> tuple[bytes, int]:
    """The QM1 SA payload body with a zero SPI, and where the SPI goes."""
    body = wire.SaPayload([wire.Proposal(1, wire.ProtocolId.IPSEC_ESP, transforms, spi=_SPI_MARK)]).body
    at = body.find(_SPI_MARK)
    return body[:at] + bytes(4) + body[at + 4:], at


def lane_for(config: Config, target: Address, *, quick_modes: int, natt_port: int | None,
             keypair: Callable[[int], Any] | None, random_bytes: Callable[[int], bytes],
             other_psks: tuple[bytes, ...] = ()) -> ExpressEngine | None:
    """An ``ExpressEngine`` for peers of ``config`` negotiating with ``target``, or None
    when the lane cannot run them as the engine would (the design note's list).
    ``other_psks``: keys some peers use instead of the config's (``initiate``'s ``psk``)."""
    if quick_modes != 1 or random_bytes is not os.urandom or keypair is not None:
        return None
    flt = config.filters[0] if len(config.filters) == 1 else None
    if flt is None or flt.aggressive or flt.credentials is not None or flt.nat_traversal == "force" \
            or flt.local_ts or flt.remote_ts or flt.local_id or flt.psk() is None:
        return None
    ike = config.ike_policies[flt.ike_policy]
    esp = config.esp_policies[flt.esp_policy]
    if len(ike.proposals) != 1 or len(esp.proposals) != 1 or esp.pfs_group:
        return None
    chosen, suite = ike.proposals[0], esp.proposals[0]
    if chosen.auth_method != wire.AuthMethod.PRE_SHARED_KEY or ":" in target[0]:
        return None
    try:
        cipher, _size, _block = keymat.cipher_for(chosen.encryption, chosen.key_length)
    except Exception:  # noqa: BLE001 - a suite the engine refuses too: let it say so
        return None
    scratch = Engine(config)
    scratch.initiate(target, local=("127.0.0.1", 500), now=0.0, quick_mode=False)
    mm1 = scratch.datagrams_to_send()[0][0]
    mode = esp.encapsulation_mode
    offer, spi_at = _esp_offer(esp.transforms(mode))
    variants = []
    if flt.nat_traversal != "off":
        for variant in nat_traversal.VARIANTS:
            udp_offer, _at = _esp_offer(esp.transforms(nat_traversal.udp_mode(mode, variant)))
            variants.append((variant.vendor_id, int(variant.nat_d), udp_offer))
    timing = config.timing
    lane = _core.ExpressInitiator(
        hash=chosen.prf_hash, cipher=cipher, group=chosen.group, psks=[bytes(flt.psk() or b""), *other_psks],
        mm1_first=mm1[16], mm1_chain=mm1[28:], esp_offer=offer, esp_spi_at=spi_at,
        keymat_len=suite.encryption_key_bytes + suite.integrity_key_bytes, nat_variants=variants,
        natt_port=natt_port or (nat_traversal.NAT_T_PORT if target[1] == 500 else target[1]),
        retransmit_timeout=timing.retransmit_timeout, retransmit_backoff=timing.retransmit_backoff,
        retransmit_tries=timing.retransmit_tries, negotiation_timeout=timing.negotiation_timeout)
    return ExpressEngine(lane, chosen.name, suite.name)


class ExpressEngine:
    """The surface of ``Engine`` that ``LoadTest`` drives, over an ``ExpressInitiator``."""

    def __init__(self, lane: Any, ike_name: str, esp_name: str) -> None:
        self.lane = lane
        self._ike, self._esp = ike_name, esp_name
        self._events: deque[ev.Event] = deque()
        self._peers: dict[int, tuple[Address, Address, float]] = {}
        self._fd: int | None = None
        self._port = 0
        self._targets: dict[Address, Address] = {}
        self.send_failures = 0

    def initiate(self, remote: Address, *, local: Address, now: float, quick_mode: bool = True,
                 natt_port: int | None = None, filter_name: str | None = None, psk: int = 0) -> int:
        """Start one peer (``psk``: 0 for the config's key, n for ``other_psks[n - 1]``)."""
        handle: int = self.lane.start(local, remote, now, psk)
        self._peers[handle] = (local, remote, now)
        return handle

    def receive_datagram(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        self.lane.receive(data, remote, local, now)
        self._collect()

    def attach(self, fd: int, port: int) -> None:
        """Send and receive on socket ``fd`` (bound to the wildcard address on ``port``,
        IP_PKTINFO on) in Rust: ``datagrams_to_send`` then sends and returns nothing, and
        ``pump`` reads."""
        self._fd, self._port = fd, port

    def pump(self, now: float, max_datagrams: int = 1024) -> int:
        """Read, process and answer what waits on the attached socket; returns the count read."""
        received, failed = self.lane.pump(self._fd, self._port, now, max_datagrams)
        self.send_failures += failed
        self._collect()
        return int(received)

    def datagrams_to_send(self) -> list[tuple[bytes, Address, Address]]:
        if self._fd is not None:
            self.send_failures += self.lane.flush(self._fd)
            return []
        # every datagram goes to the one target: one tuple for it, as the engine's own path has
        targets = self._targets
        return [(data, targets.setdefault(remote, remote), local) for data, remote, local in self.lane.take_datagrams()]

    def next_event(self) -> ev.Event | None:
        if not self._events:
            self._collect()
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadline: float | None = self.lane.next_deadline()
        return deadline

    def handle_timer(self, now: float) -> None:
        self.lane.tick(now)
        self._collect()

    def initiate_quick_mode(self, handle: int, now: float, **_kwargs: Any) -> int:
        raise NotImplementedError("the express lane runs one Quick Mode per peer")

    def _collect(self) -> None:
        events = self._events
        for handle, kind, detail, time in self.lane.take_outcomes():
            local, remote, started = self._peers.get(handle, (("", 0), ("", 0), time))
            if kind == "phase1":
                events.append(ev.Phase1Established(
                    time=time, handle=handle, role="initiator", local=local, remote=remote,
                    initiator_cookie=b"", responder_cookie=b"", proposal=self._ike, duration=time - started))
            elif kind == "phase2":
                events.append(ev.Phase2Established(
                    time=time, handle=handle, message_id=0, role="initiator", spi_in=b"", spi_out=b"",
                    proposal=self._esp, duration=time - started))
                self._peers.pop(handle, None)
            elif kind == "retransmit":
                events.append(ev.RetransmitSent(time=time, handle=handle, exchange_type=MM, attempt=detail))
            else:
                text, notify = detail
                reason = f"peer sent {_notify_name(notify)}" if notify is not None else text
                self._peers.pop(handle, None)
                if kind == "failed1":
                    events.append(ev.Phase1Failed(time=time, handle=handle, role="initiator", remote=remote,
                                                  reason=reason))
                else:
                    events.append(ev.Phase2Failed(time=time, handle=handle, message_id=0, role="initiator",
                                                  reason=reason))

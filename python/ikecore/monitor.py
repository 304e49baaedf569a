"""The monitor (layer L5): the IP Security Monitor's statistics and views.

Counters are an enum updated in one place, ``Monitor.observe(event)``, from the engine's
events (never incremented inside handlers). Gauges (list sizes, heaps) are read from the
engine at snapshot time. Views are lists of dicts with snake_case keys; tables show the
seed's display names as column headers.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Any

from ikecore import events as ev
from ikecore import wire

__all__ = ["Statistic", "Monitor", "MAIN_MODE_SA_COLUMNS", "QUICK_MODE_SA_COLUMNS", "display_name"]


class Statistic(enum.Enum):
    """The 23 Main Mode statistics of the IP Security Monitor, in the seed's order."""

    ACTIVE_ACQUIRE = "Active Acquire"
    ACTIVE_RECEIVE = "Active Receive"
    ACQUIRE_FAILURES = "Acquire Failures"
    RECEIVE_FAILURES = "Receive Failures"
    SEND_FAILURES = "Send Failures"
    ACQUIRE_HEAP_SIZE = "Acquire Heap Size"
    RECEIVE_HEAP_SIZE = "Receive Heap Size"
    AUTHENTICATION_FAILURES = "Authentication Failures"
    NEGOTIATION_FAILURES = "Negotiation Failures"
    INVALID_COOKIES_RECEIVED = "Invalid Cookies Received"
    TOTAL_ACQUIRE = "Total Acquire"
    TOTAL_GET_SPI = "Total Get SPI"
    KEY_ADDITIONS = "Key Additions"
    KEY_UPDATES = "Key Updates"
    GET_SPI_FAILURES = "Get SPI Failures"
    KEY_ADDITION_FAILURES = "Key Addition Failures"
    KEY_UPDATE_FAILURES = "Key Update Failures"
    ISADB_LIST_SIZE = "ISADB List Size"
    CONNECTION_LIST_SIZE = "Connection List Size"
    IKE_MAIN_MODE = "IKE Main Mode"
    IKE_QUICK_MODE = "IKE Quick Mode"
    SOFT_ASSOCIATIONS = "Soft Associations"
    INVALID_PACKETS_RECEIVED = "Invalid Packets Received"

    @property
    def key(self) -> str:
        return self.name.lower()


MAIN_MODE_SA_COLUMNS = ["me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity",
                        "diffie_hellman"]
QUICK_MODE_SA_COLUMNS = ["me", "peer", "encryption", "integrity", "diffie_hellman", "spi_in", "spi_out"]

_DISPLAY = {
    "me": "Me", "my_id": "My ID", "peer": "Peer", "peer_id": "Peer ID", "authentication": "Authentication",
    "encryption": "Encryption", "integrity": "Integrity", "diffie_hellman": "Diffie-Hellman",
    "initiator_cookie": "Initiator Cookie", "responder_cookie": "Responder Cookie", "state": "State",
    "role": "Role", "created": "Created", "lifetime_left": "Lifetime Left", "quick_modes": "Quick Modes",
    "spi_in": "SPI In", "spi_out": "SPI Out", "mode": "Mode", "local_ts": "Local Selector",
    "remote_ts": "Remote Selector", "local_port": "Local Port", "peer_port": "Peer Port",
}


def display_name(key: str) -> str:
    """The seed's column header for a snake_case key."""
    return _DISPLAY.get(key) or next((s.value for s in Statistic if s.key == key), key)


class Monitor:
    """Counts engine events; the transport adds socket failures and queue gauges."""

    def __init__(self) -> None:
        self.counters: Counter[Statistic] = Counter()
        self.extended: Counter[str] = Counter()
        self.phase1_times: list[float] = []
        self.phase2_times: list[float] = []
        self.active_receive = 0
        self.receive_heap_size = 0

    def observe(self, event: ev.Event) -> None:
        """Update the counters from one engine event (the only place they change)."""
        c, x = self.counters, self.extended
        if isinstance(event, ev.Phase1Established):
            c[Statistic.IKE_MAIN_MODE] += 1
            self.phase1_times.append(event.duration)
        elif isinstance(event, ev.Phase2Established):
            c[Statistic.IKE_QUICK_MODE] += 1
            self.phase2_times.append(event.duration)
        elif isinstance(event, ev.Phase1Failed):
            c[Statistic.NEGOTIATION_FAILURES] += 1
            x[f"phase1_failures:{event.reason.split(';')[0][:60]}"] += 1
        elif isinstance(event, ev.Phase2Failed):
            c[Statistic.NEGOTIATION_FAILURES] += 1
            x["phase2_failures"] += 1
        elif isinstance(event, ev.AuthenticationFailed):
            c[Statistic.AUTHENTICATION_FAILURES] += 1
            x["authentication_failures:" + ("hash" if "HASH" in event.reason else "decryption")] += 1
        elif isinstance(event, ev.InvalidCookieReceived):
            c[Statistic.INVALID_COOKIES_RECEIVED] += 1
        elif isinstance(event, ev.InvalidPacketReceived):
            c[Statistic.INVALID_PACKETS_RECEIVED] += 1
        elif isinstance(event, ev.SpiAllocated):
            c[Statistic.TOTAL_GET_SPI] += 1
            c[Statistic.TOTAL_ACQUIRE] += 1
            if event.spi is None:
                c[Statistic.GET_SPI_FAILURES] += 1
        elif isinstance(event, ev.KeyAdded):
            c[Statistic.KEY_ADDITIONS] += 1
            c[Statistic.TOTAL_ACQUIRE] += 1
        elif isinstance(event, ev.KeyUpdated):
            c[Statistic.KEY_UPDATES] += 1
            c[Statistic.TOTAL_ACQUIRE] += 1
        elif isinstance(event, ev.DriverFailed):
            if event.operation == "add_outbound":
                c[Statistic.KEY_ADDITION_FAILURES] += 1
            elif event.operation == "update_inbound":
                c[Statistic.KEY_UPDATE_FAILURES] += 1
        elif isinstance(event, ev.DatagramReceived):
            x[f"messages_received:{_exchange_name(event.exchange_type)}"] += 1
        elif isinstance(event, ev.DatagramSent):
            x[f"messages_sent:{_exchange_name(event.exchange_type)}"] += 1
        elif isinstance(event, ev.RetransmitSent):
            x["retransmissions"] += 1
        elif isinstance(event, ev.DuplicateReceived):
            x["duplicates_answered"] += 1
        elif isinstance(event, ev.NotifyReceived):
            x[f"notifies_received:{_notify_name(event.notify_type)}"] += 1
        elif isinstance(event, ev.NotifySent):
            x[f"notifies_sent:{_notify_name(event.notify_type)}"] += 1
        elif isinstance(event, ev.SaDeleted):
            x[f"deleted_phase{event.phase}"] += 1
        elif isinstance(event, ev.AcquireFailed):
            c[Statistic.ACQUIRE_FAILURES] += 1
        elif isinstance(event, ev.SoftSaCreated):
            c[Statistic.SOFT_ASSOCIATIONS] += 1
        elif isinstance(event, ev.AcquireStarted):
            x["acquires"] += 1
        elif isinstance(event, ev.Rekeyed):
            x[f"rekeys:phase{event.phase}"] += 1
        elif isinstance(event, ev.RekeyCollision):
            x["rekey_collisions"] += 1
        elif isinstance(event, ev.ResponderLifetime):
            x["responder_lifetime:" + ("sent" if event.sent else "honoured")] += 1
        elif isinstance(event, ev.DeadPeerDetected):
            x["dead_peers"] += 1

    def send_failed(self) -> None:
        self.counters[Statistic.SEND_FAILURES] += 1

    def receive_failed(self) -> None:
        self.counters[Statistic.RECEIVE_FAILURES] += 1

    def statistics(self, engine: Any) -> dict[str, int]:
        """All 23 statistics (snake_case keys, the seed's order) as of now."""
        sas = engine.sas()
        values = dict(self.counters)
        values[Statistic.ISADB_LIST_SIZE] = len(sas)
        values[Statistic.CONNECTION_LIST_SIZE] = sum(
            len(sa.ipsec_sas) + sum(1 for qm in sa.quick_modes.values() if qm.state.value != "ESTABLISHED")
            for sa in sas)
        values[Statistic.ACTIVE_ACQUIRE], values[Statistic.ACQUIRE_HEAP_SIZE] = engine.acquire_counts()
        values[Statistic.ACTIVE_RECEIVE] = self.active_receive
        values[Statistic.RECEIVE_HEAP_SIZE] = self.receive_heap_size
        return {stat.key: int(values.get(stat, 0)) for stat in Statistic}


def _exchange_name(exchange_type: int) -> str:
    try:
        return wire.ExchangeType(exchange_type).name.lower()
    except ValueError:
        return str(exchange_type)


def _notify_name(notify_type: int) -> str:
    try:
        return wire.NotifyType(notify_type).name.lower()
    except ValueError:
        return str(notify_type)

"""Test helpers: two engines joined by an in-memory link with a fake clock.

``Link`` moves datagrams between an initiator and a responder engine, can drop, duplicate
or reorder them, and fires timers as the fake clock advances (the aioquic test pattern).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ikecore import events as ev
from ikecore.config import Config, Timing, config_from_flags
from ikecore.driver import MemoryDriver
from ikecore.engine.core import Engine

INITIATOR = ("127.0.0.2", 500)
RESPONDER = ("127.0.0.1", 500)

Datagram = tuple[bytes, tuple[str, int], tuple[str, int]]


def seeded_random(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda size: rng.randbytes(size)


def make_config(psk: str = "secret", ike: str = "aes128-sha256-modp2048", esp: str = "aes128-sha256",
                **kwargs: Any) -> Config:
    timing = kwargs.pop("timing", Timing(retransmit_timeout=1.0, retransmit_tries=3, negotiation_timeout=30.0))
    return config_from_flags(psk=psk, ike=ike, esp=esp, listen=(), timing=timing, **kwargs)


@dataclass
class Link:
    """An initiator and a responder engine with a shared fake clock."""

    initiator_config: Config = field(default_factory=make_config)
    responder_config: Config = field(default_factory=make_config)
    seed: int = 1
    now: float = 1000.0
    #: Public address of a NAT in front of the initiator: its source address and port are
    #: rewritten in transit (a port-preserving mapping per private port, like a home router
    #: that moves port 500 and 4500 to high ports) and replies are mapped back.
    nat: str | None = None
    #: Sides whose datagrams vanish (a peer that went silent).
    silent: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.initiator_driver = MemoryDriver()
        self.responder_driver = MemoryDriver()
        self.initiator = Engine(self.initiator_config, driver=self.initiator_driver,
                                random=seeded_random(self.seed))
        self.responder = Engine(self.responder_config, driver=self.responder_driver,
                                random=seeded_random(self.seed + 1000))
        self.events: dict[str, list[ev.Event]] = {"initiator": [], "responder": []}
        self.sent: list[tuple[str, bytes]] = []
        self.nat_mappings: dict[tuple[str, int], tuple[str, int]] = {}

    def engine(self, side: str) -> Engine:
        return self.initiator if side == "initiator" else self.responder

    def drain_events(self) -> None:
        for side in ("initiator", "responder"):
            engine = self.engine(side)
            while (event := engine.next_event()) is not None:
                self.events[side].append(event)

    def of(self, side: str, kind: type) -> list[Any]:
        self.drain_events()
        return [e for e in self.events[side] if isinstance(e, kind)]

    def collect(self) -> list[tuple[str, Datagram]]:
        """Datagrams queued by both engines, tagged with the side that sent them."""
        out = [("initiator", d) for d in self.initiator.datagrams_to_send()]
        out += [("responder", d) for d in self.responder.datagrams_to_send()]
        for side, (data, _remote, _local) in out:
            self.sent.append((side, data))
        return out

    def deliver(self, side: str, datagram: Datagram) -> None:
        data, remote, local = datagram
        if side in self.silent:
            return
        if self.nat is not None and side == "initiator":
            local = self.nat_mappings.setdefault(local, (self.nat, 40000 + len(self.nat_mappings)))
        elif self.nat is not None:
            private = {public: inside for inside, public in self.nat_mappings.items()}.get(remote)
            if private is None:
                return  # no mapping: the NAT drops unsolicited traffic
            remote = private
        target = self.responder if side == "initiator" else self.initiator
        target.receive_datagram(data, local, remote, self.now)

    def pump(self, *, rounds: int = 50, drop: Callable[[str, int, bytes], bool] | None = None,
             duplicate: bool = False, reorder: bool = False, step: float = 0.01) -> None:
        """Shuttle datagrams until both sides are quiet (or ``rounds`` run out).

        ``drop(side, index, data)`` decides per datagram (index counts all datagrams sent).
        """
        counter = 0
        for _ in range(rounds):
            batch = self.collect()
            if not batch:
                timer = min((t for t in (self.initiator.get_timer(), self.responder.get_timer())
                             if t is not None), default=None)
                if timer is None or timer - self.now > 5.0:
                    break
                self.now = max(self.now, timer)
                self.initiator.handle_timer(self.now)
                self.responder.handle_timer(self.now)
                continue
            if reorder:
                batch.reverse()
            for side, datagram in batch:
                counter += 1
                if drop is not None and drop(side, counter, datagram[0]):
                    continue
                self.deliver(side, datagram)
                if duplicate:
                    self.deliver(side, datagram)
            self.now += step
        self.drain_events()

    def advance(self, seconds: float) -> None:
        """Move the clock, firing timers on the way, and deliver what they send."""
        end = self.now + seconds
        while True:
            timer = min((t for t in (self.initiator.get_timer(), self.responder.get_timer()) if t is not None),
                        default=None)
            if timer is None or timer > end:
                break
            self.now = max(self.now, timer)
            self.initiator.handle_timer(self.now)
            self.responder.handle_timer(self.now)
            self.pump(rounds=10)
        self.now = end
        self.drain_events()

    def connect(self, *, quick_mode: bool = True, **pump: Any) -> int:
        handle = self.initiator.initiate(RESPONDER, local=INITIATOR, now=self.now, quick_mode=quick_mode)
        self.pump(**pump)
        return handle

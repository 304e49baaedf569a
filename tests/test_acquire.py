"""Acquires and soft SAs, in memory with a fake clock (the monitor document's statistics must mean what they say)."""

from __future__ import annotations

from typing import Any

from ikecore import events as ev
from ikecore.config import config_from_dict
from ikecore.driver import DriverError, IpsecSaKeys, MemoryDriver
from ikecore.monitor.counters import Monitor

from helpers import INITIATOR, RESPONDER, Link


def config(*, fallback: bool = False, soft_lifetime: int = 300, destination: str = "any") -> Any:
    return config_from_dict({
        "timing": {"retransmit_timeout": 1.0, "retransmit_tries": 3, "negotiation_timeout": 30.0},
        "filter": [{"name": "peer", "psk": "secret", "destination": destination,
                    "fallback_to_clear": fallback, "soft_sa_lifetime": soft_lifetime}],
    })


class FailingDriver(MemoryDriver):
    def __init__(self, fail: str) -> None:
        super().__init__()
        self.fail = fail

    def get_spi(self, source: str, destination: str, protocol_id: int) -> bytes:
        if self.fail == "get_spi":
            raise DriverError("SPI table full")
        return super().get_spi(source, destination, protocol_id)

    def add_outbound(self, sa: IpsecSaKeys) -> None:
        if self.fail == "add_outbound":
            raise DriverError("no memory for SA")
        super().add_outbound(sa)

    def update_inbound(self, sa: IpsecSaKeys) -> None:
        if self.fail == "update_inbound":
            raise DriverError("SPI vanished")
        super().update_inbound(sa)


def watch(link: Link) -> Monitor:
    """A monitor fed with every initiator event so far and from now on."""
    monitor = Monitor()
    link.drain_events()
    for event in link.events["initiator"]:
        monitor.observe(event)
    return monitor


def stats(link: Link, monitor: Monitor, seen: list[int]) -> dict[str, int]:
    link.drain_events()
    for event in link.events["initiator"][seen[0]:]:
        monitor.observe(event)
    seen[0] = len(link.events["initiator"])
    return monitor.statistics(link.initiator)


def silent_peer(link: Link, seconds: float) -> None:
    """The responder does not exist: fire the initiator's timers, drop what it sends."""
    end = link.now + seconds
    while (timer := link.initiator.get_timer()) is not None and timer <= end:
        link.now = timer
        link.initiator.handle_timer(link.now)
        link.initiator.datagrams_to_send()
    link.now = end
    link.drain_events()


def test_acquire_negotiates_main_mode_then_quick_mode_and_reports() -> None:
    link = Link(config(), config())
    monitor, seen = Monitor(), [0]
    ident = link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    assert stats(link, monitor, seen)["active_acquire"] == 1
    assert stats(link, monitor, seen)["acquire_heap_size"] == 1
    link.pump()
    (done,) = link.of("initiator", ev.AcquireSucceeded)
    assert done.acquire == ident and not done.soft
    (ipsec,) = link.initiator.sas()[0].ipsec_sas
    assert done.spi_in == ipsec.spi_in and link.initiator_driver.inbound[ipsec.spi_in] is not None
    values = stats(link, monitor, seen)
    assert values["active_acquire"] == values["acquire_heap_size"] == 0
    assert values["acquire_failures"] == 0 and values["soft_associations"] == 0
    # Get SPI + key addition + key update: three driver work items (the IP Security Monitor document's Total Acquire).
    assert values["total_acquire"] == 3 and values["total_get_spi"] == 1
    # A second acquire rides on the established ISAKMP SA: Quick Mode only.
    link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    link.pump()
    assert len(link.of("initiator", ev.Phase1Started)) == 1
    assert len(link.of("initiator", ev.AcquireSucceeded)) == 2
    assert len(link.initiator.sas()[0].ipsec_sas) == 2


def test_acquires_queue_behind_one_main_mode() -> None:
    link = Link(config(), config())
    monitor, seen = Monitor(), [0]
    idents = [link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now) for _ in range(5)]
    assert link.initiator.acquire_counts() == (5, 4)  # one runs the Main Mode, four wait
    assert stats(link, monitor, seen)["active_acquire"] == 5
    assert len(link.of("initiator", ev.Phase1Started)) == 1
    link.pump()
    assert [e.acquire for e in link.of("initiator", ev.AcquireSucceeded)] == idents
    assert len(link.responder.sas()[0].ipsec_sas) == 5
    assert link.initiator.acquire_counts() == (0, 0)


def test_unanswered_main_mode_falls_back_to_a_soft_sa_when_allowed() -> None:
    link = Link(config(fallback=True, soft_lifetime=300), config())
    monitor, seen = Monitor(), [0]
    ident = link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    silent_peer(link, 60)
    (soft,) = link.of("initiator", ev.SoftSaCreated)
    assert soft.acquire == ident and soft.remote == RESPONDER
    (done,) = link.of("initiator", ev.AcquireSucceeded)
    assert done.soft and done.spi_in is None
    values = stats(link, monitor, seen)
    # The unanswered Main Mode is a failed negotiation of ours (counted as such); the
    # acquire itself ended in the soft SA.
    assert values["soft_associations"] == 1 and values["acquire_failures"] == 1
    assert values["active_acquire"] == 0
    (row,) = link.initiator.soft_sas(link.now)
    assert row["peer"] == RESPONDER[0] and row["encryption"] == "none"
    # While the soft SA lasts, new acquires for that peer get it at once (no Main Mode).
    link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    assert len(link.of("initiator", ev.Phase1Started)) == 1
    assert [e.soft for e in link.of("initiator", ev.AcquireSucceeded)] == [True, True]
    assert stats(link, monitor, seen)["soft_associations"] == 1
    # After it expires Main Mode is tried again.
    link.now = soft.expires + 1
    assert link.initiator.soft_sas(link.now) == []
    link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    assert len(link.of("initiator", ev.Phase1Started)) == 2


def test_unanswered_main_mode_without_fallback_is_an_acquire_failure() -> None:
    link = Link(config(fallback=False), config())
    monitor, seen = Monitor(), [0]
    link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    silent_peer(link, 60)
    failures = link.of("initiator", ev.AcquireFailed)
    assert len(failures) == 2 and "peer does not answer" in failures[0].reason
    assert [f.cause for f in failures] == ["negotiation", "queued"]
    values = stats(link, monitor, seen)
    assert values["acquire_failures"] == 2 and values["soft_associations"] == 0
    assert values["active_acquire"] == values["acquire_heap_size"] == 0


def test_rejected_main_mode_is_a_failure_even_with_fallback() -> None:
    """Soft SAs are for peers that do not answer, not for peers that refuse."""
    bad = config_from_dict({"filter": [{"name": "peer", "psk": "other"}]})
    link = Link(config(fallback=True), bad)
    link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    link.pump()
    assert len(link.of("initiator", ev.AcquireFailed)) == 1
    assert not link.of("initiator", ev.SoftSaCreated)


def test_acquire_without_a_filter_fails() -> None:
    link = Link(config(destination="10.9.9.9/32"), config())
    monitor, seen = Monitor(), [0]
    link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
    (failed,) = link.of("initiator", ev.AcquireFailed)
    assert "no filter" in failed.reason
    assert stats(link, monitor, seen)["acquire_failures"] == 1
    assert not link.initiator.sas()


def test_driver_failures_fail_the_acquire_and_are_counted() -> None:
    for fail, counter in (("get_spi", "get_spi_failures"), ("add_outbound", "key_addition_failures"),
                          ("update_inbound", "key_update_failures")):
        link = Link(config(), config())
        link.initiator.driver = FailingDriver(fail)
        monitor, seen = Monitor(), [0]
        link.initiator.acquire(RESPONDER, local=INITIATOR, now=link.now)
        link.pump()
        (failed,) = link.of("initiator", ev.AcquireFailed)
        values = stats(link, monitor, seen)
        assert values[counter] == 1, fail
        assert values["acquire_failures"] == 1
        assert values["active_acquire"] == 0
        assert not link.of("initiator", ev.AcquireSucceeded)
        assert not link.initiator.sas()[0].ipsec_sas
        assert not link.initiator.driver.outbound  # nothing half-installed

"""Local faults: socket errors, a full receive queue, a failing driver -- counted, logged
once per kind with rate limiting, and negotiation goes on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from helpers import Link, make_config
from ikecore import events as ev
from ikecore.driver import DriverError, IpsecSaKeys, MemoryDriver
from ikecore.engine.core import Engine
from ikecore.gateway.faults import FaultLog
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.gateway.transport import Gateway


def test_fault_log_logs_once_per_kind_then_rate_limits(caplog: pytest.LogCaptureFixture) -> None:
    faults = FaultLog(interval=10.0)
    with caplog.at_level(logging.WARNING, logger="ikecore.gateway.faults"):
        logged = [faults.report("socket send error", "EPERM", now=t * 0.001) for t in range(1000)]
        logged.append(faults.report("receive queue full", "4096 waiting", now=0.5))
        logged.append(faults.report("socket send error", "EPERM", now=12.0))
    assert logged.count(True) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "socket send error: EPERM"
    assert lines[1] == "receive queue full: 4096 waiting"
    assert lines[2] == "socket send error: EPERM (999 more since the last report, 1001 in all)"
    assert faults.totals() == {"socket send error": 1001, "receive queue full": 1}


class FlakyDriver(MemoryDriver):
    """Refuses the first ``failures`` key additions."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def add_outbound(self, sa: IpsecSaKeys) -> None:
        if self.failures:
            self.failures -= 1
            raise DriverError("netlink: no buffer space")
        super().add_outbound(sa)


def test_driver_refusing_a_key_addition_fails_that_quick_mode_only() -> None:
    link = Link()
    link.responder_driver = FlakyDriver(failures=1)
    link.responder = Engine(link.responder_config, driver=link.responder_driver)
    handle = link.connect()
    assert link.of("responder", ev.Phase2Failed)
    assert link.responder.sas()[0].state.value == "ESTABLISHED"
    # the ISAKMP SA stays; the next Quick Mode goes through
    link.initiator.initiate_quick_mode(handle, link.now)
    link.pump()
    assert len(link.of("responder", ev.Phase2Established)) == 1
    monitor = Monitor()
    for event in link.events["responder"]:
        monitor.observe(event)
    assert monitor.counters[Statistic.KEY_ADDITION_FAILURES] == 1
    assert monitor.counters[Statistic.KEY_ADDITIONS] == 1


class _FakeEndpoint:
    def __init__(self) -> None:
        self.local = ("127.0.0.1", 500)
        self.transport = None


def test_full_receive_queue_drops_and_counts_then_drains(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[Monitor, int]:
        engine = Engine(make_config())
        monitor = Monitor()
        gateway = Gateway(engine, monitor=monitor, receive_queue=5, faults=FaultLog(interval=60))
        endpoint = _FakeEndpoint()
        for i in range(20):    # a burst within one loop iteration
            gateway._enqueue(endpoint, b"garbage %d" % i, ("127.0.0.9", 500))  # type: ignore[arg-type]
        for _ in range(5):
            await asyncio.sleep(0)
        return monitor, len(gateway._queue)

    with caplog.at_level(logging.WARNING, logger="ikecore.gateway.faults"):
        monitor, left = asyncio.run(scenario())
    assert left == 0
    assert monitor.counters[Statistic.RECEIVE_FAILURES] == 15
    assert monitor.extended["receive_queue_full"] == 15
    assert monitor.counters[Statistic.INVALID_PACKETS_RECEIVED] == 5     # the queued ones were processed
    assert sum("receive queue full" in r.getMessage() for r in caplog.records) == 1


def test_send_failure_is_counted_logged_once_and_other_peers_go_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[Monitor, bool]:
        responder = Engine(make_config())
        monitor = Monitor()
        gateway = Gateway(responder, monitor=monitor)
        await gateway.listen([("127.0.0.1", 0)])
        port = gateway.addresses()[0][1]
        initiator = Gateway(Engine(make_config()))
        # no socket on 127.0.0.1:1 for these: every send fails
        for _ in range(3):
            gateway.engine.initiate(("127.0.0.1", port), local=("127.0.0.1", 1), now=gateway.loop.time())
        gateway._flush()
        result = await initiator.connect(("127.0.0.1", port), local=("127.0.0.1", 0), timeout=10, check=False)
        initiator.close()
        gateway.close()
        return monitor, result.ok

    with caplog.at_level(logging.WARNING, logger="ikecore.gateway.faults"):
        monitor, ok = asyncio.run(scenario())
    assert ok
    assert monitor.counters[Statistic.SEND_FAILURES] == 3
    assert sum("socket send error" in r.getMessage() for r in caplog.records) == 1


def test_udp_drops_reads_the_drops_column_of_proc_net_udp(tmp_path: Path) -> None:
    from ikecore.gateway.faults import udp_drops

    table = tmp_path / "udp"
    table.write_text(
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref "
        "pointer drops\n"
        "  1: 0100007F:01F4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 "
        "0000000000000000 17\n"
        "  2: 0100007F:1194 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 "
        "0000000000000000 5\n"
        "  3: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 "
        "0000000000000000 99\n")
    assert udp_drops({500, 4500}, paths=(str(table),)) == 22
    assert udp_drops({53}, paths=(str(table),)) == 99
    assert udp_drops({500}, paths=(str(tmp_path / "missing"),)) is None

"""Fast defaults of ``serve`` and ``loadtest`` (ikecore.gateway.tuning)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pytest

from ikecore.gateway import tuning


def test_a_given_flag_wins() -> None:
    assert tuning.dh_threads(3, 1, "aes128-sha256-ecp256", available=2) == 3
    assert tuning.dh_threads(0, 1, "aes128-sha256-modp2048", available=64) == 0


@pytest.mark.parametrize(("available", "processes", "expected"), [
    (1, 1, 0), (2, 1, 0), (3, 1, 1), (4, 2, 1), (4, 3, 0), (64, 64, 0), (64, 8, 1),
])
def test_modp_gets_a_dh_thread_only_with_two_cores_free(available: int, processes: int, expected: int) -> None:
    assert tuning.dh_threads(None, processes, "aes128-sha256-modp2048", available=available) == expected


def test_elliptic_groups_compute_inline_everywhere() -> None:
    assert tuning.dh_threads(None, 1, "aes128-sha256-ecp256", available=64) == 0
    assert tuning.dh_threads(None, 1, "aes128-sha256-ecp256,aes256-sha384-ecp384", available=64) == 0
    # one MODP proposal among them: a MODP key pair may be needed
    assert tuning.dh_threads(None, 1, "aes128-sha256-ecp256,aes128-sha256-modp2048", available=64) == 1


def test_unreadable_proposals_are_left_to_the_command() -> None:
    # the command reports the bad --ike itself; the default is decided as for MODP
    assert tuning.dh_threads(None, 1, "no-such-suite", available=64) == 1
    assert tuning.dh_threads(None, 1, None, available=2) == 0


def test_cores_is_what_this_process_may_use() -> None:
    import os

    assert tuning.cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("command", ["serve", "loadtest"])
def test_the_commands_leave_dh_threads_to_the_tuning(command: str) -> None:
    from ikecore.cli.main import build_parser

    parser: argparse.ArgumentParser = build_parser()
    argv = ["serve", "--psk", "x"] if command == "serve" else ["loadtest", "127.0.0.1:500", "--peers", "1"]
    assert parser.parse_args(argv).dh_threads is None
    assert parser.parse_args([*argv, "--dh-threads", "2"]).dh_threads == 2


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _report() -> tuple[logging.Logger, list[logging.LogRecord]]:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("ikecore.test.budget")
    logger.handlers[:] = [Keep()]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, seen


def test_the_log_budget_holds_back_info_beyond_the_rate_and_says_how_many() -> None:
    clock = _Clock()
    report, seen = _report()
    budget = tuning.LogBudget(3, report=report, clock=clock)
    admitted = [budget.admit("Phase1Started", logging.INFO) for _ in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert budget.admit("Phase1Established", logging.INFO)  # an ISAKMP SA set up is always told
    assert budget.admit("Phase1Failed", logging.WARNING)  # so is what went wrong
    assert budget.admit("Phase2Established", logging.INFO) is False
    assert budget.admit("DatagramSent", logging.DEBUG) is False
    assert seen == []
    clock.now += 1.5
    assert budget.admit("Phase1Started", logging.INFO)  # a new second
    assert len(seen) == 1 and seen[0].event == "events_not_logged"  # type: ignore[attr-defined]
    assert seen[0].fields == {"count": 9, "per_second": 3}  # type: ignore[attr-defined]
    assert seen[0].getMessage().startswith("9 events not logged in 1.5 s")
    assert budget.held_total == 9


def test_a_log_rate_of_zero_logs_everything() -> None:
    budget = tuning.LogBudget(0, clock=_Clock())
    assert all(budget.admit("Phase1Started", logging.INFO) for _ in range(500))
    assert budget.held_total == 0


def test_a_negative_log_rate_is_refused_naming_the_flag() -> None:
    from ikecore.errors import ConfigError

    with pytest.raises(ConfigError, match="--log-rate"):
        tuning.LogBudget(-1)


def test_serve_logs_every_established_sa_but_not_every_event(tmp_path: Path) -> None:
    """A real gateway under 300 peers: one phase1_established line per ISAKMP SA, the other
    info events held to --log-rate and counted."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                                    "--psk", "tuning-secret", "--log-rate", "20", "--log-format", "json",
                                    "--duration", "120"], stderr=err, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if "listening" in log.read_text():
                break
            time.sleep(0.05)
        out = subprocess.run([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{port}", "--peers", "300",
                              "--psk", "tuning-secret", "--json", "--no-progress", "--concurrency", "50",
                              "--first-address", "127.9.0.1"],
                             capture_output=True, text=True, timeout=120, check=False)
        assert json.loads(out.stdout)["established"] == 300, out.stderr[-2000:]
        time.sleep(1.5)
    finally:
        gateway.terminate()
        gateway.wait(30)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    kinds = [r.get("event") for r in records]
    assert kinds.count("phase1_established") == 300
    held = sum(r["count"] for r in records if r.get("event") == "events_not_logged")
    started, quick = kinds.count("phase1_started"), kinds.count("phase2_established")
    assert held > 0 and started < 300 and quick < 300, (held, started, quick)

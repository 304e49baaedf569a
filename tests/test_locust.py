"""``ikecore loadtest --master`` and ``--worker``: real Locust masters and workers (separate
processes, on loopback) against a real ``ikecore serve``; every run bounded in time."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ikecore.cli.entry import main

PSK = "locust-secret"
CHARON_PEERS = 2000
LOCAL_KEYS = {"target", "ike", "esp", "peers", "started", "established", "failed", "unfinished", "seconds",
              "sas_per_second", "quick_modes", "retransmissions", "failures", "latency_ms", "faults",
              "wrong_psk_peers", "cpu_seconds", "rate_by_tenth", "interrupted"}


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def gateway() -> Iterator[int]:
    port = _free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                                "--psk", PSK, "--quiet", "--duration", "240"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert "listening" in process.stderr.readline()
        yield port
    finally:
        process.terminate()
        process.wait(10)


class Run:
    """A master and its workers, each a real ``ikecore loadtest`` process."""

    def __init__(self, tmp: Path, target: int, peers: int, *flags: str, workers: int = 2,
                 worker_key: bool = True) -> None:
        self.tmp = tmp
        self.bind = _free_port(socket.SOCK_STREAM)
        self.master = subprocess.Popen(
            [sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{target}", "--peers", str(peers),
             "--master", "--expect-workers", str(workers), "--master-bind", f"127.0.0.1:{self.bind}", "--json",
             "--no-progress", "--max-seconds", "60", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.workers = [subprocess.Popen(
            [sys.executable, "-m", "ikecore", "loadtest", "--worker", "--master-host", f"127.0.0.1:{self.bind}"],
            env=({k: v for k, v in os.environ.items() if k != "IKECORE_PSK"} | ({"IKECORE_PSK": PSK} if worker_key else {})),
            stdout=subprocess.DEVNULL,
            stderr=(tmp / f"worker{i}.err").open("w")) for i in range(workers)]

    def worker_log(self, i: int) -> str:
        return (self.tmp / f"worker{i}.err").read_text()

    def wait_for_worker_line(self, text: str, seconds: float = 20.0) -> int:
        """The index of the first worker whose log has ``text``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for i in range(len(self.workers)):
                if text in self.worker_log(i):
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no worker said {text!r}: {[self.worker_log(i) for i in range(len(self.workers))]}")

    def finish(self, seconds: float = 60.0) -> tuple[int, dict[str, Any], str]:
        try:
            out, err = self.master.communicate(timeout=seconds)
            for worker in self.workers:  # the master's quit ends every worker
                worker.wait(15)
        finally:
            for process in [self.master, *self.workers]:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
        assert out.strip(), err
        return self.master.returncode, json.loads(out), err


def test_two_workers_establish_every_peer_and_locust_records_each_one(gateway: int, tmp_path: Path) -> None:
    run = Run(tmp_path, gateway, 2000, "--first-address", "127.20.0.1", "--concurrency", "200",
              "--csv", str(tmp_path / "run"))
    code, report, _err = run.finish()
    assert code == 0
    assert report["established"] == 2000 and report["failed"] == 0 and report["unfinished"] == 0
    assert set(report) == LOCAL_KEYS  # the keys of a local run, nothing lost
    assert report["sas_per_second"] > 0 and report["latency_ms"]["total"]["count"] == 2000
    assert report["quick_modes"] == 2000 and len(report["rate_by_tenth"]) == 10
    shares = sorted(run.worker_log(i).split(" peers from ")[1].split()[0] for i in range(2))
    assert shares == ["127.20.0.1", "127.20.3.239"]  # 1,000 consecutive addresses each (254 a block)
    # Locust's own statistics saw every Main Mode, Quick Mode and SA as a request
    with (tmp_path / "run_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle) if row["Type"] == "IKE"}
    assert {name: int(rows[name]["Request Count"]) for name in ("main_mode", "quick_mode", "sa")} == {
        "main_mode": 2000, "quick_mode": 2000, "sa": 2000}
    assert all(int(row["Failure Count"]) == 0 for row in rows.values())


def test_wrong_keys_fail_by_reason_in_the_report_and_in_locust(gateway: int, tmp_path: Path) -> None:
    web = _free_port(socket.SOCK_STREAM)
    run = Run(tmp_path, gateway, 400, "--first-address", "127.21.0.1", "--rate", "80", "--wrong-psk", "0.1",
              "--seed", "5", "--timeout", "5", "--web", f"127.0.0.1:{web}", "--csv", str(tmp_path / "run"))
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while run.master.poll() is None and time.monotonic() < deadline and not seen:
        try:  # Locust's web UI shows the run live: the workers' failures by reason
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/stats/requests", timeout=2) as page:
                live = json.loads(page.read())
            seen = {e["name"]: e for e in live["errors"] if e["name"] == "sa"}
        except OSError:
            pass
        time.sleep(0.2)
    code, report, _err = run.finish()
    assert code == 1
    assert report["established"] == 360 and report["failed"] == 40 and report["wrong_psk_peers"] == 40
    assert report["failures"] == {"AUTHENTICATION-FAILED": 40}
    assert seen and "AUTHENTICATION-FAILED" in seen["sa"]["error"]
    with (tmp_path / "run_failures.csv").open() as handle:
        failures = {(row["Name"], row["Error"]): int(row["Occurrences"]) for row in csv.DictReader(handle)}
    assert failures == {("main_mode", "AUTHENTICATION-FAILED"): 40, ("sa", "AUTHENTICATION-FAILED"): 40}


def test_every_fault_option_works_distributed(gateway: int, tmp_path: Path) -> None:
    run = Run(tmp_path, gateway, 200, "--first-address", "127.22.0.1", "--concurrency", "50", "--drop", "0.05",
              "--duplicate", "0.05", "--corrupt", "0.03", "--delay", "0.05", "--seed", "11",
              "--retransmit-timeout", "0.3", "--timeout", "20")
    _code, report, _err = run.finish()
    # every peer ends; retransmissions recover drops and delays (a corrupted datagram may
    # also end its peer, as in a local run)
    assert report["established"] + report["failed"] == 200 and report["unfinished"] == 0, report
    assert report["established"] >= 150, report
    assert {"dropped", "duplicated", "corrupted", "delayed"} <= set(report["faults"]), report
    assert report["retransmissions"] > 0


def test_a_worker_killed_mid_run_is_named_and_its_peers_unfinished(gateway: int, tmp_path: Path) -> None:
    run = Run(tmp_path, gateway, 2000, "--first-address", "127.23.0.1", "--rate", "300")
    victim = run.wait_for_worker_line("share 1 of 2")
    name = run.worker_log(victim).split("worker ")[1].split()[0]
    time.sleep(2.0)  # a few hundred of its 1,000 peers are done by now
    run.workers[victim].kill()
    code, report, err = run.finish()
    assert code == 1
    [lost] = report["lost_workers"]
    assert lost["worker"] == name and lost["share"] == 0 and lost["peers"] == 1000
    assert 0 < lost["unfinished"] < 1000
    assert report["established"] + report["failed"] + report["unfinished"] == 2000
    assert report["unfinished"] == lost["unfinished"] and report["established"] == 2000 - lost["unfinished"]
    assert f"worker {name} lost mid-run" in err


def test_ctrl_c_on_the_master_stops_the_workers_and_keeps_the_partial_report(gateway: int,
                                                                             tmp_path: Path) -> None:
    run = Run(tmp_path, gateway, 3000, "--first-address", "127.24.0.1", "--rate", "200")
    run.wait_for_worker_line("share 2 of 2")
    time.sleep(2.0)
    run.master.send_signal(signal.SIGINT)
    code, report, err = run.finish(30)
    assert code == 130 and "interrupted" in err and report["interrupted"] is True
    assert 0 < report["established"] < 3000 and "lost_workers" not in report
    assert report["established"] + report["failed"] + report["unfinished"] + (3000 - report["started"]) == 3000
    assert all("established" in run.worker_log(i) for i in range(2))  # each sent its report


def test_workers_without_a_key_take_the_masters(gateway: int, tmp_path: Path) -> None:
    """``--psk`` on the master reaches workers started with no key of their own (the two
    commands as the README shows them); the master says that it travels unencrypted."""
    run = Run(tmp_path, gateway, 200, "--first-address", "127.22.0.1", "--concurrency", "50", "--psk", PSK,
              worker_key=False)
    code, report, err = run.finish()
    assert code == 0 and report["established"] == 200 and report["failed"] == 0
    assert "unencrypted" in err and PSK not in err


def test_workers_without_any_key_fail_authentication_with_the_default(gateway: int, tmp_path: Path) -> None:
    run = Run(tmp_path, gateway, 20, "--first-address", "127.23.0.1", "--concurrency", "20", "--timeout", "5",
              worker_key=False)
    code, report, _err = run.finish()
    assert code == 1 and report["established"] == 0


@pytest.mark.parametrize(("argv", "flag"), [
    (["loadtest", "127.0.0.1", "--peers", "10", "--master"], "--expect-workers"),
    (["loadtest", "127.0.0.1", "--peers", "10", "--master", "--expect-workers", "2", "--cert", "x"], "--cert"),
    (["loadtest", "127.0.0.1", "--peers", "10", "--master", "--expect-workers", "20"], "--expect-workers"),
    (["loadtest", "--worker"], "--master-host"),
    (["loadtest", "--worker", "--master-host", "127.0.0.1", "--peers", "5"], "--peers"),
    (["loadtest", "127.0.0.1", "--peers", "10", "--expect-workers", "2"], "--expect-workers"),
    (["loadtest", "--peers", "10"], "ADDR[:PORT]"),
])
def test_wrong_distributed_flags_say_which_flag(argv: list[str], flag: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err and "Traceback" not in err
    assert "locust" not in sys.modules  # no Locust (nor gevent's patching) in this process


@pytest.mark.interop("charon")
def test_two_workers_against_a_charon_responder(tmp_path: Path) -> None:
    """The same distributed run against real charon: every peer holds an IKE_SA there."""
    from interop import charon

    port, natt_port = charon.free_udp_ports(2)
    with charon.Charon.start(addr="127.0.0.1", port=port, natt_port=natt_port, psk=PSK, kernel="fake",
                             log_level=0, extra_conf="  dos_protection = no\n") as peer:
        run = Run(tmp_path, port, CHARON_PEERS, "--first-address", "127.25.0.1", "--concurrency", "100",
                  "--natt-port", str(natt_port), "--timeout", "20")
        code, report, _err = run.finish()
        assert code == 0 and report["established"] == CHARON_PEERS and report["failed"] == 0, report
        assert report["quick_modes"] == CHARON_PEERS

        def every_peer() -> list[dict[str, object]]:
            rows = [s for s in peer.list_sas() if s.get("state") == "ESTABLISHED" and s.get("child-sas")]
            return rows if len(rows) >= CHARON_PEERS else []

        assert len(peer.wait_for(every_peer, 30)) == CHARON_PEERS

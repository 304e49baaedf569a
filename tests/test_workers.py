"""``ikecore serve --workers N``: the kernel steers by initiator cookie
(``ikecore.gateway.reuseport``), the parent supervises (``ikecore.gateway.workers``).

Real sockets and processes on loopback (and, for the NAT, two network namespaces); every
wait is bounded, every process and namespace is cleaned up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ikecore.errors import ConfigError
from ikecore.gateway import workers
from ikecore.gateway.reuseport import bind_group, steering_program
from ikecore.monitor.control_client import request
from ikecore.steering import steer_cookie, worker_of
from interop import netns

PSK = "workers-secret"
MARKER = b"\0\0\0\0"


def _isakmp_header(cookie: bytes) -> bytes:
    """A Main Mode message 1 header with CKY-I ``cookie`` (enough for the steering program)."""
    return cookie + bytes(8) + bytes([1, 0x10, 2, 0]) + bytes(4) + (28).to_bytes(4, "big")


def _receiver(group: list[socket.socket], timeout: float = 2.0) -> list[int]:
    """Which sockets of ``group`` got a datagram (each read once)."""
    ready, _, _ = select.select(group, [], [], timeout)
    for sock in ready:
        sock.recv(2048)
    return sorted(group.index(sock) for sock in ready)


# --- (a) the steering program on a real socket group ------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("count", [2, 3])
def test_the_kernel_delivers_each_datagram_to_the_socket_of_its_initiator_cookie(address: str, count: int) -> None:
    group = bind_group((address, 0), count)
    family = group[0].family
    try:
        port = group[0].getsockname()[1]
        assert {sock.getsockname()[1] for sock in group} == {port}
        senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]  # three source ports
        try:
            for round_ in range(36):
                # every worker's cookies, and cookies whose first word wraps the 32-bit range
                cookie = steer_cookie(os.urandom(8), round_ % count, count)
                if round_ % 9 == 8:
                    cookie = b"\xff\xff\xff" + bytes([round_]) + os.urandom(4)
                marker = round_ % 2 == 1
                datagram = (MARKER if marker else b"") + _isakmp_header(cookie)
                senders[round_ % 3].sendto(datagram, (address, port))
                assert _receiver(group) == [worker_of(cookie, count)], (cookie.hex(), marker)
            # a NAT keepalive (one byte 0xFF, RFC 3948 section 2.3) is any worker's: socket 0
            senders[0].sendto(b"\xff", (address, port))
            assert _receiver(group) == [0]
        finally:
            for sender in senders:
                sender.close()
    finally:
        for sock in group:
            sock.close()


def test_the_steering_program_is_five_classic_bpf_instructions() -> None:
    program = steering_program(3)
    assert len(program) == 5 and program[3] == (0x94, 0, 0, 3)   # BPF_ALU|BPF_MOD|BPF_K, 3
    assert steering_program(3, marker=False) == [program[0], *program[3:]]   # port 500: no marker test
    with pytest.raises(ValueError):
        steering_program(0)


_STEER_ON_PORT_500 = """
import select, socket
from ikecore.gateway.reuseport import bind_group
from ikecore.steering import worker_of
group = bind_group(("127.0.0.1", 500), 2)
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for tail in (1, 2, 3):
    cookie = bytes(4) + tail.to_bytes(4, "big")
    header = cookie + bytes(8) + bytes([1, 0x10, 2, 0]) + bytes(4) + (28).to_bytes(4, "big")
    sender.sendto(header, ("127.0.0.1", 500))
    ready, _, _ = select.select(group, [], [], 2.0)
    for sock in ready:
        sock.recv(2048)
    print(worker_of(cookie, 2), *sorted(group.index(sock) for sock in ready))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="binding UDP port 500 in a namespace of its own needs root")
def test_on_port_500_a_cookie_that_starts_with_four_zero_bytes_is_not_read_as_a_marker() -> None:
    """RFC 3948 frames IKE with the marker only off port 500: there the first word of CKY-I
    may be zero, and the kernel must steer by it as the engine reads it (worker 0 of 2 for
    these cookies; a marker test would read the next word and pick 1, 0, 1)."""
    done = subprocess.run(["unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" -c "$0"',
                           _STEER_ON_PORT_500], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["0 0", "0 0", "0 0"], done.stdout


def test_a_port_held_by_another_socket_is_refused_not_joined() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        with pytest.raises(OSError):
            bind_group(("127.0.0.1", other.getsockname()[1]), 2)


def test_workers_flag_values() -> None:
    assert workers.worker_count("auto") == len(os.sched_getaffinity(0))
    assert workers.worker_count("3") == 3
    for bad in ("0", "many", "-2", "1000"):
        with pytest.raises(ConfigError, match="--workers"):
            workers.worker_count(bad)
    assert workers.parse_worker("1/2") == (1, 2)
    with pytest.raises(ConfigError, match="--worker"):
        workers.parse_worker("2/2")
    assert workers.describe_exit(-9) == "killed by SIGKILL" and workers.describe_exit(1) == "exited with status 1"


def test_workers_get_the_parents_flags_but_not_its_own() -> None:
    from ikecore.cli.main import build_parser
    from ikecore.cli.serve import worker_environment, worker_flags

    args = build_parser().parse_args(["serve", "--listen", "127.0.0.1:5000", "--listen", "127.0.0.1:5001",
                                      "--psk", "s3cret", "--quiet", "--workers", "2", "--control", "--duration",
                                      "5", "--local-ts=-10.0.0.0/8", "--dh-threads", "0", "--nat-t", "force"])
    flags = worker_flags(args)
    assert flags == ["--listen=127.0.0.1:5000", "--listen=127.0.0.1:5001", "--quiet", "--dh-threads=0",
                     "--local-ts=-10.0.0.0/8", "--nat-t=force"]
    assert worker_environment(args) == {"IKECORE_PSK": "s3cret"}  # not on a command line ps shows
    again = build_parser().parse_args(["serve", *flags])
    assert again.listen == args.listen and again.local_ts == args.local_ts and again.dh_threads == 0


def test_the_load_generator_can_force_nat_t_towards_a_chosen_port() -> None:
    """``loadtest --nat-t force --natt-port Q``: every peer floats to Q with the non-ESP
    marker even without a NAT (in memory, against a responder engine)."""
    from helpers import make_config, seeded_random
    from ikecore.engine.core import Engine
    from ikecore.loadtest.generator import LoadSpec, LoadTest

    spec = LoadSpec(target=("127.0.0.1", 500), peers=3, psk="secret", nat_t="force", natt_port=4600,
                    concurrency=3)
    load = LoadTest(spec, random_bytes=seeded_random(5))
    responder = Engine(make_config(), random=seeded_random(6))
    load.start(1000.0)
    ports: set[int] = set()
    for _ in range(200):
        moved = False
        for data, remote, local in load.datagrams_to_send():
            ports.add(remote[1])
            if remote[1] == 4600:
                assert data[:4] == MARKER
            responder.receive_datagram(data, local, ("127.0.0.1", remote[1]), 1000.0)
            moved = True
        for data, remote, local in responder.datagrams_to_send():
            load.receive_datagram(data, local, remote, 1000.0)
            moved = True
        while responder.next_event() is not None:
            pass
        if not moved:
            break
    assert load.established == 3 and ports == {500, 4600}
    with pytest.raises(ConfigError, match="--nat-t"):
        LoadSpec(target=("127.0.0.1", 500), peers=1, psk="x", nat_t="sometimes")


# --- real gateways ------------------------------------------------------------------------------


def _free_udp_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((address, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class Gateway:
    """An ``ikecore serve`` process; its standard error collected by a thread."""

    def __init__(self, args: list[str], prefix: list[str] | None = None) -> None:
        command = [*(prefix or []), sys.executable, "-m", "ikecore", "serve", *args]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from the gateway: {''.join(self.lines)[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)
        return self.process.returncode

    @property
    def text(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def gateway(args: list[str], prefix: list[str] | None = None) -> Iterator[Gateway]:
    running = Gateway(args, prefix)
    try:
        running.wait_for("listening on")
        yield running
    finally:
        running.stop()


def loadtest(*args: str, prefix: list[str] | None = None, timeout: float = 120.0) -> dict[str, Any]:
    out = subprocess.run([*(prefix or []), sys.executable, "-m", "ikecore", "loadtest", *args, "--psk", PSK,
                          "--json", "--no-progress"], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert out.stdout.strip(), out.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _status(control: str) -> list[dict[str, Any]]:
    answer = request(control, {"op": "ping"}, timeout=5.0)
    workers_status: list[dict[str, Any]] = answer["workers"]
    return workers_status


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found.update(int(p) for p in task.read_text().split())
    return found


def _monitor(control: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikecore", "monitor", *args, "--control", control],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


# --- (b) NAT-T floating to the other port -------------------------------------------------------


def test_two_hundred_peers_float_to_the_nat_t_port_and_every_one_establishes() -> None:
    """Message 5 on moves to the NAT-T port, a different socket group: without steering by
    cookie the kernel hands about half of the SAs to the other worker."""
    ike_port, natt_port = _free_udp_ports(2)
    with gateway(["--workers", "2", "--listen", f"127.0.0.1:{ike_port}", "--listen", f"127.0.0.1:{natt_port}",
                  "--psk", PSK, "--dh-threads", "0", "--log-format", "json"]) as running:
        line = running.wait_for("listening on")
        assert f"127.0.0.1:{ike_port}, 127.0.0.1:{natt_port}" in line
        result = loadtest(f"127.0.0.1:{ike_port}", "--peers", "200", "--nat-t", "force", "--natt-port",
                          str(natt_port), "--concurrency", "50", "--first-address", "127.5.0.1", "--timeout", "20")
        assert result["established"] == 200 and result["failed"] == 0, result["failures"]
        assert result["quick_modes"] == 200
        time.sleep(0.3)
    text = running.text
    assert text.count("listening on") == 1  # the parent's line only
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    established = [r for r in records if r.get("event") == "phase1_established"]
    assert len(established) == 200
    # each SA at the worker its CKY-I names, floated to the NAT-T port
    for record in established:
        assert record["worker"] == worker_of(bytes.fromhex(record["initiator_cookie"]), 2), record
        assert record["local"] == f"127.0.0.1:{natt_port}", record
    assert {record["worker"] for record in established} == {0, 1}


# --- (c) a real NAT ---------------------------------------------------------------------------------


def _run(*command: str) -> None:
    out = subprocess.run(list(command), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{' '.join(command)}: {out.stderr}"


def test_peers_behind_a_masquerading_nat_reach_their_worker(require_interop: Callable[..., None]) -> None:
    """Namespace a: the load generator, its peers on 127.x addresses, behind an iptables
    MASQUERADE rule (one outside address; each peer's ports are rewritten, and again when
    it floats to 4500). Namespace b: ``serve --workers 2`` on the standard ports."""
    require_interop("netns")
    if subprocess.run(["iptables", "--version"], capture_output=True, timeout=30).returncode != 0:
        pytest.fail("iptables is not installed")
    with netns.veth_pair(prefix=f"ikw{os.getpid() % 100000}", net="10.198") as pair:
        inside = ["ip", "netns", "exec", pair.ns_a]
        outside = ["ip", "netns", "exec", pair.ns_b]
        # peers on 127.x addresses leave through the veth (route_localnet) and are masqueraded
        _run(*inside, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1")
        _run(*inside, "sysctl", "-q", "-w", f"net.ipv4.conf.{pair.if_a}.route_localnet=1")
        _run(*inside, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", pair.if_a, "-j", "MASQUERADE")
        running = Gateway(["--workers", "2", "--listen", f"{pair.addr_b}:500", "--listen", f"{pair.addr_b}:4500",
                           "--psk", PSK, "--dh-threads", "0", "--log-format", "json"], prefix=outside)
        try:
            running.wait_for("listening on")
            result = loadtest(f"{pair.addr_b}:500", "--peers", "100", "--concurrency", "25", "--first-address",
                              "127.6.0.1", "--timeout", "20", prefix=inside)
            assert result["established"] == 100 and result["failed"] == 0, result["failures"]
            assert result["quick_modes"] == 100
            time.sleep(0.3)
        finally:
            running.stop()
            _wait(lambda: not subprocess.run(["ip", "netns", "pids", pair.ns_b], capture_output=True,
                                             text=True, timeout=30).stdout.strip(), 30, "the gateway to exit")
        records = [json.loads(line) for line in running.text.splitlines() if line.startswith("{")]
        established = [r for r in records if r.get("event") == "phase1_established"]
        assert len(established) == 100
        # the gateway saw every peer as the NAT's one address, and NAT-D told it so
        assert all(r["remote"].startswith(f"{pair.addr_a}:") for r in established), established[:2]
        assert all(r["local"] == "10.198.0.2:4500" for r in established), established[:2]
        assert {r["worker"] for r in established} == {0, 1}
    assert not netns.exists(pair.ns_a) and not netns.exists(pair.ns_b)


# --- (d) a worker killed: the others serve, the parent starts it again ----------------------------


def test_a_killed_worker_is_named_restarted_and_the_others_keep_serving(tmp_path: Path) -> None:
    (port,) = _free_udp_ports(1)
    control = str(tmp_path / "gw.sock")
    with gateway(["--workers", "2", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet", "--control",
                  control, "--dh-threads", "0"]) as running:
        status = _status(control)
        assert [(w["worker"], w["state"], w["restarts"]) for w in status] == [(0, "up", 0), (1, "up", 0)]
        pids = [w["pid"] for w in status]
        assert set(pids) == _children(running.process.pid)
        # the control directory of the workers is the owner's only
        directory = Path(workers_dir(running.process.pid))
        assert directory.stat().st_mode & 0o777 == 0o700
        first = loadtest(f"127.0.0.1:{port}", "--peers", "40", "--first-address", "127.7.0.1")
        assert first["established"] == 40
        # kill worker 1 as soon as it is back, four times: the backoff grows (0.25, 0.5, 1, 2 s)
        for kill in range(4):
            victim = _status(control)[1]["pid"]
            os.kill(victim, signal.SIGKILL)
            if kill < 3:
                _wait(lambda: _status(control)[1]["pid"] not in (None, victim), 20, "worker 1 to be started again")
        # the monitor names it while it is down, and shows the other worker's SAs
        shown = _monitor(control, "main-mode", "security-associations")
        assert shown.returncode == 0, shown.stderr
        assert re.search(rf"worker 1 (\(pid {victim}\) )?is down: killed by SIGKILL", shown.stdout + shown.stderr), (
            shown.stdout + shown.stderr)
        survivors = request(control, {"op": "view", "mode": "main-mode", "view": "security-associations",
                                      "all_columns": True}, timeout=10)
        assert survivors["rows"] and {row["worker"] for row in survivors["rows"]} == {0}
        # the other worker keeps serving: new peers whose cookies map to it establish
        # (the generator's cookies are random: the rest wait for worker 1 and retransmit)
        during = loadtest(f"127.0.0.1:{port}", "--peers", "30", "--first-address", "127.8.0.1", "--timeout", "25")
        assert during["established"] == 30, during["failures"]
        _wait(lambda: _status(control)[1]["state"] == "up", 20, "worker 1 to be up again")
        final = _status(control)[1]
        assert final["restarts"] == 4 and final["last_exit"] == "killed by SIGKILL"
        assert final["pid"] not in (None, victim) and _status(control)[0]["pid"] == pids[0]
        after = loadtest(f"127.0.0.1:{port}", "--peers", "40", "--first-address", "127.9.0.1")
        assert after["established"] == 40
        children = _children(running.process.pid)
    assert running.process.returncode == 0
    # the workers ended with the parent, and the private directory is gone
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in children)
    assert not directory.exists()


def workers_dir(parent: int) -> str:
    """The parent's private directory of worker control sockets (from a worker's command line)."""
    for child in _children(parent):
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"--worker-control" in command:
            return os.path.dirname(command[command.index(b"--worker-control") + 1].decode())
    raise AssertionError("no worker")


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    return True


def test_sigint_is_forwarded_and_everything_is_cleaned_up(tmp_path: Path) -> None:
    """``--workers auto``: one worker per core this process may use; ^C (SIGINT to the
    parent) stops them all and removes the private directory."""
    cores = len(os.sched_getaffinity(0))
    (port,) = _free_udp_ports(1)
    running = Gateway(["--workers", "auto", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet"])
    try:
        line = running.wait_for("listening on")
        children = _children(running.process.pid)
        if cores == 1:
            assert not children and "workers" not in line
            return
        assert f"({cores} workers)" in line and len(children) == cores
        directory = workers_dir(running.process.pid)
        assert os.path.isdir(directory)
    finally:
        code = running.stop(signal.SIGINT)
    assert code == 130  # as a shell reports ^C
    assert not os.path.exists(directory)
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in children)


def test_workers_end_with_a_killed_parent() -> None:
    """kill -9 of the parent: the kernel sends its workers SIGTERM (PR_SET_PDEATHSIG); the
    last one out removes the control directory the parent could not."""
    (port,) = _free_udp_ports(1)
    running = Gateway(["--workers", "2", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet"])
    children: set[int] = set()
    try:
        running.wait_for("listening on")
        children = _children(running.process.pid)
        directory = workers_dir(running.process.pid)
        os.kill(running.process.pid, signal.SIGKILL)
        _wait(lambda: all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in children), 30,
              "the workers to end")
        _wait(lambda: not os.path.exists(directory), 10, "the directory to go")
    finally:
        running.stop()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_duration_and_an_early_signal_end_the_gateway_cleanly() -> None:
    (port,) = _free_udp_ports(1)
    started = time.monotonic()
    running = Gateway(["--workers", "2", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet",
                       "--duration", "2"])
    try:
        assert running.process.wait(60) == 0
    finally:
        running.stop()
    assert running.text.count("listening on") == 1 and time.monotonic() - started < 30
    # SIGTERM as soon as the workers are started (most likely still importing): exit 0, no one left
    running = Gateway(["--workers", "2", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet"])
    try:
        _wait(lambda: len(_children(running.process.pid)) == 2, 30, "the workers to start")
        children = _children(running.process.pid)
    finally:
        code = running.stop(signal.SIGTERM)
    assert code == 0, running.text
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in children)


def test_a_worker_that_cannot_start_stops_the_gateway(tmp_path: Path) -> None:
    """A configuration error only a worker notices (here a store file that is no database:
    each worker opens its share) is its message and exit status 2, not an endless
    restart loop."""
    (port,) = _free_udp_ports(1)
    store = tmp_path / "not-a-database"
    store.write_bytes(b"x" * 4096)
    running = Gateway(["--workers", "2", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet",
                       "--store", str(store)])
    try:
        assert running.process.wait(60) == 2
    finally:
        running.stop()
    assert "--store" in running.text and "before it came up" in running.text, running.text
    assert "listening on" not in running.text and "Traceback" not in running.text


def test_workers_refuse_a_bad_workers_value() -> None:
    out = subprocess.run([sys.executable, "-m", "ikecore", "serve", "--psk", "x", "--workers", "lots"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "--workers" in out.stderr and "Traceback" not in out.stderr


# --- (e) one store for every worker ------------------------------------------------------------------


def test_the_store_holds_every_workers_sas_and_a_restart_brings_all_back(tmp_path: Path) -> None:
    from ikecore.gateway.store import SaStore

    (port,) = _free_udp_ports(1)
    control = str(tmp_path / "gw.sock")
    args = ["--workers", "2", "--listen", f"127.0.0.1:{port}", "--psk", PSK, "--quiet", "--control", control,
            "--store", str(tmp_path / "sa.db"), "--dh-threads", "0"]

    def listed() -> list[dict[str, Any]]:
        answer = request(control, {"op": "view", "mode": "main-mode", "view": "security-associations",
                                   "all_columns": True}, timeout=10)
        rows: list[dict[str, Any]] = answer["rows"]
        return rows

    with gateway(args) as running:
        result = loadtest(f"127.0.0.1:{port}", "--peers", "120", "--first-address", "127.10.0.1")
        assert result["established"] == 120, (result["failures"], running.text[-3000:])
        before = {(row["initiator_cookie"], row["responder_cookie"], row["worker"]) for row in listed()}
    assert len(before) == 120 and {worker for _i, _r, worker in before} == {0, 1}
    store = SaStore(tmp_path / "sa.db")
    try:
        assert len(store) == 120
    finally:
        store.close()
    with gateway(args):
        _wait(lambda: len(listed()) == 120, 20, "the SAs to be listed")
        after = {(row["initiator_cookie"], row["responder_cookie"], row["worker"]) for row in listed()}
    assert after == before
    # another worker count shares the SAs out again by the same cookies
    args[1] = "3"
    with gateway(args):
        _wait(lambda: len(listed()) == 120, 20, "the SAs to be listed by 3 workers")
        three = {(row["initiator_cookie"], row["responder_cookie"], row["worker"]) for row in listed()}
    assert {(i, r) for i, r, _w in three} == {(i, r) for i, r, _w in before}
    assert all(worker == worker_of(bytes.fromhex(i), 3) for i, _r, worker in three)

"""The Linux kernel IPsec driver (``--driver xfrm``) against the real kernel.

Every test works in network namespaces it creates and removes (``interop.netns``), as
root; the host's own XFRM databases are never touched. What the kernel says is the truth
checked: ``ip xfrm state`` / ``ip xfrm policy`` listings, its ACQUIRE and EXPIRE messages,
its errno for an SA it cannot build. Where the kernel has no ESP (these machines: ``ip xfrm
state add ... proto esp`` answers "Requested type not found") the SA installation is the
refusal counted as a Key Addition Failure, and the traffic test is skipped naming that.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from interop import netns

from ikecore import _core
from ikecore import events as ev
from ikecore.driver import DriverError, IpsecSaKeys
from ikecore.gateway.xfrm import PRIORITY_BASE, SPI_RANGE, XfrmDriver

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run this thread in network namespace ``ns`` (sockets opened here stay bound to it)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover - would poison the test run
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(target)
        os.close(home)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out


@pytest.fixture
def ns() -> Iterator[str]:
    """One empty network namespace of this test."""
    name = f"ikx-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@functools.lru_cache(maxsize=1)
def kernel_esp() -> str | None:
    """None when this kernel builds ESP states; otherwise why not (the skip reason)."""
    name = f"ikx-esp-{os.getpid()}"
    run("ip", "netns", "add", name)
    try:
        out = run("ip", "-n", name, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
                  "proto", "esp", "spi", "0x1000", "mode", "tunnel", "enc", "cbc(aes)", "0x" + "11" * 16,
                  "auth-trunc", "hmac(sha256)", "0x" + "22" * 32, "128", check=False)
    finally:
        run("ip", "netns", "del", name, check=False)
    if out.returncode == 0:
        return None
    answer = out.stderr.strip().removeprefix("Error: ").rstrip(".")
    return f"kernel has no ESP: 'ip xfrm state add ... proto esp' answers '{answer}'"


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def keys(spi: int, source: str, destination: str) -> IpsecSaKeys:
    return IpsecSaKeys(spi=spi.to_bytes(4, "big"), protocol_id=3, source=source, destination=destination,
                       encryption="aes128", encryption_key=bytearray(range(16)), integrity="sha256",
                       integrity_key=bytearray(range(32)), mode="tunnel", lifetime=3600, lifetime_kilobytes=None,
                       local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24")


def spis_in_kernel(ns: str) -> set[int]:
    return {int(v, 16) for v in re.findall(r"spi (0x[0-9a-f]+)", run("ip", "-n", ns, "xfrm", "state").stdout)}


# --- the netlink requests against the kernel ---------------------------------------------------


def test_allocspi_gives_distinct_spis_in_range_that_the_kernel_lists(ns: str) -> None:
    with inside(ns):
        driver = XfrmDriver()
    spis = [int.from_bytes(driver.get_spi("192.0.2.2", "192.0.2.1", 3), "big") for _ in range(20)]
    assert len(set(spis)) == 20
    assert all(SPI_RANGE[0] <= spi <= SPI_RANGE[1] for spi in spis)
    listing = run("ip", "-n", ns, "xfrm", "state").stdout
    assert spis_in_kernel(ns) == set(spis)
    assert listing.count("src 192.0.2.2 dst 192.0.2.1") == 20  # larval inbound SAs: peer -> us
    driver.close()  # SPIs no SA took are given back
    assert spis_in_kernel(ns) == set()


def test_the_kernel_answers_the_esp_state_or_refuses_it_with_its_reason(ns: str) -> None:
    with inside(ns):
        driver = XfrmDriver()
    inbound = int.from_bytes(driver.get_spi("192.0.2.2", "192.0.2.1", 3), "big")
    reason = kernel_esp()
    if reason is not None:
        with pytest.raises(DriverError) as refused:
            driver.add_outbound(keys(0xC1000001, "192.0.2.1", "192.0.2.2"))
        assert str(refused.value) == "XFRM_MSG_NEWSA: EPROTONOSUPPORT (Requested type not found)"
        with pytest.raises(DriverError, match=r"^XFRM_MSG_UPDSA: EPROTONOSUPPORT \(Requested type not found\)$"):
            driver.update_inbound(keys(inbound, "192.0.2.2", "192.0.2.1"))
        assert spis_in_kernel(ns) == {inbound}  # only the larval SA
    else:
        driver.add_outbound(keys(0xC1000001, "192.0.2.1", "192.0.2.2"))
        driver.update_inbound(keys(inbound, "192.0.2.2", "192.0.2.1"))
        listing = run("ip", "-n", ns, "xfrm", "state").stdout
        assert "enc cbc(aes) 0x000102030405060708090a0b0c0d0e0f" in listing
        assert "auth-trunc hmac(sha256) 0x" + bytes(range(32)).hex() + " 128" in listing
        assert spis_in_kernel(ns) == {inbound, 0xC1000001}
        driver.delete((0xC1000001).to_bytes(4, "big"), "192.0.2.2", 3)
        driver.delete(inbound.to_bytes(4, "big"), "192.0.2.1", 3)
        assert spis_in_kernel(ns) == set()
    driver.close()


@pytest.mark.parametrize("encryption", ["aes128", "aes192", "aes256", "3des", "des"])
@pytest.mark.parametrize("integrity", ["md5", "sha1", "sha256", "sha384", "sha512"])
def test_the_kernel_knows_every_algorithm_name_and_truncation(ns: str, encryption: str, integrity: str) -> None:
    """The kernel checks the algorithms (ENOSYS "Requested algorithm not found", EINVAL for an
    ICV longer than the hash) before it looks for ESP itself (EPROTONOSUPPORT)."""
    kernel_name, key_bytes, auth_name, auth_bytes, icv_bits = _core.xfrm_algorithms(encryption, integrity)
    with inside(ns):
        sock = _core.XfrmSocket()
    try:
        sock.add_sa("192.0.2.1", "192.0.2.2", 0xC1000001, encryption, bytes(key_bytes), integrity, bytes(auth_bytes))
    except OSError as exc:
        crypto = set(re.findall(r"^name\s*: (\S+)", Path("/proc/crypto").read_text(), re.M))
        if exc.errno == errno.ENOSYS and kernel_name not in crypto:  # a module this kernel cannot load
            pytest.skip(f"kernel crypto has no {kernel_name}: {exc.strerror}")
        assert kernel_esp() is not None, exc
        assert exc.errno == errno.EPROTONOSUPPORT, exc
        return
    listing = run("ip", "-n", ns, "xfrm", "state").stdout
    assert f"enc {kernel_name} 0x" in listing and f"auth-trunc {auth_name} 0x" in listing
    assert f" {icv_bits}\n" in listing


def test_kernel_errors_carry_errno_and_text(ns: str) -> None:
    with inside(ns):
        sock = _core.XfrmSocket()
        driver = XfrmDriver()
    with pytest.raises(OSError) as gone:
        sock.delete_sa("192.0.2.1", 0x1000)
    assert gone.value.errno == errno.ESRCH
    assert gone.value.strerror == "XFRM_MSG_DELSA: ESRCH (No such process)"
    with pytest.raises(OSError) as no_policy:
        sock.delete_policy("10.1.0.0/24", "10.2.0.0/24", "out")
    assert no_policy.value.errno == errno.ENOENT
    driver.delete((0x1000).to_bytes(4, "big"), "192.0.2.1", 3)  # an SA the kernel has not: not an error
    with pytest.raises(ValueError, match="not an IP address"):
        sock.delete_sa("not-an-address", 1)
    with pytest.raises(ValueError, match="above 255"):
        sock.alloc_spi("192.0.2.2", "192.0.2.1", spi_min=1, spi_max=200)
    driver.close()


def test_policies_carry_direction_priority_selectors_and_template(ns: str) -> None:
    with inside(ns):
        sock = _core.XfrmSocket()
    sock.add_policy("10.1.0.0/24", "10.2.0.0/24", "out", 65526, ("192.0.2.1", "192.0.2.2", 7))
    sock.add_policy("10.2.0.0/24", "10.1.0.0/24", "in", 65526, ("192.0.2.2", "192.0.2.1", 7), proto=6, dport=22)
    listing = run("ip", "-n", ns, "xfrm", "policy").stdout
    assert re.search(r"src 10\.1\.0\.0/24 dst 10\.2\.0\.0/24 \n\tdir out priority 65526 .*\n"
                     r"\ttmpl src 192\.0\.2\.1 dst 192\.0\.2\.2\n\t\tproto esp reqid 7 mode tunnel", listing), listing
    assert re.search(r"src 10\.2\.0\.0/24 dst 10\.1\.0\.0/24 proto tcp dport 22 \n\tdir in priority 65526", listing), \
        listing
    sock.delete_policy("10.1.0.0/24", "10.2.0.0/24", "out")
    sock.delete_policy("10.2.0.0/24", "10.1.0.0/24", "in", proto=6, dport=22)
    assert run("ip", "-n", ns, "xfrm", "policy").stdout.strip() == ""


def test_kernel_expire_of_a_larval_sa_and_a_policy_lifetime_are_read(ns: str) -> None:
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.core.xfrm_acq_expires=1")
    with inside(ns):
        events = _core.XfrmSocket(notifications=True)
        sock = _core.XfrmSocket()
    spi = sock.alloc_spi("192.0.2.2", "192.0.2.1")
    sock.add_policy("10.1.0.1/32", "10.2.0.1/32", "out", 100, hard_seconds=1)
    seen: list[dict[str, Any]] = []

    def both() -> bool:
        seen.extend(events.notifications())
        return {n["type"] for n in seen} >= {"expire", "policy_expire"}

    wait_for(both, 15, "the kernel's EXPIRE and POLEXPIRE")
    expire = next(n for n in seen if n["type"] == "expire")
    assert (expire["spi"], expire["hard"]) == (spi.to_bytes(4, "big"), True)
    assert (expire["source"], expire["destination"], expire["proto"]) == ("192.0.2.2", "192.0.2.1", 50)
    policy = next(n for n in seen if n["type"] == "policy_expire" and n["hard"])
    assert (policy["src"], policy["dst"], policy["dir"]) == ("10.1.0.1/32", "10.2.0.1/32", "out")
    assert spis_in_kernel(ns) == set()
    assert run("ip", "-n", ns, "xfrm", "policy").stdout.strip() == ""


class RecordingXfrm:
    """The requests the driver makes, answered as the kernel would (policies by selector and dir)."""

    def __init__(self) -> None:
        self.next_spi = 0xC0000100
        self.sas: dict[int, dict[str, Any]] = {}
        self.policies: dict[tuple[str, str, str], tuple[int, Any]] = {}

    def alloc_spi(self, source: str, destination: str, **_: Any) -> int:
        self.next_spi += 1
        self.sas[self.next_spi] = {"larval": True}
        return self.next_spi

    def add_sa(self, source: str, destination: str, spi: int, *args: Any, **options: Any) -> None:
        self.sas[spi] = {"source": source, "destination": destination, **options}

    def delete_sa(self, destination: str, spi: int, source: str | None = None) -> None:
        if self.sas.pop(spi, None) is None:
            raise OSError(errno.ESRCH, "XFRM_MSG_DELSA: ESRCH (No such process)")

    def add_policy(self, src: str, dst: str, dir: str, priority: int, template: Any = None, **_: Any) -> None:
        self.policies[(src, dst, dir)] = (priority, template)

    def delete_policy(self, src: str, dst: str, dir: str, **_: Any) -> None:
        if self.policies.pop((src, dst, dir), None) is None:
            raise OSError(errno.ENOENT, "XFRM_MSG_DELPOLICY: ENOENT (No such file or directory)")


def test_sa_pairs_expiries_and_shared_policies_over_a_rekey(ns: str) -> None:
    with inside(ns):
        driver = XfrmDriver()
    kernel = RecordingXfrm()
    driver._socket = kernel
    expired: list[tuple[bytes, bool]] = []
    engine = type("E", (), {"ipsec_lifetime_expired": lambda self, spi, now, hard: expired.append((spi, hard))})()
    driver._gateway = type("G", (), {"engine": engine, "loop": type("L", (), {"time": lambda self: 1.0})(),
                                     "sockets": lambda self: []})()

    def negotiate(spi_out: int) -> bytes:
        spi_in = driver.get_spi("192.0.2.2", "192.0.2.1", 3)
        driver.add_outbound(keys(spi_out, "192.0.2.1", "192.0.2.2"))
        inbound = keys(int.from_bytes(spi_in, "big"), "192.0.2.2", "192.0.2.1")
        driver.update_inbound(IpsecSaKeys(**{**{f: getattr(inbound, f) for f in inbound.__dataclass_fields__},
                                             "lifetime_kilobytes": 100}))
        return spi_in

    first = negotiate(0xC2000001)
    added = kernel.sas[int.from_bytes(first, "big")]
    assert (added["update"], added["selector"], added["reqid"]) == (True, ("10.2.0.0/24", "10.1.0.0/24"), 1)
    assert (added["soft_bytes"], added["hard_bytes"], added["hard_seconds"]) == (92160, 102400, 3660)
    assert kernel.sas[0xC2000001]["selector"] == ("10.1.0.0/24", "10.2.0.0/24")
    assert kernel.policies == {
        ("10.1.0.0/24", "10.2.0.0/24", "out"): (PRIORITY_BASE, ("192.0.2.1", "192.0.2.2", 1)),
        ("10.2.0.0/24", "10.1.0.0/24", "in"): (PRIORITY_BASE, ("192.0.2.2", "192.0.2.1", 1)),
        ("10.2.0.0/24", "10.1.0.0/24", "fwd"): (PRIORITY_BASE, ("192.0.2.2", "192.0.2.1", 1))}
    second = negotiate(0xC2000002)  # the rekey: same selectors
    driver.delete(first, "192.0.2.1", 3)
    driver.delete((0xC2000001).to_bytes(4, "big"), "192.0.2.2", 3)
    assert len(kernel.policies) == 3  # the new SA still needs them
    restored = keys(0xC3000003, "192.0.2.2", "192.0.2.1")  # from the SA store: no larval SA to update
    driver.add_outbound(keys(0xC2000003, "192.0.2.1", "192.0.2.2"))
    driver.update_inbound(restored)
    assert kernel.sas[0xC3000003]["update"] is False
    driver.delete(restored.spi, "192.0.2.1", 3)
    driver.delete((0xC2000003).to_bytes(4, "big"), "192.0.2.2", 3)
    driver._on_expire({"spi": (0xC2000002).to_bytes(4, "big"), "hard": False})  # outbound: its pair rekeys
    driver._on_expire({"spi": second, "hard": True})
    driver._on_expire({"spi": first, "hard": True})  # gone already: not the engine's business
    assert expired == [(second, False), (second, True)]
    assert driver.counters["expires_ignored"] == 1
    driver.delete(second, "192.0.2.1", 3)  # the kernel removed it (hard expire): not an error
    driver.delete((0xC2000002).to_bytes(4, "big"), "192.0.2.2", 3)
    assert kernel.policies == {} and kernel.sas == {}
    driver._gateway = None
    driver.close()


def test_kernel_expiries_rekey_and_delete_through_the_engine(ns: str) -> None:
    """A real engine pair (``helpers.Link``) with the driver as the initiator's: a soft
    expire of the outbound SA rekeys the pair, a hard one of the new inbound SA deletes it."""
    from helpers import Link

    with inside(ns):
        driver = XfrmDriver()
    kernel = RecordingXfrm()
    driver._socket = kernel
    link = Link()
    link.initiator.driver = driver
    driver._gateway = type("G", (), {"engine": link.initiator, "loop": type("L", (), {"time": lambda self: link.now})(),
                                     "sockets": lambda self: []})()
    link.connect()
    (old,) = link.initiator.sas()[0].ipsec_sas
    assert {spi for spi, sa in kernel.sas.items() if not sa.get("larval")} == {
        int.from_bytes(old.spi_in, "big"), int.from_bytes(old.spi_out, "big")}
    assert len(kernel.policies) == 3
    driver._on_expire({"spi": old.spi_out, "hard": False})  # the outbound SA's soft byte limit
    link.pump()
    assert len(link.of("initiator", ev.Rekeyed)) == 1
    (new,) = link.initiator.sas()[0].ipsec_sas
    assert new.spi_in != old.spi_in
    assert set(kernel.sas) == {int.from_bytes(new.spi_in, "big"), int.from_bytes(new.spi_out, "big")}
    assert len(kernel.policies) == 3  # the new pair took them over
    driver._on_expire({"spi": new.spi_in, "hard": True})
    link.pump()
    assert link.initiator.sas()[0].ipsec_sas == []
    assert kernel.sas == {} and kernel.policies == {}
    driver._gateway = None
    driver.close()


def test_ike_sockets_bypass_a_policy_that_covers_the_gateways() -> None:
    with netns.recipe_pair() as pair:
        with inside(pair.ns_b):
            listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with inside(pair.ns_a):
            plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            ike = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            policies = _core.XfrmSocket()
        with listener, plain, ike:
            listener.bind((pair.addr_b, 9999))
            # host-to-host: ESP required for every UDP datagram between the gateways, and no SA
            policies.add_policy(f"{pair.addr_a}/32", f"{pair.addr_b}/32", "out", 100,
                                (pair.addr_a, pair.addr_b, 1), proto=17)
            _core.xfrm_socket_bypass(ike.fileno(), False)

            def arrives(sock: socket.socket, data: bytes) -> bool:
                with contextlib.suppress(OSError):  # the kernel may refuse it (larval SA)
                    sock.sendto(data, (pair.addr_b, 9999))
                if not select.select([listener], [], [], 1.0)[0]:
                    return False
                return listener.recv(100) == data

            assert not arrives(plain, b"held back by the policy")
            assert arrives(ike, b"IKE passes")


# --- serve --driver xfrm ------------------------------------------------------------------------


def _config(path: Path, **extra: Any) -> Path:
    lines = ['[gateway]', 'listen = ["192.0.2.1:500"]', 'driver = "xfrm"', "",
             "[timing]", "retransmit_timeout = 1.0", "retransmit_backoff = 1.0", "retransmit_tries = 20", "",
             "[[filter]]", 'name = "to-b"', 'source = "192.0.2.1"', 'destination = "192.0.2.2"', 'psk = "S"',
             'local_ts = "10.1.0.0/24"', 'remote_ts = "10.2.0.0/24"', "weight = 10"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _monitor(control: Path, view: str) -> Any:
    out = run(sys.executable, "-m", "ikecore", "monitor", "main-mode", view, "--control", str(control),
              "--format", "json")
    return json.loads(out.stdout)


def _counters(control: Path) -> dict[str, float]:
    return {row["counter"]: row["value"] for row in _monitor(control, "counters")}


@contextlib.contextmanager
def _serving(ns: str, argv: list[str], log: Path, control: Path | None = None) -> Iterator[Any]:
    args = [sys.executable, "-m", "ikecore", "serve", *argv]
    if control is not None:
        args += ["--control", str(control)]
    proc = netns.spawn(ns, args, log=log)
    try:
        if control is not None:
            wait_for(lambda: control.exists() or proc.poll() is not None, 20, "the control socket")
            assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        netns.stop(proc)


def ping(pair: netns.NetnsPair, count: int) -> int:
    """``ping -c COUNT -W 1 -I inner_a inner_b`` in namespace a: the replies received."""
    if netns.tool_missing("ping"):
        pytest.skip(str(netns.tool_missing("ping")))
    out = run("ip", "netns", "exec", pair.ns_a, "ping", "-c", str(count), "-i", "0.3", "-W", "1", "-I",
              pair.inner_a, pair.inner_b, check=False)
    found = re.search(r"(\d+) received", out.stdout)
    return int(found.group(1)) if found else 0


def _routes(pair: netns.NetnsPair) -> None:
    run("ip", "-n", pair.ns_a, "route", "add", pair.subnet_b, "via", pair.addr_b, "src", pair.inner_a)
    run("ip", "-n", pair.ns_b, "route", "add", pair.subnet_a, "via", pair.addr_a, "src", pair.inner_b)


def _responder(pair: netns.NetnsPair, driver: str = "memory") -> list[str]:
    return ["--listen", f"{pair.addr_b}:500", "--psk", "S", "--driver", driver, "--local-ts", pair.subnet_b,
            "--remote-ts", pair.subnet_a]


def test_serve_installs_the_filter_traps_and_removes_them_at_close(tmp_path: Path) -> None:
    with netns.recipe_pair() as pair:
        control = tmp_path / "a.sock"
        with _serving(pair.ns_a, ["--config", str(_config(tmp_path / "a.toml"))], tmp_path / "a.log",
                      control) as proc:
            listing = run("ip", "-n", pair.ns_a, "xfrm", "policy").stdout
            priority = PRIORITY_BASE - 10  # weight 10
            for src, dst, direction, tsrc, tdst in (("10.1.0.0/24", "10.2.0.0/24", "out", "192.0.2.1", "192.0.2.2"),
                                                    ("10.2.0.0/24", "10.1.0.0/24", "in", "192.0.2.2", "192.0.2.1"),
                                                    ("10.2.0.0/24", "10.1.0.0/24", "fwd", "192.0.2.2", "192.0.2.1")):
                assert re.search(rf"src {re.escape(src)} dst {re.escape(dst)} \n\tdir {direction} priority "
                                 rf"{priority} .*\n\ttmpl src {re.escape(tsrc)} dst {re.escape(tdst)}\n"
                                 r"\t\tproto esp reqid 1 mode tunnel", listing), listing
            assert listing.count("\tdir ") == 3
            assert netns.stop(proc) == 0
        assert run("ip", "-n", pair.ns_a, "xfrm", "policy").stdout.strip() == ""


def test_a_kernel_acquire_makes_serve_negotiate_and_the_monitor_counts_it(tmp_path: Path) -> None:
    with netns.recipe_pair() as pair:
        _routes(pair)
        control = tmp_path / "a.sock"
        log = tmp_path / "a.log"
        with _serving(pair.ns_a, ["--config", str(_config(tmp_path / "a.toml"))], log, control):
            ping(pair, 1)  # the trap fires
            # the peer is not up yet: our Main Mode is retransmitted, the acquire outstanding
            wait_for(lambda: _counters(control).get("xfrm:acquire") == 1, 10, "the kernel's ACQUIRE")
            stats = _monitor(control, "statistics")
            assert (stats["active_acquire"], stats["acquire_heap_size"]) == (1, 1), stats
            assert _counters(control)["acquires"] == 1
            with _serving(pair.ns_b, _responder(pair), tmp_path / "b.log"):
                wait_for(lambda: _monitor(control, "statistics")["ike_main_mode"] == 1, 30, "Main Mode with b")
                reason = kernel_esp()
                if reason is None:
                    wait_for(lambda: _monitor(control, "statistics")["key_additions"] == 1, 15, "the SAs")
                else:
                    stats = wait_for(lambda: (s := _monitor(control, "statistics"))["key_addition_failures"] == 1
                                     and s, 15, "the kernel's refusal of the ESP SA")
                    assert (stats["key_additions"], stats["total_get_spi"]) == (0, 1), stats
                    assert stats["acquire_failures"] == 1
                    assert _counters(control)["driver_failures:add_outbound"] == 1
                    assert "XFRM_MSG_NEWSA: EPROTONOSUPPORT (Requested type not found)" in log.read_text()
                stats = _monitor(control, "statistics")
                assert (stats["active_acquire"], stats["acquire_heap_size"]) == (0, 0), stats
                assert stats["total_acquire"] >= 2  # Get SPI and the Key Addition (or its failure)
            assert "event=phase1_established" in (tmp_path / "b.log").read_text()


def test_an_unanswered_acquire_falls_back_to_a_soft_sa_in_the_kernel(tmp_path: Path) -> None:
    with netns.recipe_pair() as pair:
        _routes(pair)
        control = tmp_path / "a.sock"
        config = _config(tmp_path / "a.toml", fallback_to_clear=True, soft_sa_lifetime=6)
        text = config.read_text().replace("retransmit_timeout = 1.0", "retransmit_timeout = 0.3") \
            .replace("retransmit_tries = 20", "retransmit_tries = 2")
        config.write_text(text)
        with _serving(pair.ns_a, ["--config", str(config)], tmp_path / "a.log", control):
            assert ping(pair, 1) == 0  # trap: dropped
            wait_for(lambda: _monitor(control, "statistics")["soft_associations"] == 1, 20, "the soft SA")
            listing = run("ip", "-n", pair.ns_a, "xfrm", "policy").stdout
            for src, dst, direction in (("1", "2", "out"), ("2", "1", "in")):  # the flow's hosts, no template
                assert re.search(rf"src 10\.{src}\.0\.1/32 dst 10\.{dst}\.0\.1/32 \n\tdir {direction} "
                                 rf"priority {PRIORITY_BASE - 11} ptype main \n(?!\ttmpl)", listing), listing
            assert ping(pair, 2) == 2  # in clear
            wait_for(lambda: "10.1.0.1/32" not in run("ip", "-n", pair.ns_a, "xfrm", "policy").stdout, 15,
                     "the kernel to end the soft SA")
            assert _counters(control)["xfrm:policy_expire"] >= 1


def test_traffic_through_the_kernel_esp(tmp_path: Path) -> None:
    reason = kernel_esp()
    if reason is not None:
        pytest.skip(reason)
    with netns.recipe_pair() as pair:  # pragma: no cover - runs only on a kernel with ESP
        _routes(pair)
        control = tmp_path / "a.sock"
        with _serving(pair.ns_b, _responder(pair, "xfrm"), tmp_path / "b.log"), \
                _serving(pair.ns_a, ["--config", str(_config(tmp_path / "a.toml"))], tmp_path / "a.log", control):
            time.sleep(1)
            ping(pair, 1)  # the trap fires
            wait_for(lambda: _monitor(control, "statistics")["key_updates"] == 1, 30, "the SAs")
            assert ping(pair, 5) == 5


def test_without_privileges_serve_refuses_the_driver_in_one_line(tmp_path: Path) -> None:
    if netns.tool_missing("setpriv"):
        pytest.skip(str(netns.tool_missing("setpriv")))
    out = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", sys.executable, "-m", "ikecore",
              "serve", "--driver", "xfrm", "--psk", "x", "--listen", "127.0.0.1:0", "--duration", "1", check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ("ikecore serve: --driver: xfrm: cannot open the kernel's XFRM netlink sockets: "
                                  "bind(NETLINK_XFRM): EPERM (Operation not permitted) (needs Linux with XFRM and "
                                  "root: CAP_NET_ADMIN)")

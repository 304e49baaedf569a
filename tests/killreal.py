"""Kill -9 a real ``ikecore serve --store`` gateway at random moments; restart; check nothing was lost.

The gateway is a separate process: ``ikecore serve`` with the SQLite SA store on a
loopback port and its control socket. This process is the other end: one initiator
``Engine`` playing ``--sas`` peers, each from its own 127.x.y.z address (one UDP socket,
``IP_PKTINFO`` picks the source address of every datagram), each negotiating Main Mode
and one Quick Mode (closed loop, ``--concurrency`` at a time) and keeping its SAs.

``--kills`` times the gateway gets SIGKILL at a random moment: the first half while the
SAs are being established (when a random number of them is up), the rest while it holds
all of them and is idle (after a random pause). The initiator notices nothing (its
negotiations in flight time out and start again). The gateway is restarted on the same
store, and before anything else happens:

* every ISAKMP SA the initiator saw established (Phase1Established: the gateway sent Main
  Mode message 6, which it only does once the SA is committed to the store) is present in
  the restarted gateway's control socket listing with the same cookies, the peer's
  address, state ESTABLISHED, the suite the initiator negotiated and a remaining lifetime
  that matches the initiator's;
* the store the gateway restored from holds, for each of them, the same SKEYID_d and
  SKEYID_a as the initiator (both ends derive them), and every IPsec SA in it has the
  keys the initiator's driver holds for the same SPIs (keys intact, both directions);
* a new Quick Mode on restored ISAKMP SAs succeeds (``--qm-sample`` of them, 0 = all):
  the restarted gateway decrypts, authenticates and answers with the restored keys and
  IV chain.

Then the initiator goes on establishing. At the end the gateway is stopped with SIGTERM.
Prints one JSON line per kill and ``PASS: ...`` (exit 0) or the first failures (exit 1).

Long run (documented in bench/README.md; about 15 minutes on 2 shared cores)::

    .venv/bin/python tests/killreal.py --sas 10000 --kills 20 --qm-sample 0

``make test`` runs a short version (tests/test_killreal.py: 300 SAs, 3 kills).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from ikecore import events as ev  # noqa: E402
from ikecore.config import Timing, config_from_flags  # noqa: E402
from ikecore.driver import MemoryDriver  # noqa: E402
from ikecore.engine.core import Engine  # noqa: E402
from ikecore.gateway.frontdoor import IP_PKTINFO, pktinfo_destination, source_pktinfo  # noqa: E402
from ikecore.gateway.store import read_records  # noqa: E402
from ikecore.loadtest import peer_address  # noqa: E402
from ikecore.monitor import listing as sa_listing
from ikecore.monitor.control import ControlClient, ControlError  # noqa: E402

PSK = "kill-real-secret"
IKE = "aes128-sha256-ecp256"
ESP = "aes128-sha256"
GATEWAY_HOST = "127.0.0.1"
COLUMNS = ["peer", "initiator_cookie", "responder_cookie", "state", "role", "authentication", "encryption",
           "integrity", "diffie_hellman", "lifetime_left"]
SUITE = ("authentication", "encryption", "integrity", "diffie_hellman")


class Failure(AssertionError):
    """Something established before a kill is missing or changed after the restart."""


class Gateway:
    """The ``ikecore serve --store`` process under test."""

    def __init__(self, workdir: Path, port: int, *, keep: bool = True) -> None:
        self.workdir = workdir
        self.port = port
        self.keep = keep   # False: a gateway without the store (the check must then fail)
        self.store = workdir / "gateway.db"
        self.control = str(workdir / "control.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> float:
        """Start the gateway; returns the seconds until it listens and answers its control socket."""
        begin = time.monotonic()
        log = self.workdir / f"gateway-{self.starts}.log"
        self.starts += 1
        command = [sys.executable, "-m", "ikecore", "serve", "--psk", PSK, "--ike", IKE, "--esp", ESP,
                   "--listen", f"{GATEWAY_HOST}:{self.port}", "--control", self.control, "--quiet"]
        if self.keep:
            command += ["--store", str(self.store)]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve()
                                                                                 .parent.parent / "python")})
        while time.monotonic() - begin < timeout:
            if self.process.poll() is not None:
                raise Failure(f"gateway exited with {self.process.returncode}: {log.read_text()[-2000:]}")
            if "control socket" in log.read_text(errors="replace"):
                try:
                    with ControlClient(self.control, timeout=5.0) as client:
                        client.request({"op": "ping"})
                    return time.monotonic() - begin
                except ControlError:
                    pass
            time.sleep(0.02)
        raise Failure(f"gateway did not come up within {timeout} s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def listing(self) -> dict[str, dict[str, Any]]:
        """The restarted gateway's Main Mode SAs by cookie pair (hex), from its control socket."""
        with ControlClient(self.control, timeout=60.0) as client:
            answer = client.request({"op": "view", "mode": "main-mode", "view": "security-associations",
                                     "columns": COLUMNS})
        return {row["initiator_cookie"] + row["responder_cookie"]: row for row in answer["rows"]}

    def stored(self) -> dict[str, dict[str, Any]]:
        """The records in the store (read-only; the gateway keeps running), by cookie pair."""
        if not self.store.exists():
            return {}
        return read_records(self.store)


class Peers:
    """The initiator side: one engine, one socket, ``count`` peers from 127.1.x.y."""

    def __init__(self, gateway_port: int, count: int, concurrency: int, first_address: str) -> None:
        timing = Timing(retransmit_timeout=1.0, retransmit_tries=3, negotiation_timeout=6.0)
        self.config = config_from_flags(psk=PSK, ike=IKE, esp=ESP, listen=(), remote=GATEWAY_HOST, timing=timing)
        self.driver = MemoryDriver()
        self.engine = Engine(self.config, driver=self.driver, now=time.monotonic())
        self.target = (GATEWAY_HOST, gateway_port)
        self.concurrency = concurrency
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.waiting: deque[str] = deque(peer_address(first_address, i) for i in range(count))
        self.address_of: dict[int, str] = {}
        self.in_flight = 0
        self.established: dict[int, str] = {}      # handle -> cookie pair (hex)
        self.phase1_failures = 0
        self.deleted: set[int] = set()
        self.qm_done: dict[int, int] = {}           # handle -> Quick Modes established
        self.qm_failed: dict[int, int] = {}
        self.starting = True

    def close(self) -> None:
        self.sock.close()

    # --- I/O ----------------------------------------------------------------------------

    def _start_more(self, now: float) -> None:
        while self.starting and self.waiting and self.in_flight < self.concurrency:
            address = self.waiting.popleft()
            handle = self.engine.initiate(self.target, local=(address, self.port), now=now)
            self.address_of[handle] = address
            self.in_flight += 1

    def _send(self) -> None:
        for data, remote, local in self.engine.datagrams_to_send():
            ancillary = source_pktinfo(local[0])
            for _attempt in range(50):
                try:
                    self.sock.sendmsg([data], ancillary, 0, remote)
                    break
                except BlockingIOError:
                    select.select([], [self.sock], [], 0.01)
                except OSError:
                    break   # the gateway is down: the engine retransmits

    def _events(self) -> None:
        while (event := self.engine.next_event()) is not None:
            handle = getattr(event, "handle", None)
            if isinstance(event, ev.Phase1Established):
                self.established[handle] = (event.initiator_cookie + event.responder_cookie).hex()
                self.in_flight -= 1
            elif isinstance(event, ev.Phase1Failed):
                self.phase1_failures += 1
                self.in_flight -= 1
                self.waiting.append(self.address_of[handle])   # that peer tries again
            elif isinstance(event, ev.Phase2Established):
                self.qm_done[handle] = self.qm_done.get(handle, 0) + 1
            elif isinstance(event, ev.Phase2Failed):
                self.qm_failed[handle] = self.qm_failed.get(handle, 0) + 1
            elif isinstance(event, ev.SaDeleted) and event.phase == 1 and handle in self.established:
                del self.established[handle]
                self.deleted.add(handle)

    def settled(self, target: int) -> Any:
        """A condition: ``target`` ISAKMP SAs up, none negotiating, and each one's first Quick
        Mode ended (the gateway is idle)."""
        def check() -> bool:
            return (len(self.established) >= target and self.in_flight == 0
                    and all(h in self.qm_done or h in self.qm_failed for h in self.established))
        return check

    def run(self, seconds: float, until: Any = None) -> bool:
        """Move datagrams and timers for up to ``seconds``; stop early when ``until()`` holds."""
        end = time.monotonic() + seconds
        ancillary_size = socket.CMSG_SPACE(12)
        while True:
            now = time.monotonic()
            self._start_more(now)
            self._send()
            self._events()
            if until is not None and until():
                return True
            if now >= end:
                return False
            timer = self.engine.get_timer()
            wait = min(end - now, 0.05 if timer is None else max(0.0, timer - now))
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                for _ in range(512):
                    try:
                        data, ancdata, _flags, remote = self.sock.recvmsg(65535, ancillary_size)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue   # an ICMP error of an earlier send
                    local = pktinfo_destination(ancdata)
                    if local is not None:
                        self.engine.receive_datagram(data, (remote[0], remote[1]), (local, self.port),
                                                     time.monotonic())
                    if len(self.engine._outgoing) > 64:
                        self._send()
            now = time.monotonic()
            timer = self.engine.get_timer()
            if timer is not None and timer <= now:
                self.engine.handle_timer(now)

    def quick_modes(self, handles: list[int], seconds: float, batch: int = 200) -> tuple[int, list[str]]:
        """A new Quick Mode on each of ``handles``; returns (succeeded, failures)."""
        failures: list[str] = []
        ok = 0
        deadline = time.monotonic() + seconds
        for start in range(0, len(handles), batch):
            chunk = handles[start:start + batch]
            done_before = {h: self.qm_done.get(h, 0) for h in chunk}
            failed_before = {h: self.qm_failed.get(h, 0) for h in chunk}
            for handle in chunk:
                self.engine.initiate_quick_mode(handle, time.monotonic())

            def settled() -> bool:
                return all(self.qm_done.get(h, 0) > done_before[h] or self.qm_failed.get(h, 0) > failed_before[h]
                           for h in chunk)

            self.run(max(0.0, deadline - time.monotonic()), settled)
            for handle in chunk:
                if self.qm_done.get(handle, 0) > done_before[handle]:
                    ok += 1
                elif self.qm_failed.get(handle, 0) > failed_before[handle]:
                    failures.append(f"Quick Mode on restored SA {self.established.get(handle)} failed")
                else:
                    failures.append(f"Quick Mode on restored SA {self.established.get(handle)} did not finish")
        return ok, failures


def verify(gateway: Gateway, peers: Peers, qm_sample: int, rng: random.Random, qm_seconds: float) -> dict[str, Any]:
    """Everything the initiator holds as established must be in the restarted gateway, intact."""
    failures: list[str] = []
    listing = gateway.listing()
    stored = gateway.stored()
    now = time.monotonic()
    mine = {sa.handle: sa for sa in peers.engine.sas()}
    established = dict(peers.established)   # Quick Modes below let cut negotiations finish too
    for handle, cookies in established.items():
        sa = mine.get(handle)
        if sa is None:
            failures.append(f"initiator lost its own SA {cookies}")
            continue
        row = listing.get(cookies)
        if row is None:
            failures.append(f"SA {cookies} of {peers.address_of[handle]} established before the kill is missing")
            continue
        view = sa_listing.main_mode_row(sa, now)
        if row["state"] != "ESTABLISHED" or row["peer"] != peers.address_of[handle] or row["role"] != "responder":
            failures.append(f"SA {cookies}: {row['state']} {row['peer']} {row['role']}")
        if any(row[column] != view[column] for column in SUITE):
            failures.append(f"SA {cookies}: suite {[row[c] for c in SUITE]} != {[view[c] for c in SUITE]}")
        left = row["lifetime_left"]
        if left is None or not 0 < left <= sa.chosen.lifetime or abs(left - view["lifetime_left"]) > 30:
            failures.append(f"SA {cookies}: lifetime left {left} (initiator: {view['lifetime_left']:.0f})")
        record = stored.get(cookies)
        if record is None:
            failures.append(f"SA {cookies} is listed but not in the store")
            continue
        if (bytes.fromhex(record["skeyid"][1]) != sa.skeyid.skeyid_d
                or bytes.fromhex(record["skeyid"][2]) != sa.skeyid.skeyid_a):
            failures.append(f"SA {cookies}: stored SKEYID_d/SKEYID_a differ from the initiator's")
        for ipsec in record["ipsec"]:
            for keys in ipsec["keys"]:
                spi = bytes.fromhex(keys["spi"])
                # the gateway's outbound SA is the initiator's inbound one and the other way
                # round; the two ends draw SPIs independently, so the direction (by
                # destination) picks the table, never a lookup in both
                if keys["destination"] == GATEWAY_HOST:
                    theirs = peers.driver.outbound.get((spi, GATEWAY_HOST))
                else:
                    theirs = peers.driver.inbound.get(spi)
                if theirs is None or (theirs.encryption_key.hex(), theirs.integrity_key.hex()) != (
                        keys["encryption_key"], keys["integrity_key"]):
                    failures.append(f"SA {cookies}: IPsec SA {spi.hex()} keys differ from the initiator's")
    handles = [h for h in established if h in mine]
    sample = handles if qm_sample == 0 else rng.sample(handles, min(qm_sample, len(handles)))
    if failures:
        raise Failure("; ".join(failures[:10]) + f" ({len(failures)} failures)")
    started = time.monotonic()
    ok, qm_failures = peers.quick_modes(sample, qm_seconds)
    if qm_failures:
        raise Failure("; ".join(qm_failures[:10]) + f" ({len(qm_failures)} of {len(sample)} Quick Modes)")
    checked = set(established.values())
    ipsec_checked = sum(len(record["ipsec"]) for cookies, record in stored.items() if cookies in checked)
    return {"established_before_kill": len(established), "listed_after_restart": len(listing),
            "stored": len(stored), "ipsec_sas_checked": ipsec_checked, "quick_modes_ok": ok,
            "quick_mode_seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sas", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--qm-sample", type=int, default=0, help="Quick Modes after each restart (0: all)")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="default: a new temporary directory")
    parser.add_argument("--first-address", default="127.1.0.1")
    parser.add_argument("--wall-limit", type=float, default=3600.0)
    parser.add_argument("--no-store", action="store_true",
                        help="run the gateway without its store: a control run that must FAIL")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop the gateway on the way out
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="killreal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
        (workdir / stale).unlink(missing_ok=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((GATEWAY_HOST, 0))
        port = probe.getsockname()[1]
    began = time.monotonic()
    hard_stop = began + args.wall_limit
    gateway = Gateway(workdir, port, keep=not args.no_store)
    peers = Peers(port, args.sas, args.concurrency, args.first_address)
    during = (args.kills + 1) // 2
    thresholds = sorted(rng.randrange(1, max(2, args.sas)) for _ in range(during))
    results: list[dict[str, Any]] = []
    try:
        gateway.start()
        for kill in range(args.kills):
            if kill < during:
                moment = f"establishing, {thresholds[kill]} of {args.sas} up"
                reached = peers.run(max(0.0, hard_stop - time.monotonic()),
                                    lambda: len(peers.established) >= thresholds[kill])
            else:
                reached = peers.run(max(0.0, hard_stop - time.monotonic()), peers.settled(args.sas))
                pause = rng.uniform(0.0, 1.0)
                peers.run(pause)
                moment = f"idle, {pause:.2f} s after the last SA"
            if not reached:
                raise Failure(f"wall limit reached before kill {kill + 1} "
                              f"({len(peers.established)} of {args.sas} established)")
            gateway.kill()
            before = len(peers.established)
            peers.starting = False
            peers.run(rng.uniform(0.0, 0.5))    # the peers retransmit into a dead port
            restart_seconds = gateway.start()
            report = verify(gateway, peers, args.qm_sample, rng, qm_seconds=max(60.0, args.sas / 20))
            report = {"kill": kill + 1, "moment": moment, "seen_established_at_kill": before,
                      "restart_seconds": round(restart_seconds, 2), **report}
            results.append(report)
            print(json.dumps(report), flush=True)
            peers.starting = True
        peers.run(max(0.0, hard_stop - time.monotonic()), peers.settled(args.sas))
    except Failure as exc:
        print(f"FAIL after {len(results)} kills: {exc}", flush=True)
        return 1
    finally:
        gateway.stop()
        peers.close()
    elapsed = time.monotonic() - began
    print(f"PASS: {len(results)} kills of a real gateway process; every SA established before a kill was "
          f"present and intact after the restart; {sum(r['quick_modes_ok'] for r in results)} Quick Modes on "
          f"restored SAs succeeded; final {len(peers.established)} ISAKMP SAs; "
          f"{peers.phase1_failures} negotiations cut by kills were retried; {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

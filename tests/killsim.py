"""Kill -9 a gateway with many SAs at random moments; restart; check nothing was lost.

The gateway process (``--child``) holds two engines joined in memory (sans-IO), a
responder and an initiator playing many peers, each with its own SQLite SA store. It
establishes SAs until ``--sas`` exist (then keeps running Quick Modes and DPD
informationals on random SAs, so the stores keep changing), and appends one line per
phase 1 it saw established to a log with ``os.write`` -- after the engine handed out the
event, so (ikecore.gateway.store) the SA was already committed. The parent kills it with
SIGKILL at a random moment, ``--kills`` times. After every kill the next child first
verifies: every logged SA is present in its restored engine with the same cookies, the
ISAKMP SAs are ESTABLISHED, and a new Quick Mode on each restored ISAKMP SA present on
both sides succeeds (``--qm-sample`` of them; 0 = all). Then it goes on establishing.

Long run (documented in bench/README.md)::

    .venv/bin/python tests/killsim.py --sas 10000 --kills 20

``make test`` runs a small version (tests/test_store.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from ikecore import events as ev  # noqa: E402
from ikecore.config import Config, Timing, config_from_flags  # noqa: E402
from ikecore.driver import MemoryDriver  # noqa: E402
from ikecore.engine.core import Engine  # noqa: E402
from ikecore.gateway.store import SaStore  # noqa: E402
from ikecore import wire  # noqa: E402

GATEWAY = ("127.0.0.1", 500)


def _config() -> Config:
    timing = Timing(retransmit_timeout=1.0, retransmit_tries=3, negotiation_timeout=20.0)
    return config_from_flags(psk="kill-test-secret", ike="aes128-sha256-ecp256", esp="aes128-sha256",
                             listen=(), timing=timing)


class Pair:
    """The two engines of the gateway process, on a fake clock that survives restarts."""

    def __init__(self, workdir: Path, synchronous: str) -> None:
        self.workdir = workdir
        clock_file = workdir / "clock"
        self.now = float(clock_file.read_text()) + 1.0 if clock_file.exists() else 1000.0
        config = _config()
        self.stores = {side: SaStore(workdir / f"{side}.db", synchronous=synchronous)
                       for side in ("responder", "initiator")}
        self.drivers = {side: MemoryDriver() for side in self.stores}
        self.responder = Engine(config, driver=self.drivers["responder"], store=self.stores["responder"],
                                now=self.now)
        self.initiator = Engine(config, driver=self.drivers["initiator"], store=self.stores["initiator"],
                                now=self.now)
        self.log_fd = os.open(workdir / "established.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.qm_ok = 0
        self.qm_failed = 0

    def tick(self, step: float = 0.001) -> None:
        for _round in range(10):
            moved = False
            for data, remote, local in self.initiator.datagrams_to_send():
                self.responder.receive_datagram(data, local, remote, self.now)
                moved = True
            for data, remote, local in self.responder.datagrams_to_send():
                self.initiator.receive_datagram(data, local, remote, self.now)
                moved = True
            if not moved:
                break
        for engine in (self.initiator, self.responder):
            timer = engine.get_timer()
            if timer is not None and timer <= self.now:
                engine.handle_timer(self.now)
        lines = []
        for side, engine in (("initiator", self.initiator), ("responder", self.responder)):
            while (event := engine.next_event()) is not None:
                if isinstance(event, ev.Phase1Established):
                    cookies = (event.initiator_cookie + event.responder_cookie).hex()
                    lines.append(f"{side} {event.handle} {cookies}\n")
                elif isinstance(event, ev.Phase2Established) and side == "initiator":
                    self.qm_ok += 1
                elif isinstance(event, ev.Phase2Failed) and side == "initiator":
                    self.qm_failed += 1
        if lines:
            os.write(self.log_fd, "".join(lines).encode())
        self.now += step
        (self.workdir / "clock.tmp").write_text(repr(self.now))
        os.replace(self.workdir / "clock.tmp", self.workdir / "clock")


def verify(pair: Pair, qm_sample: int, rng: random.Random) -> dict[str, int]:
    """Check the restored engines against the log; raise AssertionError on any loss."""
    logged: dict[str, set[str]] = {"initiator": set(), "responder": set()}
    deleted: set[str] = set()
    log = pair.workdir / "established.log"
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and len(parts[2]) == 32:   # a torn last line cannot be a logged SA
                logged[parts[0]].add(parts[2])
    if (pair.workdir / "deleted").exists():
        deleted = set((pair.workdir / "deleted").read_text().split())
    for side, engine in (("initiator", pair.initiator), ("responder", pair.responder)):
        present = {(sa.initiator_cookie + sa.responder_cookie).hex(): sa for sa in engine.sas()}
        for cookies in logged[side]:
            sa = present.get(cookies)
            if sa is None:
                assert cookies in deleted, f"{side} SA {cookies} was established before the kill and is lost"
                continue
            assert sa.state.value == "ESTABLISHED" and sa.skeyid is not None and sa.crypto is not None
    # both-sided SAs: a new Quick Mode on the restored ISAKMP SA must succeed
    by_cookies = {(sa.initiator_cookie, sa.responder_cookie): sa for sa in pair.responder.sas()}
    both = [sa for sa in pair.initiator.sas() if (sa.initiator_cookie, sa.responder_cookie) in by_cookies]
    sample = both if qm_sample == 0 else rng.sample(both, min(qm_sample, len(both)))
    before_ok, before_failed = pair.qm_ok, pair.qm_failed
    for start in range(0, len(sample), 200):
        for sa in sample[start:start + 200]:
            pair.initiator.initiate_quick_mode(sa.handle, pair.now)
        for _ in range(50):
            pair.tick()
            if pair.qm_ok + pair.qm_failed - before_ok - before_failed >= start + len(sample[start:start + 200]):
                break
    ok, failed = pair.qm_ok - before_ok, pair.qm_failed - before_failed
    assert failed == 0 and ok == len(sample), f"Quick Mode on restored SAs: {ok} ok, {failed} failed of {len(sample)}"
    return {"logged_initiator": len(logged["initiator"]), "logged_responder": len(logged["responder"]),
            "deleted": len(deleted),
            "restored_initiator": len(pair.initiator.sas()), "restored_responder": len(pair.responder.sas()),
            "both_sides": len(both), "quick_modes_checked": ok}


def child(workdir: Path, target: int, qm_sample: int, synchronous: str, seed: int) -> int:
    rng = random.Random(seed)
    pair = Pair(workdir, synchronous)
    report = verify(pair, qm_sample, rng)
    (workdir / "verified.json").write_text(json.dumps(report))
    os.write(1, (json.dumps(report) + "\n").encode())
    peer = len(pair.initiator.sas())
    ready = False
    while True:
        established = len([sa for sa in pair.initiator.sas() if sa.state.value == "ESTABLISHED"])
        if not ready and established >= target:
            ready = True
            os.write(1, f"ready {established}\n".encode())
        if established < target:
            for _ in range(min(50, target - established)):
                peer += 1
                local = (f"127.{1 + peer // 62500 % 200}.{peer // 250 % 250}.{peer % 250 + 1}", 500)
                pair.initiator.initiate(GATEWAY, local=local, now=pair.now, quick_mode=rng.random() < 0.5)
        else:
            # keep the stores changing: Quick Modes, DPD, and now and then a delete
            sas = [sa for sa in pair.initiator.sas() if sa.state.value == "ESTABLISHED"]
            for sa in rng.sample(sas, min(20, len(sas))):
                roll = rng.random()
                if roll < 0.6:
                    pair.initiator.initiate_quick_mode(sa.handle, pair.now)
                elif roll < 0.995:
                    pair.initiator._notify_protected(sa, wire.NotifyType.R_U_THERE)
                else:
                    # record the intent first: a deleted SA is legitimately absent
                    with open(workdir / "deleted", "a") as handle:
                        handle.write((sa.initiator_cookie + sa.responder_cookie).hex() + "\n")
                    pair.initiator.delete(sa.handle, pair.now)
        for _ in range(5):
            pair.tick()


def parent(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.iterdir():
        stale.unlink()
    rng = random.Random(args.seed)
    script = Path(__file__).resolve()
    deadline = time.monotonic() + args.wall_limit
    reports = []
    for kill in range(args.kills + 1):
        command = [sys.executable, str(script), "--child", "--workdir", str(workdir), "--sas", str(args.sas),
                   "--qm-sample", str(args.qm_sample), "--synchronous", args.synchronous,
                   "--seed", str(args.seed + kill)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()       # the verification report of the restart
        if not line:
            process.wait(timeout=30)
            sys.stderr.write(process.stderr.read().decode() if process.stderr else "")
            print(f"restart {kill}: verification FAILED")
            return 1
        report = json.loads(line)
        reports.append(report)
        print(f"restart {kill}: {report}", flush=True)
        if kill == args.kills:
            process.send_signal(signal.SIGKILL)
            process.wait()
            break
        # wait until the gateway holds --sas established SAs, then kill it at a random
        # moment while it re-establishes deleted ones and runs Quick Modes and DPD
        ready = process.stdout.readline()
        if not ready.startswith(b"ready"):
            process.wait(timeout=30)
            print(f"restart {kill}: gateway died before it was ready")
            return 1
        time.sleep(rng.uniform(0.05, args.max_interval))
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            print("wall-clock limit reached")
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = reports[-1]
    print(f"PASS: {len(reports) - 1} kills; final restore {final['restored_responder']} responder / "
          f"{final['restored_initiator']} initiator ISAKMP SAs, {final['quick_modes_checked']} Quick Modes "
          f"on restored SAs succeeded")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sas", type=int, default=10000, help="ISAKMP SAs to build up to")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--qm-sample", type=int, default=0, help="Quick Modes checked per restart (0: all)")
    parser.add_argument("--max-interval", type=float, default=8.0, help="longest seconds between kills")
    parser.add_argument("--synchronous", default="NORMAL", choices=("FULL", "NORMAL"))
    parser.add_argument("--workdir", default="/tmp/ikecore-killsim")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--wall-limit", type=float, default=1800.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(Path(args.workdir), args.sas, args.qm_sample, args.synchronous, args.seed)
    return parent(args)


if __name__ == "__main__":
    raise SystemExit(main())

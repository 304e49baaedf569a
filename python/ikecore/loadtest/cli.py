"""``ikecore loadtest``: the command-line flags and the command.

The flags build a ``LoadSpec``; one process runs it with ``run_udp`` (DH key pairs made
ahead on ``--dh-threads`` threads), ``--workers N`` with ``run_processes``. The report
goes to standard output as text or, with ``--json``, one JSON object; the progress bar
goes to standard error. Exit 0 when every peer established, 1 otherwise, 2 for a
wrong flag (the caller prints the ``ConfigError``).

Ctrl-C or SIGTERM (to this process alone or to its whole process group, generator
processes included) stops the run: the report of what was measured until then is
printed (and written with ``--json``) marked interrupted, and the exit status is 130
(143 for SIGTERM). A second Ctrl-C gives up on the report (130).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time
from typing import Any, TextIO

from ikecore.config import PSK_ENVIRONMENT, parse_endpoint, psk_from_flags
from ikecore.credentials import credentials_from_flags
from ikecore import policy
from ikecore.errors import ConfigError
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.gateway.gc_tuning import tune_gc
from ikecore.gateway import tuning
from ikecore.loadtest.generator import Faults, LoadSpec, LoadTest
from ikecore.loadtest.progress import ProgressBar
from ikecore.loadtest.report import Report, format_report, report_json
from ikecore.loadtest import worker_process
from ikecore.loadtest.runners import StopSignals, check_peer_addresses, run_processes, run_udp

__all__ = ["add_parser", "command", "spec_from_args"]

#: Locust's default master port.
MASTER_PORT = 5557
LOG = logging.getLogger("ikecore.loadtest")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``ikecore loadtest`` on the CLI's sub-parsers."""
    parser = sub.add_parser("loadtest", help="simulate many IKEv1 peers against a gateway")
    parser.add_argument("target", metavar="ADDR[:PORT]", nargs="?", help="the gateway (not with --worker)")
    parser.add_argument("--peers", type=int, help="simulated peers (one ISAKMP SA each; not with --worker)")
    parser.add_argument("--psk", help="pre-shared key [secret]; visible to every user in ps: prefer "
                                      f"--psk-file or ${PSK_ENVIRONMENT}")
    parser.add_argument("--psk-file", metavar="FILE",
                        help=f"read the pre-shared key from the first line of FILE (mode 0600); "
                             f"without --psk or --psk-file, ${PSK_ENVIRONMENT} gives it")
    parser.add_argument("--cert", metavar="FILE",
                        help="X.509 certificate every peer signs with (RSA; with --key and --ca, instead of --psk)")
    parser.add_argument("--key", metavar="FILE", help="the certificate's RSA private key (PEM or DER)")
    parser.add_argument("--ca", metavar="FILE", action="append",
                        help="CA certificate that validates the gateway's certificate (repeatable)")
    parser.add_argument("--ike", default="aes128-sha256-modp2048", help="IKE proposals")
    parser.add_argument("--esp", default="aes128-sha256", help="ESP proposals")
    parser.add_argument("--quick-modes", type=int, default=1, help="Quick Modes per peer (0: Main Mode only)")
    parser.add_argument("--no-quick-mode", action="store_true", help="same as --quick-modes 0")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--rate", type=float, help="open loop: new peers per second")
    loop.add_argument("--concurrency", type=int, help="closed loop: peers negotiating at once [100]")
    parser.add_argument("--ramp", type=float, default=0.0, metavar="SECONDS",
                        help="raise the rate or concurrency linearly over this long")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop starting peers after this")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard bound on the whole run")
    parser.add_argument("--timeout", type=float, default=30.0, help="negotiation timeout per peer")
    parser.add_argument("--retransmit-timeout", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--first-address", default="127.1.0.1",
                        help="first peer address: 127.x.y.z, or a range made local and routed to the gateway "
                             "(ip route add local 10.8.0.0/16 dev lo) [127.1.0.1]")
    parser.add_argument("--nat-t", choices=("auto", "force", "off"), default="auto",
                        help="NAT traversal of every peer: detect (auto), always float to the NAT-T port "
                             "and encapsulate (force), or off")
    parser.add_argument("--natt-port", type=int, metavar="PORT",
                        help="the gateway's NAT-T port (default 4500 when the target is on 500, else the target's)")
    parser.add_argument("--local-port", type=int, default=0, help="UDP port of every peer (default ephemeral)")
    parser.add_argument("--workers", type=int, default=1,
                        help="generator processes, each with a share of the peers and its own socket")
    parser.add_argument("--dh-threads", type=int, default=None,
                        help="threads pre-computing DH key pairs (0: compute them inline; default: 1 when "
                             "two cores are left free and the group is MODP, else 0)")
    parser.add_argument("--no-express", dest="express", action="store_false",
                        help="negotiate in engines only (default: peers of one kind run in the Rust express lane)")
    for name, text in (("drop", "drop"), ("duplicate", "duplicate"), ("corrupt", "corrupt one byte of"),
                       ("delay", "delay")):
        parser.add_argument(f"--{name}", type=float, default=0.0, metavar="SHARE",
                            help=f"{text} this share (0..1) of datagrams, both directions")
    parser.add_argument("--delay-seconds", type=float, default=0.05, help="how long a delayed datagram waits")
    parser.add_argument("--wrong-psk", type=float, default=0.0, metavar="SHARE",
                        help="this share of peers uses a wrong pre-shared key")
    parser.add_argument("--seed", type=int, help="seed for fault injection and the wrong-PSK choice")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    locust = parser.add_argument_group("across machines, on Locust (master and workers)")
    role = locust.add_mutually_exclusive_group()
    role.add_argument("--master", action="store_true",
                      help="run as the Locust master: share the peers out to --expect-workers workers")
    role.add_argument("--worker", action="store_true",
                      help="run as a Locust worker of the master at --master-host (with its own --psk/--cert)")
    locust.add_argument("--expect-workers", type=int, metavar="W", help="workers the master waits for")
    locust.add_argument("--master-bind", default=f"0.0.0.0:{MASTER_PORT}", metavar="ADDR:PORT",
                        help=f"where the master listens for workers [0.0.0.0:{MASTER_PORT}]")
    locust.add_argument("--master-host", metavar="ADDR[:PORT]", help=f"the master a worker joins [port {MASTER_PORT}]")
    locust.add_argument("--web", metavar="ADDR:PORT", help="serve Locust's web UI (live charts) here")
    locust.add_argument("--csv", metavar="PREFIX", help="write Locust's CSV statistics to PREFIX_*.csv")


def spec_from_args(args: argparse.Namespace, *, secrets: bool = True) -> LoadSpec:
    """The ``ikecore loadtest`` flags as a LoadSpec (ConfigError names a wrong flag);
    ``secrets=False`` (a Locust master) leaves the key and certificates out."""
    if args.target is None:
        raise ConfigError("ADDR[:PORT]", "name the gateway to load (ikecore loadtest ADDR[:PORT] --peers N)")
    if args.peers is None:
        raise ConfigError("--peers", "say how many peers to simulate (--peers N)")
    # checked here, in the process that reports errors, before any worker process starts
    policy.parse_ike_proposals(args.ike, field_name="--ike")
    policy.parse_esp_proposals(args.esp, field_name="--esp")
    faults = Faults(drop=args.drop, duplicate=args.duplicate, corrupt=args.corrupt, delay=args.delay,
                    delay_seconds=args.delay_seconds, wrong_psk=args.wrong_psk)
    return LoadSpec(target=parse_endpoint(args.target, 500, "target"), peers=args.peers,
                    psk=(psk_from_flags(args.psk, args.psk_file) or "secret") if secrets else "",
                    ike=args.ike, esp=args.esp, quick_modes=0 if args.no_quick_mode else args.quick_modes,
                    rate=args.rate, concurrency=args.concurrency, ramp=args.ramp, duration=args.duration,
                    timeout=args.timeout, retransmit_timeout=args.retransmit_timeout,
                    max_seconds=args.max_seconds, first_address=args.first_address, faults=faults,
                    nat_t=args.nat_t, natt_port=args.natt_port,
                    seed=args.seed, express=args.express,
                    credentials=credentials_from_flags(args.cert, args.key, args.ca) if secrets else None)


def command(args: argparse.Namespace, out: TextIO) -> int:
    """``ikecore loadtest``: exit 0 when every peer established, 1 otherwise."""
    restore_gc = tune_gc()
    try:
        return _command(args, out)
    finally:
        restore_gc()


def _command(args: argparse.Namespace, out: TextIO) -> int:
    args.dh_threads = tuning.dh_threads(args.dh_threads, args.workers, args.ike)
    if args.worker:
        return _worker(args)
    if args.master:
        return _master(args, out)
    for flag, value in (("--expect-workers", args.expect_workers), ("--master-host", args.master_host),
                        ("--web", args.web), ("--csv", args.csv)):
        if value is not None:
            raise ConfigError(flag, "belongs to a Locust run: add --master (or --worker)")
    if args.dh_threads < 0:
        raise ConfigError("--dh-threads", "must be 0 or more")
    if not 1 <= args.workers <= 64:
        raise ConfigError("--workers", "must be between 1 and 64")
    began = time.monotonic()
    with StopSignals() as stop:  # from here a Ctrl-C still ends in the report (of what was measured)
        spec = spec_from_args(args)
        check_peer_addresses(spec)
        if args.workers > 1:
            progress = None if args.no_progress else ProgressBar(sys.stderr, spec.peers, logger=LOG)
            report = run_processes(spec, args.workers, dh_threads=args.dh_threads, local_port=args.local_port,
                                   progress=progress, should_stop=stop)
        else:
            pool = DhPool(args.dh_threads) if args.dh_threads else None
            try:
                keypair = KeypairReserve(pool) if pool is not None else None
                load = LoadTest(spec, keypair=keypair, local_port=args.local_port)
                progress = None if args.no_progress else ProgressBar(sys.stderr, spec.peers, logger=LOG)
                try:
                    report = run_udp(load, progress=progress, should_stop=stop)
                except OSError as exc:
                    raise ConfigError("--local-port", f"cannot open the UDP socket: {exc.strerror}") from None
            finally:
                if pool is not None:
                    pool.close()
        return finish(report, spec.peers, args.json, out, stop.received, time.monotonic() - began)


def finish(report: Report, peers: int, as_json: bool, out: TextIO, signals: list[int], elapsed: float) -> int:
    """Print the report (marked interrupted after a signal); the exit status: 130 after
    SIGINT, 143 after SIGTERM, else 0 when every peer established and 1 otherwise."""
    if signals:
        report.interrupted_after = elapsed
        LOG.warning("interrupted by %s after %.1f s: reporting what was measured until then",
                    signal.Signals(signals[0]).name, elapsed,
                    extra={"event": "interrupted", "fields": {"signal": signal.Signals(signals[0]).name,
                                                              "seconds": round(elapsed, 3)}})
    out.write((report_json(report) if as_json else format_report(report)) + "\n")
    out.flush()
    if signals:
        return 128 + signals[0]
    return 0 if report.established == peers else 1


def _master(args: argparse.Namespace, out: TextIO) -> int:
    """``--master``: Locust's master runner; the report is the merge of the workers'."""
    for flag, value in (("--cert", args.cert), ("--key", args.key), ("--ca", args.ca)):
        if value:
            raise ConfigError(flag, "certificates stay on the load machines: give them to each --worker")
    if args.workers != 1:
        raise ConfigError("--workers", "is for one machine; with --master, start --worker processes instead")
    if args.master_host is not None:
        raise ConfigError("--master-host", "is a worker's flag; the master listens on --master-bind")
    if args.expect_workers is None or not 1 <= args.expect_workers <= 1024:
        raise ConfigError("--expect-workers", "give the number of workers to wait for (1 to 1024)")
    spec = spec_from_args(args, secrets=False)
    if args.psk or args.psk_file:
        # for workers started without a key of their own; theirs wins
        spec = dataclasses.replace(spec, psk=psk_from_flags(args.psk, args.psk_file))
        LOG.warning("the master sends --psk to workers that have no key of their own, over Locust's unencrypted "
                    "connection; give each --worker --psk-file or $%s to keep it off the network", PSK_ENVIRONMENT)
    if spec.peers < args.expect_workers:
        raise ConfigError("--expect-workers", f"more workers than --peers {spec.peers}")
    bind = parse_endpoint(args.master_bind, MASTER_PORT, "--master-bind")
    web = parse_endpoint(args.web, 8089, "--web") if args.web is not None else None
    run_master = _distributed().run_master

    signals: list[int] = []
    report = run_master(spec, args.expect_workers, bind, web=web, csv_prefix=args.csv,
                        progress_out=None if args.no_progress else sys.stderr, signals=signals)
    out.write((report_json(report) if args.json else format_report(report)) + "\n")
    if signals:
        return 128 + signals[0]
    return 0 if report.established == spec.peers else 1


def _worker(args: argparse.Namespace) -> int:
    """``--worker``: Locust's worker runner with this machine's key or certificate."""
    if args.master_host is None:
        raise ConfigError("--master-host", "a worker needs the master's ADDR[:PORT]")
    for flag, value in (("ADDR[:PORT]", args.target), ("--peers", args.peers),
                        ("--expect-workers", args.expect_workers), ("--web", args.web), ("--csv", args.csv)):
        if value is not None:
            raise ConfigError(flag, "is the master's to give: leave it out of --worker")
    master = parse_endpoint(args.master_host, MASTER_PORT, "--master-host")
    psk = psk_from_flags(args.psk, args.psk_file)   # '' : the master's, else the default
    credentials = credentials_from_flags(args.cert, args.key, args.ca)
    if args.dh_threads < 0:
        raise ConfigError("--dh-threads", "must be 0 or more")
    # the generator's process first, while this interpreter is still free of gevent's patching
    generator, conn = worker_process.start(psk, credentials, local_port=args.local_port,
                                           dh_threads=args.dh_threads)
    try:
        run_worker = _distributed().run_worker
    except ConfigError:
        generator.kill()
        raise
    return int(run_worker(master, generator, conn))


def _distributed() -> Any:
    """``ikecore.loadtest.distributed``, imported only now: importing Locust monkey-patches
    the process with gevent, which only the master and worker processes want."""
    try:
        import ikecore.loadtest.distributed as distributed
    except ImportError as exc:
        raise ConfigError("--master/--worker", f"need Locust ({exc.name} is missing): "
                          "pip install 'ikecore[locust]'") from None
    return distributed

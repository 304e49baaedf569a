"""Load generator: peers, schedules, fault injection and reports, in memory and over UDP.

The truth is the responder engine on the other side of the link (what it established,
which peers it saw, which authentications it refused) and the schedule's arithmetic;
the UDP test runs the real ``ikecore serve`` and ``ikecore loadtest`` commands.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time

import pytest

from ikecore import events as ev
from ikecore.cli.main import main
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.loadtest import Faults, LoadSpec, LoadTest, PeerState, peer_address, run_in_memory, run_udp
from ikecore.loadtest.runners import check_peer_addresses
from ikecore.monitor import listing
from ikecore.sa import Phase1State

from helpers import make_config, seeded_random

TARGET = ("127.0.0.1", 500)


class Recording(Engine):
    """A responder engine that keeps every event it emits."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[ev.Event] = []

    def next_event(self) -> ev.Event | None:
        event = super().next_event()
        if event is not None:
            self.seen.append(event)
        return event

    def count(self, kind: type) -> int:
        return sum(1 for e in self.seen if isinstance(e, kind))


def _run(peers: int, seed: int = 3, **kwargs: object) -> tuple[LoadTest, Recording, object]:
    spec = LoadSpec(target=TARGET, peers=peers, psk="secret", seed=seed, **kwargs)  # type: ignore[arg-type]
    load = LoadTest(spec, random_bytes=seeded_random(seed))
    responder = Recording(make_config(psk="secret"), random=seeded_random(seed + 100))
    report, _now = run_in_memory(load, responder)
    return load, responder, report


def test_peer_addresses_are_distinct_loopback_and_skip_network_and_broadcast() -> None:
    assert peer_address("127.1.0.1", 0) == "127.1.0.1"
    assert peer_address("127.1.0.1", 253) == "127.1.0.254"
    assert peer_address("127.1.0.1", 254) == "127.1.1.1"
    assert peer_address("127.1.0.200", 100) == "127.1.1.46"  # 54 steps to .254, one to 1.1, 45 more
    addresses = [peer_address("127.1.0.1", i) for i in range(10_000)]
    assert len(set(addresses)) == 10_000
    assert all(ipaddress.ip_address(a).is_loopback and a.split(".")[3] not in ("0", "255") for a in addresses)
    with pytest.raises(ConfigError):
        peer_address("127.255.255.1", 600)
    with pytest.raises(ConfigError):
        check_peer_addresses(LoadSpec(target=TARGET, peers=10, psk="x", first_address="192.0.2.1"))  # TEST-NET-1
    with pytest.raises(ConfigError):
        LoadSpec(target=TARGET, peers=10, psk="x", rate=5, concurrency=5)
    with pytest.raises(ConfigError):
        Faults(drop=1.5)


def test_every_peer_establishes_main_and_quick_mode_with_its_own_address_and_identity() -> None:
    load, responder, report = _run(60, concurrency=16)
    assert (report.established, report.failed, report.unfinished) == (60, 0, 0)
    assert report.quick_modes == 60 and report.retransmissions == 0
    sas = [sa for sa in responder.sas() if sa.state is Phase1State.ESTABLISHED]
    assert len(sas) == 60
    peers = {sa.remote[0] for sa in sas}
    assert peers == {peer_address("127.1.0.1", i) for i in range(60)}
    ids = {listing.main_mode_row(sa, 0)["peer_id"] for sa in sas}
    assert ids == peers  # each peer's identity is its own address
    assert sum(len(sa.ipsec_sas) for sa in sas) == 60
    assert responder.count(ev.Phase2Established) == 60
    as_json = report.as_dict()
    for key in ("established", "failed", "sas_per_second", "latency_ms", "failures", "retransmissions"):
        assert key in as_json
    assert set(as_json["latency_ms"]["main_mode"]) == {"count", "p50", "p90", "p99", "max"}


def test_main_mode_only_and_several_quick_modes_per_peer() -> None:
    _load, responder, report = _run(10, quick_modes=0, concurrency=4)
    assert report.established == 10 and report.quick_modes == 0
    assert responder.count(ev.Phase2Established) == 0
    _load, responder, report = _run(10, quick_modes=3, concurrency=4)
    assert report.established == 10 and report.quick_modes == 30
    assert responder.count(ev.Phase2Established) == 30


def test_dropped_duplicated_and_delayed_datagrams_are_recovered_by_retransmission() -> None:
    faults = Faults(drop=0.15, duplicate=0.1, delay=0.1, delay_seconds=0.3)
    # 15% loss each way loses a request or its answer 28% of the time: 8 retransmissions
    # (with backoff) leave a failure chance of 0.28^9 per message pair.
    load, responder, report = _run(40, seed=7, concurrency=10, faults=faults, retransmit_tries=8,
                                   timeout=900.0, max_seconds=3600.0)
    assert report.failed == 0 and report.established == 40
    assert report.faults["dropped"] > 0 and report.faults["duplicated"] > 0 and report.faults["delayed"] > 0
    assert report.retransmissions > 0
    assert responder.count(ev.DuplicateReceived) > 0  # the gateway saw repeats and answered them
    assert report.latency_ms["main_mode"]["max"] >= 300  # a delayed datagram or a retransmission shows


def test_wrong_psk_share_fails_with_the_gateways_authentication_failed() -> None:
    load, responder, report = _run(40, seed=11, concurrency=10, faults=Faults(wrong_psk=0.25))
    wrong = {p.address for p in load.peers if p.wrong_psk}
    assert len(wrong) == 10 and report.wrong_psk_peers == 10
    assert report.established == 30 and report.failed == 10
    assert report.failures == {"AUTHENTICATION-FAILED": 10}
    refused = {e.remote[0] for e in responder.seen if isinstance(e, ev.AuthenticationFailed)}
    assert refused == wrong
    assert all(p.state is PeerState.FAILED for p in load.peers if p.wrong_psk)


def test_corrupted_datagrams_never_escape_and_every_peer_ends() -> None:
    load, responder, report = _run(40, seed=5, concurrency=10, faults=Faults(corrupt=0.1))
    assert report.faults["corrupted"] > 0
    assert report.established + report.failed == 40 and report.unfinished == 0
    assert report.established > 20
    assert responder.count(ev.InvalidPacketReceived) + report.failed > 0


def test_closed_loop_keeps_concurrency_and_times_out_a_silent_gateway() -> None:
    spec = LoadSpec(target=TARGET, peers=12, psk="secret", concurrency=5, timeout=10.0, retransmit_tries=2)
    load = LoadTest(spec, random_bytes=seeded_random(1))
    load.start(0.0)
    assert load.started == 5 and load.in_flight == 5
    sent = load.datagrams_to_send()
    assert len(sent) == 5 and {d[2][0] for d in sent} == {peer_address("127.1.0.1", i) for i in range(5)}
    now = 0.0
    for _ in range(200):  # nobody answers: only timers move things
        deadline = load.get_timer()
        if load.finished or deadline is None:
            break
        now = deadline
        load.handle_timer(now)
        assert load.in_flight <= 5
        load.datagrams_to_send()
    assert load.finished and load.failed == 12
    report = load.report(now)
    assert report.failures == {"timeout": 12}


def test_open_loop_rate_ramp_and_duration() -> None:
    spec = LoadSpec(target=TARGET, peers=100, psk="secret", rate=10.0, duration=2.05)
    load = LoadTest(spec, random_bytes=seeded_random(2))
    responder = Engine(make_config(psk="secret"), random=seeded_random(3))
    report, _now = run_in_memory(load, responder, now=0.0)
    starts = [p.started for p in load.peers if p.state is not PeerState.WAITING]
    assert len(starts) == 21  # t = 0.0, 0.1, ... 2.0
    assert starts == pytest.approx([i / 10 for i in range(21)])
    assert report.established == 21
    ramp = LoadSpec(target=TARGET, peers=100, psk="secret", rate=10.0, ramp=2.0, duration=3.0)
    load = LoadTest(ramp, random_bytes=seeded_random(4))
    run_in_memory(load, Engine(make_config(psk="secret"), random=seeded_random(5)), now=0.0)
    starts = [p.started for p in load.peers if p.state is not PeerState.WAITING]
    # allowed(t) = 10 t^2 / 4 during the ramp, then 10 + 10 (t - 2): 21 starts by t = 3
    assert len(starts) == 21
    assert starts[:4] == pytest.approx([0.0, (4 / 10) ** 0.5, (8 / 10) ** 0.5, (12 / 10) ** 0.5])


def test_keypair_reserve_hands_out_valid_distinct_pairs() -> None:
    with DhPool(2) as pool:
        reserve = KeypairReserve(pool, depth=4)
        first = reserve(14)
        time.sleep(0.2)  # the pool fills the reserve meanwhile
        pairs = [first] + [reserve(14) for _ in range(6)]
        assert reserve.hits >= 1 and reserve.misses >= 1
        assert len({p.public for p in pairs}) == 7
        a, b = pairs[1], pairs[2]
        assert a.exchange(b.public) == b.exchange(a.public)
        with pytest.raises(ValueError):
            reserve(99)


def test_loadtest_command_against_a_real_gateway_over_udp(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                                "--psk", "udp-secret", "--quiet", "--duration", "60"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert gateway.stderr is not None
        assert "listening" in gateway.stderr.readline()
        code = main(["loadtest", f"127.0.0.1:{port}", "--peers", "40", "--psk", "udp-secret",
                     "--concurrency", "8", "--wrong-psk", "0.1", "--seed", "9", "--json", "--max-seconds", "60"])
        result = json.loads(capsys.readouterr().out)
        assert code == 1  # four peers were told to use a wrong key
        assert result["established"] == 36 and result["failed"] == 4
        assert result["failures"] == {"AUTHENTICATION-FAILED": 4}
        assert result["sas_per_second"] > 0 and result["latency_ms"]["total"]["count"] == 36
    finally:
        gateway.terminate()
        gateway.wait(10)


def test_gateway_flag_identity_is_what_the_peers_see() -> None:
    """``serve --my-id`` (charon's load tester checks IDir against its responder_id)."""
    spec = LoadSpec(target=TARGET, peers=3, psk="secret", concurrency=3)
    load = LoadTest(spec, random_bytes=seeded_random(8))
    responder = Engine(make_config(psk="secret", my_id="responder.lt.test"), random=seeded_random(9))
    report, _now = run_in_memory(load, responder)
    assert report.established == 3
    assert {listing.main_mode_row(sa, 0)["peer_id"] for sa in load.right.sas()} == {"responder.lt.test"}
    assert {listing.main_mode_row(sa, 0)["my_id"] for sa in responder.sas()} == {"responder.lt.test"}


@pytest.mark.interop("charon")
def test_load_generator_against_a_charon_responder() -> None:
    """60 simulated peers (each its own 127.x address and identity) against real charon,
    6 of them with a wrong key: charon must hold exactly the 54 others, each with its
    CHILD_SA, and none of the 6."""
    from interop import charon

    port, natt_port = charon.free_udp_ports(2)
    extra = "  dos_protection = no\n"
    with charon.Charon.start(addr="127.0.0.1", port=port, natt_port=natt_port, psk="lt-charon-psk",
                             kernel="fake", log_level=1, extra_conf=extra) as peer:
        spec = LoadSpec(target=("127.0.0.1", port), peers=60, psk="lt-charon-psk", concurrency=20, seed=4,
                        first_address="127.3.0.1", faults=Faults(wrong_psk=0.1), max_seconds=60, timeout=6.0)
        load = LoadTest(spec)
        report = run_udp(load)
        assert report.established == 54 and report.failed == 6 and report.unfinished == 0
        # charon drops a message 5 it cannot decrypt without a Notify: the peers time out
        assert report.failures == {"timeout": 6}
        wrong = {p.address for p in load.peers if p.wrong_psk}

        def with_children() -> list[dict[str, object]]:
            rows = [s for s in peer.list_sas() if s.get("state") == "ESTABLISHED" and s.get("child-sas")]
            return rows if len(rows) >= 54 else []

        established = peer.wait_for(with_children, 20)
        assert len(established) == 54
        assert {s["remote-host"] for s in established} == {p.address for p in load.peers} - wrong
        assert {s["remote-id"] for s in established} == {s["remote-host"] for s in established}


def test_established_sas_keep_only_what_later_exchanges_need() -> None:
    """Memory per held SA: DH values, nonces, SAi_b, SKEYID and SKEYID_e are dropped once
    Main Mode ends, and a later Quick Mode and Delete still work with what is left."""
    load, responder, report = _run(4, quick_modes=0, concurrency=4)
    assert report.established == 4
    for sa in responder.sas() + load.right.sas():
        assert (sa.dh, sa.g_xi, sa.g_xr, sa.nonce_i, sa.nonce_r, sa.sa_b, sa.first_message) == (
            None, b"", b"", b"", b"", b"", b"")
        assert sa.skeyid.skeyid == b"" and sa.skeyid.skeyid_e == b"" and len(sa.skeyid.skeyid_d) == 32
    assert all(sa.last_received for sa in responder.sas())  # MM5 kept: a repeat gets MM6 again
    responder.handle_timer(1000.0 + 31.0)  # past the negotiation timeout (30 s)
    assert all(sa.last_received == sa.last_sent == b"" for sa in responder.sas())
    engine = load.right
    handle = engine.sas()[0].handle
    engine.initiate_quick_mode(handle, 2000.0)
    for _ in range(4):
        for data, remote, local in engine.datagrams_to_send():
            responder.receive_datagram(data, local, remote, 2000.0)
        for data, remote, local in responder.datagrams_to_send():
            engine.receive_datagram(data, local, remote, 2000.0)
    while responder.next_event() is not None:
        pass
    assert responder.count(ev.Phase2Established) == 1
    assert len(engine.sa(handle).ipsec_sas) == 1
    engine.delete(handle, 2001.0)
    for data, remote, local in engine.datagrams_to_send():
        responder.receive_datagram(data, local, remote, 2001.0)
    assert len(responder.sas()) == 3
    # the (local, peer) address index follows the SAs: nothing left behind
    assert sorted(h for hs in responder._pairs.values() for h in hs) == sorted(sa.handle for sa in responder.sas())
    assert sorted(h for hs in engine._pairs.values() for h in hs) == sorted(sa.handle for sa in engine.sas())


def _handshake(initiator: Engine, responder: Engine, local: tuple[str, int], now: float) -> int:
    handle = initiator.initiate(("127.0.0.1", 500), local=local, now=now, quick_mode=False)
    for _ in range(6):
        for data, remote, src in initiator.datagrams_to_send():
            responder.receive_datagram(data, src, remote, now)
        for data, remote, src in responder.datagrams_to_send():
            initiator.receive_datagram(data, src, remote, now)
    return handle


def test_initial_contact_from_one_address_with_many_identities_keeps_the_others() -> None:
    """charon's load tester: one address, a new identity per SA, INITIAL-CONTACT in each
    MM5. Each identity is a different peer (as strongSwan reads RFC 2407 4.6.3.3), so the
    gateway keeps them all; a real reboot (same identity again) still replaces the old SA."""
    responder = Engine(make_config(psk="secret"), random=seeded_random(20))
    local = ("127.0.0.9", 500)
    for n in range(3):
        initiator = Engine(make_config(psk="secret", my_id=f"init{n}.lt.test"), random=seeded_random(30 + n))
        _handshake(initiator, responder, local, 10.0 + n)
        assert initiator.sas()[0].initial_contact
    assert sorted(listing.main_mode_row(sa, 0)["peer_id"] for sa in responder.sas()) == [
        "init0.lt.test", "init1.lt.test", "init2.lt.test"]
    rebooted = Engine(make_config(psk="secret", my_id="init1.lt.test"), random=seeded_random(40))
    _handshake(rebooted, responder, local, 20.0)
    ids = sorted(listing.main_mode_row(sa, 0)["peer_id"] for sa in responder.sas())
    assert ids == ["init0.lt.test", "init1.lt.test", "init2.lt.test"]
    assert min(sa.started for sa in responder.sas()
               if listing.main_mode_row(sa, 0)["peer_id"] == "init1.lt.test") == 20.0


def test_rate_by_tenth_shows_a_slowdown() -> None:
    from ikecore.loadtest.report import rate_by_tenth

    steady = [0.1 * (i + 1) for i in range(100)]  # 10 SAs per second throughout
    assert rate_by_tenth(0.0, steady) == pytest.approx([10.0] * 10)
    slowing = [t if t <= 5.0 else 5.0 + 2 * (t - 5.0) for t in steady]  # half speed after 5 s
    assert rate_by_tenth(0.0, slowing) == pytest.approx([10.0] * 5 + [5.0] * 5)
    assert rate_by_tenth(0.0, steady[:9]) == []


@pytest.mark.stress
def test_gateway_workers_and_generator_workers_share_the_load(capsys: pytest.CaptureFixture[str]) -> None:
    """``serve --workers 2`` (SO_REUSEPORT) and ``loadtest --workers 2`` (forked generators,
    one merged report): every peer establishes exactly once across the gateway workers."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                                "--psk", "w-secret", "--workers", "2", "--duration", "60", "--log-format", "json"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert gateway.stderr is not None
        listening = 0
        for _ in range(20):  # the parent's one line, once the workers are up (others may come first)
            listening += "listening" in gateway.stderr.readline()
            if listening == 1:
                break
        assert listening == 1
        code = main(["loadtest", f"127.0.0.1:{port}", "--peers", "60", "--psk", "w-secret", "--workers", "2",
                     "--concurrency", "10", "--json", "--no-progress", "--first-address", "127.4.0.1"])
        result = json.loads(capsys.readouterr().out)
        assert code == 0 and result["established"] == 60 and result["failed"] == 0
        assert result["latency_ms"]["total"]["count"] == 60 and len(result["rate_by_tenth"]) == 10
        time.sleep(0.5)
        gateway.terminate()
        _out, err = gateway.communicate(timeout=30)
        # the workers logged one Phase1Established per peer between them, each peer once
        established = [r for r in (json.loads(line) for line in err.splitlines() if line.startswith("{"))
                       if r.get("event") == "phase1_established"]
        remotes = [r["remote"].rsplit(":", 1)[0] for r in established]
        assert len(established) == 60 and len(set(remotes)) == 60, (
            sorted(r for r in remotes if remotes.count(r) > 1), err[-3000:])
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)


def test_gateway_workers_report_an_unusable_control_socket() -> None:
    assert main(["serve", "--psk", "x", "--workers", "2", "--listen", "127.0.0.1:0", "--control",
                 "/nonexistent/c.sock"]) == 2


def test_peers_authenticate_with_certificates_and_the_gateway_validates_them(tmp_path: object) -> None:
    """``loadtest --cert/--key/--ca``: RSA signatures both ways, validated against the CA."""
    from ikecore.credentials import Credentials, credentials_from_flags

    from pki import issue, make_ca

    ca = make_ca()
    other_ca = make_ca("someone else's CA")
    gateway = issue(ca, "gateway.lt.test", dns=("gateway.lt.test",))
    peer = issue(ca, "peer.lt.test")
    stranger = issue(other_ca, "stranger.lt.test")
    directory = tmp_path  # type: ignore[assignment]
    peer_cert, peer_key = peer.write(directory, "peer")  # type: ignore[arg-type]
    ca_file, _ = ca.write(directory, "ca")  # type: ignore[arg-type]
    peer_credentials = credentials_from_flags(peer_cert, peer_key, [ca_file])
    assert peer_credentials is not None
    gateway_credentials = Credentials(gateway.certificate, gateway.key, (ca.certificate,))

    def run(credentials: Credentials) -> tuple[object, Engine]:
        spec = LoadSpec(target=TARGET, peers=6, psk="unused", concurrency=3, credentials=credentials)
        load = LoadTest(spec, random_bytes=seeded_random(21))
        responder = Engine(make_config(psk="", credentials=gateway_credentials), random=seeded_random(22))
        report, _now = run_in_memory(load, responder)
        return report, responder

    report, responder = run(peer_credentials)
    assert report.established == 6 and report.failed == 0  # type: ignore[attr-defined]
    rows = listing.main_mode_rows(responder.sas(), 0)
    assert len({row["peer"] for row in rows}) == 6  # each peer from its own address
    assert {row["authentication"] for row in rows} == {"RSA signature"}
    assert all("peer.lt.test" in row["peer_id"] for row in rows)
    # a certificate from a CA the gateway does not trust is refused
    report, responder = run(Credentials(stranger.certificate, stranger.key, (ca.certificate,)))
    assert report.established == 0 and report.failed == 6  # type: ignore[attr-defined]
    assert not responder.sas() or all(listing.main_mode_row(sa, 0)["state"] != "ESTABLISHED" for sa in responder.sas())
    with pytest.raises(ConfigError, match="--cert, --key and --ca go together"):
        credentials_from_flags(peer_cert, None, None)
    with pytest.raises(ConfigError, match="--wrong-psk"):
        LoadSpec(target=TARGET, peers=1, psk="x", credentials=peer_credentials, faults=Faults(wrong_psk=0.5))


def test_loadtest_command_with_certificates_against_a_real_gateway(tmp_path: object,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``serve --cert`` and ``loadtest --cert`` over UDP: every peer signs, the gateway validates."""
    import socket

    from pki import issue, make_ca

    ca = make_ca()
    gw_cert, gw_key = issue(ca, "gateway.lt.test").write(tmp_path, "gw")  # type: ignore[arg-type]
    peer_cert, peer_key = issue(ca, "peer.lt.test").write(tmp_path, "peer")  # type: ignore[arg-type]
    ca_file, _ = ca.write(tmp_path, "ca")  # type: ignore[arg-type]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                                "--cert", gw_cert, "--key", gw_key, "--ca", ca_file, "--quiet", "--duration", "60"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert gateway.stderr is not None
        assert "listening" in gateway.stderr.readline()
        code = main(["loadtest", f"127.0.0.1:{port}", "--peers", "20", "--cert", peer_cert, "--key", peer_key,
                     "--ca", ca_file, "--concurrency", "5", "--json", "--max-seconds", "60", "--no-progress"])
        result = json.loads(capsys.readouterr().out)
        assert code == 0 and result["established"] == 20 and result["failed"] == 0
    finally:
        gateway.terminate()
        gateway.wait(10)


def test_a_stop_delivered_twice_is_one_stop_and_a_later_one_raises() -> None:
    """``timeout`` signals its child, then the child's group: one stop, one partial report.
    A user's second Ctrl-C, later, still ends the run at once."""
    import os
    import signal

    from ikecore.loadtest.runners import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop() and stop.received == [signal.SIGINT]
        stop._first_at -= StopSignals.REPEAT_SECONDS  # as if the first came a while ago
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs between bytecodes

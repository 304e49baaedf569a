"""RSA signature authentication with X.509 (RFC 2409 section 5.1), in memory."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding

from ikecore import wire
from ikecore.credentials import Credentials
from ikecore.protocol import auth
from ikecore import events as ev
from ikecore.config import config_from_dict
from ikecore.errors import AuthenticationFailed, ConfigError
from ikecore.monitor.hostinfo import HostConfig
from ikecore.monitor import listing
from ikecore.monitor.counters import Monitor
from ikecore.monitor.views import Views
from ikecore.sa import Phase1State
from helpers import Link
from pki import NOW, Issued, issue, make_ca


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def peers(ca: Issued) -> dict[str, Issued]:
    return {
        "initiator": issue(ca, "initiator.test", dns=("initiator.test",), emails=("ike@initiator.test",),
                           addresses=("127.0.0.2",)),
        "responder": issue(ca, "responder.test", dns=("responder.test",), addresses=("127.0.0.1",)),
    }


def cert_config(tmp_path: Path, who: Issued, stem: str, cas: list[Issued], **filter_keys: Any) -> Any:
    cert, key = who.write(tmp_path, stem)
    ca_paths = [anchor.write(tmp_path, f"{stem}-ca{index}")[0] for index, anchor in enumerate(cas)]
    table = {"name": stem, "source": "me", "destination": "any", "certificate": cert, "private_key": key,
             "ca": ca_paths, **filter_keys}
    return config_from_dict({"ike_policy": {"default": {"proposals": "aes128-sha256-modp2048"}},
                             "esp_policy": {"default": {"proposals": "aes128-sha256"}},
                             "timing": {"retransmit_timeout": 1.0, "retransmit_tries": 3,
                                        "negotiation_timeout": 30.0},
                             "filter": [table]})


def cert_link(tmp_path: Path, ca: Issued, initiator: Issued, responder: Issued, *,
              initiator_keys: dict[str, Any] | None = None, responder_keys: dict[str, Any] | None = None,
              initiator_cas: list[Issued] | None = None) -> Link:
    return Link(cert_config(tmp_path, initiator, "initiator", initiator_cas or [ca], **(initiator_keys or {})),
                cert_config(tmp_path, responder, "responder", [ca], **(responder_keys or {})))


def test_signature_is_pkcs1_v15_without_digestinfo(peers: dict[str, Issued]) -> None:
    """Independent check with textbook RSA: s^e mod n = 00 01 FF..FF 00 || HASH."""
    key = peers["initiator"].key
    digest = bytes(range(32))
    signature = auth.sign(key, digest)
    numbers = key.public_key().public_numbers()
    size = (numbers.n.bit_length() + 7) // 8
    block = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(size, "big")
    assert block == b"\x00\x01" + b"\xff" * (size - 3 - len(digest)) + b"\x00" + digest
    auth.verify_signature(peers["initiator"].certificate, digest, signature)
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(peers["responder"].certificate, digest, signature)
    # A DigestInfo signature (what a naive implementation makes) must not pass.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    with_info = key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    with pytest.raises(AuthenticationFailed):
        auth.verify_signature(peers["initiator"].certificate, digest, with_info)


def test_main_mode_and_quick_mode_with_certificates(tmp_path: Path, ca: Issued, peers: dict[str, Issued]) -> None:
    link = cert_link(tmp_path, ca, peers["initiator"], peers["responder"])
    handle = link.connect()
    assert len(link.of("initiator", ev.Phase1Established)) == 1
    assert len(link.of("responder", ev.Phase2Established)) == 1
    sa = link.initiator.sa(handle)
    assert sa is not None and sa.state is Phase1State.ESTABLISHED
    row = listing.main_mode_row(link.initiator.sas()[0], link.now)
    assert row["authentication"] == "RSA signature"
    assert row["peer_id"] == "CN=responder.test,O=ikecore test,C=CH"
    assert row["my_id"] == "CN=initiator.test,O=ikecore test,C=CH"
    assert sa.peer_id.id_type == wire.IdType.DER_ASN1_DN
    assert sa.peer_id.data == peers["responder"].certificate.subject.public_bytes()
    assert sa.peer_certificate == peers["responder"].certificate
    views = Views(link.initiator, Monitor(), clock=lambda: link.now, host=HostConfig())
    assert views.query("main-mode", "security-associations", "my_id,peer_id")["rows"] == [
        {"my_id": row["my_id"], "peer_id": row["peer_id"]}]  # the view names DNs as one SA's row does
    sa.peer_id = wire.IdPayload(wire.IdType.DER_ASN1_DN, peers["initiator"].certificate.subject.public_bytes())
    hex_id = listing.main_mode_row(link.initiator.sas()[0], link.now)["peer_id"]
    assert views.query("main-mode", "security-associations", "peer_id")["rows"] == [{"peer_id": hex_id}]
    assert hex_id == sa.peer_id.data.hex()  # not the certificate's subject: hex
    sa.peer_id = wire.IdPayload(wire.IdType.DER_ASN1_DN, peers["responder"].certificate.subject.public_bytes())
    responder_sa = link.responder.sas()[0]
    assert responder_sa.peer_certificate == peers["initiator"].certificate
    # MM1 offers auth method 3; MM3 and MM4 carry a CR naming our CA by its DN.
    mm1 = wire.parse(link.sent[0][1])
    attrs = {a.type: a.int_value for a in mm1.payloads[0].proposals[0].transforms[0].attributes}
    assert attrs[wire.OakleyAttribute.AUTHENTICATION_METHOD] == wire.AuthMethod.RSA_SIG
    for side, data in link.sent[2:4]:
        crs = [p for p in wire.parse(data).payloads if p.payload_type == wire.PayloadType.CR]
        assert [(c.encoding, c.data) for c in crs] == [(4, ca.certificate.subject.public_bytes())], side


def test_fqdn_user_fqdn_and_address_ids_are_matched_against_subject_alt_names(
        tmp_path: Path, ca: Issued, peers: dict[str, Issued]) -> None:
    for local_id in ("initiator.test", "ike@initiator.test", "127.0.0.2"):
        link = cert_link(tmp_path, ca, peers["initiator"], peers["responder"],
                         initiator_keys={"local_id": local_id}, responder_keys={"remote_id": local_id})
        link.connect(quick_mode=False)
        assert len(link.of("responder", ev.Phase1Established)) == 1, local_id
        assert listing.main_mode_row(link.responder.sas()[0], link.now)["peer_id"] == local_id


def test_id_not_in_certificate_is_invalid_id_information(tmp_path: Path, ca: Issued,
                                                         peers: dict[str, Issued]) -> None:
    link = cert_link(tmp_path, ca, peers["initiator"], peers["responder"],
                     initiator_keys={"local_id": "someone.else.test"})
    link.connect(quick_mode=False)
    failed = link.of("responder", ev.Phase1Failed)
    assert failed and failed[0].notify_type == wire.NotifyType.INVALID_ID_INFORMATION
    assert not link.of("initiator", ev.Phase1Established)


def test_remote_id_as_distinguished_name(tmp_path: Path, ca: Issued, peers: dict[str, Issued]) -> None:
    good = "CN=initiator.test,O=ikecore test,C=CH"
    link = cert_link(tmp_path, ca, peers["initiator"], peers["responder"], responder_keys={"remote_id": good})
    link.connect(quick_mode=False)
    assert link.of("responder", ev.Phase1Established)
    link = cert_link(tmp_path, ca, peers["initiator"], peers["responder"],
                     responder_keys={"remote_id": "CN=responder.test,O=ikecore test,C=CH"})
    link.connect(quick_mode=False)
    assert link.of("responder", ev.Phase1Failed)[0].notify_type == wire.NotifyType.INVALID_ID_INFORMATION


@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_certificate_outside_its_validity_is_rejected(tmp_path: Path, ca: Issued, peers: dict[str, Issued],
                                                      when: str) -> None:
    if when == "expired":
        bad = issue(ca, "initiator.test", not_before=NOW - datetime.timedelta(days=3),
                    not_after=NOW - datetime.timedelta(days=1))
    else:
        bad = issue(ca, "initiator.test", not_before=NOW + datetime.timedelta(days=1),
                    not_after=NOW + datetime.timedelta(days=3))
    link = cert_link(tmp_path, ca, bad, peers["responder"])
    link.connect(quick_mode=False)
    failures = link.of("responder", ev.AuthenticationFailed)
    assert failures and "is not valid at" in failures[0].reason
    assert link.of("responder", ev.Phase1Failed)[0].notify_type == wire.NotifyType.AUTHENTICATION_FAILED
    assert not link.of("initiator", ev.Phase1Established)


def test_certificate_from_an_unknown_ca_is_rejected(tmp_path: Path, ca: Issued, peers: dict[str, Issued]) -> None:
    rogue_ca = make_ca("rogue CA")
    rogue = issue(rogue_ca, "initiator.test")
    link = cert_link(tmp_path, ca, rogue, peers["responder"], initiator_cas=[ca])
    link.connect(quick_mode=False)
    failures = link.of("responder", ev.AuthenticationFailed)
    assert failures and "no trusted CA" in failures[0].reason
    assert _failure_kinds(link) == {"certificate": 1}


def _failure_kinds(link: Link) -> dict[str, int]:
    """The responder's authentication failures by kind, as its monitor counts them."""
    monitor = Monitor()
    for event in link.events["responder"]:
        monitor.observe(event)
    return {key.partition(":")[2]: n for key, n in monitor.extended.items()
            if key.startswith("authentication_failures:")}


def test_wall_clock_decides_validity(ca: Issued, peers: dict[str, Issued]) -> None:
    cert = peers["initiator"].certificate
    assert auth.validate_chain(cert, [], [ca.certificate], NOW) == ca.certificate
    with pytest.raises(AuthenticationFailed, match="not valid"):
        auth.validate_chain(cert, [], [ca.certificate], NOW + datetime.timedelta(days=11))


def test_intermediate_ca_sent_with_the_certificate(ca: Issued) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    from pki import name

    key = rsa.generate_private_key(65537, 2048)
    intermediate_cert = (x509.CertificateBuilder().subject_name(name("intermediate")).issuer_name(
        ca.certificate.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca.key, hashes.SHA256()))
    leaf = issue(Issued(intermediate_cert, key), "leaf.test")
    assert auth.validate_chain(leaf.certificate, [intermediate_cert], [ca.certificate], NOW) == ca.certificate
    with pytest.raises(AuthenticationFailed, match="no trusted CA"):
        auth.validate_chain(leaf.certificate, [], [ca.certificate], NOW)


def test_credentials_config_errors(tmp_path: Path, ca: Issued, peers: dict[str, Issued]) -> None:
    cert, _key = peers["initiator"].write(tmp_path, "a")
    _cert, other_key = peers["responder"].write(tmp_path, "b")
    ca_path, _ = ca.write(tmp_path, "ca")
    with pytest.raises(ConfigError, match="does not belong"):
        Credentials.load(cert, other_key, [ca_path])
    with pytest.raises(ConfigError, match="go together"):
        config_from_dict({"filter": [{"certificate": cert, "ca": ca_path}]})
    credentials = Credentials.load(cert, _key, [ca_path])
    assert "PRIVATE" not in repr(credentials) and "private_key" not in repr(credentials)


@pytest.mark.parametrize("garbage", ["certificate", "signature", "no certificate"])
def test_garbage_proof_is_an_authentication_failure(tmp_path: Path, ca: Issued, peers: dict[str, Issued],
                                                    monkeypatch: pytest.MonkeyPatch, garbage: str) -> None:
    real = auth.proof_payloads

    def broken(credentials: Credentials, digest: bytes) -> list[Any]:
        cert, sig = real(credentials, digest)
        if garbage == "certificate":
            return [wire.CertPayload(4, b"\x30\x03\x02\x01\x00"), sig]
        if garbage == "signature":
            return [cert, wire.SigPayload(sig.data[:-1] + bytes([sig.data[-1] ^ 1]))]
        return [sig]

    monkeypatch.setattr(auth, "proof_payloads", broken)
    link = cert_link(tmp_path, ca, peers["initiator"], peers["responder"])
    link.connect(quick_mode=False)
    (failure,) = link.of("responder", ev.AuthenticationFailed)
    assert _failure_kinds(link) == {"signature" if garbage == "signature" else "certificate": 1}
    assert link.of("responder", ev.Phase1Failed)[0].notify_type == wire.NotifyType.AUTHENTICATION_FAILED
    assert not link.of("responder", ev.InvalidPacketReceived)  # handled, not an internal error
    assert not link.responder.sas()


def test_cli_serve_and_connect_with_certificates(tmp_path: Path, ca: Issued, peers: dict[str, Issued]) -> None:
    """`ikecore serve --cert --key --ca` and `ikecore connect --cert --key --ca` over loopback UDP."""
    import json
    import socket
    import subprocess
    import sys

    ca_path, _ = ca.write(tmp_path, "ca")
    server_cert, server_key = peers["responder"].write(tmp_path, "server")
    client_cert, client_key = peers["initiator"].write(tmp_path, "client")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                               "--cert", server_cert, "--key", server_key, "--ca", ca_path, "--duration", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert "listening on" in line, line
        done = subprocess.run([sys.executable, "-m", "ikecore", "connect", f"127.0.0.1:{port}", "--local", "127.0.0.2",
                               "--cert", client_cert, "--key", client_key, "--ca", ca_path, "--json"],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        main = result["main_mode"]
        assert main["authentication"] == "RSA signature"
        assert main["peer_id"] == "CN=responder.test,O=ikecore test,C=CH"
        assert len(result["quick_mode"]) == 1
        missing = subprocess.run([sys.executable, "-m", "ikecore", "connect", f"127.0.0.1:{port}",
                                  "--cert", client_cert], capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
        assert missing.returncode == 2 and "go together" in missing.stderr
    finally:
        server.terminate()
        server.wait(10)

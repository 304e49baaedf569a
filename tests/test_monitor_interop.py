"""The monitor's views of a gateway that negotiated with strongSwan (charon) peers and with
ikecore peers: columns, sorting and JSON keys, checked against charon's own view."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ikecore.config import Timing, config_from_flags
from ikecore.monitor.control import request
from ikecore.monitor.counters import Statistic
from interop.charon import Charon, free_udp_ports
from tests.test_control import SEED_SA_KEYS, LoopGateway, _monitor

PSK = "control-test-secret"
CHARONS = ("127.0.0.2", "127.0.0.3")


def _hex(value: object) -> str:
    return str(value).lower().removeprefix("0x")


@pytest.mark.interop("charon")
def test_views_of_a_gateway_with_charon_and_ikecore_peers(tmp_path: Path) -> None:
    (gw_port,) = free_udp_ports(1)
    config = config_from_flags(psk=PSK, ike="aes128-sha256-modp2048,aes256-sha1-modp2048", esp="aes128-sha256",
                               listen=(("127.0.0.1", gw_port),),
                               timing=Timing(retransmit_timeout=1.0, negotiation_timeout=20.0))
    path = str(tmp_path / "control.sock")
    gateway = LoopGateway(config, path)
    try:
        ports = free_udp_ports(4)
        with Charon.start(addr=CHARONS[0], port=ports[0], natt_port=ports[1], psk=PSK, remote="127.0.0.1",
                          remote_port=gw_port) as first, \
                Charon.start(addr=CHARONS[1], port=ports[2], natt_port=ports[3], psk=PSK, remote="127.0.0.1",
                             remote_port=gw_port, ike="aes256-sha1-modp2048") as second:
            for charon in (first, second):
                assert charon.initiate(timeout=20).returncode == 0
            assert all(r.ok for r in gateway.connect_peers(2))
            deadline = time.monotonic() + 10
            while gateway.monitor.counters[Statistic.IKE_QUICK_MODE] < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            theirs = {}
            for charon in (first, second):
                (sa,) = charon.established()
                theirs[_hex(sa["initiator-spi"])] = sa

            code, text = _monitor(path, "main-mode", "security-associations", "--format", "json", "--sort", "peer")
            assert code == 0
            rows = json.loads(text)
            assert [r["peer"] for r in rows] == ["127.0.0.2", "127.0.0.3", "127.0.9.1", "127.0.9.2"]
            for row in rows:
                assert set(SEED_SA_KEYS + ["initiator_cookie", "responder_cookie", "state", "role", "created",
                                           "lifetime_left", "nat", "vendor_ids", "quick_modes"]) <= set(row)
                assert row["state"] == "ESTABLISHED" and row["role"] == "responder"
                assert row["quick_modes"] == 1 and row["authentication"] == "Preshared key"
            by_cookie = {r["initiator_cookie"]: r for r in rows}
            for cookie, sa in theirs.items():
                ours = by_cookie[cookie]
                assert ours["responder_cookie"] == _hex(sa["responder-spi"])
                assert ours["peer"] == sa["local-host"] and ours["peer_id"] == sa["local-id"]
                assert ours["encryption"].upper().startswith(sa["encr-alg"].split("_")[0])
                assert ours["diffie_hellman"].upper() == sa["dh-group"].replace("_", "")
                assert {"XAUTH", "Dead Peer Detection v1.0", "RFC 3947 NAT-T"} <= set(ours["vendor_ids"])  # a JSON list
            assert by_cookie[next(iter(theirs))]["encryption"] == "aes128"

            qm = request(path, {"op": "view", "mode": "quick-mode", "view": "security-associations",
                                "all_columns": True})["rows"]
            assert len(qm) == 4
            spis = {(r["spi_in"], r["spi_out"]) for r in qm}
            for sa in theirs.values():
                (child,) = [c for c in sa["child-sas"] if c.get("state") == "INSTALLED"]
                assert (_hex(child["spi-out"]), _hex(child["spi-in"])) in spis

            code, text = _monitor(path, "main-mode", "security-associations", "--columns", "peer,encryption",
                                  "--sort", "encryption:desc")
            lines = text.splitlines()
            assert lines[0].split() == ["Peer", "Encryption"] and lines[2].split() == ["127.0.0.3", "aes256"]
            stats = json.loads(_monitor(path, "main-mode", "statistics", "--format", "json")[1])
            assert stats["ike_main_mode"] == 4 and stats["ike_quick_mode"] == 4
            assert stats["isadb_list_size"] == 4 and stats["connection_list_size"] == 4
            assert stats["key_additions"] == 4 and stats["key_updates"] == 4
            specific = request(path, {"op": "view", "mode": "main-mode", "view": "specific-filters"})["rows"]
            assert {(r["destination"], r["direction"]) for r in specific if r["source"] == "127.0.0.1"} >= {
                ("127.0.0.2", "outbound"), ("127.0.0.3", "outbound")}
    finally:
        gateway.close()

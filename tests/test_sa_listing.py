"""The SA listings: one SA's row and the views' columns equal to the SA read field by
field, JSON from Rust, slices, sorting, and no memory kept per SA."""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import tracemalloc
from typing import Any

import pytest

from ikecore import policy, wire
from ikecore.monitor import listing as sa_listing
from ikecore._core import json_rows
from ikecore.monitor.hostinfo import HostConfig
from ikecore.monitor.counters import Monitor
from ikecore.sa import Phase1State, id_to_text
from ikecore.monitor.views import Views, ViewError
from tests.helpers import RESPONDER, Link

WALL = 1_800_000_000.5


def _id_text(payload: Any, certificate: Any) -> str:
    if payload is None:
        return ""
    if (payload.id_type == wire.IdType.DER_ASN1_DN and certificate is not None
            and certificate.subject.public_bytes() == payload.data):
        return str(certificate.subject.rfc4514_string())
    return id_to_text(payload.id_type, payload.data)


def _values(sa: Any, now: float) -> dict[str, Any]:
    """One ISAKMP SA read field by field, the plain way: what ``listing.main_mode_row`` gives."""
    chosen = sa.chosen
    return {
        "me": sa.local[0],
        "my_id": _id_text(sa.my_id, getattr(sa.generic_filter.credentials, "certificate", None)),
        "peer": sa.remote[0],
        "peer_id": _id_text(sa.peer_id, sa.peer_certificate),
        "authentication": chosen.auth_method_name if chosen else "",
        "encryption": chosen.encryption_name if chosen else "",
        "integrity": chosen.hash_name if chosen else "",
        "diffie_hellman": policy.group_name(chosen.group) if chosen else "",
        "initiator_cookie": sa.initiator_cookie.hex(),
        "responder_cookie": sa.responder_cookie.hex(),
        "state": sa.state.value,
        "role": sa.role.value,
        "local_port": sa.local[1],
        "peer_port": sa.remote[1],
        "created": sa.established if sa.established is not None else sa.started,
        "lifetime_left": max(0.0, sa.expires - now) if sa.expires is not None else None,
        "quick_modes": len(sa.ipsec_sas),
        "rekeyed": sa.superseded,
        "exchange": "aggressive" if sa.aggressive else "main",
        "nat": sa.nat,
        "nat_t": sa.nat_t.name if sa.nat_t is not None else "",
        "encapsulated": sa.encapsulated,
        "dpd": sa.dpd,
        "vendor_ids": [wire.vendor_id_name(v) or v.hex() for v in sa.vendor_ids],
    }


def _quick_values(engine: Any, now: float) -> list[dict[str, Any]]:
    """Every IPsec SA pair read field by field: what ``listing.quick_mode_rows`` gives."""
    rows = []
    for sa in engine.sas():
        main = _values(sa, now)
        for ipsec in sa.ipsec_sas:
            suite = ipsec.proposal
            rows.append({
                "me": main["me"], "my_id": main["my_id"], "peer": main["peer"], "peer_id": main["peer_id"],
                "authentication": main["authentication"], "protocol": "ESP", "encryption": suite.encryption_name,
                "integrity": suite.integrity_name,
                "diffie_hellman": policy.group_name(suite.pfs_group) if suite.pfs_group else "",
                "initiator_cookie": main["initiator_cookie"], "responder_cookie": main["responder_cookie"],
                "spi_in": ipsec.spi_in.hex(), "spi_out": ipsec.spi_out.hex(), "mode": ipsec.mode,
                "local_ts": ipsec.local_ts, "remote_ts": ipsec.remote_ts, "created": ipsec.created,
                "lifetime_left": max(0.0, ipsec.expires - now), "lifetime_kilobytes": suite.lifetime_kilobytes or 0,
                "rekeyed": ipsec.superseded,
            })
    return rows


def _expected(sa: Any, now: float) -> dict[str, Any]:
    """A row as the SA read field by field gives it, in the view's formats."""
    row = _values(sa, now)
    created = WALL - (now - row["created"])
    row["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    row["lifetime_left"] = None if row["lifetime_left"] is None else int(row["lifetime_left"])
    row["worker"] = 0  # the engine's worker index (a gateway of one process)
    row["age_seconds"] = max(0, int(now - _values(sa, now)["created"]))  # whole seconds since created
    return {c: row[c] for c in sa_listing.COLUMNS}


def _mixed_link() -> Link:
    """Three established SAs, one with odd identities and vendor IDs, one still negotiating."""
    link = Link()
    for i in range(3):
        link.initiator.initiate(RESPONDER, local=(f"127.0.0.{10 + i}", 500), now=link.now)
    link.pump(rounds=100)
    link.initiator.initiate(RESPONDER, local=("127.0.0.20", 500), now=link.now)  # MM1 sent, no answer yet
    odd = link.responder.sas()[0]
    odd.peer_id = wire.IdPayload(wire.IdType.FQDN, b'peer "one"\n.example')
    odd.vendor_ids = [bytes.fromhex("afcad71368a1f1c96b8696fc77570100"), b"\x01\x02\x03"]
    odd.nat, odd.encapsulated, odd.dpd = "both", True, True
    return link


def test_rows_equal_the_sas_read_field_by_field() -> None:
    link = _mixed_link()
    link.now += 17.25
    for engine in (link.responder, link.initiator):
        assert sa_listing.main_mode_rows(engine.sas(), link.now) == [_values(sa, link.now) for sa in engine.sas()]
        assert [sa_listing.main_mode_row(sa, link.now) for sa in engine.sas()] == \
            [_values(sa, link.now) for sa in engine.sas()]
        views = Views(engine, Monitor(), clock=lambda: link.now, wall=lambda: WALL, host=HostConfig())
        expected = [_expected(sa, link.now) for sa in engine.sas()]
        assert len({r["state"] for r in expected}) >= 1 and len(expected) >= 3
        result = views.query("main-mode", "security-associations", all_columns=True)
        assert result["rows"] == expected
        assert json.loads(views.query_json("main-mode", "security-associations", all_columns=True)[1]) == expected
    states = {r["state"] for r in (_expected(sa, link.now) for sa in link.initiator.sas())}
    assert states == {"ESTABLISHED", "I_EXPECT_MM2"}  # an SA in the middle of Main Mode is listed too
    odd = _expected(link.responder.sas()[0], link.now)
    assert odd["peer_id"] == 'peer "one"\n.example' and odd["vendor_ids"] == ["Dead Peer Detection v1.0", "010203"]
    assert odd["nat"] == "both" and odd["dpd"] is True


def test_json_rows_encodes_cells_and_refuses_what_json_cannot_hold() -> None:
    keys = ["s", "i", "b", "n", "f"]
    columns = [["a\"\\\x01é", ""], [-(2**63), 7], [True, False], [None, None], [0.25, float("nan")]]
    text = b"[" + json_rows(keys, columns) + b"]"
    assert json.loads(text) == [{"s": "a\"\\\x01é", "i": -(2**63), "b": True, "n": None, "f": 0.25},
                                {"s": "", "i": 7, "b": False, "n": None, "f": None}]
    assert json_rows(keys, [[] for _ in keys]) == b""
    assert json_rows(["state", "type"], [[Phase1State.ESTABLISHED.value], [wire.IdType.FQDN]]) == \
        b'{"state":"ESTABLISHED","type":2}'  # subclasses of str and int (IntEnum) too
    assert json_rows(["t"], [[type("Text", (str,), {})("x\ty")]]) == b'{"t":"x\\ty"}'
    with pytest.raises(UnicodeEncodeError):
        json_rows(["x"], [["lone \ud800 surrogate"]])
    assert json_rows(["cookie", "spi"], [[b"\x00\x9f\xff"], [type("Raw", (bytes,), {})(b"\x01")]]) == \
        b'{"cookie":"009fff","spi":"01"}'  # bytes as bytes.hex() writes them
    with pytest.raises(TypeError, match="cannot encode list"):
        json_rows(["x"], [[[1]]])
    with pytest.raises(ValueError, match='column "y" has 1 rows'):
        json_rows(["x", "y"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="2 keys but 1 columns"):
        json_rows(["x", "y"], [[1]])
    with pytest.raises(OverflowError):
        json_rows(["x"], [[2**64]])


def _clone(link: Link, count: int) -> Views:
    """``count`` copies of the responder's established SAs (fresh handles, cookies, peers)."""
    engine = link.responder
    templates = [sa for sa in engine.sas() if sa.state.value == "ESTABLISHED"]
    for i in range(count):
        handle = 10_000 + i
        engine._sas[handle] = dataclasses.replace(
            templates[i % len(templates)], handle=handle, initiator_cookie=i.to_bytes(8, "big"),
            remote=(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 500), ipsec_sas=[], quick_modes={})
    return Views(engine, Monitor(), clock=lambda: link.now, wall=lambda: WALL, host=HostConfig())


def test_slices_join_into_the_whole_listing_and_skip_sas_deleted_meanwhile() -> None:
    link = Link()
    link.connect()
    views = _clone(link, 50)
    columns, slices = views.listing("main-mode", "security-associations", "peer,initiator_cookie",
                                     "peer:desc", slice_size=7)
    whole = views.query("main-mode", "security-associations", "peer,initiator_cookie", "peer:desc")["rows"]
    parts = []
    for part in slices:
        parts.append(part)
        if len(parts) == 9:  # 8 sorting steps (51 SAs / 7), then the first slice of rows
            gone = link.responder.sa(10_000)  # peer 10.0.0.0: in the last slice
            del link.responder._sas[gone.handle]
    assert columns == ["peer", "initiator_cookie"]
    rows = json.loads(b"[" + b",".join(p for p in parts if p) + b"]")
    assert [r["peer"] for r in whole][:3] == ["127.0.0.2", "10.0.0.49", "10.0.0.48"]  # by value: 127 > 10
    assert rows == [r for r in whole if r["initiator_cookie"] != gone.initiator_cookie.hex()]
    assert len(rows) == 50
    with pytest.raises(ViewError, match="unknown column"):
        views.listing("main-mode", "security-associations", "peer", "bogus")


def test_sorting_is_stable_and_puts_empty_values_last() -> None:
    link = Link()
    link.connect()
    views = _clone(link, 6)
    for i, sa in enumerate(link.responder.sas()):
        sa.nat_t = None
        sa.nat = ["both", "none", ""][i % 3]
    rows = views.query("main-mode", "security-associations", "nat,initiator_cookie", "nat")["rows"]
    assert [r["nat"] for r in rows] == ["both"] * 3 + ["none"] * 2 + [""] * 2
    cookies = [sa.initiator_cookie.hex() for sa in link.responder.sas()]
    both = [r["initiator_cookie"] for r in rows if r["nat"] == "both"]
    assert both == [c for c in cookies if c in both]  # ties keep the database order


def test_a_listing_keeps_no_memory_per_sa() -> None:
    """After a listing the views hold nothing per SA (a gateway of 100,000 SAs stays
    under 4 KiB per SA, bench_handshakes --long)."""
    link = Link()
    link.connect()
    views = _clone(link, 2000)
    views.query_json("main-mode", "security-associations", all_columns=True)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(2):
        data = views.query_json("main-mode", "security-associations", all_columns=True)[1]
        rows = views.query("main-mode", "security-associations", all_columns=True)["rows"]
    assert len(json.loads(data)) == len(rows) == 2001
    del data, rows
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert kept < 20 * 2001, f"{kept} bytes kept after listing 2001 SAs"


def test_quick_mode_rows_equal_the_ipsec_sas_read_field_by_field() -> None:
    link = Link()
    link.connect()
    link.initiator.initiate(RESPONDER, local=("127.0.0.30", 500), now=link.now)
    link.pump(rounds=100)
    link.now += 42.75
    for engine in (link.initiator, link.responder):
        views = Views(engine, Monitor(), clock=lambda: link.now, wall=lambda: WALL, host=HostConfig())
        rows = views.query("quick-mode", "security-associations", all_columns=True)["rows"]
        expected = _quick_values(engine, link.now)
        assert sa_listing.quick_mode_rows(engine.sas(), link.now) == expected
        assert len(rows) == len(expected) == 2
        for row, snap in zip(rows, expected):
            shown = ("created", "lifetime_left")  # as the view shows them: checked below
            assert {k: row[k] for k in snap if k in row and k not in shown} == \
                {k: v for k, v in snap.items() if k in row and k not in shown}
            assert row["lifetime_left"] == int(snap["lifetime_left"]) > 0
            ipsec = next(i for s in engine.sas() for i in s.ipsec_sas if i.spi_in.hex() == row["spi_in"])
            assert row["created"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                   time.gmtime(WALL - (link.now - ipsec.created)))

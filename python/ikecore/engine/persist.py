"""SA records to bytes and back: what the SA store keeps.

Design note
-----------
Only *established* ISAKMP SAs are persisted, with everything a restarted engine needs
to go on using them: cookies, addresses, the filter (by name; its policies and PSK come
from the configuration again), the chosen suite, SKEYID_d and SKEYID_a (SKEYID and
SKEYID_e are dropped at establishment, ``IsakmpSa.forget_negotiation``), the payload
cipher and its key, the phase 1 IV chain
(Message ID 0; the start IV of every later Message ID derives from it), the spent
Message IDs (replay protection survives a restart), IDs, vendor IDs, the NAT-T state
(variant, NAT-D outcome, floated port, marker), DPD, the remaining lifetime, and each
IPsec SA with both directions' keys (so the driver can be given them again). In-flight
Quick Modes and half-open SAs are not kept: a peer retransmits, and a half-open SA is
cheap to negotiate again.

Times are engine times (whatever clock the caller feeds); a record stores lifetimes
relative to ``now`` at the time of saving, and :func:`load_sa` rebases them on the
restarted engine's ``now`` minus the wall-clock time the store says has passed.

The encoding is JSON (bytes as hex): versioned, inspectable, no code execution on load.
The record holds keys: the store file is 0600 and may be encrypted (ikecore.gateway.store).
The engine sees the store only as a :class:`RecordStore`.

Records are JSON objects, so ``Any`` stays here for their values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from ikecore import keymat, policy, wire
from ikecore.config import Config
from ikecore.driver import IpsecSaKeys
from ikecore.errors import ConfigError
from ikecore.protocol import nat_traversal
from ikecore.sa import IpsecSa, IsakmpSa, Phase1State, Role

__all__ = ["dump_sa", "load_sa", "FORMAT", "RecordStore"]

FORMAT = 1


class RecordStore(Protocol):
    """Where the engine keeps SA records (``ikecore.gateway.store.SaStore``)."""

    def load(self) -> Iterable[tuple[int, bytes, float]]:
        """Every stored record as (handle, record, wall seconds since it was saved)."""
        ...

    def write(self, upserts: list[tuple[int, bytes]], deletes: list[int]) -> None:
        """Apply one change set atomically: records to insert or replace, handles to delete."""
        ...


def _keys(keys: IpsecSaKeys) -> dict[str, Any]:
    return {"spi": keys.spi.hex(), "protocol_id": keys.protocol_id, "source": keys.source,
            "destination": keys.destination, "encryption": keys.encryption,
            "encryption_key": keys.encryption_key.hex(), "integrity": keys.integrity,
            "integrity_key": keys.integrity_key.hex(), "mode": keys.mode, "lifetime": keys.lifetime,
            "lifetime_kilobytes": keys.lifetime_kilobytes, "local_ts": keys.local_ts,
            "remote_ts": keys.remote_ts, "udp_encapsulation": keys.udp_encapsulation}


def _unkeys(data: dict[str, Any]) -> IpsecSaKeys:
    values = dict(data)
    for name in ("spi", "encryption_key", "integrity_key"):
        values[name] = bytes.fromhex(values[name])
    return IpsecSaKeys(**values)


def dump_sa(sa: IsakmpSa, now: float) -> bytes:
    """An established ISAKMP SA and its IPsec SAs as bytes (contains keys)."""
    if sa.state is not Phase1State.ESTABLISHED or sa.chosen is None or sa.crypto is None:
        raise ValueError("only established ISAKMP SAs are persisted")
    chosen = sa.chosen
    record = {
        "format": FORMAT, "handle": sa.handle, "role": sa.role.value,
        "cookies": (sa.initiator_cookie + sa.responder_cookie).hex(),
        "local": list(sa.local), "remote": list(sa.remote), "filter": sa.generic_filter.name,
        "chosen": [chosen.encryption, chosen.key_length, chosen.hash, chosen.group, chosen.auth_method,
                   chosen.lifetime],
        "skeyid": [sa.skeyids.skeyid.hex(), sa.skeyids.skeyid_d.hex(), sa.skeyids.skeyid_a.hex(),
                   sa.skeyids.skeyid_e.hex()],
        "crypto": [sa.cipher.export_state()[0], sa.cipher.export_state()[1].hex(), sa.cipher.iv(0).hex()],
        "sa_b": sa.sa_b.hex(),
        "spent": list(sa.spent_message_ids),
        "my_id": [sa.my_id.id_type, sa.my_id.data.hex()] if sa.my_id else None,
        "peer_id": [sa.peer_id.id_type, sa.peer_id.data.hex()] if sa.peer_id else None,
        "vendor_ids": [v.hex() for v in sa.vendor_ids],
        "marker": sa.non_esp_marker,
        "aggressive": sa.aggressive,
        "nat_t": sa.nat_t.name if sa.nat_t is not None else None,
        "nat": sa.nat, "encapsulated": sa.encapsulated, "natt_port": sa.natt_port,
        "dpd": sa.dpd, "dpd_sequence": sa.dpd_sequence, "superseded": sa.superseded,
        "age": now - (sa.established if sa.established is not None else sa.started),
        "left": (sa.expires - now) if sa.expires is not None else None,
        "ipsec": [{
            "message_id": i.message_id, "spi_in": i.spi_in.hex(), "spi_out": i.spi_out.hex(),
            "proposal": [i.proposal.transform_id, i.proposal.key_length, i.proposal.auth_algorithm,
                         i.proposal.pfs_group, i.proposal.lifetime, i.proposal.lifetime_kilobytes],
            "mode": i.mode, "local_ts": i.local_ts, "remote_ts": i.remote_ts,
            "age": now - i.created, "left": i.expires - now, "started_age": now - i.started,
            "initiated": i.initiated, "rekey_of": i.rekey_of.hex() if i.rekey_of else None,
            "tiebreak": i.tiebreak.hex(), "superseded": i.superseded,
            "keys": [_keys(k) for k in i.keys],
        } for i in sa.ipsec_sas],
    }
    return json.dumps(record, separators=(",", ":")).encode()


def load_sa(data: bytes, config: Config, now: float, elapsed: float = 0.0) -> IsakmpSa:
    """Rebuild an ISAKMP SA saved by :func:`dump_sa`; ``elapsed``: wall seconds since.

    Raises:
        ValueError: not a record of this format.
        ConfigError: its filter is no longer configured.
    """
    record = json.loads(data)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("not an ikecore SA record of a known format")
    flt = next((f for f in config.filters if f.name == record["filter"]), None)
    if flt is None:
        raise ConfigError("filter", f"stored SA uses filter {record['filter']!r}, which is not configured")
    cookies = bytes.fromhex(record["cookies"])
    now_base = now - elapsed
    sa = IsakmpSa(record["handle"], Role(record["role"]), Phase1State.ESTABLISHED, cookies[:8], cookies[8:],
                  tuple(record["local"]), tuple(record["remote"]), flt,
                  config.ike_policies[flt.ike_policy], config.esp_policies[flt.esp_policy], now_base - record["age"])
    encryption, key_length, hash_id, group, auth_method, lifetime = record["chosen"]
    sa.chosen = policy.IkeProposal(encryption, key_length, hash_id, group, auth_method, lifetime)
    sa.skeyid = keymat.Skeyid(*(bytes.fromhex(k) for k in record["skeyid"]))
    cipher_name, key, iv0 = record["crypto"]
    sa.crypto = keymat.CryptoState(cipher_name, bytes.fromhex(key), sa.chosen.prf_hash, bytes.fromhex(iv0))
    sa.sa_b = bytes.fromhex(record["sa_b"])
    sa.spent_message_ids = dict.fromkeys(int(m) for m in record["spent"])
    if record["my_id"]:
        sa.my_id = wire.IdPayload(record["my_id"][0], bytes.fromhex(record["my_id"][1]))
    if record["peer_id"]:
        sa.peer_id = wire.IdPayload(record["peer_id"][0], bytes.fromhex(record["peer_id"][1]))
    sa.vendor_ids = [bytes.fromhex(v) for v in record["vendor_ids"]]
    sa.non_esp_marker = bool(record["marker"])
    sa.aggressive = bool(record.get("aggressive", False))
    sa.nat_t = next((v for v in nat_traversal.VARIANTS if v.name == record.get("nat_t")), None)
    sa.nat = record.get("nat", "none")
    sa.encapsulated = bool(record.get("encapsulated", False))
    sa.natt_port = int(record.get("natt_port", nat_traversal.NAT_T_PORT))
    sa.dpd = bool(record.get("dpd", False))
    sa.dpd_sequence = int(record.get("dpd_sequence", 0))
    sa.last_heard = now
    sa.superseded = bool(record.get("superseded", False))
    sa.established = now_base - record["age"]
    sa.expires = now_base + record["left"] if record["left"] is not None else None
    for item in record["ipsec"]:
        proposal = policy.EspProposal(*item["proposal"])
        ipsec = IpsecSa(sa.handle, item["message_id"], bytes.fromhex(item["spi_in"]),
                        bytes.fromhex(item["spi_out"]), proposal, item["mode"], item["local_ts"],
                        item["remote_ts"], now_base - item["age"], now_base + item["left"])
        ipsec.keys = tuple(_unkeys(k) for k in item["keys"])
        ipsec.started = now_base - item.get("started_age", item["age"])
        ipsec.initiated = bool(item.get("initiated", False))
        ipsec.rekey_of = bytes.fromhex(item["rekey_of"]) if item.get("rekey_of") else None
        ipsec.tiebreak = bytes.fromhex(item.get("tiebreak", ""))
        ipsec.superseded = bool(item.get("superseded", False))
        sa.ipsec_sas.append(ipsec)
    return sa

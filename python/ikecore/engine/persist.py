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

Rows, not documents: an ISAKMP SA is three kinds of rows, all keyed by its cookie pair
(CKY-I | CKY-R, which never changes and is unique across the worker processes of a
gateway; engine handles are neither):

* the ISAKMP SA record (:func:`dump_isakmp`), rewritten only when one of its own
  fields that can change after establishment changes (:func:`fingerprint`: endpoint,
  NAT-T, DPD sequence, superseded);
* one record per IPsec SA (:func:`dump_ipsec`), keyed by (cookies, SPI in): inserted
  when installed, rewritten when superseded or adopted, deleted when gone;
* one row per spent Message ID (no secret: Message IDs travel in clear).

So 2,000 Quick Modes on one ISAKMP SA write 2,000 small rows, never 2,000 copies of a
growing document. The engine marks what may have changed as it goes (handles, SPIs,
Message IDs); its :class:`Journal` turns the marks into a :class:`ChangeSet` against what
the store holds, and the store applies one in one transaction. ``load`` gives each
ISAKMP SA back as a :class:`StoredSa` with its rows.

Times are engine times (whatever clock the caller feeds); a record stores lifetimes
relative to ``now`` at the time of saving, and :func:`load_sa` rebases each row on the
restarted engine's ``now`` minus the wall-clock time the store says has passed since that
row was saved.

The encoding is JSON (bytes as hex): versioned, inspectable, no code execution on load.
Records hold keys: the store file is 0600 and may be encrypted (ikecore.gateway.store).
The engine sees the store only as a :class:`RecordStore`. Format 1 (one document per
ISAKMP SA with its IPsec SAs and spent Message IDs inside, rows keyed by handle) is read
only to migrate it (:func:`split_v1`).

Records are JSON objects, so ``Any`` stays here for their values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ikecore import keymat, policy, wire
from ikecore.config import Config
from ikecore.driver import IpsecSaKeys
from ikecore.errors import ConfigError
from ikecore.protocol import nat_traversal
from ikecore.sa import IpsecSa, IsakmpSa, OrderedIds, Phase1State, Role

__all__ = ["dump_isakmp", "dump_ipsec", "load_sa", "fingerprint", "split_v1", "FORMAT", "RecordStore", "Journal",
           "StoredSa", "StoredIpsec", "ChangeSet"]

FORMAT = 2


@dataclass(frozen=True, slots=True)
class StoredIpsec:
    """One stored IPsec SA row: its record (None when it cannot be opened: ``error``)."""

    spi_in: bytes
    record: bytes | None
    elapsed: float          # wall seconds since the row was saved
    error: str = ""


@dataclass(slots=True)
class StoredSa:
    """One stored ISAKMP SA with its rows; ``record`` None when it cannot be opened (``error``)."""

    cookies: bytes          # CKY-I | CKY-R
    record: bytes | None
    elapsed: float          # wall seconds since the ISAKMP SA record was saved
    ipsec: list[StoredIpsec] = field(default_factory=list)
    spent: list[int] = field(default_factory=list)  # spent Message IDs, oldest first
    error: str = ""


@dataclass(slots=True)
class ChangeSet:
    """What to write in one transaction; every row is named by its ISAKMP SA's cookies."""

    isakmp: dict[bytes, bytes] = field(default_factory=dict)               # insert or replace
    ipsec: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)  # (cookies, SPI in)
    spent: list[tuple[bytes, int]] = field(default_factory=list)           # (cookies, Message ID)
    deleted: list[bytes] = field(default_factory=list)       # ISAKMP SAs gone, with all their rows
    ipsec_deleted: list[tuple[bytes, bytes]] = field(default_factory=list)
    spent_deleted: list[tuple[bytes, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.isakmp or self.ipsec or self.spent or self.deleted or self.ipsec_deleted
                    or self.spent_deleted)

    def __len__(self) -> int:
        return (len(self.isakmp) + len(self.ipsec) + len(self.spent) + len(self.deleted) + len(self.ipsec_deleted)
                + len(self.spent_deleted))


class RecordStore(Protocol):
    """Where the engine keeps SA records (``ikecore.gateway.store.SaStore``)."""

    def load(self) -> Iterable[StoredSa]:
        """Every stored ISAKMP SA (of this worker's shard) with its rows."""
        ...

    def write(self, changes: ChangeSet) -> None:
        """Apply one change set atomically (deletes first, then inserts); raise on failure."""
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


def fingerprint(sa: IsakmpSa) -> tuple[Any, ...]:
    """The fields of an established ISAKMP SA's record that can still change: the record
    is written again when this tuple differs from the one last written."""
    return (sa.local, sa.remote, sa.non_esp_marker, sa.encapsulated, sa.nat, sa.natt_port,
            sa.nat_t.name if sa.nat_t is not None else None, sa.dpd, sa.dpd_sequence, sa.superseded, sa.expires)


def dump_isakmp(sa: IsakmpSa, now: float) -> bytes:
    """An established ISAKMP SA's own record (no IPsec SAs, no spent Message IDs; contains keys)."""
    if sa.state is not Phase1State.ESTABLISHED or sa.chosen is None or sa.crypto is None:
        raise ValueError("only established ISAKMP SAs are persisted")
    chosen = sa.chosen
    state = sa.cipher.export_state()
    record = {
        "format": FORMAT, "handle": sa.handle, "role": sa.role.value,
        "cookies": (sa.initiator_cookie + sa.responder_cookie).hex(),
        "local": list(sa.local), "remote": list(sa.remote), "filter": sa.generic_filter.name,
        "chosen": [chosen.encryption, chosen.key_length, chosen.hash, chosen.group, chosen.auth_method,
                   chosen.lifetime],
        "skeyid": [sa.skeyids.skeyid.hex(), sa.skeyids.skeyid_d.hex(), sa.skeyids.skeyid_a.hex(),
                   sa.skeyids.skeyid_e.hex()],
        "crypto": [state[0], state[1].hex(), sa.cipher.iv(0).hex()],
        "sa_b": sa.sa_b.hex(),
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
    }
    return json.dumps(record, separators=(",", ":")).encode()


def dump_ipsec(ipsec: IpsecSa, now: float) -> bytes:
    """One IPsec SA's record (both directions' keys)."""
    record = {
        "format": FORMAT, "message_id": ipsec.message_id, "spi_in": ipsec.spi_in.hex(),
        "spi_out": ipsec.spi_out.hex(),
        "proposal": [ipsec.proposal.transform_id, ipsec.proposal.key_length, ipsec.proposal.auth_algorithm,
                     ipsec.proposal.pfs_group, ipsec.proposal.lifetime, ipsec.proposal.lifetime_kilobytes],
        "mode": ipsec.mode, "local_ts": ipsec.local_ts, "remote_ts": ipsec.remote_ts,
        "age": now - ipsec.created, "left": ipsec.expires - now, "started_age": now - ipsec.started,
        "initiated": ipsec.initiated, "rekey_of": ipsec.rekey_of.hex() if ipsec.rekey_of else None,
        "tiebreak": ipsec.tiebreak.hex(), "superseded": ipsec.superseded,
        "keys": [_keys(k) for k in ipsec.keys],
    }
    return json.dumps(record, separators=(",", ":")).encode()


def split_v1(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], list[int]]:
    """A format 1 record (one document per ISAKMP SA) as format 2 rows: the ISAKMP SA
    record, (SPI in, IPsec SA record) pairs and the spent Message IDs. The rows keep the
    document's save time (their lifetimes are relative to it).

    Raises:
        ValueError: not a format 1 record.
    """
    record = json.loads(data)
    if not isinstance(record, dict) or record.get("format") != 1:
        raise ValueError("not an ikecore SA record of format 1")
    ipsec = [(bytes.fromhex(item["spi_in"]), json.dumps({"format": FORMAT, **item}, separators=(",", ":")).encode())
             for item in record.pop("ipsec", [])]
    spent = [int(m) for m in record.pop("spent", [])]
    record["format"] = FORMAT
    return json.dumps(record, separators=(",", ":")).encode(), ipsec, spent


def load_sa(stored: StoredSa, config: Config, now: float, handle: int) -> tuple[IsakmpSa, list[str]]:
    """Rebuild an ISAKMP SA saved by :func:`dump_isakmp` with its IPsec SA rows and spent
    Message IDs, as engine SA ``handle``; also the reasons of IPsec SA rows left out (they
    did not open or parse).

    Raises:
        ValueError: the ISAKMP SA record is not one of this format (or did not open).
        ConfigError: its filter is no longer configured.
    """
    if stored.record is None:
        raise ValueError(stored.error or "the record did not open")
    record = json.loads(stored.record)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("not an ikecore SA record of a known format")
    flt = next((f for f in config.filters if f.name == record["filter"]), None)
    if flt is None:
        raise ConfigError("filter", f"stored SA uses filter {record['filter']!r}, which is not configured")
    cookies = bytes.fromhex(record["cookies"])
    if cookies != stored.cookies:
        raise ValueError("the record belongs to another cookie pair")
    now_base = now - stored.elapsed
    sa = IsakmpSa(handle, Role(record["role"]), Phase1State.ESTABLISHED, cookies[:8], cookies[8:],
                  tuple(record["local"]), tuple(record["remote"]), flt,
                  config.ike_policies[flt.ike_policy], config.esp_policies[flt.esp_policy], now_base - record["age"])
    encryption, key_length, hash_id, group, auth_method, lifetime = record["chosen"]
    sa.chosen = policy.IkeProposal(encryption, key_length, hash_id, group, auth_method, lifetime)
    sa.skeyid = keymat.Skeyid(*(bytes.fromhex(k) for k in record["skeyid"]))
    cipher_name, key, iv0 = record["crypto"]
    sa.crypto = keymat.CryptoState(cipher_name, bytes.fromhex(key), sa.chosen.prf_hash, bytes.fromhex(iv0))
    sa.crypto.release()  # idle until its next message, as a live SA is
    sa.sa_b = bytes.fromhex(record["sa_b"])
    sa.spent_message_ids = OrderedIds(stored.spent)
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
    left_out: list[str] = []
    for row in stored.ipsec:
        try:
            sa.ipsec_sas.append(_load_ipsec(row, handle, now))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            left_out.append(f"IPsec SA {row.spi_in.hex()} of SA {cookies.hex()} not loaded: {row.error or exc}")
    sa.ipsec_sas.sort(key=lambda ipsec: ipsec.created)  # as they were made (rows move when rewritten)
    return sa, left_out


def _load_ipsec(row: StoredIpsec, handle: int, now: float) -> IpsecSa:
    if row.record is None:
        raise ValueError(row.error or "the record did not open")
    item = json.loads(row.record)
    if not isinstance(item, dict) or item.get("format") != FORMAT:
        raise ValueError("not an ikecore IPsec SA record of a known format")
    if bytes.fromhex(item["spi_in"]) != row.spi_in:
        raise ValueError("the record belongs to another SPI")
    now_base = now - row.elapsed
    proposal = policy.EspProposal(*item["proposal"])
    ipsec = IpsecSa(handle, item["message_id"], bytes.fromhex(item["spi_in"]), bytes.fromhex(item["spi_out"]),
                    proposal, item["mode"], item["local_ts"], item["remote_ts"], now_base - item["age"],
                    now_base + item["left"])
    ipsec.keys = tuple(_unkeys(k) for k in item["keys"])
    ipsec.started = now_base - (item["started_age"] if "started_age" in item else item["age"])
    ipsec.initiated = bool(item.get("initiated", False))
    ipsec.rekey_of = bytes.fromhex(item["rekey_of"]) if item.get("rekey_of") else None
    ipsec.tiebreak = bytes.fromhex(item.get("tiebreak", ""))
    ipsec.superseded = bool(item.get("superseded", False))
    return ipsec


@dataclass(slots=True)
class _Written:
    """What the store holds of one ISAKMP SA."""

    cookies: bytes
    fingerprint: tuple[Any, ...]
    ipsec: set[bytes]   # SPI in of its IPsec SA rows


class Journal:
    """The engine's account of the store: what it holds, and what changed since.

    The engine marks what may have changed as it goes (cheap: handles and SPIs);
    :meth:`build` turns the marks into a :class:`ChangeSet` against what was written, and
    :meth:`commit` makes that the new account once the store took it. A failed write
    commits nothing, so the next :meth:`build` covers it again.

    Marks: ``dirty`` (ISAKMP SAs whose record may have changed, or that were established
    or are gone), :meth:`mark_ipsec` (an IPsec SA added, changed or gone),
    :meth:`mark_spent` (a Message ID spent or dropped), ``gone`` (cookies of stored SAs
    the engine never took back: expired while the gateway was down). For an ISAKMP SA in
    ``dirty`` whose IPsec SA count differs from the rows written, every row is compared
    (an adoption by a phase 1 rekey moves IPsec SAs between ISAKMP SAs).
    """

    def __init__(self) -> None:
        self.dirty: set[int] = set()
        self.gone: list[bytes] = []
        self._ipsec: dict[int, set[bytes]] = {}
        self._spent: dict[int, dict[int, bool]] = {}
        self._written: dict[int, _Written] = {}
        self._done: list[int] = []
        self._after: dict[int, _Written | None] = {}
        self._gone_sent = 0

    def pending(self) -> bool:
        return bool(self.dirty or self._ipsec or self._spent or self.gone)

    def restored(self, sa: IsakmpSa) -> None:
        """``sa`` was loaded from the store as it is now."""
        self._written[sa.handle] = _Written(sa.initiator_cookie + sa.responder_cookie, fingerprint(sa),
                                            {i.spi_in for i in sa.ipsec_sas})

    def mark_ipsec(self, handle: int, spi_in: bytes) -> None:
        self._ipsec.setdefault(handle, set()).add(spi_in)

    def mark_spent(self, handle: int, message_id: int, spent: bool) -> None:
        marks = self._spent.setdefault(handle, {})
        marks.pop(message_id, None)   # the last word counts, in order
        marks[message_id] = spent

    def build(self, sas: dict[int, IsakmpSa], now: float, limit: int | None = None) -> ChangeSet:
        """The changes the marks stand for (of at most ``limit`` ISAKMP SAs)."""
        changes = ChangeSet(deleted=list(self.gone))
        self._gone_sent = len(self.gone)
        self._done, self._after = [], {}
        handles = self.dirty.union(self._ipsec, self._spent)
        changed = 0
        for handle in handles:
            if limit is not None and changed >= limit:
                break
            self._done.append(handle)
            before = len(changes)
            self._build_one(handle, sas.get(handle), changes, now)
            changed += len(changes) > before
        return changes

    def _build_one(self, handle: int, sa: IsakmpSa | None, changes: ChangeSet, now: float) -> None:
        written = self._written.get(handle)
        if sa is None or sa.state is not Phase1State.ESTABLISHED:
            if written is not None:
                changes.deleted.append(written.cookies)
                self._after[handle] = None
            return
        if written is None:
            cookies = sa.initiator_cookie + sa.responder_cookie
            changes.isakmp[cookies] = dump_isakmp(sa, now)
            for ipsec in sa.ipsec_sas:
                changes.ipsec[(cookies, ipsec.spi_in)] = dump_ipsec(ipsec, now)
            changes.spent.extend((cookies, m) for m in sa.spent_message_ids)
            self._after[handle] = _Written(cookies, fingerprint(sa), {i.spi_in for i in sa.ipsec_sas})
            return
        cookies = written.cookies
        after = _Written(cookies, written.fingerprint, written.ipsec)
        if handle in self.dirty:
            now_print = fingerprint(sa)
            if now_print != written.fingerprint:
                changes.isakmp[cookies] = dump_isakmp(sa, now)
                after.fingerprint = now_print
        marks = self._ipsec.get(handle)
        if marks:
            after.ipsec = set(written.ipsec)
            by_spi = _index(sa, marks)
            for spi in marks:
                marked = by_spi.get(spi)
                if marked is not None:
                    changes.ipsec[(cookies, spi)] = dump_ipsec(marked, now)
                    after.ipsec.add(spi)
                elif spi in after.ipsec:
                    changes.ipsec_deleted.append((cookies, spi))
                    after.ipsec.discard(spi)
        if handle in self.dirty and len(sa.ipsec_sas) != len(after.ipsec):
            current = {i.spi_in: i for i in sa.ipsec_sas}
            for spi, ipsec in current.items():
                if spi not in after.ipsec:
                    changes.ipsec[(cookies, spi)] = dump_ipsec(ipsec, now)
            changes.ipsec_deleted.extend((cookies, spi) for spi in after.ipsec - current.keys())
            after.ipsec = set(current)
        for message_id, spent in self._spent.get(handle, {}).items():
            (changes.spent if spent else changes.spent_deleted).append((cookies, message_id))
        self._after[handle] = after

    def commit(self) -> None:
        """The store took the last :meth:`build`: it is what the store holds now."""
        del self.gone[:self._gone_sent]
        self._gone_sent = 0
        for handle in self._done:
            self.dirty.discard(handle)
            self._ipsec.pop(handle, None)
            self._spent.pop(handle, None)
        for handle, after in self._after.items():
            if after is None:
                self._written.pop(handle, None)
            else:
                self._written[handle] = after
        self._done, self._after = [], {}


def _index(sa: IsakmpSa, spis: set[bytes]) -> dict[bytes, IpsecSa]:
    """The IPsec SAs of ``sa`` with these SPIs (the newest are last: looked at first)."""
    found: dict[bytes, IpsecSa] = {}
    if len(spis) == 1:
        (spi,) = spis
        for ipsec in reversed(sa.ipsec_sas):
            if ipsec.spi_in == spi:
                found[spi] = ipsec
                break
        return found
    return {i.spi_in: i for i in sa.ipsec_sas if i.spi_in in spis}

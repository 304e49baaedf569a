"""The security-association listings: every Main Mode row and every Quick Mode row, defined once.

Design note. One definition: ``_MAIN_MODE`` says how each column of a Main Mode row is
computed from an ``IsakmpSa``, ``_QUICK_MODE`` how each column of a Quick Mode row is
computed from an ``IpsecSa`` and the ISAKMP SA it belongs to; each column is one list
comprehension over a slice of SAs. Everything else derives from these two tables:

* the views (tables, CSV, JSON, the exporters) show the values as they are, except two
  (``_SHOWN``): ``created`` as UTC ISO 8601 of the wall clock, ``lifetime_left`` in whole
  seconds; ``vendor_ids`` is a list of names in JSON, joined with ``;`` in CSV and tables
  (``ikecore.monitor.formats`` says how each kind of value is written, everywhere);
* one SA's row for in-process callers (``main_mode_row``, ``main_mode_rows``,
  ``quick_mode_rows``: ``ikecore connect``, the demo, tests) holds the values themselves:
  ``created`` in seconds of the engine's clock, ``lifetime_left`` in seconds, ``vendor_ids``
  as a list of names, plus ``rekeyed`` (a newer SA took over), which no view shows.

Speed. A listing of 100,000 ISAKMP SAs must take well under a second even the first
time, must not hold the gateway's event loop for more than a few tens of milliseconds at
a time, and must not cost memory per SA (a gateway holds 100,000 SAs in under 4 KiB each;
a cached row with its JSON would add more than half of that again). So nothing is cached
per SA: every listing reads the SA records afresh, in slices of ``SLICE`` SAs.

* Columns, not rows: each requested column is one list comprehension over a slice of SA
  records, so a column nobody asked for costs nothing, and the values that many SAs share
  (the suite's names, vendor ID lists, identities, creation seconds) are computed once per
  listing (``_Memo``).
* JSON in Rust: ``ikecore._core.json_rows`` writes ``{"key": value, ...}`` objects
  straight from the column lists (no dict per row); ``rows`` builds dicts only for
  callers that want Python rows (tables, CSV, the demo).
* Slices: ``json_slices`` yields one JSON fragment per slice; the control socket yields
  to the event loop between two of them (a slice of 2,000 SAs is about 5 ms of work),
  so negotiations go on while a long listing is produced. A listing shows the SAs of the
  database when it started that are still there when their slice is built; each row is
  consistent in itself (read in one go between two datagrams). Sorting reads the sort
  column in slices too, then orders the SA records once. ``quick_mode_slices`` gives the
  Quick Mode rows one slice of ISAKMP SAs at a time the same way.
* Conditions (``where``: ``COLUMN=VALUE``, ``Condition``) are tested a column at a time
  too, before anything else: a listing of one peer among 100,000 SAs reads one column of
  each SA (and every column of the matching ones only); ``limit`` stops the reading once
  enough SAs matched when there is no sort.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress, repeat
from typing import Any

from ikecore import policy, wire
from ikecore._core import json_rows
from ikecore.monitor.formats import iso_utc, text_cell
from ikecore.sa import IpsecSa, IsakmpSa, id_to_text

__all__ = ["COLUMNS", "QUICK_MODE_COLUMNS", "MAIN_MODE_ROW", "QUICK_MODE_ROW", "ADDRESS_COLUMNS", "SLICE",
           "Condition", "parse_where", "filtered", "select_sas", "worker_of", "main_mode_row",
           "main_mode_rows", "quick_mode_rows", "shown_rows", "shown_quick_mode_rows", "columns_of", "rows", "json_slices", "json_array",
           "quick_mode_slices", "join", "sort_key", "ESP_COUNTER_COLUMNS"]

_SA_COLUMNS = ("me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity", "diffie_hellman",
               "initiator_cookie", "responder_cookie", "state", "role", "created", "lifetime_left", "nat",
               "vendor_ids", "quick_modes", "local_port", "peer_port", "exchange", "nat_t", "encapsulated", "dpd")
_PAIR_COLUMNS = ("me", "peer", "protocol", "encryption", "integrity", "diffie_hellman", "spi_in", "spi_out",
                 "mode", "local_ts", "remote_ts", "my_id", "peer_id", "authentication", "initiator_cookie",
                 "responder_cookie", "created", "lifetime_left", "lifetime_kilobytes")

#: Every column of the Main Mode security-associations view, in the IP Security Monitor
#: document's order (its columns first), then ``worker``: the index of the gateway's worker
#: process that holds the SA (``Engine.worker``; 0 in a gateway of one process), and
#: ``age_seconds``: whole seconds since ``created``.
COLUMNS = (*_SA_COLUMNS, "worker", "age_seconds")

#: Every column of the Quick Mode security-associations view, in the same document's order,
#: then ``worker``.
QUICK_MODE_COLUMNS = (*_PAIR_COLUMNS, "worker", *("bytes_in", "bytes_out", "packets_in", "packets_out",
                                                 "replay_drops", "icv_failures"))

#: The ESP counters of a Quick Mode SA pair that a packet-moving driver keeps (the userland
#: driver's ``counters(spi_in, spi_out)``); empty with a driver that keeps none.
ESP_COUNTER_COLUMNS = QUICK_MODE_COLUMNS[-6:]

#: The keys of one SA's row (``main_mode_row``, ``quick_mode_rows``): the view's columns but
#: ``worker`` (an SA record does not know its process), and whether a newer SA took over.
MAIN_MODE_ROW = (*_SA_COLUMNS, "rekeyed")
QUICK_MODE_ROW = (*_PAIR_COLUMNS, "rekeyed")

#: Columns that hold an address (or a network, a traffic selector): a condition on one of
#: them takes an address or a CIDR and holds when the two overlap.
ADDRESS_COLUMNS = frozenset({"me", "peer", "local_ts", "remote_ts", "source", "destination",
                             "source_tunnel_endpoint", "destination_tunnel_endpoint"})

#: SA records per slice: what one turn of the gateway's event loop handles at most.
SLICE = 2000

_IPV4 = int(wire.IdType.IPV4_ADDR)
_ntoa, _pton, _INET = socket.inet_ntoa, socket.inet_pton, socket.AF_INET
_DER_ASN1_DN = int(wire.IdType.DER_ASN1_DN)


def _vendor_names(vids: Sequence[bytes]) -> list[str]:
    """The vendor IDs a peer sent, by name where known, else in hex."""
    return [wire.vendor_id_name(v) or v.hex() for v in vids]


class _Memo:
    """What one listing computes once for many SAs (its clocks and the shared values)."""

    __slots__ = ("now", "wall", "worker", "suites", "suite_values", "proposals", "vendors", "vendor_marks",
                 "seconds", "ids", "slice", "slice_suites", "children", "children_proposals", "subjects", "names",
                 "keep", "esp")

    def __init__(self, now: float, wall: float, worker: int = 0, engine: Any = None) -> None:
        self.now, self.wall, self.worker = now, wall, worker
        # the driver's ESP counters of an SA pair (spi_in, spi_out), when it keeps any
        self.esp: Callable[[bytes, bytes], dict[str, int] | None] | None = getattr(
            getattr(engine, "driver", None), "counters", None)
        # Memos keyed by id() hold their object in ``keep``: an SA deleted between two
        # slices cannot free it and let a new object take its id during the listing.
        self.keep: list[Any] = []
        self.suites: dict[int, tuple[str, str, str, str]] = {}  # id(chosen) -> names
        self.suite_values: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}
        self.proposals: dict[int, tuple[str, str, str, int]] = {}  # id(ESP proposal) -> names, kilobytes
        self.vendors: dict[tuple[bytes, ...], list[str]] = {}
        self.vendor_marks: dict[tuple[bytes, ...], str] = {}
        self.seconds: dict[int, str] = {}
        self.ids: dict[tuple[int, bytes], str] = {}
        self.subjects: dict[int, bytes] = {}  # id(certificate) -> DER of its subject
        self.names: dict[bytes, str] = {}  # DER of a subject -> its RFC 4514 text
        self.slice: list[IsakmpSa] | None = None
        self.slice_suites: list[tuple[str, str, str, str]] = []
        self.children: list[IpsecSa] | None = None
        self.children_proposals: list[tuple[str, str, str, int]] = []

    def suites_of(self, sas: list[IsakmpSa]) -> list[tuple[str, str, str, str]]:
        """The suite names of each SA of a slice (computed once for the four columns)."""
        if self.slice is not sas:
            get, suite = self.suites.get, self.suite
            self.slice_suites = [get(id(c)) or suite(c) for c in [sa.chosen for sa in sas]]
            self.slice = sas
        return self.slice_suites

    def suite(self, chosen: policy.IkeProposal | None) -> tuple[str, str, str, str]:
        """(authentication, encryption, integrity, diffie_hellman) of a negotiated suite."""
        names = self.suites.get(id(chosen))
        if names is None:
            if chosen is None:
                names = ("", "", "", "")
            else:
                value = (chosen.auth_method, chosen.encryption, chosen.key_length, chosen.hash, chosen.group)
                names = self.suite_values.get(value)
                if names is None:
                    names = (chosen.auth_method_name, chosen.encryption_name, chosen.hash_name,
                             policy.group_name(chosen.group))
                    self.suite_values[value] = names
            self.suites[id(chosen)] = names
            self.keep.append(chosen)
        return names

    def proposals_of(self, children: list[IpsecSa]) -> list[tuple[str, str, str, int]]:
        """(encryption, integrity, diffie_hellman, lifetime_kilobytes) of each IPsec SA's suite
        (computed once for the four columns)."""
        if self.children is not children:
            get, proposal = self.proposals.get, self.proposal
            self.children_proposals = [get(id(p)) or proposal(p) for p in [ipsec.proposal for ipsec in children]]
            self.children = children
        return self.children_proposals

    def proposal(self, suite: policy.EspProposal) -> tuple[str, str, str, int]:
        names = self.proposals[id(suite)] = (
            suite.encryption_name, suite.integrity_name,
            policy.group_name(suite.pfs_group) if suite.pfs_group else "", suite.lifetime_kilobytes or 0)
        self.keep.append(suite)
        return names

    def vendor_list(self, vids: list[bytes]) -> list[str]:
        """The ``vendor_ids`` value as the views show it: the names, one list per distinct
        list of vendor IDs (shared by the rows: read it, do not change it)."""
        key = tuple(vids)
        names = self.vendors.get(key)
        if names is None:
            names = self.vendors[key] = _vendor_names(vids)
        return names

    def vendor_mark(self, vids: list[bytes]) -> str:
        """A stand-in string for one distinct vendor ID list in ``json_rows``' output,
        which writes no lists: ``_with_vendor_lists`` puts the JSON list in its place."""
        key = tuple(vids)
        mark = self.vendor_marks.get(key)
        if mark is None:
            self.vendor_list(vids)
            mark = self.vendor_marks[key] = f"{_MARK}{len(self.vendor_marks)}"
        return mark

    def iso_of(self, clock: list[float]) -> list[str]:
        """Instants of the engine's clock as the wall clock's UTC ISO 8601, to the second."""
        wall, now = self.wall, self.now
        get, iso = self.seconds.get, self.iso
        return [get(second) or iso(second) for second in [math.floor(wall - (now - at)) for at in clock]]

    def iso(self, second: int) -> str:
        text = self.seconds[second] = iso_utc(second)
        return text

    def id_text(self, payload: wire.IdPayload | None, certificate: Any) -> str:
        """An ID as text; a DER_ASN1_DN as the certificate subject's RFC 4514 string when it
        is the certificate's subject. IPv4 addresses are decoded in C, the rest memoised."""
        if payload is None:
            return ""
        id_type, data = payload.id_type, payload.data
        if id_type == _IPV4 and len(data) == 4:
            return socket.inet_ntoa(data)
        if id_type == _DER_ASN1_DN and certificate is not None:
            subject = self.subjects.get(id(certificate))
            if subject is None:  # one per certificate object (ours is shared by every SA)
                subject = self.subjects[id(certificate)] = certificate.subject.public_bytes()
                self.keep.append(certificate)
            if subject != data:
                return id_to_text(id_type, data)
            text = self.names.get(subject)
            if text is None:  # RFC 4514 text once per distinct subject (about 8 us each)
                text = self.names[subject] = str(certificate.subject.rfc4514_string())
            return text
        key = (id_type, data)
        text = self.ids.get(key)
        if text is None:
            text = self.ids[key] = id_to_text(id_type, data)
        return text


def _my_certificate(sa: IsakmpSa) -> Any:
    return getattr(sa.generic_filter.credentials, "certificate", None)


def _lifetimes_left(sas: list[IsakmpSa], now: float) -> list[float | None]:
    """Seconds until each SA expires (0 once past; None: no lifetime)."""
    return [None if (expires := sa.expires) is None else expires - now if expires > now else 0.0 for sa in sas]


def _pairs_left(children: list[IpsecSa], now: float) -> list[float]:
    """Seconds until each IPsec SA pair expires (0 once past)."""
    return [expires - now if (expires := ipsec.expires) > now else 0.0 for ipsec in children]


# --- Main Mode: one column per entry, computed from a slice of ISAKMP SAs ------------------

_Builder = Callable[[list[IsakmpSa], _Memo], list[Any]]

_MAIN_MODE: dict[str, _Builder] = {
    "me": lambda sas, m: [sa.local[0] for sa in sas],
    "my_id": lambda sas, m: [_ntoa(d) if (p := sa.my_id) is not None and p.id_type == _IPV4 and len(d := p.data) == 4
                             else m.id_text(p, _my_certificate(sa)) for sa in sas],
    "peer": lambda sas, m: [sa.remote[0] for sa in sas],
    "peer_id": lambda sas, m: [_ntoa(d) if (p := sa.peer_id) is not None and p.id_type == _IPV4
                               and len(d := p.data) == 4 else m.id_text(p, sa.peer_certificate) for sa in sas],
    "authentication": lambda sas, m: [names[0] for names in m.suites_of(sas)],
    "encryption": lambda sas, m: [names[1] for names in m.suites_of(sas)],
    "integrity": lambda sas, m: [names[2] for names in m.suites_of(sas)],
    "diffie_hellman": lambda sas, m: [names[3] for names in m.suites_of(sas)],
    "initiator_cookie": lambda sas, m: [sa.initiator_cookie.hex() for sa in sas],
    "responder_cookie": lambda sas, m: [sa.responder_cookie.hex() for sa in sas],
    "state": lambda sas, m: [sa.state._value_ for sa in sas],
    "role": lambda sas, m: [sa.role._value_ for sa in sas],
    # When the SA was established (else started), in seconds of the engine's clock.
    "created": lambda sas, m: [sa.started if (at := sa.established) is None else at for sa in sas],
    "lifetime_left": lambda sas, m: _lifetimes_left(sas, m.now),
    "nat": lambda sas, m: [sa.nat for sa in sas],
    "vendor_ids": lambda sas, m: [_vendor_names(sa.vendor_ids) for sa in sas],
    "quick_modes": lambda sas, m: [len(sa.ipsec_sas) for sa in sas],
    "local_port": lambda sas, m: [sa.local[1] for sa in sas],
    "peer_port": lambda sas, m: [sa.remote[1] for sa in sas],
    "exchange": lambda sas, m: ["aggressive" if sa.aggressive else "main" for sa in sas],
    "nat_t": lambda sas, m: [sa.nat_t.name if sa.nat_t is not None else "" for sa in sas],
    "encapsulated": lambda sas, m: [sa.encapsulated for sa in sas],
    "dpd": lambda sas, m: [sa.dpd for sa in sas],
    "rekeyed": lambda sas, m: [sa.superseded for sa in sas],
}
assert tuple(_MAIN_MODE) == MAIN_MODE_ROW


def _whole_seconds(values: list[Any]) -> list[Any]:
    return [value if value is None else int(value) for value in values]


#: How the views show the values that they do not show as they are.
_SHOWN: dict[str, _Builder] = {
    "created": lambda sas, m: m.iso_of(_MAIN_MODE["created"](sas, m)),
    "lifetime_left": lambda sas, m: _whole_seconds(_MAIN_MODE["lifetime_left"](sas, m)),
    # The names of ``_vendor_names``, one list per distinct list of vendor IDs.
    "vendor_ids": lambda sas, m: [m.vendors.get(tuple(v)) or m.vendor_list(v) for v in [sa.vendor_ids for sa in sas]],
    "worker": lambda sas, m: [m.worker] * len(sas),
    "age_seconds": lambda sas, m: [int(age) if (age := m.now - at) > 0 else 0 for at in _MAIN_MODE["created"](sas, m)],
}

#: The view's builder of each column.
_VIEW: dict[str, _Builder] = {c: _SHOWN.get(c) or _MAIN_MODE[c] for c in COLUMNS}

#: Columns whose JSON ``json_rows`` writes from the raw value (bytes as hex, as ``bytes.hex``
#: writes them): no str per SA.
_RAW_FOR_JSON: dict[str, _Builder] = {
    "initiator_cookie": lambda sas, m: [sa.initiator_cookie for sa in sas],
    "responder_cookie": lambda sas, m: [sa.responder_cookie for sa in sas],
    # a stand-in per distinct list, replaced by the JSON list (``_with_vendor_lists``)
    "vendor_ids": lambda sas, m: [m.vendor_marks.get(tuple(v)) or m.vendor_mark(v)
                                  for v in [sa.vendor_ids for sa in sas]],
}

#: The start of ``vendor_mark``'s stand-ins: a NUL (which ``json_rows`` writes as \u0000)
#: and a random tag of this process, so that no identity or name a peer sends can be one.
_MARK = "\x00" + os.urandom(8).hex() + "#"
_MARK_JSON = b'"\\u0000' + _MARK[1:].encode()


def _with_vendor_lists(text: bytes, memo: _Memo) -> bytes:
    """``json_rows`` output with each vendor ID list's stand-in replaced by the JSON list."""
    if _MARK_JSON not in text:
        return text
    for key, mark in memo.vendor_marks.items():
        names = json.dumps(memo.vendors[key], ensure_ascii=False, separators=(",", ":")).encode()
        text = text.replace(_MARK_JSON + mark[len(_MARK):].encode() + b'"', names)
    return text


# --- Quick Mode: one column per entry, from IPsec SAs and the ISAKMP SA of each -----------

_QuickBuilder = Callable[[list[IsakmpSa], list[IpsecSa], _Memo], list[Any]]


def _of_main_mode(column: str) -> _QuickBuilder:
    """A Quick Mode column that is its ISAKMP SA's Main Mode column."""
    build = _MAIN_MODE[column]
    return lambda owners, children, m: build(owners, m)


_QUICK_MODE: dict[str, _QuickBuilder] = {
    "me": _of_main_mode("me"),
    "peer": _of_main_mode("peer"),
    "protocol": lambda owners, children, m: ["ESP"] * len(children),
    "encryption": lambda owners, children, m: [names[0] for names in m.proposals_of(children)],
    "integrity": lambda owners, children, m: [names[1] for names in m.proposals_of(children)],
    "diffie_hellman": lambda owners, children, m: [names[2] for names in m.proposals_of(children)],
    "spi_in": lambda owners, children, m: [ipsec.spi_in.hex() for ipsec in children],
    "spi_out": lambda owners, children, m: [ipsec.spi_out.hex() for ipsec in children],
    "mode": lambda owners, children, m: [ipsec.mode for ipsec in children],
    "local_ts": lambda owners, children, m: [ipsec.local_ts for ipsec in children],
    "remote_ts": lambda owners, children, m: [ipsec.remote_ts for ipsec in children],
    "my_id": _of_main_mode("my_id"),
    "peer_id": _of_main_mode("peer_id"),
    "authentication": _of_main_mode("authentication"),
    "initiator_cookie": _of_main_mode("initiator_cookie"),
    "responder_cookie": _of_main_mode("responder_cookie"),
    # When the pair was installed, in seconds of the engine's clock.
    "created": lambda owners, children, m: [ipsec.created for ipsec in children],
    "lifetime_left": lambda owners, children, m: _pairs_left(children, m.now),
    "lifetime_kilobytes": lambda owners, children, m: [names[3] for names in m.proposals_of(children)],
    "rekeyed": lambda owners, children, m: [ipsec.superseded for ipsec in children],
}
assert tuple(_QUICK_MODE) == QUICK_MODE_ROW

#: Quick Mode columns that are their ISAKMP SA's Main Mode column (shown alike).
_OF_ISAKMP_SA = frozenset({"me", "peer", "my_id", "peer_id", "authentication", "initiator_cookie",
                           "responder_cookie", "worker"})

_QUICK_MODE_SHOWN: dict[str, _QuickBuilder] = {
    "created": lambda owners, children, m: m.iso_of(_QUICK_MODE["created"](owners, children, m)),
    "lifetime_left": lambda owners, children, m: _whole_seconds(_QUICK_MODE["lifetime_left"](owners, children, m)),
    "worker": lambda owners, children, m: [m.worker] * len(children),
    **{column: (lambda key: lambda owners, children, m: _esp_counter(children, m, key))(column)
       for column in ESP_COUNTER_COLUMNS},
}


def _esp_counter(children: list[IpsecSa], memo: _Memo, key: str) -> list[Any]:
    """One ESP counter of each pair (None where the driver keeps none)."""
    esp = memo.esp
    if esp is None:
        return [None] * len(children)
    values = [esp(ipsec.spi_in, ipsec.spi_out) for ipsec in children]
    return [None if v is None else v.get(key) for v in values]
_QUICK_MODE_VIEW: dict[str, _QuickBuilder] = {c: _QUICK_MODE_SHOWN.get(c) or _QUICK_MODE[c]
                                              for c in QUICK_MODE_COLUMNS}


def _ipsec_pairs(sas: Iterable[IsakmpSa]) -> tuple[list[IsakmpSa], list[IpsecSa]]:
    """Every IPsec SA of ``sas`` and, at the same index, the ISAKMP SA it belongs to."""
    owners: list[IsakmpSa] = []
    children: list[IpsecSa] = []
    for sa in sas:
        if sa.ipsec_sas:
            pairs = list(sa.ipsec_sas)
            owners += repeat(sa, len(pairs))
            children += pairs
    return owners, children


def _dicts(names: Sequence[str], columns: list[list[Any]]) -> list[dict[str, Any]]:
    return list(map(dict, map(zip, repeat(names), zip(*columns))))


# --- one SA's row ---------------------------------------------------------------------------


def main_mode_rows(sas: Iterable[IsakmpSa], now: float) -> list[dict[str, Any]]:
    """One row (``MAIN_MODE_ROW``) per ISAKMP SA of ``sas``: the values themselves (see the
    design note); ``now`` is the engine's clock."""
    sas = list(sas)
    memo = _Memo(now, now)
    return _dicts(MAIN_MODE_ROW, [_MAIN_MODE[c](sas, memo) for c in MAIN_MODE_ROW])


def main_mode_row(sa: IsakmpSa, now: float) -> dict[str, Any]:
    """One ISAKMP SA's row (``MAIN_MODE_ROW``); ``now`` is the engine's clock."""
    return main_mode_rows([sa], now)[0]


def quick_mode_rows(sas: Iterable[IsakmpSa], now: float) -> list[dict[str, Any]]:
    """One row (``QUICK_MODE_ROW``) per IPsec SA pair of the ISAKMP SAs ``sas`` (an engine's
    ``sas()``, or one SA in a list): the values themselves; ``now`` is the engine's clock."""
    owners, children = _ipsec_pairs(sas)
    memo = _Memo(now, now)
    return _dicts(QUICK_MODE_ROW, [_QUICK_MODE[c](owners, children, memo) for c in QUICK_MODE_ROW])


def shown_rows(sas: Iterable[IsakmpSa], columns: Sequence[str], now: float, wall: float) -> list[dict[str, Any]]:
    """The Main Mode rows of ``sas`` with the keys ``columns`` (view columns, and
    ``rekeyed``), the values as the views show them: what ``ikecore connect --json`` prints."""
    sas = list(sas)
    memo = _Memo(now, wall)
    return _dicts(columns, [(_VIEW.get(c) or _MAIN_MODE[c])(sas, memo) for c in columns])


def shown_quick_mode_rows(sas: Iterable[IsakmpSa], columns: Sequence[str], now: float,
                          wall: float) -> list[dict[str, Any]]:
    """The Quick Mode rows of the ISAKMP SAs ``sas`` as ``shown_rows`` gives Main Mode rows."""
    owners, children = _ipsec_pairs(sas)
    memo = _Memo(now, wall)
    return _dicts(columns, [(_QUICK_MODE_VIEW.get(c) or _QUICK_MODE[c])(owners, children, memo) for c in columns])


# --- conditions: COLUMN=VALUE, tested a column at a time ----------------------------------


class Condition:
    """One ``COLUMN=VALUE`` of a listing's ``where``, tested against the values of one column
    as the view shows them (``matches``: a whole column at a time, no row built).

    On an address column (``ADDRESS_COLUMNS``) VALUE is an address or a CIDR; the condition
    holds when the shown address (or network, or traffic selector) overlaps it: ``peer=192.0.2.7``
    is that peer, ``peer=192.0.2.0/24`` any peer in that network. On any other column VALUE
    is the value as shown, exactly (numbers in decimal, ``true``/``false``, empty for none).
    """

    __slots__ = ("column", "text", "host", "network", "_mask", "_base")

    def __init__(self, column: str, text: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> None:
        self.column = column
        self.text = text
        self.network = network
        #: the address's text when VALUE is one address: compared as text, in C
        self.host = str(network.network_address) if network is not None and \
            network.prefixlen == network.max_prefixlen else None
        self._mask = int(network.netmask) if network is not None else 0
        self._base = int(network.network_address) if network is not None else 0

    def __repr__(self) -> str:
        return f"Condition({self.column}={self.text})"

    def matches(self, values: list[Any]) -> list[bool]:
        """Whether each of a column's shown values satisfies the condition."""
        if self.network is None:
            text = self.text
            return [value == text or (value.__class__ is not str and text_cell(value) == text) for value in values]
        host, overlaps = self.host, self._overlaps
        if host is not None:
            return [value == host or (value.__class__ is str and ("/" in value or "[" in value) and overlaps(value))
                    for value in values]
        return [overlaps(value) for value in values]

    def _overlaps(self, value: Any) -> bool:
        network = self.network
        assert network is not None
        if value.__class__ is not str or not value:
            return False
        if network.version == 4:
            try:  # a dotted quad, in C: the common case
                number = int.from_bytes(_pton(_INET, value), "big")
            except OSError:
                pass
            else:
                return number & self._mask == self._base
        try:
            shown = ipaddress.ip_network(value.partition("[")[0], strict=False)
        except ValueError:  # a keyword ("me", "any"...) or a name
            return False
        return shown.version == network.version and shown.overlaps(network)


def parse_where(where: Sequence[str] | str | None, known: Sequence[str], what: str) -> list[Condition]:
    """``["COLUMN=VALUE", ...]`` (or one such string) as conditions on the columns ``known``
    of the view ``what``; raises ValueError (a ``ViewError`` upstairs) naming the column and
    the known ones, or the malformed condition."""
    if where is None:
        return []
    items = [where] if isinstance(where, str) else list(where)
    conditions: list[Condition] = []
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"where takes COLUMN=VALUE (e.g. peer=192.0.2.7), not {item!r}")
        column, _, text = item.partition("=")
        column, text = column.strip(), text.strip()
        if column not in known:
            raise ValueError(f"unknown column {column!r} in where of {what}; columns: {', '.join(known)}")
        network = None
        if column in ADDRESS_COLUMNS:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                if column in ("me", "peer"):
                    raise ValueError(f"where {column}={text}: give an address or a CIDR, e.g. {column}=192.0.2.7 "
                                     f"or {column}=192.0.2.0/24") from None
        elif text in ("True", "False"):
            text = text.lower()  # as a table shows booleans
        conditions.append(Condition(column, text, network))
    return conditions


def filtered(sas: list[IsakmpSa], conditions: Sequence[Condition], memo: _Memo) -> list[IsakmpSa]:
    """The SA records of ``sas`` whose Main Mode row satisfies every condition (a column at
    a time: each condition reads only the SAs the ones before it kept)."""
    for condition in conditions:
        if not sas:
            break
        sas = list(compress(sas, condition.matches(_VIEW[condition.column](sas, memo))))
    return sas


def select_sas(engine: Any, conditions: Sequence[Condition], now: float, wall: float | None = None,
               slice_size: int = SLICE) -> Iterator[list[IsakmpSa]]:
    """The engine's SA records that satisfy ``conditions`` (Main Mode columns), one list per
    slice of ``slice_size`` SAs (empty lists too: the caller may yield between two)."""
    memo = _Memo(now, now if wall is None else wall, worker_of(engine))
    sas = engine.sas()
    for start in range(0, len(sas), slice_size):
        yield filtered(sas[start:start + slice_size], conditions, memo)


def worker_of(engine: Any) -> int:
    """The index of the worker process whose engine this is (0 in a gateway of one process)."""
    worker = getattr(engine, "worker", None)
    return int(worker[0]) if worker else 0


# --- the views: columns as shown, in slices ------------------------------------------------


def columns_of(sas: list[IsakmpSa], columns: Sequence[str], now: float, wall: float,
               memo: _Memo | None = None, *, for_json: bool = False, worker: int = 0) -> list[list[Any]]:
    """One list of values per requested Main Mode column for ``sas``, as the views show them
    (``now``: the engine's clock, ``wall``: the same instant as Unix time, ``worker``: the
    worker index of the engine holding them). ``for_json``: values for ``json_rows``, which
    writes bytes as hex itself. Raises KeyError for an unknown column."""
    memo = memo or _Memo(now, wall, worker)
    if for_json:
        return [(_RAW_FOR_JSON.get(c) or _VIEW[c])(sas, memo) for c in columns]
    return [_VIEW[c](sas, memo) for c in columns]


def quick_mode_slices(engine: Any, now: float, wall: float, slice_size: int = SLICE,
                      where: Sequence[Condition] = ()) -> Iterator[list[dict[str, Any]]]:
    """The Quick Mode view's rows (every column of ``QUICK_MODE_COLUMNS``, as shown) that
    satisfy ``where`` (Quick Mode columns), one list per slice of ``slice_size`` ISAKMP
    SAs; each slice is read when it is built."""
    memo = _Memo(now, wall, worker_of(engine), engine)
    sas = engine.sas()
    # Conditions on the ISAKMP SA's own columns are tested on the ISAKMP SAs first.
    owned = [c for c in where if c.column in _OF_ISAKMP_SA]
    where = [c for c in where if c.column not in _OF_ISAKMP_SA]
    for start in range(0, len(sas), slice_size):
        owners, children = _ipsec_pairs(filtered(sas[start:start + slice_size], owned, memo))
        for condition in where:
            if not children:
                break
            keep = condition.matches(_QUICK_MODE_VIEW[condition.column](owners, children, memo))
            owners, children = list(compress(owners, keep)), list(compress(children, keep))
        yield _dicts(QUICK_MODE_COLUMNS, [_QUICK_MODE_VIEW[c](owners, children, memo) for c in QUICK_MODE_COLUMNS])


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers by value, then addresses by value, then text case-blind; empty last."""
    if value is None or value == "":
        return (3, "")
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (0, value)
    text = text_cell(value)  # a list as its items joined
    try:
        return (1, (4, int.from_bytes(_pton(_INET, text), "big")))  # strict dotted quad, in C
    except (OSError, ValueError):
        pass
    try:
        address = ipaddress.ip_address(text)
        return (1, (address.version, int(address)))
    except ValueError:
        return (2, text.lower())


def _sorted(sas: list[IsakmpSa], sort: tuple[str, bool] | None,
            memo: _Memo, slice_size: int) -> Iterator[list[IsakmpSa] | None]:
    """Yields None between slices of work, then the SA records in listing order."""
    if sort is None:
        yield sas
        return
    column, descending = sort
    keys: list[tuple[int, Any]] = []
    for start in range(0, len(sas), slice_size):
        keys += map(sort_key, _VIEW[column](sas[start:start + slice_size], memo))
        yield None
    order = sorted(range(len(sas)), key=keys.__getitem__, reverse=descending)
    yield [sas[i] for i in order]


def _plan(engine: Any, sort: tuple[str, bool] | None, now: float, wall: float, slice_size: int,
          where: Sequence[Condition] = (), limit: int | None = None) -> Iterator[tuple[list[IsakmpSa], _Memo] | None]:
    """Yields None between slices of work (filtering, sorting), then the SA records to list,
    one slice at a time, each with the listing's memo."""
    memo = _Memo(now, wall, worker_of(engine))
    sas = engine.sas()
    if where:
        kept: list[IsakmpSa] = []
        for start in range(0, len(sas), slice_size):
            kept += filtered(sas[start:start + slice_size], where, memo)
            if limit is not None and sort is None and len(kept) >= limit:
                break  # the first ``limit`` SAs that match are all the listing shows
            yield None
        sas = kept
    ordered: list[IsakmpSa] = []
    for step in _sorted(sas, sort, memo, slice_size):
        if step is None:
            yield None
        else:
            ordered = step
    if limit is not None:
        ordered = ordered[:limit]
    for start in range(0, len(ordered), slice_size):
        part = [sa for sa in ordered[start:start + slice_size] if engine.sa(sa.handle) is sa]
        yield part, memo


def json_slices(engine: Any, columns: Sequence[str], sort: tuple[str, bool] | None, now: float, wall: float,
                slice_size: int = SLICE, where: Sequence[Condition] = (),
                limit: int | None = None) -> Iterator[bytes]:
    """The Main Mode listing as JSON fragments, one per slice (``b""`` while filtering or
    sorting): comma-separated row objects, to be joined with ``b","`` inside ``[...]``.
    Only the SAs that satisfy ``where`` are listed, at most ``limit`` of them (after the
    sort). The caller may let other work run between two fragments; each SA is read when
    its slice is built."""
    keys = list(columns)
    for step in _plan(engine, sort, now, wall, slice_size, where, limit):
        if step is None:
            yield b""
            continue
        part, memo = step
        yield _with_vendor_lists(json_rows(keys, columns_of(part, keys, now, wall, memo, for_json=True)),
                                 memo) if part else b""


def join(fragments: Iterable[bytes]) -> bytes:
    """JSON fragments (comma-separated objects) as one JSON array, copying the text once."""
    pieces = [b"["]
    for part in fragments:
        if part:
            pieces += (part, b",")
    if len(pieces) > 1:
        pieces.pop()
    pieces.append(b"]")
    return b"".join(pieces)


def json_array(engine: Any, columns: Sequence[str], sort: tuple[str, bool] | None, now: float,
               wall: float, where: Sequence[Condition] = (), limit: int | None = None) -> bytes:
    """The whole Main Mode listing as one JSON array, in one go (built in slices all the
    same: a few MB of JSON at a time stay in the processor's caches and the allocator's pools)."""
    return join(json_slices(engine, columns, sort, now, wall, where=where, limit=limit))


def rows(engine: Any, columns: Sequence[str], sort: tuple[str, bool] | None, now: float,
         wall: float, where: Sequence[Condition] = (), limit: int | None = None) -> list[dict[str, Any]]:
    """The Main Mode listing as dicts with the keys ``columns``, as the views show them
    (tables, CSV, in-process callers)."""
    names = list(columns)
    out: list[dict[str, Any]] = []
    for step in _plan(engine, sort, now, wall, 1 << 30, where, limit):
        if step is not None:
            part, memo = step
            out += _dicts(names, columns_of(part, names, now, wall, memo)) if names else [{} for _sa in part]
    return out

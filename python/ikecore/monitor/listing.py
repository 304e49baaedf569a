"""The Main Mode security-association listing (layer L5): rows built column by column.

Design note. A listing of 100,000 ISAKMP SAs must take well under a second even the first
time, must not hold the gateway's event loop for more than a few tens of milliseconds at
a time, and must not cost memory per SA (a gateway holds 100,000 SAs in under 4 KiB each;
a cached row with its JSON would add more than half of that again). So nothing is cached
per SA: every listing reads the SA records afresh, in slices of ``SLICE`` SAs.

* Columns, not rows: each requested column is one list comprehension over a slice of SA
  records (``_BUILDERS``), so a column nobody asked for costs nothing, and the values
  that many SAs share (the suite's names, vendor ID lists, identities, creation
  seconds) are computed once per listing (``_Memo``).
* JSON in Rust: ``ikecore._core.json_rows`` writes ``{"key": value, ...}`` objects
  straight from the column lists (no dict per row); ``rows`` builds dicts only for
  callers that want Python rows (tables, CSV, the demo).
* Slices: ``json_slices`` yields one JSON fragment per slice; the control socket yields
  to the event loop between two of them (a slice of 2,000 SAs is about 5 ms of work),
  so negotiations go on while a long listing is produced. A listing shows the SAs of the
  database when it started that are still there when their slice is built; each row is
  consistent in itself (read in one go between two datagrams). Sorting reads the sort
  column in slices too, then orders the SA records once.

The values match ``IsakmpSa.snapshot`` (the engine's own view of an SA) with ``created``
as UTC ISO 8601, ``lifetime_left`` in whole seconds, ``vendor_ids`` as one string.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

from ikecore import policy, wire
from ikecore._core import json_rows
from ikecore.sa import IsakmpSa, id_to_text

__all__ = ["COLUMNS", "SLICE", "columns_of", "rows", "json_slices", "json_array", "join", "sort_key"]

#: Every column of the Main Mode security-associations view, the seed's first.
COLUMNS = ("me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity", "diffie_hellman",
           "initiator_cookie", "responder_cookie", "state", "role", "created", "lifetime_left", "nat",
           "vendor_ids", "quick_modes", "local_port", "peer_port", "exchange", "nat_t", "encapsulated", "dpd")

#: SA records per slice: what one turn of the gateway's event loop handles at most.
SLICE = 2000

_IPV4 = int(wire.IdType.IPV4_ADDR)
_ntoa, _pton, _INET = socket.inet_ntoa, socket.inet_pton, socket.AF_INET
_DER_ASN1_DN = int(wire.IdType.DER_ASN1_DN)


class _Memo:
    """What one listing computes once for many SAs (its clocks and the shared values)."""

    __slots__ = ("now", "wall", "suites", "suite_values", "vendors", "seconds", "ids", "slice", "slice_suites",
                 "subjects", "names", "keep")

    def __init__(self, now: float, wall: float) -> None:
        self.now, self.wall = now, wall
        # Memos keyed by id() hold their object in ``keep``: an SA deleted between two
        # slices cannot free it and let a new object take its id during the listing.
        self.keep: list[Any] = []
        self.suites: dict[int, tuple[str, str, str, str]] = {}  # id(chosen) -> names
        self.suite_values: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}
        self.vendors: dict[tuple[bytes, ...], str] = {}
        self.seconds: dict[int, str] = {}
        self.ids: dict[tuple[int, bytes], str] = {}
        self.subjects: dict[int, bytes] = {}  # id(certificate) -> DER of its subject
        self.names: dict[bytes, str] = {}  # DER of a subject -> its RFC 4514 text
        self.slice: list[IsakmpSa] | None = None
        self.slice_suites: list[tuple[str, str, str, str]] = []

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

    def vendor_ids(self, vids: list[bytes]) -> str:
        if not vids:
            return ""
        key = tuple(vids)
        text = self.vendors.get(key)
        if text is None:
            text = self.vendors[key] = ", ".join(wire.vendor_id_name(v) or v.hex() for v in vids)
        return text

    def created_of(self, sas: list[IsakmpSa]) -> list[str]:
        """When each SA was established (else started), UTC ISO 8601 to the second."""
        offset = self.wall - self.now
        seconds = [math.floor(offset + (sa.started if (at := sa.established) is None else at)) for sa in sas]
        get, iso = self.seconds.get, self.iso
        return [get(second) or iso(second) for second in seconds]

    def iso(self, second: int) -> str:
        text = self.seconds[second] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return text

    def id_text(self, payload: Any, certificate: Any) -> str:
        """``IsakmpSa._id_text``, with IPv4 addresses decoded in C and the rest memoised."""
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


def _lifetimes_left(sas: list[IsakmpSa], now: float) -> list[int | None]:
    """Whole seconds until each SA expires (0 once past; None: no lifetime)."""
    return [None if (expires := sa.expires) is None else int(expires - now) if expires > now else 0 for sa in sas]


_Builder = Callable[[list[IsakmpSa], _Memo], list[Any]]

_BUILDERS: dict[str, _Builder] = {
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
    "created": lambda sas, m: m.created_of(sas),
    "lifetime_left": lambda sas, m: _lifetimes_left(sas, m.now),
    "nat": lambda sas, m: [sa.nat for sa in sas],
    "vendor_ids": lambda sas, m: [(m.vendors.get(tuple(v)) or m.vendor_ids(v)) if (v := sa.vendor_ids) else ""
                                  for sa in sas],
    "quick_modes": lambda sas, m: [len(sa.ipsec_sas) for sa in sas],
    "local_port": lambda sas, m: [sa.local[1] for sa in sas],
    "peer_port": lambda sas, m: [sa.remote[1] for sa in sas],
    "exchange": lambda sas, m: ["aggressive" if sa.aggressive else "main" for sa in sas],
    "nat_t": lambda sas, m: [sa.nat_t.name if sa.nat_t is not None else "" for sa in sas],
    "encapsulated": lambda sas, m: [sa.encapsulated for sa in sas],
    "dpd": lambda sas, m: [sa.dpd for sa in sas],
}
assert tuple(_BUILDERS) == COLUMNS

#: Columns whose JSON ``json_rows`` writes from the raw value (bytes as hex): no str per SA.
_RAW_FOR_JSON: dict[str, _Builder] = {
    "initiator_cookie": lambda sas, m: [sa.initiator_cookie for sa in sas],
    "responder_cookie": lambda sas, m: [sa.responder_cookie for sa in sas],
}


def columns_of(sas: list[IsakmpSa], columns: Sequence[str], now: float, wall: float,
               memo: _Memo | None = None, *, for_json: bool = False) -> list[list[Any]]:
    """One list of values per requested column for ``sas`` (``now``: the engine's clock,
    ``wall``: the same instant as Unix time). ``for_json``: values for ``json_rows``, which
    writes bytes as hex itself. Raises KeyError for an unknown column."""
    memo = memo or _Memo(now, wall)
    if for_json:
        return [(_RAW_FOR_JSON.get(c) or _BUILDERS[c])(sas, memo) for c in columns]
    return [_BUILDERS[c](sas, memo) for c in columns]


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers by value, then addresses by value, then text case-blind; empty last."""
    if value is None or value == "":
        return (3, "")
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (0, value)
    text = str(value)
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
        keys += map(sort_key, _BUILDERS[column](sas[start:start + slice_size], memo))
        yield None
    order = sorted(range(len(sas)), key=keys.__getitem__, reverse=descending)
    yield [sas[i] for i in order]


def _plan(engine: Any, sort: tuple[str, bool] | None, now: float, wall: float,
          slice_size: int) -> Iterator[tuple[list[IsakmpSa], _Memo] | None]:
    memo = _Memo(now, wall)
    sas = engine.sas()
    ordered: list[IsakmpSa] = []
    for step in _sorted(sas, sort, memo, slice_size):
        if step is None:
            yield None
        else:
            ordered = step
    for start in range(0, len(ordered), slice_size):
        part = [sa for sa in ordered[start:start + slice_size] if engine.sa(sa.handle) is sa]
        yield part, memo


def json_slices(engine: Any, columns: Sequence[str], sort: tuple[str, bool] | None, now: float, wall: float,
                slice_size: int = SLICE) -> Iterator[bytes]:
    """The listing as JSON fragments, one per slice (``b""`` while sorting): comma-separated
    row objects, to be joined with ``b","`` inside ``[...]``. The caller may let other work
    run between two fragments; each SA is read when its slice is built."""
    keys = list(columns)
    for step in _plan(engine, sort, now, wall, slice_size):
        if step is None:
            yield b""
            continue
        part, memo = step
        yield json_rows(keys, columns_of(part, keys, now, wall, memo, for_json=True)) if part else b""


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
               wall: float) -> bytes:
    """The whole listing as one JSON array, in one go (built in slices all the same: a
    few MB of JSON at a time stay in the processor's caches and the allocator's pools)."""
    return join(json_slices(engine, columns, sort, now, wall))


def rows(engine: Any, columns: Sequence[str], sort: tuple[str, bool] | None, now: float,
         wall: float) -> list[dict[str, Any]]:
    """The listing as dicts with the keys ``columns`` (tables, CSV, in-process callers)."""
    names = list(columns)
    out: list[dict[str, Any]] = []
    for step in _plan(engine, sort, now, wall, 1 << 30):
        if step is not None:
            part, memo = step
            out += map(dict, map(zip, repeat(names), zip(*columns_of(part, names, now, wall, memo))))
    if not names:
        return [{} for _sa in engine.sas()]
    return out

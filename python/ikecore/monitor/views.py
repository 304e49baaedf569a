"""The IP Security Monitor's views: tables of rows with snake_case keys.

Main Mode: ``generic-filters``, ``specific-filters``, ``ike-policies``, ``statistics``,
``security-associations``; Quick Mode: ``generic-filters``, ``specific-filters``,
``statistics``, ``security-associations``; both: ``counters`` (the extended counters and
the negotiation-time histograms). Each view has default columns (those of the IP Security
Monitor document, in its order) and more that can be added; ``select`` adds, removes,
rearranges and sorts columns the way that document's results pane does.

Reads are snapshots: ``Views.query`` runs on the gateway's event loop between two
datagrams, copies what it needs and never waits on a negotiation. ``Views.listing`` gives
any view as JSON fragments built one slice of SAs at a time (the control socket lets the
loop turn between two of them, so a long listing never holds negotiations up). The rows of
both SA lists are defined once, in ``ikecore.monitor.listing``, and built column by column,
nothing cached per SA.
Names, columns and rendering live in ``ikecore.monitor.text`` (all a monitor client needs). Keywords of generic
filters (My IP Address, DNS Server, ...) are shown as keywords there and expanded into
addresses in the specific filters from ``HostConfig``. Quick Mode specific filters can also
show DNS names for their addresses (``DnsNameCache``: answers only from its cache, looks
names up in the background within a time limit); Main Mode ones cannot, as in the IP
Security Monitor document.
"""

from __future__ import annotations

import ipaddress
import operator
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import compress
from typing import Any

import orjson

from ikecore import policy
from ikecore.monitor import listing as sa_listing
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.monitor.formats import json_value
from ikecore.monitor.hostinfo import HostConfig
from ikecore.monitor.text import COLUMNS, DEFAULT_COLUMNS, MM, QM, VIEWS, ViewError, column_title, dumps, render

__all__ = ["VIEWS", "COLUMNS", "DEFAULT_COLUMNS", "Views", "DnsNameCache", "select", "render", "dumps",
           "parse_columns", "parse_where", "parse_sort", "parse_limit", "filter_rows", "ViewError", "column_title"]


_MM_SA_COLUMNS = COLUMNS[(MM, "security-associations")]
assert _MM_SA_COLUMNS == sa_listing.COLUMNS
assert COLUMNS[(QM, "security-associations")] == sa_listing.QUICK_MODE_COLUMNS


def parse_sort(sort: str | None, mode: str, view: str) -> tuple[str, bool] | None:
    """A request's ``sort`` on a view as (column, descending); raises ViewError."""
    return _parse_sort(sort, COLUMNS[(mode, view)])


def _parse_sort(sort: str | None, known: Sequence[str]) -> tuple[str, bool] | None:
    """``COLUMN[:asc|desc]`` of a view as (column, descending); raises ViewError."""
    if not sort:
        return None
    name, _, direction = sort.partition(":")
    if direction not in ("", "asc", "desc"):
        raise ViewError(f"sort order {direction!r} must be asc or desc")
    if name not in known:
        raise ViewError(f"cannot sort by unknown column {name!r}")
    return name, direction == "desc"

#: The gauges among the Quick Mode statistics and the counters they come from.
QUICK_MODE_STATISTICS = ("active_sas", "pending_key_operations", "key_additions", "key_updates",
                         "key_deletions", "quick_mode_negotiations", "quick_mode_failures",
                         "get_spi_failures", "key_addition_failures", "key_update_failures")


def _address_text(pattern: str) -> str:
    """A generic filter's Source/Destination as the IP Security Monitor document shows it
    (keywords by name)."""
    return policy.KEYWORDS.get(pattern, pattern)


def _methods(methods: Iterable[policy.AuthenticationMethod]) -> str:
    return ", ".join(m.display for m in methods)


def _host_of(network: str) -> str | None:
    """The address of a host selector (/32 or /128), else None."""
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else None


def _protocol_name(number: int) -> str:
    return {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}.get(number, str(number))


class DnsNameCache:
    """Reverse DNS names for Quick Mode specific filters, never blocking the caller.

    ``name(address)`` answers from the cache (``None`` while unknown) and starts a lookup
    in a small thread pool when the entry is missing or older than ``ttl``. A lookup that
    takes longer than ``time_limit`` or fails is remembered as "no name" for
    ``negative_ttl``. At most ``max_entries`` addresses are kept.
    """

    def __init__(self, resolve: Callable[[str], str] | None = None, *, ttl: float = 300.0,
                 negative_ttl: float = 60.0, time_limit: float = 2.0, max_entries: int = 10000,
                 clock: Callable[[], float] = time.monotonic, workers: int = 2) -> None:
        self._resolve = resolve or (lambda address: socket.gethostbyaddr(address)[0])
        self.ttl, self.negative_ttl, self.time_limit = ttl, negative_ttl, time_limit
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}  # address -> (name or "", expiry)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ikecore-dns")
        self._futures: list[Any] = []
        self.lookups = 0

    def name(self, address: str) -> str | None:
        """The cached name of ``address`` ('' when it has none), or None while unknown."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(address)
            if entry is not None and entry[1] > now:
                return entry[0]
            if address not in self._pending and len(self._pending) < self.max_entries:
                self._pending.add(address)
                self.lookups += 1
                if len(self._futures) >= 256:  # keep only lookups still running (for ``wait``)
                    self._futures = [f for f in self._futures if not f.done()]
                self._futures.append(self._pool.submit(self._lookup, address))
        return entry[0] if entry is not None else None

    def _lookup(self, address: str) -> None:
        started = self._clock()
        try:
            found = self._resolve(address)
        except (OSError, UnicodeError, ValueError):
            found = ""
        elapsed = self._clock() - started
        if elapsed > self.time_limit:
            found = ""
        now = self._clock()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[address] = (found, now + (self.ttl if found else self.negative_ttl))
            self._pending.discard(address)

    def wait(self, timeout: float) -> None:
        """Wait (tests, one-shot CLI) until the lookups started so far are done or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            futures, self._futures = self._futures, []
        for future in futures:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                future.result(timeout=remaining)
            except Exception:  # noqa: BLE001 - a timed-out lookup just stays unknown
                continue

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Views:
    """The views of one gateway: its engine, monitor, host configuration and clocks.

    Args:
        engine: the ``Engine`` whose SAs are shown.
        monitor: the ``Monitor`` that counts the engine's events.
        host: what the filter keywords expand into (default: read from this host, with the
            DHCP and WINS servers of the engine's configuration).
        clock: the engine's clock (the gateway's ``loop.time``).
        wall: wall-clock time, to show "created" as a date.
        dns: the reverse-DNS cache of Quick Mode specific filters (None: no names).
    """

    def __init__(self, engine: Any, monitor: Monitor, *, host: HostConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 dns: DnsNameCache | None = None) -> None:
        self.engine = engine
        self.monitor = monitor
        self._host = host
        self.clock = clock
        self.wall = wall
        self.dns = dns
        self._host_read_at: float | None = None  # None: injected (never re-read) or not read yet

    #: How long (seconds) the host's configuration read for keyword expansion is reused.
    HOST_TTL = 60.0

    @property
    def host(self) -> HostConfig:
        """The injected host configuration, or this host's, re-read every ``HOST_TTL`` seconds."""
        if self._host is None or (self._host_read_at is not None and
                                  time.monotonic() - self._host_read_at > self.HOST_TTL):
            config = self.engine.config
            self._host = HostConfig.read(dhcp_servers=getattr(config, "dhcp_servers", ()),
                                         wins_servers=getattr(config, "wins_servers", ()))
            self._host_read_at = time.monotonic()
        return self._host

    # --- the request entry point ------------------------------------------------------

    def query(self, mode: str, view: str, columns: Sequence[str] | str | None = None,
              sort: str | None = None, *, all_columns: bool = False, where: Sequence[str] | str | None = None,
              limit: int | None = None) -> dict[str, Any]:
        """One view as ``{"mode", "view", "columns", "rows"}``: the rows that satisfy every
        ``COLUMN=VALUE`` of ``where`` (``ikecore.monitor.listing.Condition``), sorted, at most
        ``limit`` of them; raises ViewError."""
        chosen = self._check(mode, view, columns, all_columns)
        order = _parse_sort(sort, COLUMNS[(mode, view)])
        conditions, limit = parse_where(mode, view, where), parse_limit(limit)
        if (mode, view) == (MM, "security-associations"):
            rows = sa_listing.rows(self.engine, chosen, order, self.clock(), self.wall(), conditions, limit)
            return {"mode": mode, "view": view, "columns": chosen, "rows": rows}
        rows = select(filter_rows(self.rows(mode, view), conditions), chosen, sort)
        return {"mode": mode, "view": view, "columns": chosen, "rows": rows if limit is None else rows[:limit]}

    @staticmethod
    def _check(mode: str, view: str, columns: Sequence[str] | str | None, all_columns: bool) -> list[str]:
        if mode not in VIEWS:
            raise ViewError(f"unknown mode {mode!r}; use {' or '.join(VIEWS)}")
        if view not in VIEWS[mode]:
            raise ViewError(f"unknown {mode} view {view!r}; use one of {', '.join(VIEWS[mode])}")
        return parse_columns(mode, view, columns, all_columns=all_columns)

    def rows(self, mode: str, view: str) -> list[dict[str, Any]]:
        """Every column of one view (unsorted)."""
        return getattr(self, f"_{mode.replace('-', '_')}_{view.replace('-', '_')}")()

    # --- Main Mode --------------------------------------------------------------------

    def _main_mode_generic_filters(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "source": _address_text(f.source), "destination": _address_text(f.destination),
                 "ike_policy": f.ike_policy, "authentication_methods": _methods(f.authentication_methods),
                 "connection_type": f.connection_type, "weight": f.weight, "mirrored": f.mirrored,
                 "quick_mode_policy": f.esp_policy}
                for f in self.engine.config.filters]

    def _configured_specific(self) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        """Specific filters from the keyword expansion of each generic filter."""
        out: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for flt in self.engine.config.filters:
            if "any" in (flt.source, flt.destination):
                continue  # only connections make such a filter specific
            for source in self.host.expand(flt.source):
                for destination in self.host.expand(flt.destination):
                    if not policy.same_family(source, destination):
                        continue  # keywords expand to both families: pair IPv4 with IPv4, IPv6 with IPv6
                    pair = flt.specific(source, destination)
                    for specific in pair if flt.mirrored else pair[:1]:
                        key = (specific.name, specific.source, specific.destination, specific.direction)
                        out.setdefault(key, {
                            "name": specific.name, "source": specific.source, "destination": specific.destination,
                            "direction": specific.direction, "ike_policy": specific.ike_policy,
                            "authentication_methods": _methods(specific.authentication_methods),
                            "weight": specific.weight, "connection_type": flt.connection_type})
        return out

    def _main_mode_specific_filter_slices(self, slice_size: int) -> Iterator[list[dict[str, Any]]]:
        """Specific filters: keyword expansion of each generic filter, then each connection's
        pair (outbound and inbound), once per (filter, addresses); one list per slice of SAs."""
        configured = self._configured_specific()
        yield list(configured.values())
        seen = set(configured)
        shared: dict[int, tuple[str, str, str, int, str]] = {}  # id(filter) -> its columns
        keep: list[Any] = []  # the filters named: no new object takes their id meanwhile
        sas = self.engine.sas()
        for start in range(0, len(sas), slice_size):
            rows = []
            for sa in sas[start:start + slice_size]:
                flt = sa.generic_filter
                local, remote = sa.local[0], sa.remote[0]
                consts = shared.get(id(flt))
                if consts is None:
                    consts = shared[id(flt)] = (flt.name, flt.ike_policy, _methods(flt.authentication_methods),
                                                flt.weight, flt.connection_type)
                    keep.append(flt)
                name, ike_policy, methods, weight, connection_type = consts
                for source, destination, direction in ((local, remote, "outbound"), (remote, local, "inbound")):
                    key = (name, source, destination, direction)
                    if key not in seen:
                        seen.add(key)
                        rows.append({"name": name, "source": source, "destination": destination,
                                     "direction": direction, "ike_policy": ike_policy,
                                     "authentication_methods": methods, "weight": weight,
                                     "connection_type": connection_type})
            yield rows

    def _main_mode_specific_filters(self) -> list[dict[str, Any]]:
        return [row for rows in self._main_mode_specific_filter_slices(1 << 30) for row in rows]

    def _main_mode_ike_policies(self) -> list[dict[str, Any]]:
        rows = []
        config = self.engine.config
        for ike in policy.ike_policies_shown(config.ike_policies, config.filters):  # no unused "default"
            for preference, suite in enumerate(ike.proposals, 1):
                rows.append({"name": ike.name, "encryption": suite.encryption_name, "integrity": suite.hash_name,
                             "diffie_hellman": policy.group_name(suite.group),
                             "authentication": suite.auth_method_name, "lifetime": suite.lifetime,
                             "preference": preference})
        return rows

    def _main_mode_statistics(self) -> list[dict[str, Any]]:
        stats = self.monitor.statistics(self.engine)  # the engine adds queued acquires
        return [{"statistic": key, "value": value} for key, value in stats.items()]

    def _main_mode_security_associations(self, columns: Sequence[str] | None = None,
                                         sort: tuple[str, bool] | None = None) -> list[dict[str, Any]]:
        return sa_listing.rows(self.engine, _MM_SA_COLUMNS if columns is None else columns, sort,
                               self.clock(), self.wall())

    #: Views whose rows come from the SA database: built one slice of SAs at a time.
    _SLICED = {(MM, "specific-filters"): "_main_mode_specific_filter_slices",
               (QM, "specific-filters"): "_quick_mode_specific_filter_slices",
               (QM, "security-associations"): "_quick_mode_security_association_slices"}

    def listing(self, mode: str, view: str, columns: Sequence[str] | str | None = None, sort: str | None = None,
                *, all_columns: bool = False, slice_size: int = sa_listing.SLICE,
                where: Sequence[str] | str | None = None,
                limit: int | None = None) -> tuple[list[str], Iterator[bytes]]:
        """One view as (columns, its rows as JSON fragments): comma-separated objects, to be
        joined with ``,`` inside ``[...]``; only the rows that satisfy ``where``, at most
        ``limit`` (as ``query``). The request is checked first (raises ViewError); then the
        work goes one slice of ``slice_size`` SAs (or rows) per fragment, ``b""`` while rows
        are filtered, built or sorted, so that the control socket lets the event loop turn
        between two fragments and negotiations never wait for a long listing."""
        chosen = self._check(mode, view, columns, all_columns)
        order = _parse_sort(sort, COLUMNS[(mode, view)])
        conditions, limit = parse_where(mode, view, where), parse_limit(limit)
        if (mode, view) == (MM, "security-associations"):
            return chosen, sa_listing.json_slices(self.engine, chosen, order, self.clock(), self.wall(), slice_size,
                                                  conditions, limit)
        if (mode, view) == (QM, "security-associations"):  # filtered a column at a time while built
            slices = sa_listing.quick_mode_slices(self.engine, self.clock(), self.wall(), max(1, slice_size // 2),
                                                  conditions)
            return chosen, self._json_fragments(slices, chosen, order, slice_size, (), limit)
        return chosen, self._json_fragments(self._row_slices(mode, view, slice_size), chosen, order, slice_size,
                                            conditions, limit)

    def _row_slices(self, mode: str, view: str, slice_size: int) -> Iterator[list[dict[str, Any]]]:
        sliced = self._SLICED.get((mode, view))
        if sliced is not None:  # a dict or two per SA: half a slice of the columnar listing
            return getattr(self, sliced)(max(1, slice_size // 2))
        return iter([self.rows(mode, view)])

    @staticmethod
    def _json_fragments(slices: Iterator[list[dict[str, Any]]], columns: list[str], order: tuple[str, bool] | None,
                        slice_size: int, conditions: Sequence[sa_listing.Condition] = (),
                        limit: int | None = None) -> Iterator[bytes]:
        rows: list[dict[str, Any]] = []
        for part in slices:
            rows += filter_rows(part, conditions)
            if limit is not None and order is None and len(rows) >= limit:
                break
            yield b""
        if order is not None:
            name, descending = order
            keys: list[tuple[int, Any]] = []
            for start in range(0, len(rows), slice_size):
                keys += [_sort_key(row.get(name)) for row in rows[start:start + slice_size]]
                yield b""
            rows = [rows[i] for i in sorted(range(len(rows)), key=keys.__getitem__, reverse=descending)]
            yield b""
        if limit is not None:
            rows = rows[:limit]
        for start in range(0, len(rows), slice_size):
            yield orjson.dumps(select(rows[start:start + slice_size], columns), default=json_value)[1:-1]

    def query_json(self, mode: str, view: str, columns: Sequence[str] | str | None = None,
                   sort: str | None = None, *, all_columns: bool = False, where: Sequence[str] | str | None = None,
                   limit: int | None = None) -> tuple[list[str], bytes]:
        """Like ``query`` but returns (columns, the rows as one JSON array): ``listing``
        in one go. The Main Mode SA list is encoded straight from its columns."""
        chosen, fragments = self.listing(mode, view, columns, sort, all_columns=all_columns, where=where,
                                         limit=limit)
        return chosen, sa_listing.join(fragments)

    def _main_mode_counters(self) -> list[dict[str, Any]]:
        rows = [{"counter": key, "value": value} for key, value in sorted(self.monitor.extended.items())]
        for phase, hist in (("phase1", self.monitor.phase1_time), ("phase2", self.monitor.phase2_time)):
            rows.append({"counter": f"negotiation_seconds:{phase}:count", "value": hist.count})
            rows.append({"counter": f"negotiation_seconds:{phase}:sum", "value": round(hist.total, 6)})
            for le, count in hist.cumulative():
                rows.append({"counter": f"negotiation_seconds:{phase}:le={le}", "value": count})
        return rows

    # --- Quick Mode -------------------------------------------------------------------

    def _quick_mode_generic_filters(self) -> list[dict[str, Any]]:
        rows = []
        for f in self.engine.config.filters:
            esp = self.engine.config.esp_policies.get(f.esp_policy)
            mode = esp.mode if esp is not None else "tunnel"
            source, src_proto, src_port = policy.selector_parts(f.local_ts) if f.local_ts else (f.source, 0, 0)
            destination, _p, dst_port = policy.selector_parts(f.remote_ts) if f.remote_ts else (f.destination, 0, 0)
            rows.append({"name": f.name, "source": _address_text(source), "destination": _address_text(destination),
                         "source_port": src_port, "destination_port": dst_port,
                         "source_tunnel_endpoint": _address_text(f.source) if mode == "tunnel" else "",
                         "destination_tunnel_endpoint": _address_text(f.destination) if mode == "tunnel" else "",
                         "protocol": _protocol_name(src_proto), "quick_mode_policy": f.esp_policy, "mode": mode})
        return rows

    def _quick_mode_specific_filter_slices(self, slice_size: int) -> Iterator[list[dict[str, Any]]]:
        """Each IPsec SA's selectors as an outbound and an inbound filter, once per
        (filter, selectors, direction); one list per slice of SAs."""
        seen: set[tuple[Any, ...]] = set()
        parts: dict[str, tuple[str, int, int]] = {}  # selector text -> its parts (many SAs share some)
        sas = self.engine.sas()
        for start in range(0, len(sas), slice_size):
            rows = []
            for sa in sas[start:start + slice_size]:
                if not sa.ipsec_sas:
                    continue
                flt = sa.generic_filter
                for ipsec in list(sa.ipsec_sas):
                    local, proto, local_port = parts.get(ipsec.local_ts) or parts.setdefault(
                        ipsec.local_ts, policy.selector_parts(ipsec.local_ts))
                    remote, _p, remote_port = parts.get(ipsec.remote_ts) or parts.setdefault(
                        ipsec.remote_ts, policy.selector_parts(ipsec.remote_ts))
                    tunnel = ipsec.mode == "tunnel"
                    for direction, src, dst, sport, dport, s_end, d_end in (
                            ("outbound", local, remote, local_port, remote_port, sa.local[0], sa.remote[0]),
                            ("inbound", remote, local, remote_port, local_port, sa.remote[0], sa.local[0])):
                        key = (flt.name, src, dst, sport, dport, proto, direction)
                        if key in seen:
                            continue
                        seen.add(key)
                        rows.append({
                            "name": flt.name, "source": src, "destination": dst,
                            "source_port": sport, "destination_port": dport,
                            "source_tunnel_endpoint": s_end if tunnel else "",
                            "destination_tunnel_endpoint": d_end if tunnel else "",
                            "protocol": _protocol_name(proto), "direction": direction,
                            "quick_mode_policy": flt.esp_policy, "weight": flt.weight,
                            "source_dns_name": self._dns_name(src), "destination_dns_name": self._dns_name(dst)})
            yield rows

    def _quick_mode_specific_filters(self) -> list[dict[str, Any]]:
        return [row for rows in self._quick_mode_specific_filter_slices(1 << 30) for row in rows]

    def _dns_name(self, network: str) -> str:
        if self.dns is None:
            return ""
        address = _host_of(network)
        return (self.dns.name(address) or "") if address else ""

    def _quick_mode_statistics(self) -> list[dict[str, Any]]:
        m = self.monitor
        c, x = m.counters, m.extended
        values = {
            "active_sas": m.ipsec_sa_count,
            "pending_key_operations": m.quick_modes_in_progress,
            "key_additions": c[Statistic.KEY_ADDITIONS],
            "key_updates": c[Statistic.KEY_UPDATES],
            "key_deletions": x["sa_deleted:phase2"],
            "quick_mode_negotiations": c[Statistic.IKE_QUICK_MODE],
            "quick_mode_failures": sum(v for k, v in x.items() if k.startswith("failures:phase2:")),
            "get_spi_failures": c[Statistic.GET_SPI_FAILURES],
            "key_addition_failures": c[Statistic.KEY_ADDITION_FAILURES],
            "key_update_failures": c[Statistic.KEY_UPDATE_FAILURES],
        }
        return [{"statistic": key, "value": int(values[key])} for key in QUICK_MODE_STATISTICS]

    def _quick_mode_security_association_slices(self, slice_size: int) -> Iterator[list[dict[str, Any]]]:
        """One row per IPsec SA pair (``ikecore.monitor.listing``); one list per slice of SAs."""
        yield from sa_listing.quick_mode_slices(self.engine, self.clock(), self.wall(), slice_size)

    def _quick_mode_security_associations(self) -> list[dict[str, Any]]:
        return [row for rows in self._quick_mode_security_association_slices(1 << 30) for row in rows]

    def _quick_mode_counters(self) -> list[dict[str, Any]]:
        marks = ("phase2", "quick_mode", "ipsec_esp", "driver_failures")
        return [row for row in self._main_mode_counters() if any(m in str(row["counter"]) for m in marks)]


# --- columns, sorting, formats ---------------------------------------------------------


def parse_columns(mode: str, view: str, spec: Sequence[str] | str | None, *,
                  all_columns: bool = False) -> list[str]:
    """Resolve a column request against a view.

    ``spec`` is None (the defaults), a list, or a comma-separated string whose items are
    column keys (an explicit order), ``+key`` (add to the defaults, at the end), ``-key``
    (remove) or ``all``. Raises ViewError naming the unknown column and the known ones.
    """
    known = COLUMNS[(mode, view)]
    if all_columns:
        base: list[str] = list(known)
    else:
        base = list(DEFAULT_COLUMNS[(mode, view)])
    if spec is None:
        return base
    items = [i.strip() for i in (spec.split(",") if isinstance(spec, str) else spec) if i.strip()]
    explicit = [i for i in items if i[0] not in "+-"]
    if explicit:
        base = [] if explicit != ["all"] else list(known)
    for item in items:
        op, key = (item[0], item[1:]) if item[0] in "+-" else ("=", item)
        if key == "all" and op != "-":
            continue
        if key not in known:
            raise ViewError(f"unknown column {key!r} in {mode} {view}; columns: {', '.join(known)}")
        if op == "-":
            base = [c for c in base if c != key]
        elif key not in base:
            base.append(key)
    return base


_sort_key = sa_listing.sort_key


def parse_where(mode: str, view: str, where: Sequence[str] | str | None) -> list[sa_listing.Condition]:
    """A request's ``where`` (``["COLUMN=VALUE", ...]``) as conditions on the view's columns;
    raises ViewError naming an unknown column and the view's columns."""
    try:
        return sa_listing.parse_where(where, COLUMNS[(mode, view)], f"{mode} {view}")
    except ViewError:
        raise
    except ValueError as exc:
        raise ViewError(str(exc)) from None


def parse_limit(limit: Any) -> int | None:
    """A request's ``limit``: None or a whole number of rows; raises ViewError."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ViewError(f"limit must be a whole number of rows (0 or more), not {limit!r}")
    return limit


def filter_rows(rows: list[dict[str, Any]], conditions: Sequence[sa_listing.Condition]) -> list[dict[str, Any]]:
    """The rows that satisfy every condition (tested a column at a time)."""
    for condition in conditions:
        if not rows:
            break
        column = condition.column
        rows = list(compress(rows, condition.matches([row.get(column) for row in rows])))
    return rows


def select(rows: list[dict[str, Any]], columns: Sequence[str], sort: str | None = None) -> list[dict[str, Any]]:
    """Sort by ``COLUMN[:desc]`` (numbers and addresses by value, empty last), then keep ``columns``."""
    if sort:
        key, _, order = sort.partition(":")
        if order not in ("", "asc", "desc"):
            raise ViewError(f"sort order {order!r} must be asc or desc")
        if rows and key not in rows[0]:
            raise ViewError(f"cannot sort by unknown column {key!r}")
        rows = sorted(rows, key=lambda row: _sort_key(row.get(key)), reverse=order == "desc")
    if not columns:
        return [{} for _row in rows]
    if rows and len(columns) == len(rows[0]) and list(rows[0]) == list(columns):
        return [row.copy() for row in rows]  # every column, in order (rows of one view share keys)
    pick = operator.itemgetter(*columns)
    names = tuple(columns)
    try:
        if len(names) == 1:
            return [{names[0]: pick(row)} for row in rows]
        return [dict(zip(names, pick(row))) for row in rows]
    except KeyError:  # a row without some column: show it empty
        return [{c: row.get(c) for c in columns} for row in rows]

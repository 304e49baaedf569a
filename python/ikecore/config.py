"""Gateway configuration: one frozen ``Config``, from TOML or from flags.

A TOML file says everything::

    [gateway]
    listen = ["0.0.0.0:500", "0.0.0.0:4500"]
    my_id = "gw.example.net"          # optional; default: our IP address (ID_IPV4_ADDR)
    driver = "memory"                 # where Quick Mode SAs go: memory, xfrm or userland

    [ike_policy.default]
    proposals = "aes128-sha256-modp2048,3des-sha1-modp1024"
    lifetime = 28800

    [esp_policy.default]
    proposals = "aes128-sha256"       # add a group for PFS: aes128-sha256-modp2048
    mode = "tunnel"                   # or "transport"
    lifetime = 3600
    lifetime_kilobytes = 0

    [[filter]]
    name = "branch offices"
    source = "me"                     # address, CIDR, any, or me/dns/dhcp/wins/gateway
    destination = "any"
    ike_policy = "default"
    esp_policy = "default"
    psk = "secret"
    connection_type = "all"
    # RSA signatures instead of (or before) the PSK: all three keys together
    # certificate = "gw.pem"; private_key = "gw.key"; ca = ["ca.pem"]

    [limits]                          # optional: the defaults (0: no limit; see Limits)
    quick_modes_in_flight = 64        # per ISAKMP SA, started by the peer
    ipsec_sas_per_isakmp_sa = 512
    isakmp_sas_per_peer = 10000
    isakmp_sas = 250000

    [metrics]                         # optional: how serve --metrics serves (flags win)
    per_sa = 0                        # SAs with per-SA series, at most (0: none)
    cache_seconds = 1.0               # the exposition is built at most once per this long
    max_connections = 8               # scrape connections served at once
    web_config = "web.yml"            # TLS and basic auth (Prometheus exporter-toolkit format)

Every error is a ``ConfigError`` whose message names the key and the fix: the TOML key
(``filter[2].local_ts``), or for ``config_from_flags`` its argument (``ike``), ``config``
for the file itself. The command line says the flag instead (``--ike``): it passes
every error through ``flag_message``, which knows which key each flag sets (``FLAGS``).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ikecore import policy, wire
from ikecore.errors import ConfigError

__all__ = ["Config", "Timing", "FloodLimits", "Limits", "MetricsSettings", "load_config", "config_from_flags", "parse_endpoint",
           "PSK_ENVIRONMENT", "check_owner_only", "read_psk_file", "psk_from_flags", "FLAGS", "flag_message"]


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Responder limits against half-open floods (safe defaults; see ``ikecore.engine.admission``)."""

    max_half_open: int = 4096            # responder half-open SAs in total; oldest dropped first
    max_half_open_per_source: int = 32   # per source IP address; more are refused
    cookie_threshold: int = 512          # from this many half-open SAs on, message 2 is stateless
    offer_cache_size: int = 1024         # unproven SA offers remembered in stateless mode
    max_offer_size: int = 2048           # bytes of one SA payload body accepted statelessly
    cookie_epoch: float = 120.0          # seconds between cookie secret rotations

    def __post_init__(self) -> None:
        for name in ("max_half_open", "max_half_open_per_source", "cookie_threshold",
                     "offer_cache_size", "max_offer_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"flood.{name}", "must be at least 1")
        if self.cookie_epoch <= 0:
            raise ConfigError("flood.cookie_epoch", "must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one peer may make the gateway hold once past the half-open stage (``[limits]``).

    A request over a limit is refused, counted (``limits:<key>``) and answered with the
    Notify RFC 2408 has for it: a Quick Mode with a protected NO-PROPOSAL-CHOSEN, a new
    ISAKMP SA with an unprotected NO-PROPOSAL-CHOSEN to message 1. Everyone else is served
    as before. 0 means no limit. ``isakmp_sas`` counts SAs of both roles and limits only
    what peers start; a gateway of N worker processes gives each worker its share
    (``isakmp_sas`` / N, rounded up); the other limits hold in each worker.
    """

    quick_modes_in_flight: int = 64        # per ISAKMP SA: Quick Modes the peer started, not yet done
    ipsec_sas_per_isakmp_sa: int = 512     # IPsec SA pairs (and the peer's Quick Modes in flight) per ISAKMP SA
    isakmp_sas_per_peer: int = 10000       # ISAKMP SAs with one peer address (NATs front many peers)
    isakmp_sas: int = 250000               # ISAKMP SAs in total

    def __post_init__(self) -> None:
        for name in ("quick_modes_in_flight", "ipsec_sas_per_isakmp_sa", "isakmp_sas_per_peer", "isakmp_sas"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"limits.{name}", f"must be a whole number, 0 or more (0: no limit), not {value!r}")


@dataclass(frozen=True, slots=True)
class Timing:
    """Retransmission and timeout rules (seconds)."""

    retransmit_timeout: float = 2.0     # first retransmission after this long
    retransmit_backoff: float = 1.8     # multiplied each time (strongSwan's factor)
    retransmit_tries: int = 5           # retransmissions before giving up
    negotiation_timeout: float = 60.0   # a negotiation that is not done by then fails
    rekey_margin: float = 0.0           # rekey this long before expiry (+ jitter); 0 = never rekey
    nat_keepalive: float = 20.0         # NAT keepalive interval behind a NAT (RFC 3948 2.3)
    dpd_delay: float = 0.0              # idle seconds before an R-U-THERE; 0: no DPD checks
    dpd_timeout: float = 150.0          # no R-U-THERE-ACK for this long: the peer is dead


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The ``[metrics]`` table; None: not set (the ``serve`` flag or the default applies,
    ``ikecore.monitor.exporters.MetricsOptions``)."""

    per_sa: int | None = None
    cache_seconds: float | None = None
    max_connections: int | None = None
    web_config: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a gateway or initiator needs; passed in, never global."""

    listen: tuple[tuple[str, int], ...] = (("0.0.0.0", 500), ("0.0.0.0", 4500))
    my_id: str | None = None
    ike_policies: dict[str, policy.IkePolicy] = field(default_factory=dict)
    esp_policies: dict[str, policy.EspPolicy] = field(default_factory=dict)
    filters: tuple[policy.GenericFilter, ...] = ()
    timing: Timing = Timing()
    keylog: str | None = None
    dhcp_servers: tuple[str, ...] = ()  # what the DHCP Server keyword means when the host has no lease
    wins_servers: tuple[str, ...] = ()  # what the WINS Servers keyword means
    flood: FloodLimits = FloodLimits()
    limits: Limits = Limits()
    metrics: MetricsSettings = MetricsSettings()
    driver: str | None = None  # [gateway] driver: memory, xfrm or userland (ikecore.gateway.drivers)

    def filter_for(self, local: str, remote: str) -> policy.GenericFilter | None:
        """The first generic filter (by weight, then order) that matches the address pair."""
        ordered = sorted(enumerate(self.filters), key=lambda item: (-item[1].weight, item[0]))
        for _index, candidate in ordered:
            if candidate.matches(local, remote):
                return candidate
        return None


def parse_endpoint(text: str, default_port: int, field_name: str) -> tuple[str, int]:
    """``ADDR[:PORT]``, ``[v6]:PORT`` or a bare IPv6 address -> (address, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], field_name)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, field_name)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(field_name, f"'{text}' is not ADDR[:PORT] with an IP address") from None
    return host, port


def _port(text: str, field_name: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(field_name, f"port '{text}' must be a number 0-65535")
    return int(text)


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}.{key}", "is required")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}", f"must be {names}, not {type(value).__name__}")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _proposal_text(value: Any, where: str) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, str):
        return value
    raise ConfigError(where, "must be a string like 'aes128-sha256-modp2048' or a list of them")


def _filter_from_table(table: dict[str, Any], index: int, ike: dict[str, policy.IkePolicy],
                       esp: dict[str, policy.EspPolicy]) -> policy.GenericFilter:
    where = f"filter[{index}]"
    _check_keys(table, {"name", "source", "destination", "ike_policy", "esp_policy", "psk",
                        "connection_type", "local_id", "remote_id", "local_ts", "remote_ts",
                        "mirrored", "weight", "certificate", "private_key", "ca",
                        "fallback_to_clear", "soft_sa_lifetime", "quick_mode_window", "aggressive", "nat_traversal", "dpd"}, where)
    name = _get(table, "name", str, where, f"filter {index + 1}")
    source = _get(table, "source", str, where, "me")
    destination = _get(table, "destination", str, where, "any")
    for key, value in (("source", source), ("destination", destination)):
        if value not in policy.KEYWORDS:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ConfigError(f"{where}.{key}", f"'{value}' is not an address, CIDR network or one of "
                                                    f"{', '.join(policy.KEYWORDS)}") from None
    ike_name = _get(table, "ike_policy", str, where, "default")
    if ike_name not in ike:
        raise ConfigError(f"{where}.ike_policy", f"no [ike_policy.{ike_name}] table is defined")
    esp_name = _get(table, "esp_policy", str, where, "default")
    if esp_name not in esp:
        raise ConfigError(f"{where}.esp_policy", f"no [esp_policy.{esp_name}] table is defined")
    credentials = _credentials(table, where)
    psk = _get(table, "psk", str, where, ... if credentials is None else "")
    if not psk and credentials is None:
        raise ConfigError(f"{where}.psk", "must not be empty")
    methods = ((policy.AuthenticationMethod(wire.AuthMethod.RSA_SIG),) if credentials is not None else ()) + (
        (policy.AuthenticationMethod(secret=psk.encode()),) if psk else ())
    connection_type = _get(table, "connection_type", str, where, "all")
    if connection_type not in ("all", "lan", "remote-access"):
        raise ConfigError(f"{where}.connection_type", "must be all, lan or remote-access")
    return policy.GenericFilter(
        name=name, source=source, destination=destination, ike_policy=ike_name,
        authentication_methods=methods,
        connection_type=connection_type, esp_policy=esp_name, credentials=credentials,
        local_id=_get(table, "local_id", str, where), remote_id=_get(table, "remote_id", str, where),
        local_ts=_get(table, "local_ts", str, where), remote_ts=_get(table, "remote_ts", str, where),
        mirrored=_get(table, "mirrored", bool, where, True), weight=_get(table, "weight", int, where, 0),
        fallback_to_clear=_get(table, "fallback_to_clear", bool, where, False),
        soft_sa_lifetime=_get(table, "soft_sa_lifetime", int, where, 300),
        quick_mode_window=_get(table, "quick_mode_window", int, where, 0),
        aggressive=_get(table, "aggressive", bool, where, False), dpd=_get(table, "dpd", bool, where, True),
        nat_traversal=_nat_traversal(_get(table, "nat_traversal", str, where, "auto"), f"{where}.nat_traversal"),
    )


def _credentials(table: dict[str, Any], where: str) -> Any:
    """certificate + private_key + ca (a path or a list): RSA signatures for this filter."""
    given = [key for key in ("certificate", "private_key", "ca") if key in table]
    if not given:
        return None
    if len(given) != 3:
        missing = sorted({"certificate", "private_key", "ca"} - set(given))
        raise ConfigError(f"{where}.{missing[0]}", "certificate, private_key and ca go together")
    cas = table["ca"]
    if isinstance(cas, str):
        cas = [cas]
    if not isinstance(cas, list) or not all(isinstance(c, str) for c in cas):
        raise ConfigError(f"{where}.ca", "must be a file path or a list of them")
    from ikecore.credentials import Credentials

    return Credentials.load(_get(table, "certificate", str, where), _get(table, "private_key", str, where),
                            cas, where)


def _nat_traversal(value: str, where: str) -> str:
    if value not in ("auto", "force", "off"):
        raise ConfigError(where, "must be auto, force or off")
    return value


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from parsed TOML; raises ConfigError naming the key."""
    _check_keys(data, {"gateway", "ike_policy", "esp_policy", "filter", "timing", "flood", "limits", "metrics"},
                "config")
    gateway = _get(data, "gateway", dict, "config", {})
    _check_keys(gateway, {"listen", "my_id", "keylog", "dhcp_servers", "wins_servers", "driver"}, "gateway")
    driver = _get(gateway, "driver", str, "gateway")
    if driver is not None and driver not in ("memory", "xfrm", "userland"):
        raise ConfigError("gateway.driver", f"unknown driver {driver!r}; use memory, xfrm or userland")
    servers = {key: tuple(parse_endpoint(str(item), 0, f"gateway.{key}")[0]
                          for item in _get(gateway, key, list, "gateway", []))
               for key in ("dhcp_servers", "wins_servers")}
    listen_list = _get(gateway, "listen", list, "gateway", ["0.0.0.0:500", "0.0.0.0:4500"])
    listen = tuple(parse_endpoint(str(item), 500, "gateway.listen") for item in listen_list)

    ike: dict[str, policy.IkePolicy] = {}
    for name, table in _get(data, "ike_policy", dict, "config", {}).items():
        where = f"ike_policy.{name}"
        _check_keys(table, {"proposals", "lifetime", "lifetime_kilobytes"}, where)
        lifetime = _get(table, "lifetime", int, where, policy.DEFAULT_IKE_LIFETIME)
        text = _proposal_text(table.get("proposals", "aes128-sha256-modp2048"), f"{where}.proposals")
        ike[name] = policy.IkePolicy(name, policy.parse_ike_proposals(
            text, lifetime=lifetime, lifetime_kilobytes=_get(table, "lifetime_kilobytes", int, where, None),
            field_name=f"{where}.proposals"))
    ike.setdefault("default", policy.IkePolicy("default", policy.parse_ike_proposals("aes128-sha256-modp2048")))

    esp: dict[str, policy.EspPolicy] = {}
    for name, table in _get(data, "esp_policy", dict, "config", {}).items():
        where = f"esp_policy.{name}"
        _check_keys(table, {"proposals", "mode", "lifetime", "lifetime_kilobytes"}, where)
        mode = _get(table, "mode", str, where, "tunnel")
        if mode not in ("tunnel", "transport"):
            raise ConfigError(f"{where}.mode", "must be tunnel or transport")
        text = _proposal_text(table.get("proposals", "aes128-sha256"), f"{where}.proposals")
        proposals = policy.parse_esp_proposals(
            text, lifetime=_get(table, "lifetime", int, where, policy.DEFAULT_ESP_LIFETIME),
            lifetime_kilobytes=_get(table, "lifetime_kilobytes", int, where, None) or None,
            field_name=f"{where}.proposals")
        esp[name] = policy.EspPolicy(name, proposals, mode)
    esp.setdefault("default", policy.EspPolicy("default", policy.parse_esp_proposals("aes128-sha256")))

    filters = tuple(_filter_from_table(table, i, ike, esp)
                    for i, table in enumerate(_get(data, "filter", list, "config", [])))
    timing_table = _get(data, "timing", dict, "config", {})
    _check_keys(timing_table, set(Timing.__dataclass_fields__), "timing")
    timing_values: dict[str, Any] = {k: float(v) if k != "retransmit_tries" else int(v)
                                     for k, v in timing_table.items()}
    timing = Timing(**timing_values)
    flood_table = _get(data, "flood", dict, "config", {})
    _check_keys(flood_table, set(FloodLimits.__dataclass_fields__), "flood")
    try:
        flood_values: dict[str, Any] = {k: float(v) if k == "cookie_epoch" else int(v) for k, v in flood_table.items()}
        flood = FloodLimits(**flood_values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError("flood", f"{exc}; use positive numbers") from None
    limits = _limits(_get(data, "limits", dict, "config", {}))
    metrics = _metrics(_get(data, "metrics", dict, "config", {}))
    return Config(listen=listen, my_id=_get(gateway, "my_id", str, "gateway"), ike_policies=ike,
                  esp_policies=esp, filters=filters, timing=timing,
                  keylog=_get(gateway, "keylog", str, "gateway"), flood=flood, limits=limits, metrics=metrics,
                  driver=driver, **servers)


def _metrics(table: dict[str, Any]) -> MetricsSettings:
    """The ``[metrics]`` table."""
    _check_keys(table, set(MetricsSettings.__dataclass_fields__), "metrics")
    per_sa = _get(table, "per_sa", int, "metrics")
    if per_sa is not None and per_sa < 0:
        raise ConfigError("metrics.per_sa", "must be 0 (no per-SA series) or more")
    cache = _get(table, "cache_seconds", (int, float), "metrics")
    if cache is not None and not 0 <= cache <= 3600:
        raise ConfigError("metrics.cache_seconds", "must be 0 to 3600 seconds (1 is a good value)")
    connections = _get(table, "max_connections", int, "metrics")
    if connections is not None and not 1 <= connections <= 1024:
        raise ConfigError("metrics.max_connections", "must be 1 to 1024")
    return MetricsSettings(per_sa=per_sa, cache_seconds=None if cache is None else float(cache),
                           max_connections=connections, web_config=_get(table, "web_config", str, "metrics"))


def _limits(table: dict[str, Any]) -> Limits:
    """The ``[limits]`` table: whole numbers, 0 for no limit."""
    _check_keys(table, set(Limits.__dataclass_fields__), "limits")
    for key in table:
        _get(table, key, int, "limits")
        if table[key] < 0:
            raise ConfigError(f"limits.{key}", "must be 0 or more (0: no limit)")
    return Limits(**table)


def load_config(path: str) -> Config:
    """Read a TOML config file; one that holds a pre-shared key must be owner-only (0600)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
            mode = os.fstat(handle.fileno()).st_mode
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    filters = data.get("filter")
    if isinstance(filters, list) and any(isinstance(t, dict) and t.get("psk") for t in filters):
        check_owner_only(mode, path, "config", "holds a pre-shared key and ")
    return config_from_dict(data)


#: The environment variable ``serve``, ``connect`` and ``loadtest`` take the pre-shared key
#: from when neither ``--psk`` nor ``--psk-file`` gives it (``ps`` shows flags, not the environment).
PSK_ENVIRONMENT = "IKECORE_PSK"


def check_owner_only(mode: int, path: str, field_name: str, what: str = "") -> None:
    """Refuse a file holding secrets that group or others may access (as ssh refuses a
    private key): ConfigError naming ``field_name`` and the fix, ``chmod 600 FILE``."""
    if mode & 0o077:
        raise ConfigError(field_name, f"{path} {what}is accessible by other users (mode {mode & 0o777:04o}); "
                                      f"chmod 600 {path}")


def read_psk_file(path: str, field_name: str = "--psk-file") -> str:
    """The pre-shared key in ``path``: its first line without the line end. The file must
    be owner-only (0600), as ``check_owner_only`` says."""
    try:
        with open(path, "rb") as handle:
            check_owner_only(os.fstat(handle.fileno()).st_mode, path, field_name)
            first = handle.readline().rstrip(b"\n").rstrip(b"\r")
    except OSError as exc:
        raise ConfigError(field_name, f"cannot read {path}: {exc.strerror}") from None
    try:
        psk = first.decode()
    except UnicodeDecodeError:
        raise ConfigError(field_name, f"the first line of {path} is not UTF-8 text") from None
    if not psk:
        raise ConfigError(field_name, f"the first line of {path} is empty; write the pre-shared key there")
    return psk


def psk_from_flags(psk: str | None, psk_file: str | None, environ: dict[str, str] | None = None) -> str:
    """The pre-shared key of ``--psk``, else ``--psk-file``, else ``$IKECORE_PSK``; '' for none."""
    if psk and psk_file:
        raise ConfigError("--psk-file", "give --psk or --psk-file, not both")
    if psk:
        return psk
    if psk_file:
        return read_psk_file(psk_file)
    return (os.environ if environ is None else environ).get(PSK_ENVIRONMENT, "")


def config_from_flags(*, psk: str, ike: str = "aes128-sha256-modp2048", esp: str = "aes128-sha256",
                      listen: tuple[tuple[str, int], ...] = (("0.0.0.0", 500), ("0.0.0.0", 4500)),
                      remote: str = "any", mode: str = "tunnel", local_ts: str | None = None,
                      remote_ts: str | None = None, my_id: str | None = None,
                      keylog: str | None = None, timing: Timing | None = None,
                      aggressive: bool = False, nat_traversal: str = "auto",
                      credentials: Any = None) -> Config:
    """The one-filter config that ``serve``/``connect`` flags describe.

    ``credentials`` (``ikecore.credentials.Credentials``): RSA signatures, preferred over ``psk``.
    """
    if not psk and credentials is None:
        raise ConfigError("psk", "a pre-shared key is required: --psk-file FILE, $IKECORE_PSK or --psk "
                                 "(or --cert, --key and --ca)")
    methods = ((policy.AuthenticationMethod(wire.AuthMethod.RSA_SIG),) if credentials is not None else ()) + (
        (policy.AuthenticationMethod(secret=psk.encode()),) if psk else ())
    ike_policy = policy.IkePolicy("default", policy.parse_ike_proposals(ike, field_name="ike"))
    esp_policy = policy.EspPolicy("default", policy.parse_esp_proposals(esp, field_name="esp"), mode)
    generic = policy.GenericFilter(
        name="default", source="me", destination=remote, ike_policy="default",
        authentication_methods=methods, credentials=credentials,
        local_ts=local_ts, remote_ts=remote_ts, aggressive=aggressive,
        nat_traversal=_nat_traversal(nat_traversal, "nat_traversal"), local_id=my_id)
    return Config(listen=listen, my_id=my_id, ike_policies={"default": ike_policy},
                  esp_policies={"default": esp_policy}, filters=(generic,),
                  timing=timing or Timing(), keylog=keylog)


#: The command-line flag that sets each key ``config_from_flags`` and ``load_config`` name
#: in their errors (``ikecore serve``, ``connect``, ``loadtest`` and ``demo`` share them).
FLAGS: dict[str, str] = {"psk": "--psk", "ike": "--ike", "esp": "--esp", "nat_traversal": "--nat-t",
                         "mode": "--mode", "config": "--config"}


def flag_message(error: ConfigError, flags: dict[str, str] | None = None) -> str:
    """``error``'s message as the command line says it: the flag that sets the key
    (``--ike: unknown integrity 'sha7'``) instead of the key (``ike: ...``); keys of a
    config file (``filter[2].local_ts``) and flags stay as they are."""
    flag = (FLAGS if flags is None else flags).get(error.key)
    return str(error) if flag is None else f"{flag}: {error.problem}"

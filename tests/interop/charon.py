"""A private strongSwan ``charon`` as an IKEv1 (PSK) peer for interop tests.

Each :class:`Charon` owns one ``tempfile.mkdtemp()`` state directory holding its
``strongswan.conf``, ``swanctl.conf``, log, vici socket and pid file. charon runs
in its own session and in a private mount namespace whose ``/run`` is a bind
mount of ``<state>/run`` (charon's pid file path ``/var/run/charon.pid`` is
compiled in), so several instances run side by side and nothing of the host's
``/etc/strongswan*`` or ``/run`` is used. Host routing is never touched
(``install_routes = no``, ``routing_table = 0``) and on the host no IPsec
policies are installed (``policies = no``).

Kernels (``kernel=``):

``"fake"``
    the private build from ``build-strongswan.sh`` with the load-tester plugin's
    fake kernel interface: CHILD_SAs "install" without the kernel, so Quick Mode
    completes on host loopback (this kernel has no ESP xfrm type).
``"netlink"``
    Debian's charon with kernel-netlink. Phase 1 completes; installing the
    CHILD_SA fails on a kernel without ESP (the initiator then sends
    NO_PROPOSAL_CHOSEN instead of QM3).
``"libipsec"``
    Debian's charon with kernel-libipsec (userspace ESP over a TUN device):
    only inside a network namespace (``netns=``); forces UDP encapsulation.

Addresses must be loopback (127.0.0.0/8, ::1) unless ``netns`` is given.
Processes are stopped only by their recorded PID after checking that the PID is
a ``charon``.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = [
    "Charon",
    "CharonError",
    "available",
    "fake_kernel_prefix",
    "free_udp_ports",
    "parse_vici_raw",
    "key_lines",
    "log_dumps",
]

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-strongswan.sh"
DEBIAN_CHARON = Path("/usr/lib/ipsec/charon")
CONN = "ikev1"
CHILD = "net"
# Plugins common to every kernel choice (explicit list: nothing from /etc is read).
BASE_PLUGINS = (
    "random nonce openssl aes des sha1 sha2 md5 hmac gmp kdf pem pkcs1 x509 pubkey "
    "socket-default vici"
)


class CharonError(RuntimeError):
    """charon could not be started, configured or queried."""


def _cache_dir() -> Path:
    env = os.environ.get("IKECORE_INTEROP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ikecore-interop"


def fake_kernel_prefix(*, build: bool = False) -> Path | None:
    """Install prefix of the private load-tester build, or None if it is absent.

    With ``build=True`` run ``build-strongswan.sh`` first (idempotent; about a
    minute the first time, instant later).
    """
    if build:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=1800, check=False,
        )
        if out.returncode != 0:
            raise CharonError(f"build-strongswan.sh failed:\n{out.stderr[-2000:]}")
        for line in out.stdout.splitlines():
            if line.startswith("PREFIX="):
                return Path(line[len("PREFIX="):])
        raise CharonError("build-strongswan.sh printed no PREFIX")
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--prefix"], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=30, check=False,
    )
    prefix = None
    for line in out.stdout.splitlines():
        if line.startswith("PREFIX="):
            prefix = Path(line[len("PREFIX="):])
    if prefix is None:
        prefix = next(iter(_cache_dir().glob("strongswan-*-lt")), None)
    if prefix and (prefix / ".ikecore-build-complete").exists() and (
        prefix / "libexec/ipsec/charon"
    ).exists():
        return prefix
    return None


def _swanctl_binary(prefix: Path | None) -> str | None:
    found = shutil.which("swanctl")
    if found:
        return found
    if prefix and (prefix / "sbin/swanctl").exists():
        return str(prefix / "sbin/swanctl")
    return None


def available(kernel: str = "fake") -> str | None:
    """None when charon and swanctl are usable for ``kernel``; otherwise the reason."""
    if os.name != "posix" or not Path("/proc/self/comm").exists():
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (private mount namespace, loopback binds)"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) not installed"
    if kernel == "fake":
        prefix = fake_kernel_prefix()
        if prefix is None:
            return "private strongSwan build missing: run tests/interop/build-strongswan.sh"
        charon = prefix / "libexec/ipsec/charon"
    elif kernel in ("netlink", "libipsec"):
        prefix = None
        charon = DEBIAN_CHARON
        if not charon.exists():
            return "strongswan-charon not installed (/usr/lib/ipsec/charon)"
        if kernel == "libipsec" and not Path(
            "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"
        ).exists():
            return "libcharon-extra-plugins (kernel-libipsec) not installed"
    else:
        return f"unknown kernel {kernel!r}"
    if not os.access(charon, os.X_OK):
        return f"{charon} not executable"
    if _swanctl_binary(prefix) is None:
        return "strongswan-swanctl not installed"
    return None


def free_udp_ports(count: int = 2, *, host: str = "0.0.0.0") -> list[int]:
    """``count`` distinct UDP ports that are free on the wildcard address right now.

    charon's socket-default plugin binds the wildcard address, so two instances on
    one network namespace need different ports (other test runs may share the host).
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _check_local(addr: str, netns: str | None, what: str) -> None:
    if netns is not None or addr == "%any":
        return
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError as exc:
        raise ValueError(f"{what} {addr!r} is not an IP address") from exc
    if not ip.is_loopback:
        raise ValueError(f"{what} {addr} is not loopback; pass netns= for other addresses")


def _conf_string(value: str) -> str:
    """A strongswan.conf double-quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_token(value: str, what: str) -> str:
    """Values pasted unquoted into swanctl.conf must not break its syntax."""
    if not value or re.search(r"[\s{}=#\"]", value):
        raise ValueError(f"{what} {value!r} must be a single token without {{}}=#\" or spaces")
    return value


# --- vici raw output ---------------------------------------------------------------
#
# `swanctl --list-sas --raw` prints one vici message per line:
#   list-sa event {ikev1 {uniqueid=1 version=1 state=ESTABLISHED ...
#                  child-sas {net-1 {name=net ... local-ts=[127.0.0.2/32]}}}}
# Sections are "name {...}", lists "name=[a b]", values "key=value" (no spaces).

# Values may hold spaces (a DN such as "C=CH, O=ikecore test, CN=x"): a value runs on
# until whitespace followed by the next lowercase vici key ("key=", "key {").
_TOKEN = re.compile(r"\s*(?:(\})|(\])|([^\s{}\[\]=]+)(\s*\{|=\[|="
                    r"((?:[^\s{}\[\]]|\s(?![a-z0-9_-]+(?:=|\s*\{))(?=[^\s{}\[\]]))*)))")


def parse_vici_raw(text: str) -> dict[str, Any]:
    """Parse one ``--raw`` vici message body (``{...}`` or ``name {...}``) into dicts."""
    pos = 0
    text = text.strip()
    # skip a leading event name such as "list-sa event"
    brace = text.find("{")
    if brace < 0:
        raise CharonError(f"not a vici raw message: {text[:80]!r}")
    pos = brace + 1

    def section(pos: int, depth: int) -> tuple[dict[str, Any], int]:
        if depth > 32:
            raise CharonError("vici message nested too deeply")
        out: dict[str, Any] = {}
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                if text[pos:].strip() == "":
                    break
                raise CharonError(f"cannot parse vici raw output at {text[pos:pos + 40]!r}")
            pos = m.end()
            if m.group(1):  # end of section
                return out, pos
            key = m.group(3)
            if m.group(4).strip() == "{":
                out[key], pos = section(pos, depth + 1)
            elif m.group(4) == "=[":
                end = text.find("]", pos)
                if end < 0:
                    raise CharonError("unterminated vici list")
                out[key] = text[pos:end].split()
                pos = end + 1
            else:
                out[key] = m.group(5)
        return out, pos

    result, _ = section(pos, 0)
    return result


def _flatten_sas(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sas: list[dict[str, Any]] = []
    for msg in messages:
        for name, ike in msg.items():
            if not isinstance(ike, dict):
                continue
            entry = {k: v for k, v in ike.items() if k != "child-sas"}
            entry["name"] = name
            children = []
            for cname, child in (ike.get("child-sas") or {}).items():
                if isinstance(child, dict):
                    c = dict(child)
                    c.setdefault("name", cname)
                    c["key"] = cname
                    children.append(c)
            entry["child-sas"] = children
            sas.append(entry)
    return sas


# --- key log -------------------------------------------------------------------------

_KEY_HEAD = re.compile(r"<(?:[^|>]*\|)?(\d+)> encryption key Ka => (\d+) bytes")
_DUMP = re.compile(r"<(?:[^|>]*\|)?(\d+)>\s+\d+: ((?:[0-9A-F]{2} ){1,16})")


def _phase1_keys(log: str) -> dict[str, str]:
    """IKE_SA unique id -> Phase 1 encryption key (hex) from an ike=4 charon log."""
    keys: dict[str, str] = {}
    want: dict[str, int] = {}
    current: str | None = None
    for line in log.splitlines():
        head = _KEY_HEAD.search(line)
        if head:
            current = head.group(1)
            want[current] = int(head.group(2))
            keys[current] = ""
            continue
        if current is None:
            continue
        dump = _DUMP.search(line)
        if dump and dump.group(1) == current and len(keys[current]) < 2 * want[current]:
            keys[current] += dump.group(2).replace(" ", "").lower()
            if len(keys[current]) >= 2 * want[current]:
                keys[current] = keys[current][: 2 * want[current]]
                current = None
        else:
            current = None
    return {uid: k for uid, k in keys.items() if len(k) == 2 * want[uid]}


_DUMP_HEAD = re.compile(r"<(?:[^|>]*\|)?(\d+)> (.+?) => (\d+) bytes @ 0x[0-9a-f]+")


def log_dumps(log: str) -> list[dict[str, Any]]:
    """Every ``LABEL => N bytes`` hex dump of a charon log, in order.

    Each entry: ``{"ike_sa": unique id, "label": ..., "hex": ...}``. At ``ike``
    level 4 these include "shared Diffie Hellman secret", "SKEYID", "SKEYID_d",
    "SKEYID_a", "SKEYID_e", "encryption key Ka", "initial IV", "HASH_I data",
    "HASH_I", "next IV for MID n", "Hash(1)": known answers for RFC 2409 keying.
    """
    dumps: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    want = 0
    for line in log.splitlines():
        head = _DUMP_HEAD.search(line)
        if head:
            current = {"ike_sa": head.group(1), "label": head.group(2), "hex": ""}
            want = int(head.group(3))
            if want == 0:
                dumps.append(current)
                current = None
            continue
        if current is None:
            continue
        dump = _DUMP.search(line)
        if dump and dump.group(1) == current["ike_sa"]:
            current["hex"] += dump.group(2).replace(" ", "").lower()
            if len(current["hex"]) >= 2 * want:
                current["hex"] = current["hex"][: 2 * want]
                dumps.append(current)
                current = None
        else:
            current = None
    return dumps


def key_lines(sas: list[dict[str, Any]], log: str) -> list[str]:
    """Wireshark ``ikev1_decryption_table`` records ``ICOOKIE,KEY`` for ``sas``."""
    keys = _phase1_keys(log)
    lines = []
    for sa in sas:
        uid = str(sa.get("uniqueid", ""))
        cookie = sa.get("initiator-spi")
        if uid in keys and cookie:
            lines.append(f"{cookie},{keys[uid]}")
    return lines


# --- the instance ----------------------------------------------------------------------


# Instances not stopped yet: stopped at interpreter exit if a test forgot them.
_LIVE: set[Charon] = set()


@atexit.register
def _stop_forgotten() -> None:
    for inst in list(_LIVE):
        inst.stop()


def _is_charon(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "charon"
    except OSError:
        return False


class Charon:
    """One running charon instance (see the module docstring). Use :meth:`start`."""

    def __init__(self, *, directory: Path, process: subprocess.Popen[bytes], pid: int,
                 swanctl: str, addr: str, port: int, natt_port: int, netns: str | None,
                 kernel: str) -> None:
        self.directory = directory
        self._process = process
        self.pid = pid
        self._swanctl = swanctl
        self.addr = addr
        self.port = port
        self.natt_port = natt_port
        self.netns = netns
        self.kernel = kernel
        self._stopped = False
        _LIVE.add(self)

    # -- construction ----------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        addr: str,
        port: int,
        natt_port: int,
        psk: str,
        ike: str = "aes128-sha256-modp2048",
        esp: str = "aes128-sha256",
        remote: str | None = None,
        remote_port: int | None = None,
        local_id: str | None = None,
        remote_id: str | None = None,
        local_ts: str | None = None,
        remote_ts: str | None = None,
        mode: str = "tunnel",
        kernel: str = "fake",
        aggressive: bool = False,
        log_keys: bool = False,
        netns: str | None = None,
        rekey: bool = False,
        dpd_delay: int | None = None,
        dpd_action: str = "clear",
        ike_lifetime: int | None = None,
        child_lifetime: int | None = None,
        retransmit_tries: int = 2,
        log_level: int = 2,
        extra_conf: str = "",
        start_timeout: float = 15.0,
        auth: str = "psk",
        cert: str | None = None,
        key: str | None = None,
        cacert: str | None = None,
        encap: bool = False,
    ) -> Charon:
        """Start charon and load one IKEv1 PSK connection ``ikev1`` with child ``net``.

        A responder when ``remote`` is None (remote address ``%any``), an
        initiator towards ``remote``:``remote_port`` (default 500) otherwise.
        ``ike``/``esp``: swanctl proposal strings (``esp`` with a DH group means
        PFS). ``local_ts``/``remote_ts``: traffic selectors (default ``dynamic``,
        the IKE addresses). ``mode``: ``tunnel`` or ``transport``.
        ``rekey=False`` disables IKE and CHILD rekeying/reauthentication, so the
        lifetimes (``ike_lifetime`` default 14400 s, ``child_lifetime`` default
        3600 s) are only what is proposed; ``rekey=True`` rekeys at 90 % of them
        (CHILD_SAs only with a real kernel: the fake kernel sends no expire
        events; use :meth:`rekey` to force one). ``dpd_delay``: seconds between DPD
        R-U-THERE checks (None: no DPD). ``log_keys``: log keys (ike/chd level 4)
        for :meth:`keys`. ``extra_conf``: text appended inside the ``charon {}``
        section of strongswan.conf. ``auth="pubkey"``: RSA signatures with the PEM
        files ``cert`` (ours), ``key`` (its private key) and ``cacert`` (the CA that
        must have issued the peer's certificate), absolute paths (swanctl loads them
        from there, not from /etc/swanctl).
        ``encap``: force UDP encapsulation (charon fakes its NAT-D so the peer
        floats to NAT-T too).
        """
        if auth not in ("psk", "pubkey"):
            raise ValueError("auth must be 'psk' or 'pubkey'")
        if auth == "pubkey" and not (cert and key and cacert):
            raise ValueError("auth='pubkey' needs cert, key and cacert")
        if kernel == "libipsec" and netns is None:
            raise ValueError("kernel='libipsec' creates a TUN device: pass netns=")
        if mode not in ("tunnel", "transport"):
            raise ValueError("mode must be 'tunnel' or 'transport'")
        for number, what in ((port, "port"), (natt_port, "natt_port")):
            if not 0 < number < 65536:
                raise ValueError(f"{what} {number} out of range")
        _check_local(addr, netns, "addr")
        if remote is not None:
            _check_local(remote, netns, "remote")
        for value, what in ((ike, "ike"), (esp, "esp"), (addr, "addr"),
                            (local_ts or "dynamic", "local_ts"),
                            (remote_ts or "dynamic", "remote_ts"), (dpd_action, "dpd_action")):
            _check_token(value, what)
        reason = available(kernel)
        if reason is not None:
            raise CharonError(reason)
        if netns is not None:
            names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                   check=False, timeout=10).stdout.split()
            if netns not in names:
                raise CharonError(f"no network namespace {netns}")

        prefix = fake_kernel_prefix() if kernel == "fake" else None
        swanctl = _swanctl_binary(prefix)
        assert swanctl is not None  # checked by available()
        if kernel == "fake":
            assert prefix is not None
            charon_bin = prefix / "libexec/ipsec/charon"
        else:
            charon_bin = DEBIAN_CHARON

        directory = Path(tempfile.mkdtemp(prefix="ikecore-charon."))
        os.chmod(directory, 0o700)
        try:
            cls._write_configs(
                directory, addr=addr, port=port, natt_port=natt_port, psk=psk, ike=ike,
                esp=esp, remote=remote, remote_port=remote_port, local_id=local_id,
                remote_id=remote_id, local_ts=local_ts, remote_ts=remote_ts, mode=mode,
                kernel=kernel, aggressive=aggressive, log_keys=log_keys, netns=netns,
                rekey=rekey, dpd_delay=dpd_delay, dpd_action=dpd_action,
                ike_lifetime=ike_lifetime, child_lifetime=child_lifetime,
                retransmit_tries=retransmit_tries, log_level=log_level,
                extra_conf=extra_conf, prefix=prefix, encap=encap, auth=auth, cert=cert, key=key,
                cacert=cacert,
            )
            process, pid = cls._launch(directory, charon_bin, netns, start_timeout)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        inst = cls(directory=directory, process=process, pid=pid, swanctl=swanctl,
                   addr=addr, port=port, natt_port=natt_port, netns=netns, kernel=kernel)
        try:
            inst.wait_for(lambda: (directory / "charon.vici").exists(), start_timeout)
            load = inst.swanctl("--load-all", "--noprompt", "--file",
                                str(directory / "swanctl.conf"))
            if load.returncode != 0:
                raise CharonError(f"swanctl --load-all failed:\n{load.stdout}{load.stderr}")
        except BaseException as exc:
            log = inst.log_text()[-3000:]
            inst.stop()
            if isinstance(exc, TimeoutError):
                raise CharonError(f"charon opened no vici socket; log:\n{log}") from exc
            raise
        return inst

    @staticmethod
    def _write_configs(directory: Path, *, addr: str, port: int, natt_port: int, psk: str,
                       ike: str, esp: str, remote: str | None, remote_port: int | None,
                       local_id: str | None, remote_id: str | None, local_ts: str | None,
                       remote_ts: str | None, mode: str, kernel: str, aggressive: bool,
                       log_keys: bool, netns: str | None, rekey: bool,
                       dpd_delay: int | None, dpd_action: str, ike_lifetime: int | None,
                       child_lifetime: int | None, retransmit_tries: int, log_level: int,
                       extra_conf: str, prefix: Path | None, encap: bool = False,
                       auth: str = "psk", cert: str | None = None, key: str | None = None,
                       cacert: str | None = None) -> None:
        d = str(directory)
        plugins = BASE_PLUGINS
        plugin_conf = ""
        if kernel == "netlink":
            plugins += " kernel-netlink"
        elif kernel == "libipsec":
            plugins += " kernel-libipsec kernel-netlink"
        else:
            # load-tester first, so its fake kernel-ipsec interface is used; its own
            # "load-test" connection never initiates and sits on unused addresses.
            plugins = "load-tester " + plugins + " kernel-netlink"
            plugin_conf = f"""
    load-tester {{
      enable = yes
      fake_kernel = yes
      initiators = 0
      iterations = 0
      responder = 127.0.0.254
      initiator = 127.0.0.253
      preshared_key = {_conf_string(psk)}
      socket = unix://{d}/charon.ldt
    }}"""
        # Only plugins this charon has (Debian's lacks "des": openssl does 3DES there).
        plugin_dir = (prefix / "lib/ipsec/plugins") if prefix else Path("/usr/lib/ipsec/plugins")
        if plugin_dir.is_dir():
            plugins = " ".join(name for name in plugins.split()
                               if (plugin_dir / f"libstrongswan-{name}.so").exists())
        tuning = ""
        if aggressive:
            # charon answers Aggressive Mode PSK with AUTHENTICATION_FAILED otherwise
            tuning += "  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n"
        ike_log, chd_log = (4, 4) if log_keys else (log_level, 1)
        strongswan_conf = f"""# strongswan.conf of one ikecore interop charon (tests/interop/charon.py)
charon {{
  port = {port}
  port_nat_t = {natt_port}
  install_routes = no
  install_virtual_ip = no
  routing_table = 0
  retransmit_tries = {retransmit_tries}
  retransmit_timeout = 1.0
  retransmit_base = 1.4
{tuning}  load = {plugins}
  filelog {{
    ikecore {{
      path = {d}/charon.log
      time_format = %H:%M:%S
      ike_name = yes
      append = no
      flush_line = yes
      default = 1
      ike = {ike_log}
      chd = {chd_log}
      cfg = 2
      net = 1
      enc = 1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}{plugin_conf}
  }}
{extra_conf}
}}
swanctl {{
  socket = unix://{d}/charon.vici
  load = pem pkcs1 x509 pubkey
}}
"""
        (directory / "strongswan.conf").write_text(strongswan_conf)

        policies = "yes" if netns is not None else "no"
        lid = local_id or addr
        rid = remote_id or "%any"
        ike_life = ike_lifetime if ike_lifetime is not None else 14400
        child_life = child_lifetime if child_lifetime is not None else 3600
        if rekey:
            ike_times = f"rekey_time = {ike_life * 9 // 10}s\n    over_time = {ike_life // 10}s"
            child_times = f"rekey_time = {child_life * 9 // 10}s\n        life_time = {child_life}s"
        else:
            # no rekeying: the lifetime proposed in IKEv1 is rekey_time + over_time
            ike_times = f"rekey_time = 0s\n    reauth_time = 0s\n    over_time = {ike_life}s"
            child_times = f"rekey_time = 0s\n        life_time = {child_life}s"
        dpd = f"dpd_delay = {dpd_delay}s" if dpd_delay else "dpd_delay = 0s"
        local_auth = remote_auth = "auth = psk"
        if auth == "pubkey":
            local_auth = f"auth = pubkey\n      certs = {_check_token(str(cert), 'cert')}"
            remote_auth = f"auth = pubkey\n      cacerts = {_check_token(str(cacert), 'cacert')}"
            # swanctl loads private keys only from its own private/ directory
            # (SWANCTL_DIR is the state directory, see :meth:`swanctl`).
            (directory / "private").mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(str(key), directory / "private" / "ike.key")
        swanctl_conf = f"""# swanctl.conf of one ikecore interop charon (tests/interop/charon.py)
connections {{
  {CONN} {{
    version = 1
    aggressive = {"yes" if aggressive else "no"}
    local_addrs = {_check_token(addr, "addr")}
    remote_addrs = {_check_token(remote, "remote") if remote else "%any"}
    local_port = {port}
    remote_port = {remote_port if remote_port is not None else 500}
    proposals = {_check_token(ike, "ike")}
    fragmentation = yes
    encap = {"yes" if encap else "no"}
    {dpd}
    keyingtries = 1
    {ike_times}
    local {{
      {local_auth}
      id = {_check_token(lid, "local_id")}
    }}
    remote {{
      {remote_auth}
      id = {_check_token(rid, "remote_id")}
    }}
    children {{
      {CHILD} {{
        local_ts = {_check_token(local_ts or "dynamic", "local_ts")}
        remote_ts = {_check_token(remote_ts or "dynamic", "remote_ts")}
        esp_proposals = {_check_token(esp, "esp")}
        mode = {mode}
        policies = {policies}
        dpd_action = {_check_token(dpd_action, "dpd_action")}
        {child_times}
      }}
    }}
  }}
}}
secrets {{
  ike-psk {{
    secret = 0x{psk.encode().hex()}
  }}
}}
"""
        (directory / "swanctl.conf").write_text(swanctl_conf)

    @staticmethod
    def _launch(directory: Path, charon_bin: Path, netns: str | None,
                timeout: float) -> tuple[subprocess.Popen[bytes], int]:
        run = directory / "run"
        run.mkdir()
        argv: list[str] = []
        if netns is not None:
            argv += ["ip", "netns", "exec", netns]
        # unshare and "ip netns exec" exec their command and sh execs charon: the
        # Popen PID is charon's PID (checked against its pid file below).
        argv += ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount --bind "$1" /run && exec "$2"', "sh", str(run), str(charon_bin)]
        env = dict(os.environ, STRONGSWAN_CONF=str(directory / "strongswan.conf"))
        with open(directory / "charon.out", "wb") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        pid_file = run / "charon.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                text = pid_file.read_text().strip()
            except OSError:
                text = ""
            if text.isdigit():
                pid = int(text)
                if pid == process.pid and _is_charon(pid):
                    return process, pid
            time.sleep(0.05)
        if process.poll() is None and _is_charon(process.pid):
            os.kill(process.pid, signal.SIGKILL)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        output = (directory / "charon.out").read_text(errors="replace")[-2000:]
        log = ""
        if (directory / "charon.log").exists():
            log = (directory / "charon.log").read_text(errors="replace")[-2000:]
        raise CharonError(f"charon did not start:\n{output}\n{log}")

    # -- queries and control ---------------------------------------------------------------

    def swanctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``swanctl ARGS`` against this instance (no check on the exit status)."""
        env = dict(os.environ, STRONGSWAN_CONF=str(self.directory / "strongswan.conf"),
                   SWANCTL_DIR=str(self.directory))
        return subprocess.run([self._swanctl, *args], capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    def initiate(self, *, ike_only: bool = False,
                 timeout: int = 30) -> subprocess.CompletedProcess[str]:
        """Initiate Main/Aggressive Mode (+ Quick Mode unless ``ike_only``); waits."""
        what = ["--ike", CONN] if ike_only else ["--child", CHILD]
        return self.swanctl("--initiate", *what, "--timeout", str(timeout),
                            timeout=timeout + 15)

    def terminate(self, *, ike: bool = True, child: str | bool | None = None,
                  timeout: int = 10) -> subprocess.CompletedProcess[str]:
        """Delete the CHILD_SA(s) (``child=True`` or a child name) or else the IKE_SA.

        charon sends an Informational Delete (IPsec SPIs, or the ISAKMP SA with
        its CHILD_SAs) to the peer.
        """
        if child:
            name = CHILD if child is True else str(child)
            return self.swanctl("--terminate", "--child", name, "--timeout", str(timeout),
                                timeout=timeout + 15)
        if not ike:
            raise ValueError("nothing to terminate: pass ike=True or child=")
        return self.swanctl("--terminate", "--ike", CONN, "--timeout", str(timeout),
                            timeout=timeout + 15)

    def rekey(self, *, child: str | bool | None = True,
              timeout: int = 10) -> subprocess.CompletedProcess[str]:
        """Rekey now: a new Quick Mode for the CHILD_SA (``child=True`` or a name), or,
        with ``child=None``, a new Phase 1 (IKEv1 has no IKE rekey: charon
        re-authenticates, i.e. runs a fresh Main Mode next to the old ISAKMP SA).

        Needed with the fake kernel, whose SAs never expire (charon rekeys CHILD_SAs
        on kernel expire events).
        """
        if child:
            name = CHILD if child is True else str(child)
            return self.swanctl("--rekey", "--child", name, timeout=timeout + 15)
        return self.swanctl("--rekey", "--ike", CONN, timeout=timeout + 15)

    def list_sas(self) -> list[dict[str, Any]]:
        """Current IKE_SAs as dicts (vici ``list-sa`` keys) with ``child-sas`` lists.

        IKE_SA keys include ``name``, ``uniqueid``, ``state``, ``initiator``,
        ``initiator-spi``/``responder-spi`` (the ISAKMP cookies, hex),
        ``local-host``/``local-port``/``remote-host``/``remote-port``,
        ``encr-alg``/``encr-keysize``/``integ-alg``/``prf-alg``/``dh-group``.
        Each child has ``name``, ``state``, ``protocol``, ``mode``, ``spi-in``,
        ``spi-out``, ``encr-alg``, ``integ-alg``, ``local-ts``/``remote-ts`` (lists).
        """
        out = self.swanctl("--list-sas", "--raw")
        if out.returncode != 0:
            raise CharonError(f"swanctl --list-sas failed: {out.stderr}")
        messages = [parse_vici_raw(line) for line in out.stdout.splitlines()
                    if line.startswith("list-sa event")]
        return _flatten_sas(messages)

    def keys(self) -> list[str]:
        """``ICOOKIE,KEY`` lines (Wireshark ikev1_decryption_table) for the current SAs.

        Needs ``log_keys=True``; call it while the IKE_SA still exists.
        """
        return key_lines(self.list_sas(), self.log_text())

    def log_text(self) -> str:
        """The charon log so far."""
        try:
            return (self.directory / "charon.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0,
                 interval: float = 0.1) -> T:
        """Poll ``predicate`` until it returns a truthy value (returned) or time out."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(interval)

    def established(self) -> list[dict[str, Any]]:
        """IKE_SAs in state ESTABLISHED."""
        return [sa for sa in self.list_sas() if sa.get("state") == "ESTABLISHED"]

    def running(self) -> bool:
        return not self._stopped and self._process.poll() is None and _is_charon(self.pid)

    def freeze(self) -> None:
        """Make charon go silent without a goodbye (SIGSTOP by its PID): a dead peer."""
        if self.running():
            os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Undo :meth:`freeze` (SIGCONT)."""
        if self._process.poll() is None and _is_charon(self.pid):
            os.kill(self.pid, signal.SIGCONT)

    def stop(self, *, keep: bool = False, timeout: float = 10.0) -> None:
        """Stop charon (SIGTERM, then SIGKILL, by its PID) and remove the state dir."""
        if self._stopped:
            return
        self._stopped = True
        _LIVE.discard(self)
        if self._process.poll() is None and _is_charon(self.pid):
            os.kill(self.pid, signal.SIGCONT)  # in case it was frozen
            os.kill(self.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if _is_charon(self.pid):
                    os.kill(self.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
        elif self._process.poll() is None:
            # Not (or no longer) charon, e.g. still in the launcher: only our child.
            self._process.kill()
            self._process.wait(timeout=5)
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Charon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Charon(pid={self.pid}, addr={self.addr}:{self.port}, kernel={self.kernel}, "
                f"dir={self.directory})")

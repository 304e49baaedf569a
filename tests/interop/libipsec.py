"""Debian's strongSwan charon with kernel-libipsec as one end of the tunnel recipe.

kernel-libipsec is strongSwan's userland ESP: a TUN device (``ipsec0``) per charon,
routes for the remote traffic selectors through it (kernel-netlink), ESP in charon's
own threads. It always acts as if behind a NAT, so IKE floats to port 4500 and ESP is
UDP-encapsulated (RFC 3948). Each instance is a :class:`interop.charon.Charon`
(``kernel="libipsec"``): its own state directory, strongswan.conf, vici socket and
private mount namespace (``/run`` bound to the state directory, so the compiled-in
pid file path does not collide), inside one namespace of a
:func:`interop.netns.recipe_pair`.

The recipe's suite: IKE ``aes128-sha256-modp2048``, ESP ``aes128-sha256``, PSK,
tunnel mode, traffic selectors ``pair.subnet_<side>`` <-> the other side's subnet.

:func:`esp_sa_lines` turns charon's own logged Quick Mode keys (``log_keys=True``)
into Wireshark ``esp_sa`` records, an account of the keys that owes nothing to
ikecore: the same records ikecore's ``--keylog`` writes must come out of it.
"""

from __future__ import annotations

from typing import Any

from interop import netns
from interop.charon import Charon, available as charon_available, log_dumps

__all__ = ["IKE", "ESP", "available", "start", "esp_sa_lines"]

IKE = "aes128-sha256-modp2048"
ESP = "aes128-sha256"

# charon's vici names -> Wireshark's esp_sa UAT names
_ENCRYPTION = {("AES_CBC", "128"): "AES-CBC [RFC3602]", ("AES_CBC", "192"): "AES-CBC [RFC3602]",
               ("AES_CBC", "256"): "AES-CBC [RFC3602]", ("3DES_CBC", ""): "TripleDES-CBC [RFC2451]"}
_INTEGRITY = {"HMAC_SHA1_96": "HMAC-SHA-1-96 [RFC2404]",
              "HMAC_SHA2_256_128": "HMAC-SHA-256-128 [RFC4868]",
              "HMAC_SHA2_384_192": "HMAC-SHA-384-192 [RFC4868]",
              "HMAC_SHA2_512_256": "HMAC-SHA-512-256 [RFC4868]"}


def available() -> str | None:
    """None when a kernel-libipsec charon can run in a namespace here; otherwise why not."""
    return (netns.available() or charon_available("libipsec")
            or netns.tool_missing("ping", "iperf3", "tshark"))


def start(pair: netns.NetnsPair, side: str, *, initiator: bool, psk: str = "S",
          log_keys: bool = True, **options: Any) -> Charon:
    """A kernel-libipsec charon in namespace ``side`` (``"a"`` or ``"b"``) of ``pair``.

    A responder (any peer) unless ``initiator``; an initiator towards the other
    side's outer address on port 500 (call :meth:`Charon.initiate`). ``options`` go
    to :meth:`Charon.start` (``esp=``, ``ike=``, ``child_lifetime=`` ...).
    """
    if side not in ("a", "b"):
        raise ValueError("side must be 'a' or 'b'")
    mine, other = ("a", "b") if side == "a" else ("b", "a")
    options.setdefault("ike", IKE)
    options.setdefault("esp", ESP)
    return Charon.start(
        netns=getattr(pair, f"ns_{mine}"), addr=getattr(pair, f"addr_{mine}"), port=500,
        natt_port=4500, psk=psk, kernel="libipsec",
        remote=getattr(pair, f"addr_{other}") if initiator else None,
        local_ts=getattr(pair, f"subnet_{mine}"), remote_ts=getattr(pair, f"subnet_{other}"),
        log_keys=log_keys, **options)


def esp_sa_lines(charon: Charon, *, initiator: bool) -> list[str]:
    """Wireshark ``esp_sa`` records for charon's installed CHILD_SAs, from its own log.

    One record per direction: ``"IPv4","SRC","DST","0xSPI","ENC","0xKEY","AUTH","0xKEY"``.
    IKEv1 derives one key set per SPI (RFC 2409 section 5.5); charon logs them as the
    initiator's and the responder's keys, the initiator's protecting what the Quick
    Mode initiator sends: ``initiator`` says whether charon initiated the Quick Mode.
    Needs ``log_keys=True``.
    """
    dumps = log_dumps(charon.log_text())
    lines = []
    for sa in charon.established():
        for child in sa["child-sas"]:
            if child.get("state") != "INSTALLED":
                continue
            enc = _ENCRYPTION[(child["encr-alg"], child.get("encr-keysize", ""))]
            auth = _INTEGRITY[child["integ-alg"]]
            keys = _latest_child_keys(dumps, str(sa["uniqueid"]))
            sent, received = ("initiator", "responder") if initiator else ("responder", "initiator")
            local, remote = sa["local-host"], sa["remote-host"]
            for src, dst, spi, who in ((local, remote, child["spi-out"], sent),
                                       (remote, local, child["spi-in"], received)):
                lines.append(f'"IPv4","{src}","{dst}","0x{spi}","{enc}",'
                             f'"0x{keys["encryption " + who + " key"]}","{auth}",'
                             f'"0x{keys["integrity " + who + " key"]}"')
    return lines


def _latest_child_keys(dumps: list[dict[str, Any]], ike_sa: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for dump in dumps:
        if dump["ike_sa"] == ike_sa and dump["label"].startswith(("encryption ", "integrity ")):
            keys[dump["label"]] = dump["hex"]
    return keys

"""Flags shared by ``ikecore connect`` and ``ikecore serve``: proposals, timing, credentials,
the pre-shared key (``--psk``, ``--psk-file`` or ``$IKECORE_PSK``)."""

from __future__ import annotations

import argparse
from typing import Any

from ikecore.config import PSK_ENVIRONMENT, Timing, psk_from_flags
from ikecore.errors import ConfigError

__all__ = ["add_driver_flag", "add_log_flags", "add_proposal_flags", "add_psk_flags", "credentials", "psk", "timing"]


def add_log_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--log-level`` and ``--log-format`` (``ikecore.cli.logs``). On the top parser
    (``top``) they carry the defaults; on a sub-command they only override when given,
    so ``ikecore --log-format json serve`` and ``ikecore serve --log-format json`` agree."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        **(default or {"default": "info"}),
                        help="log records at this level and above to standard error [info]")
    parser.add_argument("--log-format", choices=("text", "json"), **(default or {"default": "text"}),
                        help="log lines as text (time level logger key=value) or one JSON object each [text]")


def add_psk_flags(parser: argparse.ArgumentParser, scope: str) -> None:
    """``--psk`` and ``--psk-file``; ``scope`` says what the key is for, e.g. '(without --config)'."""
    parser.add_argument("--psk", help=f"pre-shared key {scope}; visible to every user in ps: prefer "
                                      f"--psk-file or ${PSK_ENVIRONMENT}")
    parser.add_argument("--psk-file", metavar="FILE",
                        help=f"read the pre-shared key from the first line of FILE (mode 0600); "
                             f"without --psk or --psk-file, ${PSK_ENVIRONMENT} gives it")


def psk(args: argparse.Namespace) -> str:
    """The pre-shared key of --psk, --psk-file or $IKECORE_PSK ('' for none); ConfigError names the flag."""
    return psk_from_flags(args.psk, args.psk_file)


def add_proposal_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ike", default="aes128-sha256-modp2048",
                        help="IKE proposals, e.g. aes128-sha256-modp2048,3des-sha1-modp1024")
    parser.add_argument("--esp", default="aes128-sha256",
                        help="ESP proposals, e.g. aes128-sha256 or, with PFS, aes128-sha256-modp2048")
    parser.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel")
    parser.add_argument("--local-ts", help="local traffic selector (subnet); default our IKE address")
    parser.add_argument("--remote-ts", help="remote traffic selector (subnet); default the peer's address")
    parser.add_argument("--my-id", help="our identity (IP address, FQDN or user@FQDN)")
    parser.add_argument("--keylog", metavar="FILE",
                        help="append Wireshark IKEv1 decryption-table lines (secret keys!) to FILE "
                             "(created 0600; an existing FILE others can read is refused)")
    parser.add_argument("--retransmit-timeout", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="negotiation timeout")
    parser.add_argument("--aggressive", action="store_true",
                        help="allow (and initiate with) Aggressive Mode PSK; identities travel in the clear")
    parser.add_argument("--nat-t", choices=("auto", "force", "off"), default="auto",
                        help="NAT traversal: detect (auto), always encapsulate (force), or off")
    parser.add_argument("--dpd-delay", type=float, default=0.0, metavar="SECONDS",
                        help="send R-U-THERE after this long without traffic (0: no DPD checks)")
    parser.add_argument("--dpd-timeout", type=float, default=150.0, metavar="SECONDS",
                        help="delete the SAs of a peer that does not acknowledge for this long")
    parser.add_argument("--cert", metavar="FILE", help="our X.509 certificate (RSA signatures; with --key, --ca)")
    parser.add_argument("--key", metavar="FILE", help="the certificate's RSA private key (PEM or DER)")
    parser.add_argument("--ca", metavar="FILE", action="append", help="trusted CA certificate (repeatable)")


def add_driver_flag(parser: argparse.ArgumentParser) -> None:
    """``--driver memory|xfrm|userland`` (``ikecore.gateway.drivers``) and ``--tun NAME``."""
    from ikecore.gateway.drivers import DRIVERS

    parser.add_argument("--driver", choices=DRIVERS, default=None,
                        help="where Quick Mode SAs go: memory (a table, no packet protected; the default), "
                             "xfrm (the Linux kernel) or userland (ESP in this process behind a TUN device)")
    parser.add_argument("--tun", metavar="NAME", default=None,
                        help="the TUN device of --driver userland (default ikecore0)")


def credentials(args: argparse.Namespace) -> Any:
    """--cert/--key/--ca as ``ikecore.credentials.Credentials`` (None without them)."""
    from ikecore.credentials import credentials_from_flags

    return credentials_from_flags(args.cert, args.key, args.ca)


def timing(args: argparse.Namespace) -> Timing:
    if args.retransmit_timeout <= 0:
        raise ConfigError("--retransmit-timeout", "must be a positive number of seconds")
    if args.timeout <= 0:
        raise ConfigError("--timeout", "must be a positive number of seconds")
    return Timing(retransmit_timeout=args.retransmit_timeout, negotiation_timeout=args.timeout,
                  dpd_delay=args.dpd_delay, dpd_timeout=args.dpd_timeout)



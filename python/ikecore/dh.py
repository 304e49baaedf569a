"""Diffie-Hellman for IKEv1: the groups and single-use key pairs.

All big-number and curve arithmetic runs in Rust (``ikecore._core``) with the GIL
released; ``ikecore.gateway.dh_pool`` runs it on threads. Groups (IKE group
numbers): MODP 1, 2 (RFC 2409), 5, 14-18 (RFC 3526), ECP 19-21 (RFC 5903: KE
data ``x|y``, shared secret ``x``) and 24 (RFC 5114 2048-bit/256-bit subgroup).

>>> a, b = keypair(14), keypair(14)
>>> a.exchange(b.public) == b.exchange(a.public)
True

A key pair is single-use: a second :meth:`KeyPair.exchange` raises
:class:`ikecore.errors.CryptoError`, also after a first call that failed (the
private value is wiped as soon as it is used). An invalid peer value raises
:class:`ikecore.errors.InvalidKeyInformation` (Notify 17); an unsupported group
raises a plain :class:`ValueError` naming it.
"""

from __future__ import annotations

from ikecore import _core

__all__ = [
    "SUPPORTED_GROUPS",
    "KeyPair",
    "keypair",
    "public_size",
    "secret_size",
    "group_name",
    "group_from_name",
]

#: IKE group numbers this build supports.
SUPPORTED_GROUPS: frozenset[int] = frozenset(_core.dh_supported_groups())

#: A single-use key pair: ``.group`` (int), ``.public`` (KE payload data, bytes),
#: ``.exchange(peer_public) -> bytes`` (g^xy left-padded to the group size).
KeyPair = _core.DhKeyPair


def keypair(group: int, private: bytes | None = None) -> KeyPair:
    """Make a key pair for ``group`` with a fresh private value from the OS CSPRNG.

    ``private`` (big-endian bytes) is only for known-answer tests: a MODP
    exponent with 1 < x < p-1 (x < q for group 24), or an ECP scalar in [1, n-1].
    """
    return _core.dh_keypair(group, private)


def public_size(group: int) -> int:
    """Length in bytes of the public value (KE payload data) of ``group``."""
    return _core.dh_public_size(group)


def secret_size(group: int) -> int:
    """Length in bytes of the shared secret g^xy of ``group``."""
    return _core.dh_secret_size(group)


def group_name(group: int) -> str:
    """strongSwan's name for ``group``: ``modp2048``, ``ecp256``, ``modp2048s256``, ..."""
    return _core.dh_group_name(group)


def group_from_name(name: str) -> int:
    """The group number for a strongSwan name; ValueError if unknown."""
    group = _core.dh_group_from_name(name)
    if group is None:
        raise ValueError(f"unknown Diffie-Hellman group name {name!r}")
    return group

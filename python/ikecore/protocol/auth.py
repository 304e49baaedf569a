"""RSA signature authentication with X.509 certificates (RFC 2409 section 5.1).

Design note
-----------
With signatures, Main Mode carries the same six messages as with pre-shared keys; what
changes (RFC 2409 section 5.1):

* ``SKEYID = prf(Ni_b | Nr_b, g^xy)`` (``keymat.derive_skeyid`` with ``psk=None``);
* messages 3 and 4 may carry CR payloads naming the CAs we trust (encoding 4, X.509
  signature; data = the DER of the CA's subject name);
* messages 5 and 6 carry ``ID, [CERT,] SIG`` instead of ``ID, HASH``: the SIG payload is
  HASH_I / HASH_R signed with PKCS#1 v1.5 padding and *no* DigestInfo (strongSwan's
  SIGN_RSA_EMSA_PKCS1_NULL, Windows does the same);
* the receiver validates the peer's certificate chain against its configured CA
  certificates (signatures, issuer names, CA basic constraints, validity dates at the
  wall-clock time the engine lends), then checks that the ID payload names the
  certificate (DER_ASN1_DN = subject, FQDN / USER_FQDN / IPv4 / IPv6 = a subjectAltName
  entry), then verifies the signature with the certificate's public key.

The certificate, private key and CA certificates of a filter are its
``ikecore.credentials.Credentials``, read from files at start-up. Everything here raises
``ikecore.errors`` classes (AuthenticationFailed, InvalidIdInformation) for the engine to
count; nothing does I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Sequence
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

from ikecore import policy, wire
from ikecore.credentials import Credentials
from ikecore.errors import AuthenticationFailed, InvalidIdInformation
from ikecore.sa import id_to_text

__all__ = ["CertificateServices", "CERT_X509_SIGNATURE", "MAX_CHAIN", "sign", "verify_signature",
           "validate_chain", "id_matches_certificate", "my_certificate_id", "request_payloads",
           "proof_payloads", "verify_proof", "ike_policy_for"]

#: Certificate encoding 4: X.509 Certificate - Signature (RFC 2408 section 3.9).
CERT_X509_SIGNATURE = 4
#: Longest chain (end entity + intermediates) we follow before giving up.
MAX_CHAIN = 8


class CertificateServices(Protocol):
    """What certificate validation needs from the engine: the wall-clock time (UTC)."""

    def wall_clock(self) -> datetime.datetime: ...


# --- signatures ----------------------------------------------------------------------------


def sign(private_key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """PKCS#1 v1.5 signature of the raw HASH_I/HASH_R, without DigestInfo."""
    return private_key.sign(digest, padding.PKCS1v15(), NoDigestInfo())


def verify_signature(certificate: x509.Certificate, digest: bytes, signature: bytes) -> None:
    """Raises AuthenticationFailed unless ``signature`` signs ``digest`` for ``certificate``."""
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthenticationFailed("peer certificate does not hold an RSA key")
    try:
        key.verify(signature, digest, padding.PKCS1v15(), NoDigestInfo())  # type: ignore[arg-type]
    except InvalidSignature:
        raise AuthenticationFailed("SIG payload does not verify with the peer's certificate") from None


# --- chains and identities -----------------------------------------------------------------


def _valid_at(cert: x509.Certificate, when: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def validate_chain(end_entity: x509.Certificate, intermediates: Sequence[x509.Certificate],
                   cas: Sequence[x509.Certificate], when: datetime.datetime) -> x509.Certificate:
    """Follow issuers from ``end_entity`` to one of ``cas``; returns the trust anchor.

    Every certificate on the path must be valid at ``when``; issuers must be CAs.

    Raises:
        AuthenticationFailed: expired or not yet valid, broken signature, unknown issuer.
    """
    current = end_entity
    pool = list(intermediates)
    for _depth in range(MAX_CHAIN):
        if not _valid_at(current, when):
            raise AuthenticationFailed(f"certificate {current.subject.rfc4514_string()!r} is not valid at "
                                       f"{when.isoformat()} ({current.not_valid_before_utc.isoformat()} .. "
                                       f"{current.not_valid_after_utc.isoformat()})")
        for anchor in cas:
            if _issued_by(current, anchor):
                if not _valid_at(anchor, when):
                    raise AuthenticationFailed(f"CA {anchor.subject.rfc4514_string()!r} is not valid now")
                if not _is_ca(anchor):
                    raise AuthenticationFailed(f"{anchor.subject.rfc4514_string()!r} is not a CA")
                return anchor
        issuer = next((c for c in pool if _is_ca(c) and _issued_by(current, c)), None)
        if issuer is None:
            raise AuthenticationFailed(f"no trusted CA issued {current.subject.rfc4514_string()!r} "
                                       f"(issuer {current.issuer.rfc4514_string()!r})")
        pool.remove(issuer)
        current = issuer
    raise AuthenticationFailed(f"certificate chain longer than {MAX_CHAIN}")


def _alt_names(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def id_matches_certificate(id_type: int, data: bytes, cert: x509.Certificate) -> bool:
    """Does an ID payload (type, data) name this certificate (RFC 2409 5.1, RFC 4945 3.1)?"""
    if id_type == wire.IdType.DER_ASN1_DN:
        return data == cert.subject.public_bytes()
    names = _alt_names(cert)
    if names is None:
        return False
    if id_type == wire.IdType.FQDN:
        text = data.decode("ascii", "replace").lower()
        return any(name.lower() == text for name in names.get_values_for_type(x509.DNSName))
    if id_type == wire.IdType.USER_FQDN:
        text = data.decode("ascii", "replace").lower()
        return any(name.lower() == text for name in names.get_values_for_type(x509.RFC822Name))
    if id_type in (wire.IdType.IPV4_ADDR, wire.IdType.IPV6_ADDR):
        try:
            address = ipaddress.ip_address(data)
        except ValueError:
            return False
        return address in names.get_values_for_type(x509.IPAddress)
    return False


def my_certificate_id(credentials: Credentials, configured: str | None) -> wire.IdPayload | None:
    """Our phase 1 ID with a certificate: the subject DN unless an ID is configured."""
    if configured is None or configured.lower() in ("dn", "%dn"):
        return wire.IdPayload(int(wire.IdType.DER_ASN1_DN), credentials.subject_der)
    return None  # the caller builds the configured FQDN / USER_FQDN / address ID


# --- Main Mode payloads --------------------------------------------------------------------


def request_payloads(credentials: Credentials) -> list[wire.Payload]:
    """CR payloads for messages 3 and 4: one per trusted CA, named by its subject DN."""
    return [wire.CrPayload(CERT_X509_SIGNATURE, ca.subject.public_bytes()) for ca in credentials.cas]


def proof_payloads(credentials: Credentials, digest: bytes) -> list[wire.Payload]:
    """``CERT, SIG`` for message 5 or 6: our certificate and the signed HASH_I/HASH_R."""
    der = credentials.certificate.public_bytes(serialization.Encoding.DER)
    return [wire.CertPayload(CERT_X509_SIGNATURE, der), wire.SigPayload(sign(credentials.private_key, digest))]


def verify_proof(credentials: Credentials, payloads: list[wire.Payload], peer_id: wire.IdPayload, digest: bytes,
                 when: datetime.datetime, expected_id: str | None = None) -> x509.Certificate:
    """Check the peer's ``[CERT,] SIG`` against its ID and our CAs; returns its certificate.

    Raises:
        AuthenticationFailed: no certificate, an invalid chain, or a bad signature.
        InvalidIdInformation: the ID does not name the certificate, or not the expected peer.
    """
    certs = []
    signature = None
    for payload in payloads:
        if isinstance(payload, wire.CertPayload):
            if payload.encoding != CERT_X509_SIGNATURE:
                continue
            try:
                certs.append(x509.load_der_x509_certificate(payload.data))
            except ValueError as exc:
                raise AuthenticationFailed(f"CERT payload is not a DER X.509 certificate: {exc}") from None
        elif isinstance(payload, wire.SigPayload) and signature is None:
            signature = payload.data
    if signature is None:
        raise AuthenticationFailed("signature authentication without a SIG payload")
    if not certs:
        raise AuthenticationFailed("peer sent no certificate (and none is configured for it)")
    end_entity = next((c for c in certs if id_matches_certificate(peer_id.id_type, peer_id.data, c)), None)
    if end_entity is None:
        raise InvalidIdInformation("the peer's ID payload does not name its certificate")
    validate_chain(end_entity, [c for c in certs if c is not end_entity], credentials.cas, when)
    if expected_id is not None and not _expected(expected_id, peer_id, end_entity):
        raise InvalidIdInformation(f"peer certificate {end_entity.subject.rfc4514_string()!r} is not the "
                                   f"configured remote_id {expected_id!r}")
    verify_signature(end_entity, digest, signature)
    return end_entity


def _expected(expected: str, peer_id: wire.IdPayload, cert: x509.Certificate) -> bool:
    """A configured remote_id names the peer: an RFC 4514 DN, or the text of its ID."""
    if "=" in expected:
        try:
            return x509.Name.from_rfc4514_string(expected) == cert.subject
        except ValueError:
            return False
    return id_to_text(peer_id.id_type, peer_id.data) == expected


# --- policy --------------------------------------------------------------------------------


def ike_policy_for(generic: policy.GenericFilter, ike: policy.IkePolicy) -> policy.IkePolicy:
    """The IKE policy as this filter offers and accepts it: each suite once per
    authentication method of the filter, in the filter's order of preference."""
    methods = [m.method for m in generic.authentication_methods]
    if not methods or methods == [wire.AuthMethod.PRE_SHARED_KEY]:
        return ike
    proposals = tuple(dataclasses.replace(p, auth_method=method) for method in methods for p in ike.proposals)
    return policy.IkePolicy(ike.name, proposals)

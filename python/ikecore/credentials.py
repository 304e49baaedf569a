"""X.509 credentials: one filter's certificate, RSA private key and trusted CA certificates.

``Credentials`` is read once at start-up from PEM or DER files (the configuration's
``certificate``/``private_key``/``ca`` keys, or the ``--cert``/``--key``/``--ca`` flags)
and never prints the key. Every problem is a ``ConfigError`` naming the key and the fix.
What the certificates are used for, signature authentication in Main Mode (RFC 2409
section 5.1), lives in ``ikecore.protocol.auth``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ikecore.errors import ConfigError

__all__ = ["Credentials", "credentials_from_flags"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """One filter's X.509 identity: certificate, RSA private key, trusted CA certificates."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey = field(repr=False)
    cas: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, rsa.RSAPrivateKey):
            raise ConfigError("private_key", "must be an RSA private key")
        public = self.certificate.public_key()
        if not isinstance(public, rsa.RSAPublicKey) or \
                self.private_key.public_key().public_numbers() != public.public_numbers():
            raise ConfigError("private_key", "does not belong to the certificate")

    @classmethod
    def load(cls, certificate: str, private_key: str, cas: Sequence[str], where: str = "filter") -> Credentials:
        """Read PEM or DER files; raises ConfigError naming the key and the fix."""
        cert = _load_certificate(certificate, f"{where}.certificate")
        try:
            data = _read(private_key, f"{where}.private_key")
            key = (serialization.load_pem_private_key(data, None) if b"-----BEGIN" in data
                   else serialization.load_der_private_key(data, None))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}.private_key", f"{private_key} is not an unencrypted RSA key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{where}.private_key", f"{private_key} is not an RSA key")
        if not cas:
            raise ConfigError(f"{where}.ca", "name at least one CA certificate file to validate peers")
        authorities = tuple(_load_certificate(path, f"{where}.ca") for path in cas)
        try:
            return cls(cert, key, authorities)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.field}", exc.problem) from None

    @property
    def subject_der(self) -> bytes:
        return self.certificate.subject.public_bytes()


def credentials_from_flags(cert: str | None, key: str | None, cas: Sequence[str] | None) -> Credentials | None:
    """``--cert``/``--key``/``--ca`` command-line flags as Credentials (None without them)."""
    if not (cert or key or cas):
        return None
    if not (cert and key and cas):
        raise ConfigError("--cert", "--cert, --key and --ca go together")
    return Credentials.load(cert, key, cas, "flags")


def _read(path: str, field_name: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(field_name, f"cannot read {path}: {exc.strerror}") from None


def _load_certificate(path: str, field_name: str) -> x509.Certificate:
    data = _read(path, field_name)
    try:
        return (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        raise ConfigError(field_name, f"{path} is not an X.509 certificate: {exc}") from None

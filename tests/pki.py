"""A throw-away test PKI made with ``cryptography``: a root CA and RSA end-entity certificates.

Used by the in-memory certificate tests and by the strongSwan interop tests (charon loads
the same PEM files from its swanctl directories).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


@dataclass
class Issued:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    def write(self, directory: Path, stem: str) -> tuple[str, str]:
        """PEM files ``stem.pem`` and ``stem.key``; returns their paths."""
        cert = directory / f"{stem}.pem"
        key = directory / f"{stem}.key"
        cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
        return str(cert), str(key)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ikecore test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "ikecore test CA", *, days: int = 30) -> Issued:
    key = rsa.generate_private_key(65537, 2048)
    subject = name(common_name)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, common_name: str, *, dns: tuple[str, ...] = (), emails: tuple[str, ...] = (),
          addresses: tuple[str, ...] = (), not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None, key_size: int = 2048) -> Issued:
    """An end-entity certificate signed by ``ca`` with the given subjectAltNames."""
    key = rsa.generate_private_key(65537, key_size)
    builder = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca.certificate.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - datetime.timedelta(hours=1))
               .not_valid_after(not_after or NOW + datetime.timedelta(days=10))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns] + [x509.RFC822Name(e) for e in emails]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)

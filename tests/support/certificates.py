"""
Throw-away X.509 certificates made at test time, so that no key or
certificate is ever committed: a CA, leaf certificates it signs for IP
addresses or DNS names, and the PEM files and Twisted TLS options built from
them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions, PrivateCertificate

__all__ = ["Issued", "make_ca", "issue", "endpoint_files"]

_LIFETIME = datetime.timedelta(days=2)


@dataclass(frozen=True)
class Issued:
    """
    A key and its certificate, and the certificate that signed it (itself
    for a CA).
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: str, name: str) -> str:
        """
        Write the certificate alone as C{name}.pem; the path.
        """
        return _write(os.path.join(directory, f"{name}.pem"), self.cert_pem)

    def server_options(self) -> CertificateOptions:
        """
        TLS options for a server presenting this certificate.
        """
        pem = self.key_pem + self.cert_pem
        private = PrivateCertificate.loadPEM(pem)
        return private.options()  # type: ignore[no-any-return]


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _LIFETIME)
    )


def make_ca(name: str = "restygate test CA") -> Issued:
    """
    A self-signed CA certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(name, _name(name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(key, builder.sign(key, hashes.SHA256()))


def issue(
    ca: Optional[Issued], ips: Sequence[str] = ("127.0.0.1",), dns: Sequence[str] = ()
) -> Issued:
    """
    A server certificate for these IP addresses and DNS names (as SANs),
    signed by C{ca}, or self-signed without one.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = (list(dns) + list(ips) + ["server"])[0]
    issuer = ca.certificate.subject if ca is not None else _name(subject)
    sans = [x509.DNSName(name) for name in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        _builder(subject, issuer, key)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    signer = ca.key if ca is not None else key
    return Issued(key, builder.sign(signer, hashes.SHA256()))


def endpoint_files(issued: Issued, directory: str, name: str = "server") -> str:
    """
    Write the key and certificate files and return the C{privateKey=...:certKey=...}
    part of an C{ssl:} endpoint description naming them.
    """
    key = _write(os.path.join(directory, f"{name}-key.pem"), issued.key_pem)
    cert = _write(os.path.join(directory, f"{name}-cert.pem"), issued.cert_pem)
    return f"privateKey={key}:certKey={cert}"

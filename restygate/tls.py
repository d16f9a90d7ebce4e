"""
TLS on restygate's client sides: the CA bundles an operator names in the
config (C{upstream-ca}, C{consul-ca}) and the connection creators new
upstream connections are made with.

A bundle is read and parsed once, when the config is built, so a missing or
broken file is a config error (at start, on reload, under
C{--check-config}), never a surprise on the first request.  Verification
is Twisted's own (C{optionsForClientTLS}, which checks the name with
C{service_identity}); turning it off is a separate, explicit creator, so the
verifying path has no "but maybe not" branch in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from restygate._compat import IOpenSSLTrustRoot


__all__ = ["CABundle", "read_ca_bundle", "client_creator", "trust_root", "openssl_reason"]


@dataclass(frozen=True)
class CABundle:
    """
    The certificates of a PEM CA bundle file, as they were when read.

    The certificates themselves are kept, not only the path: a reload that
    finds the same path with new contents sees a changed value, and nothing
    re-reads the file after it was validated.
    """

    path: str
    certificates: Tuple[bytes, ...] = field(repr=False)

    def trust_root(self) -> IOpenSSLTrustRoot:
        root: IOpenSSLTrustRoot = trustRootFromCertificates(
            [Certificate.loadPEM(pem) for pem in self.certificates]
        )
        return root


def read_ca_bundle(path: str) -> CABundle:
    """
    Read and parse a PEM bundle of one or more CA certificates.

    @raise ValueError: with a one-line reason naming the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"no such file {path!r}") from None
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{path}: not a PEM certificate bundle ({e})") from None
    return CABundle(path, tuple(c.public_bytes(Encoding.PEM) for c in certificates))


def trust_root(bundle: Optional[CABundle]) -> IOpenSSLTrustRoot:
    """
    What to trust: the bundle's CAs, or the platform's store without one.
    """
    return platformTrust() if bundle is None else bundle.trust_root()


def client_creator(
    server_name: str, trust: Optional[IOpenSSLTrustRoot]
) -> IOpenSSLClientConnectionCreator:
    """
    How to open one client TLS connection that expects C{server_name} (a
    host name, or an IP address to find among the certificate's IP SANs).
    With no C{trust} the peer's certificate is not checked at all.
    """
    if trust is None:
        return _Unverified(server_name)
    return optionsForClientTLS(server_name, trustRoot=trust)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    Encrypts without checking who answers (C{upstream-tls-insecure}), but
    still names the server (SNI), which TLS-routing front ends need to pick
    the backend.
    """

    def __init__(self, server_name: str) -> None:
        # CertificateOptions verifies nothing unless asked to.
        self._options = CertificateOptions()
        is_ip = isIPAddress(server_name) or isIPv6Address(server_name)
        # SNI carries DNS names only (RFC 6066), never IP literals.
        self._sni = None if is_ip else server_name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        # Built by hand: CertificateOptions.clientConnectionForTLS is newer
        # than Twisted 25.5, the newest PyPy 3.9 can install.
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


def openssl_reason(error: Exception) -> str:
    """
    An OpenSSL error stack as a short phrase (C{SSL routines: certificate
    verify failed}) instead of the list of tuples its exceptions print as.
    """
    stack = error.args[0] if error.args else None
    if isinstance(stack, list) and stack:
        # Each entry is (library, function, reason); function is empty on
        # OpenSSL 3.
        reasons = [
            ": ".join(str(part) for part in (entry[0], entry[-1]) if part)
            for entry in stack
            if isinstance(entry, tuple) and entry
        ]
        if reasons:
            return "; ".join(reasons)
    return str(error) or type(error).__name__

"""TLS for the ext_proc port: given files, or a self-signed certificate made at start-up.

Upstream's picker serves TLS by default with a self-signed certificate (Envoy is told
not to verify it); InferGate serves plaintext unless ``--secure-serving`` is set, since
the picker usually sits on a private network next to Envoy.
"""

from __future__ import annotations

import datetime
import socket

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["key_pair", "self_signed", "server_credentials"]


def self_signed(common_name: str | None = None, days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``common_name`` (default: the host name)."""
    cn = common_name or socket.gethostname()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def key_pair(cert_file: str | None, key_file: str | None) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) from files, or self-signed when none are given."""
    if cert_file and key_file:
        with open(cert_file, "rb") as f:
            cert = f.read()
        with open(key_file, "rb") as f:
            key = f.read()
        return cert, key
    return self_signed()


def server_credentials(cert_file: str | None, key_file: str | None) -> tuple[grpc.ServerCredentials, bytes]:
    """Credentials from files, or self-signed when none are given; also returns the cert PEM."""
    cert, key = key_pair(cert_file, key_file)
    return grpc.ssl_server_credentials([(key, cert)]), cert

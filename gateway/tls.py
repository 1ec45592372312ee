"""TLS for our listeners: contexts from configured files, or a development
certificate made at start-up when none is configured."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import tempfile
from pathlib import Path

log = logging.getLogger("portcullis.tls")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # RFC 8996: no TLS 1.0/1.1.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def make_dev_certificate(hostname: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``hostname`` (and localhost, 127.0.0.1, ::1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "dev-cert.pem", directory / "dev-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def dev_context(hostname: str) -> ssl.SSLContext:
    directory = Path(tempfile.mkdtemp(prefix="portcullis-dev-tls-"))
    cert, key = make_dev_certificate(hostname, directory)
    log.warning("no TLS certificate configured: using a self-signed development "
                "certificate (%s); configure listeners.*.tls for real customers", cert)
    return server_context(cert, key)
